//! `POST /oauth/token`: the exchange Hex does before fetching from an
//! organization (`grant_type=client_credentials`, the key as
//! `client_secret`). The answer is a short-lived access token, a child of
//! the key: revoking the key revokes it, and it expires on its own.

use super::*;

/// How long an access token lives (hex.pm's is an hour too).
const ACCESS_TOKEN_SECS: i64 = 3600;

/// An OAuth error body (RFC 6749 section 5.2).
fn oauth_error(status: StatusCode, error: &str, description: impl Into<String>) -> Reply {
    Reply::new(
        status,
        json!({"error": error, "error_description": description.into()}),
    )
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
        if field("grant_type") != "client_credentials" {
            return Err(oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!(
                    "grant_type {:?} is not supported here; use client_credentials",
                    field("grant_type")
                ),
            ));
        }
        // The key is checked exactly as one sent in `authorization` is:
        // failures count towards the same per-client limit.
        let mut auth_headers = HeaderMap::new();
        let secret = field("client_secret");
        let value = axum::http::HeaderValue::from_str(&secret).map_err(|_| {
            oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client_secret is not an API key",
            )
        })?;
        auth_headers.insert(header::AUTHORIZATION, value);
        let req = request(state, &auth_headers, client, &p).await?;
        // A membership scope stays one in the access token, so removing
        // the member takes its access away at once.
        let key = req.stored_token().await?;
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
        // `repositories`: reading only, whatever the key may do.
        let scopes: Vec<Scope> = key
            .scopes
            .iter()
            .map(|s| Scope {
                access: if scope == "repositories" {
                    Access::Read
                } else {
                    s.access
                },
                ..s.clone()
            })
            .collect();
        let now = unix_now() as i64;
        let expires_at = Some(
            key.expires_at
                .map_or(now + ACCESS_TOKEN_SECS, |e| e.min(now + ACCESS_TOKEN_SECS)),
        );
        let name = format!("oauth.{}", hex::encode(rand::random::<[u8; 6]>()));
        let created = req
            .db(move |c| {
                // Access tokens a day past their expiry are of no use to anyone.
                c.execute(
                    "DELETE FROM tokens WHERE name LIKE 'oauth.%' AND expires_at < ?1",
                    [now - 86_400],
                )?;
                Ok(create_token(
                    c,
                    &name,
                    &key.username,
                    scopes,
                    expires_at,
                    Some(&key),
                ))
            })
            .await?;
        let (secret, row) = created.map_err(|e| match e {
            e @ TokenError::Db(_) => internal_error(&e),
            e => oauth_error(StatusCode::BAD_REQUEST, "invalid_request", e.to_string()),
        })?;
        Ok(Reply::ok(json!({
            "access_token": secret,
            "token_type": "bearer",
            "expires_in": row.expires_at.map_or(ACCESS_TOKEN_SECS, |e| e - now),
            "scope": scope,
        })))
    })
    .await
}
