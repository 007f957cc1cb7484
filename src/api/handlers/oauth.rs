//! OAuth, as stock Hex speaks it (RFC 6749, 7009, 8628):
//! - `POST /oauth/token` with `client_credentials` (an organization key
//!   exchanged before fetching), `urn:ietf:params:oauth:grant-type:device_code`
//!   (`mix hex.user auth`) and `refresh_token`;
//! - `POST /oauth/device_authorization`, and `GET`/`POST /oauth/device` for
//!   the signed-in user who approves a user code (the web UI's device page
//!   calls these);
//! - `POST /oauth/revoke`.
//!
//! Every access token is a short-lived child of a key (the exchanged key,
//! or the key that approved the device), holding that key's stored scopes:
//! revoking the key revokes it, and membership scopes stay unexpanded.

use super::*;
use crate::accounts::oauth::{self as dev, Poll};

/// How long an access token lives (hex.pm's is an hour too).
const ACCESS_TOKEN_SECS: i64 = 3600;

/// The answer to a user code that matches no waiting device.
const NO_DEVICE: &str = "no device waits with that code (it may have expired)";

/// The device-code grant's type.
const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// An OAuth error body (RFC 6749 section 5.2).
fn oauth_error(status: StatusCode, error: &str, description: impl Into<String>) -> Reply {
    Reply::new(
        status,
        json!({"error": error, "error_description": description.into()}),
    )
}

/// `scopes` as a token asked for with OAuth scope text gets them: `api`
/// keeps them, anything else (`repositories`) reads only.
fn scopes_for(scopes: &[Scope], scope: &str) -> Vec<Scope> {
    let api = scope
        .split_whitespace()
        .any(|s| s == "api" || s.starts_with("api:"));
    scopes
        .iter()
        .map(|s| Scope {
            access: if api { s.access } else { Access::Read },
            ..s.clone()
        })
        .collect()
}

/// Makes an access token (and, for `refresh`, a refresh token) under key
/// `parent` with `scope`; the token endpoint's answer.
async fn issue(req: &Request, parent: TokenRow, scope: String, refresh: bool) -> Answer {
    let now = unix_now() as i64;
    let scopes = scopes_for(&parent.scopes, &scope);
    let expires_at = Some(
        parent
            .expires_at
            .map_or(now + ACCESS_TOKEN_SECS, |e| e.min(now + ACCESS_TOKEN_SECS)),
    );
    let name = format!("oauth.{}", hex::encode(rand::random::<[u8; 6]>()));
    let scope_text = scope.clone();
    let created = req
        .db(move |c| {
            // Access tokens a day past their expiry are of no use to anyone.
            c.execute(
                "DELETE FROM tokens WHERE name LIKE 'oauth.%' AND expires_at < ?1",
                [now - 86_400],
            )?;
            let access = create_token(
                c,
                &name,
                &parent.username,
                scopes,
                expires_at,
                Some(&parent),
            );
            let refresh = match (&access, refresh) {
                (Ok(_), true) => {
                    let (id, secret, hash) = auth::TokenSecret::generate(&mut rand::rngs::OsRng);
                    dev::create_refresh(c, &id, &hash, &parent.id, &scope_text, now)?;
                    Some(secret)
                }
                _ => None,
            };
            Ok(access.map(|a| (a, refresh)))
        })
        .await?;
    let ((secret, row), refresh) = created.map_err(|e| match e {
        e @ TokenError::Db(_) => internal_error(&e),
        e => oauth_error(StatusCode::BAD_REQUEST, "invalid_request", e.to_string()),
    })?;
    let mut body = json!({
        "access_token": secret,
        "token_type": "bearer",
        "expires_in": row.expires_at.map_or(ACCESS_TOKEN_SECS, |e| e - now),
        "scope": scope,
    });
    if let Some(r) = refresh {
        body["refresh_token"] = Value::String(r);
    }
    Ok(Reply::ok(body))
}

/// Key `id` as stored, if it is live.
async fn live_key(req: &Request, id: String) -> Result<Option<TokenRow>, Reply> {
    let now = unix_now() as i64;
    let row = req.db(move |c| hdb::token(c, &id)).await?;
    Ok(row.filter(|t| t.revoked_at.is_none() && t.expires_at.is_none_or(|e| e > now)))
}

pub(in crate::api) async fn oauth_token(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Rendered {
    answer(&headers, async {
        let form = wire::decode_body(&headers, &body)?;
        let field = |k: &str| text_field(&form, k);
        match field("grant_type").as_str() {
            "client_credentials" => {
                // The key is checked exactly as one sent in `authorization`
                // is: failures count towards the same per-client limit.
                let mut auth_headers = HeaderMap::new();
                let value = axum::http::HeaderValue::from_str(&field("client_secret")).map_err(|_| {
                    oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "client_secret is not an API key")
                })?;
                auth_headers.insert(header::AUTHORIZATION, value);
                let req = request(state, &auth_headers, client, &p).await?;
                let scope = match field("scope").as_str() {
                    "" | "repositories" => "repositories",
                    "api" => "api",
                    other => {
                        return Err(oauth_error(
                            StatusCode::BAD_REQUEST,
                            "invalid_scope",
                            format!("scope {other:?}: use repositories or api"),
                        ));
                    }
                };
                // A membership scope stays one in the access token, so
                // removing the member takes its access away at once.
                let key = req.stored_token().await?;
                issue(&req, key, scope.to_owned(), false).await
            }
            DEVICE_GRANT => {
                let req = request_as(state, &headers, client, &p, None);
                req.publisher()?;
                let code = field("device_code");
                let now = unix_now() as i64;
                let polled = req.db(move |c| dev::poll(c, &code, now)).await?;
                let pending = |error: &str, why: &str| Err(oauth_error(StatusCode::BAD_REQUEST, error, why));
                match polled {
                    Poll::Invalid => pending("invalid_grant", "no such device code, or it was used"),
                    Poll::Expired => pending("expired_token", "the device code expired; start again"),
                    Poll::Denied => pending("access_denied", "the user denied this device"),
                    Poll::Pending => pending("authorization_pending", "waiting for the user to approve"),
                    Poll::SlowDown => pending("slow_down", "poll less often"),
                    Poll::Approved { token_id, scope } => {
                        let Some(key) = live_key(&req, token_id).await? else {
                            return pending("invalid_grant", "the approving key was revoked or expired");
                        };
                        issue(&req, key, scope, true).await
                    }
                }
            }
            "refresh_token" => {
                let req = request_as(state, &headers, client, &p, None);
                req.publisher()?;
                let raw = field("refresh_token");
                let invalid = || oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "refresh token invalid, expired or revoked");
                let (id, secret) = auth::TokenSecret::parse(&raw)
                    .map(|(i, s)| (i.to_owned(), s.to_owned()))
                    .ok_or_else(invalid)?;
                let now = unix_now() as i64;
                let rid = id.clone();
                let found = req.db(move |c| dev::refresh(c, &rid, now)).await?;
                let stored = found.as_ref().map_or([0u8; 32], |f| f.0);
                let matches = auth::TokenSecret::verify(&secret, &stored);
                let Some((_, parent, scope)) = found.filter(|_| matches) else {
                    req.state.note_failure(client);
                    return Err(invalid());
                };
                let Some(key) = live_key(&req, parent).await? else {
                    return Err(invalid());
                };
                // Rotated: the one presented is spent.
                req.db(move |c| dev::revoke_refresh(c, &id, now)).await?;
                issue(&req, key, scope, true).await
            }
            other => Err(oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!("grant_type {other:?} is not supported here; use client_credentials, refresh_token or {DEVICE_GRANT}"),
            )),
        }
    })
    .await
}

/// `POST /oauth/device_authorization`: no key needed; at most
/// [`dev::MAX_PENDING`] codes wait at once.
pub(in crate::api) async fn device_authorization(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Rendered {
    answer(&headers, async {
        let req = request_as(state, &headers, client, &p, None);
        req.publisher()?;
        let form = wire::decode_body(&headers, &body)?;
        let scope = match text_field(&form, "scope") {
            s if s.is_empty() => "api repositories".to_owned(),
            s => s,
        };
        let name = Some(text_field(&form, "name")).filter(|n| !n.is_empty());
        let (device, user) = dev::new_codes(&mut rand::rngs::OsRng);
        let now = unix_now() as i64;
        let (d, u) = (device.clone(), user.clone());
        let stored = req
            .db(move |c| dev::create_device(c, &d, &u, name.as_deref(), &scope, now))
            .await?;
        if !stored {
            return Err(oauth_error(
                StatusCode::TOO_MANY_REQUESTS,
                "slow_down",
                "too many device codes wait; try again in a few minutes",
            ));
        }
        let page = format!(
            "{}{}/device",
            req.base,
            req.config.server.ui_prefix.as_deref().unwrap_or("/ui")
        );
        Ok(Reply::ok(json!({
            "device_code": device,
            "user_code": user,
            "verification_uri": page,
            "verification_uri_complete": format!("{page}?user_code={user}"),
            "expires_in": dev::DEVICE_SECS,
            "interval": dev::POLL_SECS,
        })))
    })
    .await
}

/// `GET /oauth/device?user_code=`: what a pending code asks for, to the
/// signed-in user about to decide. A wrong code counts as a failed guess.
pub(in crate::api) async fn device_show(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    Query(q): QueryMap,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        req.token()?;
        let code = dev::normalize_user_code(q.get("user_code").map_or("", String::as_str));
        let now = unix_now() as i64;
        let found = req.db(move |c| dev::pending(c, &code, now)).await?;
        let Some(found) = found else {
            req.state.note_failure(client);
            return Err(Reply::error(StatusCode::NOT_FOUND, NO_DEVICE));
        };
        Ok(Reply::ok(
            json!({"client_name": found.client_name, "scope": found.scope}),
        ))
    })
    .await
}

/// `POST /oauth/device` `{user_code, approve}`: the signed-in user's key
/// approves (its rights go to the device) or denies.
pub(in crate::api) async fn device_decide(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let key = req.stored_token().await?;
        let form = wire::decode_body(&headers, &body)?;
        let code = dev::normalize_user_code(&text_field(&form, "user_code"));
        let approve = form
            .get("approve")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let now = unix_now() as i64;
        let entry = req.audit_entry(
            if approve {
                "oauth.device.approve"
            } else {
                "oauth.device.deny"
            },
            key.name.clone(),
            json!({"key": key.id}),
        );
        let (c2, id) = (code.clone(), key.id.clone());
        let decided = req
            .db(move |c| {
                let done = dev::decide(c, &c2, &id, approve, now)?;
                if done {
                    hdb::audit(c, &entry)?;
                }
                Ok(done)
            })
            .await?;
        if !decided {
            req.state.note_failure(client);
            return Err(Reply::error(StatusCode::NOT_FOUND, NO_DEVICE));
        }
        Ok(Reply::empty(StatusCode::NO_CONTENT))
    })
    .await
}

/// `POST /oauth/revoke` `{token}`: whoever holds an access or refresh
/// token may revoke it; the answer is 200 either way (RFC 7009).
pub(in crate::api) async fn oauth_revoke(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Rendered {
    answer(&headers, async {
        let req = request_as(state, &headers, client, &p, None);
        req.publisher()?;
        let form = wire::decode_body(&headers, &body)?;
        let raw = text_field(&form, "token");
        if let Some((id, secret)) = auth::TokenSecret::parse(&raw) {
            let (id, secret) = (id.to_owned(), secret.to_owned());
            let now = unix_now() as i64;
            req.db(move |c| {
                if let Some((hash, _, _)) = dev::refresh(c, &id, now)?
                    && auth::TokenSecret::verify(&secret, &hash)
                {
                    dev::revoke_refresh(c, &id, now)?;
                } else if let Some(t) = hdb::token(c, &id)?
                    && t.name.starts_with("oauth.")
                    && auth::TokenSecret::verify(&secret, &t.hash)
                {
                    hdb::revoke_token(c, &id, now)?;
                }
                Ok(())
            })
            .await?;
        }
        Ok(Reply::ok(json!({})))
    })
    .await
}
