//! Organizations (seed 000's `/orgs`): the organization, its members with
//! their roles, and its keys. A caller who may not read an organization
//! gets the same 404 as for one that does not exist.

use super::*;
use crate::accounts::{self, AccountError, db as adb};

/// The answer to an account change the database refused.
fn account_error(e: AccountError) -> Reply {
    let status = match &e {
        AccountError::NoOrg(_) | AccountError::NoUser(_) => StatusCode::NOT_FOUND,
        AccountError::Db(_) | AccountError::Sql(_) => return internal_error(&e),
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    Reply::error(status, e.to_string())
}

impl Request {
    /// Organization `org`, if the caller may `access` it: 404 when it does
    /// not exist or the caller may not read it, 403 when it may read but
    /// not `access`.
    fn org(&self, org: &str, access: Access) -> Result<(), Reply> {
        let token = self.token()?;
        let exists = self
            .config
            .repositories
            .iter()
            .any(|r| r.org && r.name == org);
        if !exists || !auth::allows(&token.scopes, org, None, Access::Read) {
            return Err(Reply::error(
                StatusCode::NOT_FOUND,
                format!("no organization {org:?} that this key may read"),
            ));
        }
        if !auth::allows(&token.scopes, org, None, access) {
            return Err(Reply::error(
                StatusCode::FORBIDDEN,
                format!(
                    "this needs the {access} role in organization {org}; API key {} has less",
                    token.name
                ),
            ));
        }
        Ok(())
    }

    /// A server administrator: every right on every repository.
    fn server_admin(&self) -> Result<(), Reply> {
        let token = self.token()?;
        if auth::allows(&token.scopes, "*", None, Access::Admin) {
            Ok(())
        } else {
            Err(Reply::error(
                StatusCode::FORBIDDEN,
                format!(
                    "only a server administrator may do this; API key {} is not one",
                    token.name
                ),
            ))
        }
    }

    fn org_json(&self, o: &adb::Org) -> Value {
        json!({
            "name": o.name,
            "billing_email": o.billing_email,
            "inserted_at": iso(o.created_at),
            "updated_at": iso(o.updated_at),
            "url": format!("{}/api/orgs/{}", self.base, o.name),
        })
    }

    fn member_json(&self, m: &adb::Member) -> Value {
        json!({
            "username": m.username,
            "role": m.role.as_str(),
            "url": format!("{}/api/users/{}", self.base, m.username),
            "inserted_at": iso(m.created_at),
            "updated_at": iso(m.updated_at),
        })
    }
}

pub(in crate::api) async fn list_orgs(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let scopes = req.token()?.scopes.clone();
        let orgs = req.db(|c| adb::orgs(c)).await?;
        Ok(Reply::ok(Value::Array(
            orgs.iter()
                .filter(|o| auth::allows(&scopes, &o.name, None, Access::Read))
                .map(|o| req.org_json(o))
                .collect(),
        )))
    })
    .await
}

pub(in crate::api) async fn create_org(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Rendered {
    answer(&headers, async {
        let req = request(Arc::clone(&state), &headers, client, &p).await?;
        req.server_admin()?;
        if req.config.signing.key.is_none() {
            return Err(Reply::error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "an organization is a repository of ours, signed with our key: set [signing] key",
            ));
        }
        let body = wire::decode_body(&headers, &body)?;
        let name = text_field(&body, "name");
        let admin = body.get("admin").and_then(Value::as_str).map(str::to_owned);
        let taken = accounts::taken_names(&req.config);
        let entry = req.audit_entry("org.create", name.clone(), json!({"admin": admin}));
        let made = req
            .db(move |c| {
                audit_if(
                    adb::create_org(c, &name, admin.as_deref(), &taken, entry.at),
                    c,
                    &entry,
                    |_| true,
                )
            })
            .await?
            .map_err(account_error)?;
        state.update_config(|config| accounts::add_org(config, &made.name));
        Ok(Reply::new(StatusCode::CREATED, req.org_json(&made)))
    })
    .await
}

pub(in crate::api) async fn get_org(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let org = param(&p, "org").to_owned();
        req.org(&org, Access::Read)?;
        let found = req.db(move |c| adb::org(c, &org)).await?;
        let found =
            found.ok_or_else(|| account_error(AccountError::NoOrg(param(&p, "org").into())))?;
        Ok(Reply::ok(req.org_json(&found)))
    })
    .await
}

/// `POST /orgs/ORG`: seed 000's update of `billing_email`, for the
/// organization's admins, and our rename with `name`, for server admins
/// (it re-signs the organization's files under the new name).
pub(in crate::api) async fn update_org(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Rendered {
    answer(&headers, async {
        let req = request(Arc::clone(&state), &headers, client, &p).await?;
        let org = param(&p, "org").to_owned();
        let body = wire::decode_body(&headers, &body)?;
        let rename = match body.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(n)) if *n == org => None,
            Some(Value::String(n)) => Some(n.clone()),
            Some(_) => {
                return Err(Reply::error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "name is the organization's new name, as text",
                ));
            }
        };
        let email = match body.get("billing_email") {
            None => None,
            Some(Value::Null) => Some(None),
            Some(Value::String(e)) => Some(Some(e.clone())),
            Some(_) => {
                return Err(Reply::error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "billing_email is an email address as text, or null to clear it",
                ));
            }
        };
        req.org(&org, Access::Admin)?;
        let mut name = org.clone();
        if let Some(new) = rename {
            req.server_admin()?;
            let entry = req.audit_entry("org.rename", new.clone(), json!({"from": org}));
            req.publisher()?
                .rename_repository(Arc::clone(&req.config), &org, &new, entry)
                .await
                .map_err(hosted_error)?;
            state.update_config(|config| {
                accounts::drop_org(config, &org);
                accounts::add_org(config, &new);
            });
            name = new;
        }
        if let Some(email) = email {
            let entry =
                req.audit_entry("org.update", name.clone(), json!({"billing_email": email}));
            let n = name.clone();
            req.db(move |c| {
                audit_if(
                    adb::update_org(c, &n, email.as_deref(), entry.at),
                    c,
                    &entry,
                    |_| true,
                )
            })
            .await?
            .map_err(account_error)?;
        }
        let n = name.clone();
        let found = req.db(move |c| adb::org(c, &n)).await?;
        let found = found.ok_or_else(|| account_error(AccountError::NoOrg(name)))?;
        Ok(Reply::ok(req.org_json(&found)))
    })
    .await
}

pub(in crate::api) async fn delete_org(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(Arc::clone(&state), &headers, client, &p).await?;
        req.server_admin()?;
        let org = param(&p, "org").to_owned();
        let entry = req.audit_entry("org.delete", org.clone(), json!({}));
        let name = org.clone();
        req.db(move |c| audit_if(adb::delete_org(c, &name), c, &entry, |_| true))
            .await?
            .map_err(account_error)?;
        state.update_config(|config| accounts::drop_org(config, &org));
        Ok(Reply::empty(StatusCode::NO_CONTENT))
    })
    .await
}

pub(in crate::api) async fn list_members(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let org = param(&p, "org").to_owned();
        req.org(&org, Access::Read)?;
        let members = req.db(move |c| adb::members(c, &org)).await?;
        Ok(Reply::ok(Value::Array(
            members.iter().map(|m| req.member_json(m)).collect(),
        )))
    })
    .await
}

pub(in crate::api) async fn get_member(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let (org, user) = (param(&p, "org").to_owned(), param(&p, "user").to_owned());
        req.org(&org, Access::Read)?;
        let (o, u) = (org.clone(), user.clone());
        let found = req.db(move |c| adb::member(c, &o, &u)).await?;
        let m = found.ok_or_else(|| {
            Reply::error(
                StatusCode::NOT_FOUND,
                format!("{user:?} is no member of {org}"),
            )
        })?;
        Ok(Reply::ok(req.member_json(&m)))
    })
    .await
}

/// `POST /orgs/ORG/members` with `{name, role}`, and `POST
/// /orgs/ORG/members/NAME` with `{role}`: adds a member or changes a role.
pub(in crate::api) async fn put_member(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let org = param(&p, "org").to_owned();
        req.org(&org, Access::Admin)?;
        let body = wire::decode_body(&headers, &body)?;
        let user = match p.get("user") {
            Some(u) => u.clone(),
            None => text_field(&body, "name"),
        };
        let role_text = body.get("role").and_then(Value::as_str).unwrap_or("read");
        let role = Access::parse(role_text)
            .ok_or_else(|| account_error(AccountError::BadRole(role_text.to_owned())))?;
        let entry = req.audit_entry(
            "org.member.set",
            format!("{org}/{user}"),
            json!({"role": role.as_str()}),
        );
        let m = req
            .db(move |c| {
                audit_if(
                    adb::set_member(c, &org, &user, role, entry.at),
                    c,
                    &entry,
                    |_| true,
                )
            })
            .await?
            .map_err(account_error)?;
        Ok(Reply::ok(req.member_json(&m)))
    })
    .await
}

pub(in crate::api) async fn remove_member(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let (org, user) = (param(&p, "org").to_owned(), param(&p, "user").to_owned());
        req.org(&org, Access::Admin)?;
        let entry = req.audit_entry("org.member.remove", format!("{org}/{user}"), json!({}));
        let (o, u) = (org.clone(), user.clone());
        let removed = req
            .db(move |c| audit_if(adb::remove_member(c, &o, &u), c, &entry, |d| *d))
            .await?
            .map_err(account_error)?;
        if !removed {
            return Err(Reply::error(
                StatusCode::NOT_FOUND,
                format!("{user:?} is no member of {org}"),
            ));
        }
        Ok(Reply::empty(StatusCode::NO_CONTENT))
    })
    .await
}

/// `GET /orgs/ORG/audit-logs`: every change made to or in the
/// organization (members, keys, packages), for its admins.
pub(in crate::api) async fn org_audit_logs(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    Query(q): QueryMap,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let org = param(&p, "org").to_owned();
        req.org(&org, Access::Admin)?;
        super::account::audit_page(&req, &q, super::account::AuditOf::Repository(org)).await
    })
    .await
}

/// The organization's keys: tokens whose user is the organization.
async fn org_keys(req: &Request, org: &str) -> Result<Vec<TokenRow>, Reply> {
    let org = org.to_owned();
    let all = req.db(|c| hdb::live_tokens(c)).await?;
    Ok(all.into_iter().filter(|t| t.username == org).collect())
}

pub(in crate::api) async fn list_org_keys(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let org = param(&p, "org");
        req.org(org, Access::Write)?;
        let keys = org_keys(&req, org).await?;
        Ok(Reply::ok(Value::Array(
            keys.iter()
                .map(|t| super::account::key_json(&req, t, None))
                .collect(),
        )))
    })
    .await
}

/// `POST /orgs/ORG/keys`: a key of the organization (it outlives the member
/// who made it), granting only within the organization: `*` repositories
/// in its permissions mean this one.
pub(in crate::api) async fn create_org_key(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let org = param(&p, "org").to_owned();
        req.org(&org, Access::Write)?;
        let caller = req.token()?.clone();
        let body = wire::decode_body(&headers, &body)?;
        let name = text_field(&body, "name");
        let default = HexPermission {
            domain: "repository".into(),
            resource: Some(org.clone()),
            access: None,
            versions: None,
        };
        let (_, mut scopes) = body_permissions(&body, default)?;
        for s in &mut scopes {
            if s.repository == "*" {
                s.repository = org.clone();
            }
            if s.repository != org {
                return Err(Reply::error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "a key of organization {org} grants only within it, not in {}",
                        s.repository
                    ),
                ));
            }
        }
        if !auth::within(&scopes, &caller.scopes) {
            return Err(Reply::error(
                StatusCode::FORBIDDEN,
                format!("API key {} cannot grant more than it has", caller.name),
            ));
        }
        let entry = req.audit_entry(
            "org.key.generate",
            format!("{org}/{name}"),
            json!({"scopes": scopes}),
        );
        let created = req
            .db(move |c| {
                audit_if(
                    create_token(c, &name, &org, scopes, None, None),
                    c,
                    &entry,
                    |_| true,
                )
            })
            .await?;
        let (secret, row) = created.map_err(token_error)?;
        Ok(Reply::new(
            StatusCode::CREATED,
            super::account::key_json(&req, &row, Some(&secret)),
        ))
    })
    .await
}

/// Organization `org`'s live key `name`.
async fn org_key(req: &Request, org: &str, name: &str) -> Result<TokenRow, Reply> {
    org_keys(req, org)
        .await?
        .into_iter()
        .find(|t| t.name == name)
        .ok_or_else(|| {
            Reply::error(
                StatusCode::NOT_FOUND,
                format!("organization {org} has no key {name:?}"),
            )
        })
}

pub(in crate::api) async fn get_org_key(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let (org, name) = (param(&p, "org"), param(&p, "key"));
        req.org(org, Access::Write)?;
        let key = org_key(&req, org, name).await?;
        Ok(Reply::ok(super::account::key_json(&req, &key, None)))
    })
    .await
}

/// `DELETE /orgs/ORG/keys`: revokes every key of the organization at once
/// (hex_core's `delete_all` with `api_organization`), in one transaction;
/// the answer lists the keys revoked.
pub(in crate::api) async fn delete_org_keys(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let org = param(&p, "org").to_owned();
        req.org(&org, Access::Write)?;
        let keys = org_keys(&req, &org).await?;
        let names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
        let entry = req.audit_entry("org.key.revoke_all", org.clone(), json!({"keys": names}));
        let ids: Vec<String> = keys.iter().map(|k| k.id.clone()).collect();
        req.db(move |c| {
            let tx = c.transaction()?;
            for id in &ids {
                hdb::revoke_token(&tx, id, entry.at)?;
            }
            hdb::audit(&tx, &entry)?;
            tx.commit()
        })
        .await?;
        Ok(Reply::ok(Value::Array(
            keys.iter()
                .map(|t| super::account::key_json(&req, t, None))
                .collect(),
        )))
    })
    .await
}

pub(in crate::api) async fn delete_org_key(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let (org, name) = (param(&p, "org").to_owned(), param(&p, "key").to_owned());
        req.org(&org, Access::Write)?;
        let key = org_key(&req, &org, &name).await?;
        let entry = req.audit_entry(
            "org.key.revoke",
            format!("{org}/{name}"),
            json!({"id": key.id}),
        );
        let id = key.id.clone();
        req.db(move |c| {
            hdb::revoke_token(c, &id, entry.at)?;
            hdb::audit(c, &entry)
        })
        .await?;
        Ok(Reply::ok(super::account::key_json(&req, &key, None)))
    })
    .await
}

fn invite_json(i: &adb::Invite) -> Value {
    json!({
        "organization": i.org,
        "username": i.username,
        "role": i.role.as_str(),
        "invited_by": i.invited_by,
        "inserted_at": iso(i.created_at),
        "expires_at": iso(i.expires_at),
    })
}

/// `GET /orgs/ORG/invites`: the invitations waiting, for its admins.
pub(in crate::api) async fn list_invites(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let org = param(&p, "org").to_owned();
        req.org(&org, Access::Admin)?;
        let now = unix_now() as i64;
        let list = req
            .db(move |c| adb::invites(c, Some(&org), None, now))
            .await?;
        Ok(Reply::ok(Value::Array(
            list.iter().map(invite_json).collect(),
        )))
    })
    .await
}

/// `POST /orgs/ORG/invites` `{name, role}`: an admin invites a user, who
/// becomes a member only on accepting.
pub(in crate::api) async fn create_invite(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let org = param(&p, "org").to_owned();
        req.org(&org, Access::Admin)?;
        let body = wire::decode_body(&headers, &body)?;
        let user = text_field(&body, "name");
        let role_text = body.get("role").and_then(Value::as_str).unwrap_or("read");
        let role = Access::parse(role_text)
            .ok_or_else(|| account_error(AccountError::BadRole(role_text.to_owned())))?;
        let by = req.token()?.username.clone();
        let entry = req.audit_entry(
            "org.invite",
            format!("{org}/{user}"),
            json!({"role": role.as_str()}),
        );
        let made = req
            .db(move |c| {
                audit_if(
                    adb::invite(c, &org, &user, role, &by, entry.at),
                    c,
                    &entry,
                    |_| true,
                )
            })
            .await?
            .map_err(account_error)?;
        Ok(Reply::new(StatusCode::CREATED, invite_json(&made)))
    })
    .await
}

/// `DELETE /orgs/ORG/invites/NAME`: an admin withdraws an invitation.
pub(in crate::api) async fn cancel_invite(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let (org, user) = (param(&p, "org").to_owned(), param(&p, "user").to_owned());
        req.org(&org, Access::Admin)?;
        let entry = req.audit_entry("org.invite.cancel", format!("{org}/{user}"), json!({}));
        drop_invite(&req, org, user, entry).await
    })
    .await
}

/// Removes an invitation and records why; 404 when there was none.
async fn drop_invite(req: &Request, org: String, user: String, entry: AuditEntry) -> Answer {
    let (o, u) = (org.clone(), user.clone());
    let dropped = req
        .db(move |c| {
            let done = adb::drop_invite(c, &o, &u)?;
            if done {
                hdb::audit(c, &entry)?;
            }
            Ok(done)
        })
        .await?;
    if dropped {
        Ok(Reply::empty(StatusCode::NO_CONTENT))
    } else {
        Err(Reply::error(
            StatusCode::NOT_FOUND,
            format!("no invitation of {user:?} to {org}"),
        ))
    }
}

impl Request {
    /// The caller's user, if its key acts as that user in organizations
    /// (an `@member` scope): only such a key answers invitations.
    async fn acting_user(&self) -> Result<String, Reply> {
        let key = self.stored_token().await?;
        if key
            .scopes
            .iter()
            .any(|s| s.repository == auth::scope::MEMBER)
        {
            Ok(key.username)
        } else {
            Err(Reply::error(
                StatusCode::FORBIDDEN,
                format!(
                    "API key {} does not act for user {} in organizations (it has no @member scope)",
                    key.name, key.username
                ),
            ))
        }
    }
}

/// `GET /users/me/invites`: the caller's user's invitations.
pub(in crate::api) async fn my_invites(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let user = req.token()?.username.clone();
        let now = unix_now() as i64;
        let list = req
            .db(move |c| adb::invites(c, None, Some(&user), now))
            .await?;
        Ok(Reply::ok(Value::Array(
            list.iter().map(invite_json).collect(),
        )))
    })
    .await
}

/// `POST /users/me/invites/ORG`: accept (a member with the invited role).
pub(in crate::api) async fn accept_invite(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let user = req.acting_user().await?;
        let org = param(&p, "org").to_owned();
        let entry = req.audit_entry("org.invite.accept", format!("{org}/{user}"), json!({}));
        let (o, u) = (org.clone(), user.clone());
        let accepted = req
            .db(move |c| audit_if(adb::accept(c, &o, &u, entry.at), c, &entry, Option::is_some))
            .await?
            .map_err(account_error)?;
        let m = accepted.ok_or_else(|| {
            Reply::error(
                StatusCode::NOT_FOUND,
                format!("no invitation of {user:?} to {org} (it may have expired)"),
            )
        })?;
        Ok(Reply::ok(req.member_json(&m)))
    })
    .await
}

/// `DELETE /users/me/invites/ORG`: decline.
pub(in crate::api) async fn decline_invite(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let user = req.acting_user().await?;
        let org = param(&p, "org").to_owned();
        let entry = req.audit_entry("org.invite.decline", format!("{org}/{user}"), json!({}));
        drop_invite(&req, org, user, entry).await
    })
    .await
}
