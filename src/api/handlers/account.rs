//! The token's own account: the auth check, `users/me`, API keys and the
//! audit log.

use super::*;

pub(in crate::api) async fn auth_test(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Query(q): QueryMap,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &BTreeMap::new()).await?;
        let token = req.token()?;
        let ok = match (
            q.get("domain").map(String::as_str),
            q.get("resource").map(String::as_str),
        ) {
            (None, _) => true,
            (Some("api"), Some("read") | None) => true,
            (Some("api"), Some("write")) => token
                .scopes
                .iter()
                .any(|s| s.access >= Access::Write && s.versions.is_none()),
            (Some("repository"), Some(r)) => auth::allows(&token.scopes, r, None, Access::Read),
            (Some("repositories"), _) => auth::allows(&token.scopes, "*", None, Access::Read),
            _ => false,
        };
        if ok {
            Ok(Reply::empty(StatusCode::NO_CONTENT))
        } else {
            Err(Reply::error(
                StatusCode::FORBIDDEN,
                format!("API key {} does not grant that", token.name),
            ))
        }
    })
    .await
}

pub(in crate::api) async fn me(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &BTreeMap::new()).await?;
        let token = req.token()?;
        let user = token.username.clone();
        let (owned, memberships) = req
            .db(move |c| {
                Ok((
                    hdb::owned_packages(c, &user)?,
                    crate::accounts::db::memberships(c, &user)?,
                ))
            })
            .await?;
        let orgs: Vec<Value> = memberships
            .iter()
            .map(|m| json!({"name": m.org, "role": m.role.as_str()}))
            .collect();
        let packages: Vec<Value> = owned
            .iter()
            .map(|(repo, name)| {
                let url = format!("{}/api/repos/{repo}/packages/{name}", req.base);
                json!({"name": name, "repository": repo, "url": url, "html_url": url})
            })
            .collect();
        Ok(Reply::ok(json!({
            "username": token.username,
            "email": null,
            "full_name": null,
            // Hex crashes on a 200 without these two lists
            // (`hex.publish`, `hex.owner packages`).
            "organizations": orgs,
            "packages": packages,
            "url": format!("{}/api/users/{}", req.base, token.username),
            "inserted_at": iso(token.created_at),
            "updated_at": iso(token.created_at),
        })))
    })
    .await
}

/// `GET /users/NAME`: a user as hex.pm shows one (no email is kept); any
/// key may ask.
pub(in crate::api) async fn get_user(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        req.token()?;
        let name = param(&p, "user").to_owned();
        let n = name.clone();
        let found = req.db(move |c| crate::accounts::db::user(c, &n)).await?;
        let user = found
            .ok_or_else(|| Reply::error(StatusCode::NOT_FOUND, format!("no user {name:?}")))?;
        Ok(Reply::ok(json!({
            "username": user.name,
            "inserted_at": iso(user.created_at),
            "updated_at": iso(user.created_at),
            "url": format!("{}/api/users/{}", req.base, user.name),
        })))
    })
    .await
}

/// A key as hex.pm shows one. `authing_key` says whether `t` is the key
/// this request authenticated with: Hex clients forget their stored key when
/// a revocation answers `true`.
pub(super) fn key_json(req: &Request, t: &TokenRow, secret: Option<&str>) -> Value {
    let (base, authing) = (&req.base, req.token.as_ref().is_some_and(|a| a.id == t.id));
    json!({
        "name": t.name,
        "username": t.username,
        "permissions": auth::permissions_from_scopes(&t.scopes),
        "secret": secret,
        "authing_key": authing,
        "expires_at": t.expires_at.map(iso),
        "revoked_at": t.revoked_at.map(iso),
        "inserted_at": iso(t.created_at),
        "updated_at": iso(t.created_at),
        "url": format!("{base}/api/keys/{}", t.name),
    })
}

/// Whether `token` may see or revoke `other`: itself, a key it created, or
/// any key for a full admin.
fn manages(token: &TokenRow, other: &TokenRow) -> bool {
    other.id == token.id
        || other.parent.as_deref() == Some(token.id.as_str())
        || auth::allows(&token.scopes, "*", None, Access::Admin)
}

pub(in crate::api) async fn list_keys(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &BTreeMap::new()).await?;
        let token = req.token()?.clone();
        let all = req.db(|c| hdb::live_tokens(c)).await?;
        Ok(Reply::ok(Value::Array(
            all.iter()
                .filter(|t| manages(&token, t))
                .map(|t| key_json(&req, t, None))
                .collect(),
        )))
    })
    .await
}

async fn find_key(req: &Request, name: &str) -> Result<TokenRow, Reply> {
    let token = req.token()?.clone();
    let all = req.db(|c| hdb::live_tokens(c)).await?;
    all.into_iter()
        .find(|t| t.name == name && manages(&token, t))
        .ok_or_else(|| {
            Reply::error(
                StatusCode::NOT_FOUND,
                format!("no key named {name:?} that this key manages"),
            )
        })
}

pub(in crate::api) async fn get_key(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let key = find_key(&req, param(&p, "key")).await?;
        Ok(Reply::ok(key_json(&req, &key, None)))
    })
    .await
}

pub(in crate::api) async fn delete_key(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let key = find_key(&req, param(&p, "key")).await?;
        let id = key.id.clone();
        let revoked = req
            .db(move |c| hdb::revoke_token(c, &id, unix_now() as i64))
            .await?;
        req.audit(
            "key.revoke",
            key.name.clone(),
            json!({"id": key.id, "revoked": revoked}),
        )
        .await?;
        Ok(Reply::ok(key_json(&req, &key, None)))
    })
    .await
}

/// `DELETE /keys`: hex_core's `r3_hex_api_key:delete_all` (Hex 1.x's
/// `mix hex.user key --revoke-all`). Revokes the calling key and every key
/// made from it, in one transaction; the answer is the calling key, now
/// revoked, with `authing_key` true so that a client forgets it. For an admin
/// too it is this one tree of keys, never every key on the server.
pub(in crate::api) async fn delete_keys(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &BTreeMap::new()).await?;
        let mut key = req.token()?.clone();
        let entry = req.audit_entry("key.revoke_all", key.name.clone(), json!({"id": key.id}));
        let (id, at) = (key.id.clone(), entry.at);
        req.db(move |c| {
            let tx = c.transaction()?;
            hdb::revoke_token(&tx, &id, at)?;
            hdb::audit(&tx, &entry)?;
            tx.commit()
        })
        .await?;
        key.revoked_at = Some(at);
        Ok(Reply::ok(key_json(&req, &key, None)))
    })
    .await
}

pub(in crate::api) async fn create_key(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &BTreeMap::new()).await?;
        let parent = req.stored_token().await?;
        let body = wire::decode_body(&headers, &body)?;
        let name = text_field(&body, "name");
        let default = HexPermission {
            domain: "api".into(),
            resource: None,
            access: None,
            versions: None,
        };
        let (perms, mut scopes) = body_permissions(&body, default)?;
        let on_behalf =
            Some(text_field(&body, "username")).filter(|u| !u.is_empty() && *u != parent.username);
        // `api` (full access on hex.pm) means "everything I have" here; for
        // another user's key, everything that user has (their memberships),
        // never the admin's rights.
        if perms
            .iter()
            .any(|p| p.domain == "api" && p.resource.is_none())
        {
            scopes = match on_behalf {
                None => parent.scopes.clone(),
                Some(_) => vec![Scope {
                    repository: auth::scope::MEMBER.to_owned(),
                    package: "*".to_owned(),
                    access: Access::Admin,
                    versions: None,
                }],
            };
        }
        let expires_at = match body.get("expires_at") {
            None | Some(Value::Null) => parent.expires_at,
            Some(v) => Some(v.as_i64().ok_or_else(|| {
                Reply::error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "expires_at is Unix seconds",
                )
            })?),
        };
        // A server admin registers keys for other users (seed 002's
        // `register`, seed 003's consumers): the key is theirs, not a
        // child of the admin's, so it outlives the admin's key.
        if on_behalf.is_some() && !auth::allows(&parent.scopes, "*", None, Access::Admin) {
            return Err(Reply::error(
                StatusCode::FORBIDDEN,
                format!(
                    "only a server admin makes keys for other users; API key {} is not one",
                    parent.name
                ),
            ));
        }
        let user = on_behalf.clone().unwrap_or_else(|| parent.username.clone());
        let p2 = parent.clone();
        let created = req
            .db(move |c| {
                if on_behalf.is_some() && crate::accounts::db::user(c, &user)?.is_none() {
                    return Ok(Err(TokenError::NoUser(user.clone())));
                }
                let parent = on_behalf.is_none().then_some(&p2);
                if parent.is_none() && !auth::within(&scopes, &p2.scopes) {
                    return Ok(Err(TokenError::BeyondCreator));
                }
                Ok(create_token(c, &name, &user, scopes, expires_at, parent))
            })
            .await?;
        let (secret, row) = created.map_err(token_error)?;
        req.audit(
            "key.generate",
            row.name.clone(),
            json!({"id": row.id, "scopes": row.scopes, "expires_at": row.expires_at}),
        )
        .await?;
        Ok(Reply::new(
            StatusCode::CREATED,
            key_json(&req, &row, Some(&secret)),
        ))
    })
    .await
}

pub(in crate::api) async fn audit_logs(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Query(q): QueryMap,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &BTreeMap::new()).await?;
        req.need("*", None, Access::Admin)?;
        audit_page(&req, &q, AuditOf::All).await
    })
    .await
}

/// `GET /users/me/audit-logs`: what the caller's user did.
pub(in crate::api) async fn my_audit_logs(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Query(q): QueryMap,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &BTreeMap::new()).await?;
        let user = req.token()?.username.clone();
        audit_page(&req, &q, AuditOf::Actor(user)).await
    })
    .await
}

/// Whose audit entries a page shows.
pub(super) enum AuditOf {
    /// Everything.
    All,
    /// One user's actions.
    Actor(String),
    /// One repository's (an organization's) changes.
    Repository(String),
}

/// Page `?page=` (100 entries each, newest first) of the audit log.
pub(super) async fn audit_page(req: &Request, q: &BTreeMap<String, String>, of: AuditOf) -> Answer {
    let page: u32 = q
        .get("page")
        .and_then(|p| p.parse().ok())
        .filter(|p| *p >= 1)
        .unwrap_or(1);
    let offset = (page - 1).saturating_mul(100);
    let entries = req
        .db(move |c| {
            let scope = match &of {
                AuditOf::All => hdb::AuditScope::All,
                AuditOf::Actor(u) => hdb::AuditScope::Actor(u),
                AuditOf::Repository(r) => hdb::AuditScope::Repository(r),
            };
            hdb::audit_log(c, scope, 100, offset)
        })
        .await?;
    Ok(Reply::ok(Value::Array(
        entries
            .iter()
            .map(|e| {
                json!({"action": e.action, "target": e.target, "actor": e.actor,
                "token": e.token, "client": e.client, "inserted_at": iso(e.at),
                "params": serde_json::from_str::<Value>(&e.detail).unwrap_or(Value::Null)})
            })
            .collect(),
    )))
}

/// How long a key made by signing in with a password lives.
const SESSION_SECS: i64 = 12 * 3600;

/// `POST /sessions` `{username, password}`: signing in with a password
/// makes a key for 12 hours with the user's own rights (its memberships,
/// and every right for a server administrator). A wrong name or password
/// counts as a failed sign-in, and both take the same time.
pub(in crate::api) async fn create_session(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Rendered {
    answer(&headers, async {
        let req = request_as(state, &headers, client, &p, None);
        req.publisher()?;
        if req.state.is_blocked(client) {
            return Err(Reply::error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed sign-ins from this address; try again later",
            ));
        }
        let form = wire::decode_body(&headers, &body)?;
        let (name, password) = (text_field(&form, "username"), text_field(&form, "password"));
        let n = name.clone();
        let stored = req
            .db(move |c| {
                Ok(crate::accounts::db::password_hash(c, &n)?
                    .zip(crate::accounts::db::user(c, &n)?))
            })
            .await?;
        let (phc, user) = match stored {
            Some((phc, user)) => (phc, Some(user)),
            None => (crate::accounts::password::decoy().to_owned(), None),
        };
        let ok =
            tokio::task::spawn_blocking(move || crate::accounts::password::verify(&password, &phc))
                .await
                .unwrap_or(false);
        let Some(user) = user.filter(|_| ok) else {
            req.state.note_failure(client);
            tracing::info!(client = ?client, "refused sign-in for {name:?}");
            return Err(Reply::error(
                StatusCode::UNAUTHORIZED,
                "wrong user name or password",
            ));
        };
        let mut scopes = vec![Scope {
            repository: auth::scope::MEMBER.to_owned(),
            package: "*".to_owned(),
            access: Access::Admin,
            versions: None,
        }];
        if user.admin {
            scopes.extend(auth::admin_scopes());
        }
        let now = unix_now() as i64;
        let key_name = format!("session.{}", hex::encode(rand::random::<[u8; 6]>()));
        let entry = AuditEntry {
            actor: user.name.clone(),
            ..req.audit_entry("user.sign_in", user.name.clone(), json!({"key": key_name}))
        };
        let created = req
            .db(move |c| {
                let made = create_token(
                    c,
                    &key_name,
                    &user.name,
                    scopes,
                    Some(now + SESSION_SECS),
                    None,
                );
                if made.is_ok() {
                    hdb::audit(c, &entry)?;
                }
                Ok(made)
            })
            .await?;
        let (secret, row) = created.map_err(token_error)?;
        Ok(Reply::new(
            StatusCode::CREATED,
            key_json(&req, &row, Some(&secret)),
        ))
    })
    .await
}

/// `DELETE /sessions`: signs out a key made by [`create_session`] (it is
/// revoked); any other key is left alone (204 either way).
pub(in crate::api) async fn delete_session(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let key = req.token()?.clone();
        if key.name.starts_with("session.") {
            let entry = req.audit_entry(
                "user.sign_out",
                key.username.clone(),
                json!({"key": key.name}),
            );
            req.db(move |c| {
                hdb::revoke_token(c, &key.id, entry.at)?;
                hdb::audit(c, &entry)
            })
            .await?;
        }
        Ok(Reply::empty(StatusCode::NO_CONTENT))
    })
    .await
}
