//! One function per endpoint: authenticate, resolve the repository, check
//! the permission, then read the database or hand a change to the writer.
//! By resource: [`releases`] (publish, revert, retire, docs, read),
//! [`packages`] (packages and their owners), [`account`] (the token's user,
//! keys, the audit log); this file holds what they share.

mod account;
mod packages;
mod releases;

pub(super) use account::{audit_logs, auth_test, create_key, delete_key, get_key, list_keys, me};
pub(super) use packages::{
    add_owner, get_owner, get_package, list_owners, list_packages, remove_owner,
};
pub(super) use releases::{
    get_release, publish, publish_docs, retire, revert, revert_docs, unretire,
};

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap};
use serde_json::{Value, json};

use super::snippets;
use super::wire::{self, Format, Rendered, Reply, iso};
use super::{ApiState, ClientAddr, TokenError, create_token};
use crate::auth::{self, Access, HexPermission, Scope};
use crate::clock::unix_now;
use crate::config::Config;
use crate::hosted::db::{self as hdb, AuditEntry, ReleaseRow, TokenRow};
use crate::hosted::record::{Retirement, cmp_versions};
use crate::hosted::writer::{Actor, Change, DocsUpload, ErrorKind, HostedError, Outcome, Upload};

type Params = Path<BTreeMap<String, String>>;
type QueryMap = Query<BTreeMap<String, String>>;
type Answer = Result<Reply, Reply>;

/// Everything a handler learnt about the request before its own work.
struct Request {
    state: Arc<ApiState>,
    config: Arc<Config>,
    token: Option<TokenRow>,
    client: Option<std::net::IpAddr>,
    /// `http://host` as the client addressed us.
    base: String,
    /// The repository from the path, or the default one.
    repo: Option<String>,
    /// `/api` or `/api/repos/REPO`, as the client called it.
    prefix: String,
}

async fn request(
    state: Arc<ApiState>,
    headers: &HeaderMap,
    client: Option<std::net::IpAddr>,
    params: &BTreeMap<String, String>,
) -> Result<Request, Reply> {
    let token = state.authenticate(headers, client).await?;
    let config = state.config();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        })
        .unwrap_or("localhost");
    let (repo, prefix) = match params.get("repo") {
        Some(r) => (Some(r.clone()), format!("/api/repos/{r}")),
        None => (config.api.default_repository.clone(), "/api".to_owned()),
    };
    Ok(Request {
        state,
        config,
        token,
        client,
        base: format!("http://{host}"),
        repo,
        prefix,
    })
}

impl Request {
    /// The repository this request is about; it must be configured.
    fn repo(&self) -> Result<String, Reply> {
        let Some(name) = &self.repo else {
            return Err(Reply::error(
                StatusCode::NOT_FOUND,
                "several repositories are configured and [api] default_repository is not set; \
                 use /api/repos/NAME/... (HEX_API_URL=http://HOST/api/repos/NAME)",
            ));
        };
        if !self.config.repositories.iter().any(|r| &r.name == name) {
            return Err(Reply::error(
                StatusCode::NOT_FOUND,
                format!("repository {name:?} is not configured on this server"),
            ));
        }
        Ok(name.clone())
    }

    fn token(&self) -> Result<&TokenRow, Reply> {
        self.token.as_ref().ok_or_else(|| {
            Reply::error(
                StatusCode::UNAUTHORIZED,
                "this needs an API key: set HEX_API_KEY (mix) or the repository's api_key (rebar3)",
            )
        })
    }

    /// The token, if it may `access` `package` (or the whole repository).
    fn need(&self, repo: &str, package: Option<&str>, access: Access) -> Result<&TokenRow, Reply> {
        let token = self.token()?;
        if auth::allows(&token.scopes, repo, package, access) {
            return Ok(token);
        }
        let what = package.map_or_else(|| format!("repository {repo}"), |p| format!("{repo}/{p}"));
        Err(Reply::error(
            StatusCode::FORBIDDEN,
            format!("API key {} has no {access} access to {what}", token.name),
        ))
    }

    /// Reads of a private repository need a token; returns the scopes that
    /// limit what is shown (`None`: everything).
    fn read(&self, repo: &str, package: Option<&str>) -> Result<Option<Vec<Scope>>, Reply> {
        let private = self
            .config
            .repositories
            .iter()
            .any(|r| r.name == repo && r.private);
        if !private {
            return Ok(None);
        }
        let token = self.need(repo, package, Access::Read)?;
        Ok(auth::is_version_limited(&token.scopes, repo).then(|| token.scopes.clone()))
    }

    fn actor(&self, admin: bool) -> Actor {
        Actor {
            user: self
                .token
                .as_ref()
                .map_or_else(|| "anonymous".into(), |t| t.username.clone()),
            token: self.token.as_ref().map(|t| t.id.clone()),
            client: self.client.map(|c| c.to_string()),
            admin,
        }
    }

    async fn change(&self, repo: &str, change: Change, admin: bool) -> Result<Outcome, Reply> {
        self.state
            .publisher
            .apply(Arc::clone(&self.config), repo, change, self.actor(admin))
            .await
            .map_err(hosted_error)
    }

    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, Reply> {
        self.state
            .publisher
            .db()
            .call(f)
            .await
            .map_err(|e| Reply::internal(format!("API database call failed: {e}")))
    }

    async fn audit(&self, action: &str, target: String, detail: Value) -> Result<(), Reply> {
        let entry = AuditEntry {
            at: unix_now() as i64,
            actor: self.actor(false).user,
            token: self.token.as_ref().map(|t| t.id.clone()),
            action: action.to_owned(),
            target,
            detail: detail.to_string(),
            client: self.client.map(|c| c.to_string()),
        };
        self.db(move |c| hdb::audit(c, &entry)).await
    }

    fn release_url(&self, name: &str, version: &str) -> String {
        format!(
            "{}{}/packages/{name}/releases/{version}",
            self.base, self.prefix
        )
    }

    fn package_url(&self, name: &str) -> String {
        format!("{}{}/packages/{name}", self.base, self.prefix)
    }

    fn release_json(&self, r: &ReleaseRow) -> Value {
        let requirements: serde_json::Map<String, Value> = r
            .requirements
            .iter()
            .map(|d| {
                (
                    d.name.clone(),
                    json!({"app": d.app.clone().unwrap_or_else(|| d.name.clone()),
                           "optional": d.optional, "requirement": d.requirement,
                           "repository": d.repository}),
                )
            })
            .collect();
        let docs = r.docs_sha256.map(|_| {
            format!(
                "{}/repos/{}/docs/{}-{}.tar.gz",
                self.base, r.repository, r.package, r.version
            )
        });
        json!({
            "version": r.version,
            "checksum": hex::encode(r.outer_sha256),
            "inner_checksum": hex::encode(r.inner_sha256),
            "has_docs": r.docs_sha256.is_some(),
            "url": self.release_url(&r.package, &r.version),
            "html_url": self.release_url(&r.package, &r.version),
            "docs_html_url": docs,
            "package_url": self.package_url(&r.package),
            "requirements": requirements,
            "meta": r.meta,
            "retirement": r.retired.as_ref().map(|(reason, message)| json!({"reason": reason.as_str(), "message": message})),
            "publisher": {"username": r.publisher},
            "configs": release_configs(r),
            "downloads": 0,
            "inserted_at": iso(r.inserted_at),
            "updated_at": iso(r.updated_at),
        })
    }

    fn package_json(
        &self,
        repo: &str,
        name: &str,
        rows: &[ReleaseRow],
        owners: &[(String, String)],
    ) -> Value {
        let mut sorted: Vec<&ReleaseRow> = rows.iter().collect();
        sorted.sort_by(|a, b| cmp_versions(&b.version, &a.version));
        let latest = sorted.first().map(|r| r.version.clone());
        let stable_row = sorted.iter().find(|r| {
            crate::version::Version::parse(&r.version).is_ok_and(|v| !v.is_pre_release())
        });
        let stable = stable_row.map(|r| r.version.clone());
        // As hex.pm: the snippet for the release a newcomer should pick.
        let configs = stable_row
            .or(sorted.first())
            .map_or_else(|| json!({}), |r| release_configs(r));
        let meta = sorted.first().map_or(Value::Null, |r| {
            json!({"description": r.meta.get("description"), "licenses": r.meta.get("licenses"),
                   "links": r.meta.get("links"), "maintainers": []})
        });
        let retirements: serde_json::Map<String, Value> = sorted
            .iter()
            .filter_map(|r| {
                let (reason, message) = r.retired.as_ref()?;
                Some((
                    r.version.clone(),
                    json!({"reason": reason.as_str(), "message": message}),
                ))
            })
            .collect();
        json!({
            "name": name,
            "repository": repo,
            "url": self.package_url(name),
            "html_url": self.package_url(name),
            "docs_html_url": null,
            "meta": meta,
            "releases": sorted.iter().map(|r| json!({
                "version": r.version, "url": self.release_url(name, &r.version),
                "has_docs": r.docs_sha256.is_some(), "inserted_at": iso(r.inserted_at)})).collect::<Vec<_>>(),
            "retirements": retirements,
            "owners": owners.iter().map(|(u, l)| owner_json(u, l)).collect::<Vec<_>>(),
            "configs": configs,
            "latest_version": latest,
            "latest_stable_version": stable,
            "downloads": {},
            "inserted_at": rows.iter().map(|r| r.inserted_at).min().map(iso),
            "updated_at": rows.iter().map(|r| r.updated_at).max().map(iso),
        })
    }

    /// Releases of `name` the caller may see (all, unless version-limited).
    async fn visible_rows(&self, repo: &str, name: &str) -> Result<Vec<ReleaseRow>, Reply> {
        let limit = self.read(repo, Some(name))?;
        let (r, n) = (repo.to_owned(), name.to_owned());
        let rows = self.db(move |c| hdb::releases(c, &r, &n)).await?;
        let rows: Vec<ReleaseRow> = match &limit {
            None => rows,
            Some(scopes) => rows
                .into_iter()
                .filter(|row| auth::may_read_release(scopes, repo, name, &row.version))
                .collect(),
        };
        if rows.is_empty() {
            return Err(Reply::error(
                StatusCode::NOT_FOUND,
                format!("package {name} is not hosted in repository {repo}"),
            ));
        }
        Ok(rows)
    }
}

/// The answer to a failure the client cannot fix: the details go to the
/// server log only (the logging middleware writes them).
fn internal_error(e: &dyn std::fmt::Display) -> Reply {
    Reply::internal(format!("hosted package change failed: {e}"))
}

fn hosted_error(e: HostedError) -> Reply {
    let status = match e.kind() {
        ErrorKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::Busy => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => return internal_error(&e),
    };
    let mut reply = Reply::error(status, e.to_string());
    if status == StatusCode::SERVICE_UNAVAILABLE {
        reply = reply.with_header(header::RETRY_AFTER, "60".into());
    }
    reply
}

/// Runs a handler body and renders its reply in the client's format.
async fn answer(headers: &HeaderMap, f: impl Future<Output = Answer>) -> Rendered {
    let format = Format::from_headers(headers);
    Rendered(f.await.unwrap_or_else(|e| e), format)
}

fn param<'a>(p: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    p.get(key).map_or("", String::as_str)
}

/// An owner as Hex shows one. hexmirror has user names and no email
/// addresses, and `mix hex.owner list` prints only `email` and `level`, so
/// the name goes where the client shows an email.
fn owner_json(user: &str, level: &str) -> Value {
    json!({"username": user, "email": user, "level": level})
}

/// The install snippets of release `r` (see [`snippets`]).
fn release_configs(r: &ReleaseRow) -> Value {
    let app = r.meta.get("app").and_then(Value::as_str);
    snippets::configs(&r.package, app, &r.version, &r.repository)
}

/// Anything under `/api` that is not an endpoint: 404 in the API's shape.
pub(super) async fn not_found(uri: axum::http::Uri, headers: HeaderMap) -> Rendered {
    answer(&headers, async {
        Err(Reply::error(
            StatusCode::NOT_FOUND,
            format!("no API endpoint {}", uri.path()),
        ))
    })
    .await
}

/// `/api` on a server with no repository of its own to publish into.
pub(super) async fn no_api(headers: HeaderMap) -> Rendered {
    answer(&headers, async {
        Err(Reply::error(
            StatusCode::NOT_FOUND,
            "this server has no API: it hosts no repository of its own \
             (add a [[repository]] to the configuration)",
        ))
    })
    .await
}
