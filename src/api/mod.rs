//! The Hex-compatible API (`/api/...`): package and release reads (hosted
//! packages from the state database, mirrored ones from the catalog);
//! for repositories of ours, publish, replace, revert, retire, docs,
//! owners, keys, the audit log; and the read gate of private repositories.
//!
//! Layout: [`etf`] (PURE: Erlang External Term Format) and [`wire`] (content
//! negotiation, error bodies) are the wire; `handlers` maps each endpoint to
//! a permission check and a call into [`crate::hosted`]; `gate` decides what
//! a token may read from a private repository's tree and re-signs filtered
//! index files for version-limited tokens.
//!
//! Every change goes through one async gate and then the blocking
//! [`Writer`](crate::hosted::writer::Writer), so changes never interleave.

pub mod etf;
mod gate;
mod gateway;
mod handlers;
mod log;
mod snippets;
pub mod wire;

#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts};
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap};
use axum::http::request::Parts;
use axum::routing::{MethodRouter, any, delete, get, post};
use rand::rngs::OsRng;

pub use gate::Gate;
pub use log::Detail;

use self::wire::Reply;
use crate::auth::{self, FailureLimiter, Scope, TokenSecret};
use crate::clock::unix_now;
use crate::config::Config;
use crate::hosted::db::{self as hdb, TokenRow};
use crate::hosted::service::Publisher;

/// Failed authentications allowed per client within [`FAILURE_WINDOW`].
const MAX_FAILURES: u32 = 10;
/// The window of [`MAX_FAILURES`], in seconds.
const FAILURE_WINDOW: u64 = 300;
/// Clients the failure limiter remembers at most.
const LIMITER_CLIENTS: usize = 100_000;

/// What every API request shares.
#[derive(Debug)]
pub struct ApiState {
    /// The writer's only door, shared with the import folder; `None` on a
    /// server with no repository of its own (the read API only).
    publisher: Option<Arc<Publisher>>,
    /// The catalog the read API answers mirrored packages from.
    catalog: Option<crate::catalog::Catalog>,
    config: std::sync::RwLock<Arc<Config>>,
    limiter: Mutex<FailureLimiter<IpAddr>>,
    gate: gate::FilterCache,
}

impl ApiState {
    /// The API in front of `publisher` (the write API and hosted packages)
    /// and `catalog` (mirrored packages), with `config` in force.
    pub fn new(
        config: Config,
        publisher: Option<Arc<Publisher>>,
        catalog: Option<crate::catalog::Catalog>,
    ) -> Arc<Self> {
        Arc::new(Self {
            publisher,
            catalog,
            config: std::sync::RwLock::new(Arc::new(config)),
            limiter: Mutex::new(FailureLimiter::new(
                MAX_FAILURES,
                FAILURE_WINDOW,
                LIMITER_CLIENTS,
            )),
            gate: gate::FilterCache::default(),
        })
    }

    /// The configuration now in force.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether `client` is blocked for too many failures now.
    pub fn is_blocked(&self, client: Option<IpAddr>) -> bool {
        client.is_some_and(|ip| {
            self.limiter
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .blocked(&ip, unix_now())
                .is_some()
        })
    }

    /// Counts a failed authentication-like guess (a wrong device user
    /// code) from `client` towards the same limit as a wrong key.
    pub fn note_failure(&self, client: Option<IpAddr>) {
        if let Some(ip) = client {
            self.limiter
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record_failure(&ip, unix_now());
        }
    }

    /// Changes the configuration in force (for the writer too), atomically
    /// with any other change: an organization created or deleted.
    pub fn update_config(&self, change: impl FnOnce(&mut Config)) {
        let mut guard = self.config.write().unwrap_or_else(|p| p.into_inner());
        let mut next = (**guard).clone();
        change(&mut next);
        if let Some(p) = &self.publisher {
            p.set_config(next.clone());
        }
        *guard = Arc::new(next);
    }

    /// Swaps in a reloaded configuration (for the writer too).
    pub fn set_config(&self, config: Config) {
        if let Some(p) = &self.publisher {
            p.set_config(config.clone());
        }
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
    }

    /// Whether a read under `/repos/NAME` goes through [`ApiState::gate`]:
    /// a private repository, or, while any is private, a name that is no
    /// repository at all, so that a refusal does not tell the two apart.
    pub fn is_gated(&self, name: &str) -> bool {
        let repos = &self.config().repositories;
        repos.iter().any(|r| r.name == name && r.private)
            || (repos.iter().any(|r| r.private) && !repos.iter().any(|r| r.name == name))
    }

    /// Checks the request's token, if it has one. `Ok(None)`: anonymous.
    async fn authenticate(
        &self,
        headers: &HeaderMap,
        client: Option<IpAddr>,
    ) -> Result<Option<TokenRow>, Reply> {
        let now = unix_now();
        if let Some(ip) = client {
            let blocked = self
                .limiter
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .blocked(&ip, now);
            if let Some(retry) = blocked {
                return Err(Reply::error(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("too many failed authentications from {ip}; retry in {retry} s"),
                )
                .with_header(header::RETRY_AFTER, retry.to_string()));
            }
        }
        let Some(raw) = headers.get(header::AUTHORIZATION) else {
            return Ok(None);
        };
        // No repository of ours: no private data, no accounts; reads are
        // public, so a key (mix sends HEX_API_KEY everywhere) changes nothing.
        let Some(publisher) = &self.publisher else {
            return Ok(None);
        };
        let raw = raw.to_str().unwrap_or("").trim();
        let raw = raw.strip_prefix("Bearer ").unwrap_or(raw).trim();
        let found = match TokenSecret::parse(raw) {
            None => None,
            Some((id, secret)) => {
                let (id, secret) = (id.to_owned(), secret.to_owned());
                let row = publisher
                    .db()
                    .call(move |c| hdb::token(c, &id))
                    .await
                    .map_err(|e| Reply::internal(format!("token lookup failed: {e}")))?;
                // Hash and compare even for an unknown id, so timing does not
                // tell which ids exist.
                let stored = row.as_ref().map_or([0u8; 32], |r| r.hash);
                let matches = TokenSecret::verify(&secret, &stored);
                row.filter(|_| matches)
            }
        };
        let refusal = match &found {
            None => Some("invalid API key".to_owned()),
            Some(t) if t.revoked_at.is_some() => Some(format!("API key {} was revoked", t.name)),
            Some(t) if t.expires_at.is_some_and(|e| e <= now as i64) => Some(format!(
                "API key {} expired at {}",
                t.name,
                wire::iso(t.expires_at.unwrap_or(0))
            )),
            Some(_) => None,
        };
        if let Some(message) = refusal {
            let expired = found
                .as_ref()
                .is_some_and(|t| t.revoked_at.is_none() && t.expires_at.is_some());
            if let Some(ip) = client
                && !expired
            {
                self.limiter
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .record_failure(&ip, now);
            }
            tracing::info!(client = ?client, "refused API key: {message}");
            let reply = Reply::error(StatusCode::UNAUTHORIZED, message);
            // Hex refreshes or exchanges its OAuth token again on this.
            return Err(if expired {
                reply.with_header(
                    header::WWW_AUTHENTICATE,
                    "Bearer realm=\"hex\", error=\"token_expired\"".to_owned(),
                )
            } else {
                reply
            });
        }
        let Some(mut t) = found else {
            return Ok(None);
        };
        log::note_token(&t.name);
        // Organizations through membership: the rows as they are now, so a
        // member removed loses access on the next request.
        if t.scopes.iter().any(|s| s.repository == auth::scope::MEMBER) {
            let user = t.username.clone();
            let memberships = publisher
                .db()
                .call(move |c| crate::accounts::db::memberships(c, &user))
                .await
                .map_err(|e| Reply::internal(format!("membership lookup failed: {e}")))?;
            let roles: Vec<(String, auth::Access)> =
                memberships.into_iter().map(|m| (m.org, m.role)).collect();
            t.scopes = auth::scope::expand_members(&t.scopes, &roles);
        }
        Ok(Some(t))
    }
}

/// Creates a token and returns the full secret (shown once) and its row.
/// Blocking; the CLI and `POST /api/keys` both use it.
pub fn create_token(
    conn: &rusqlite::Connection,
    name: &str,
    username: &str,
    scopes: Vec<Scope>,
    expires_at: Option<i64>,
    parent: Option<&TokenRow>,
) -> Result<(String, TokenRow), TokenError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(TokenError::BadName(name.to_owned()));
    }
    for s in &scopes {
        s.validate()?;
    }
    if let Some(p) = parent {
        if !auth::within(&scopes, &p.scopes) {
            return Err(TokenError::BeyondCreator);
        }
        if let Some(limit) = p.expires_at
            && expires_at.is_none_or(|e| e > limit)
        {
            return Err(TokenError::OutlivesCreator(limit));
        }
    }
    let live = hdb::live_tokens(conn)?;
    if live.iter().any(|t| t.name == name) {
        return Err(TokenError::Taken(name.to_owned()));
    }
    let (id, full, hash) = TokenSecret::generate(&mut OsRng);
    let row = TokenRow {
        id,
        name: name.to_owned(),
        username: username.to_owned(),
        hash,
        scopes,
        created_at: unix_now() as i64,
        expires_at,
        parent: parent.map(|p| p.id.clone()),
        revoked_at: None,
    };
    hdb::insert_token(conn, &row)?;
    Ok((full, row))
}

/// Why a token could not be created. Nothing was stored.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The name is not a key name.
    #[error("key name {0:?}: use 1 to 64 letters, digits, `_`, `-` or `.`")]
    BadName(String),
    /// A scope is not valid.
    #[error(transparent)]
    BadScope(#[from] auth::ScopeError),
    /// A live key already has the name.
    #[error("a key named {0:?} already exists; pick another name or revoke it first")]
    Taken(String),
    /// More rights than the creator has.
    #[error("a key can only grant rights its creator has")]
    BeyondCreator,
    /// A longer life than the creator has.
    #[error("a key cannot outlive its creator, which expires at {}", wire::iso(*.0))]
    OutlivesCreator(i64),
    /// A key for a user that does not exist.
    #[error("no user {0:?}: create it first (`hexmirror user create {0}`)")]
    NoUser(String),
    /// Database trouble.
    #[error("state database: {0}")]
    Db(#[from] rusqlite::Error),
}

impl TokenError {
    /// The HTTP status a client gets for it.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadName(_) | Self::BadScope(_) | Self::Taken(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::BeyondCreator | Self::OutlivesCreator(_) => StatusCode::FORBIDDEN,
            Self::NoUser(_) => StatusCode::NOT_FOUND,
            Self::Db(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The client's address, when the server recorded it.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// The API routes, each also under `/api/repos/REPO/`: Hex sends every
/// request, account ones included (`users/me`, `auth`, `keys`), to the API
/// URL it was given, and the README gives it the repository's. Each route
/// logs its requests ([`log`]); anything else under `/api` is a 404 in the
/// API's error shape.
pub fn router(state: Arc<ApiState>) -> Router {
    use handlers as h;
    let limit = usize::try_from(state.config().api.max_tarball_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(64 * 1024);
    let mut r = Router::new();
    for prefix in ["/api", "/api/repos/{repo}"] {
        let routes: [(&str, MethodRouter<Arc<ApiState>>); 35] = [
            ("/publish", post(h::publish)),
            ("/packages", get(h::list_packages)),
            ("/packages/{name}", get(h::get_package)),
            ("/packages/{name}/dependents", get(h::dependents)),
            ("/stats", get(h::stats)),
            ("/packages/{name}/releases", post(h::publish)),
            (
                "/packages/{name}/releases/{version}",
                get(h::get_release).delete(h::revert),
            ),
            (
                "/packages/{name}/releases/{version}/retire",
                post(h::retire).delete(h::unretire),
            ),
            (
                "/packages/{name}/releases/{version}/docs",
                post(h::publish_docs).delete(h::revert_docs),
            ),
            ("/packages/{name}/owners", get(h::list_owners)),
            (
                "/packages/{name}/owners/{user}",
                get(h::get_owner).put(h::add_owner).delete(h::remove_owner),
            ),
            ("/auth", get(h::auth_test)),
            ("/users/me", get(h::me)),
            ("/users/me/audit-logs", get(h::my_audit_logs)),
            ("/users/{user}", get(h::get_user)),
            (
                "/keys",
                get(h::list_keys).post(h::create_key).delete(h::delete_keys),
            ),
            ("/keys/{key}", get(h::get_key).delete(h::delete_key)),
            ("/audit-logs", get(h::audit_logs)),
            ("/orgs", get(h::list_orgs).post(h::create_org)),
            (
                "/orgs/{org}",
                get(h::get_org).post(h::update_org).delete(h::delete_org),
            ),
            (
                "/orgs/{org}/members",
                get(h::list_members).post(h::put_member),
            ),
            (
                "/orgs/{org}/members/{user}",
                get(h::get_member)
                    .post(h::put_member)
                    .delete(h::remove_member),
            ),
            (
                "/orgs/{org}/keys",
                get(h::list_org_keys)
                    .post(h::create_org_key)
                    .delete(h::delete_org_keys),
            ),
            (
                "/orgs/{org}/keys/{key}",
                get(h::get_org_key).delete(h::delete_org_key),
            ),
            ("/orgs/{org}/audit-logs", get(h::org_audit_logs)),
            (
                "/orgs/{org}/invites",
                get(h::list_invites).post(h::create_invite),
            ),
            ("/orgs/{org}/invites/{user}", delete(h::cancel_invite)),
            ("/users/me/invites", get(h::my_invites)),
            (
                "/users/me/invites/{org}",
                post(h::accept_invite).delete(h::decline_invite),
            ),
            ("/oauth/token", post(h::oauth_token)),
            ("/oauth/device_authorization", post(h::device_authorization)),
            ("/oauth/device", get(h::device_show).post(h::device_decide)),
            ("/oauth/revoke", post(h::oauth_revoke)),
            (
                "/sessions",
                post(h::create_session).delete(h::delete_session),
            ),
            // Last, so every route above wins over it.
            ("/{*rest}", any(h::not_found)),
        ];
        for (path, methods) in routes {
            let template = format!("{prefix}{path}");
            r = r.route(&template, logged(&template, methods));
        }
    }
    r = r
        .route("/api/repos", logged("/api/repos", get(h::list_repos)))
        .route(
            "/api/repos/{repo}",
            logged("/api/repos/{repo}", get(h::get_repo)),
        );
    // The read gateway (seed 001), beside the Hex API.
    for (path, methods) in [
        ("/v1/package", get(gateway::package)),
        ("/v1/release", get(gateway::release)),
        ("/v1/releases", get(gateway::releases)),
        ("/v1/search", get(gateway::search)),
        ("/v1/meta", get(gateway::meta)),
    ] {
        r = r.route(path, logged(path, methods));
    }
    let bare = logged("/api", any(h::not_found));
    r.route("/api", bare)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// `methods` with one log line per request under route `template`.
fn logged(template: &str, methods: MethodRouter<Arc<ApiState>>) -> MethodRouter<Arc<ApiState>> {
    methods.layer(axum::middleware::from_fn_with_state(
        Arc::<str>::from(template),
        log::log_request,
    ))
}

/// The routes when no repository of ours is configured: every `/api` request
/// is a 404 in the API's error shape that says why.
pub fn absent_router() -> Router {
    Router::new()
        .route("/api", any(handlers::no_api))
        .route("/api/{*rest}", any(handlers::no_api))
}
