//! One function per endpoint: authenticate, resolve the repository, check
//! the permission, then read the database or hand a change to the writer.
//! By resource: [`releases`] (publish, revert, retire, docs, read),
//! [`packages`] (packages and their owners), [`account`] (the token's user,
//! keys, the audit log); this file holds what they share.

mod account;
mod oauth;
mod orgs;
mod packages;
mod releases;

pub(super) use account::{
    audit_logs, auth_test, create_key, create_session, delete_key, delete_keys, delete_session,
    get_key, get_user, list_keys, me, my_audit_logs,
};
pub(super) use oauth::{
    device_authorization, device_decide, device_show, oauth_revoke, oauth_token,
};
pub(super) use orgs::{
    accept_invite, cancel_invite, create_invite, create_org, create_org_key, decline_invite,
    delete_org, delete_org_key, delete_org_keys, get_member, get_org, get_org_key, list_invites,
    list_members, list_org_keys, list_orgs, my_invites, org_audit_logs, put_member, remove_member,
    update_org,
};
pub(super) use packages::{
    add_owner, dependents, get_owner, get_package, get_repo, list_owners, list_packages,
    list_repos, remove_owner, stats,
};
pub(super) use releases::{
    get_release, publish, publish_docs, retire, revert, revert_docs, unretire,
};

use std::collections::{BTreeMap, HashMap};
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
use crate::catalog::downloads::Counts;
use crate::clock::unix_now;
use crate::config::Config;
use crate::hosted::db::{self as hdb, AuditEntry, ReleaseRow, TokenRow};
use crate::hosted::record::{Retirement, cmp_versions};
use crate::hosted::writer::{Actor, Change, DocsUpload, ErrorKind, HostedError, Outcome, Upload};

type Params = Path<BTreeMap<String, String>>;

/// Which packages an API path describes.
enum Source {
    /// A repository of ours: its hosted packages and its view of the mirror.
    Ours(String),
    /// The upstream mirror, under the upstream's repository name.
    Upstream(String),
}
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
    Ok(request_as(state, headers, client, params, token))
}

/// A request the caller makes without a key (OAuth's own endpoints, where
/// the credential is in the body), or with the token already checked.
fn request_as(
    state: Arc<ApiState>,
    headers: &HeaderMap,
    client: Option<std::net::IpAddr>,
    params: &BTreeMap<String, String>,
    token: Option<TokenRow>,
) -> Request {
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
    Request {
        state,
        config,
        token,
        client,
        base: format!("http://{host}"),
        repo,
        prefix,
    }
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
            return Err(self.unknown_repository(name, "is not configured on this server"));
        }
        Ok(name.clone())
    }

    /// The answer for `name`, which is no repository here. While a
    /// repository is private, a caller who could not read one by this name
    /// gets what it would get for a private one, so no answer tells which
    /// private names exist (the gate does the same for `/repos/NAME`).
    fn unknown_repository(&self, name: &str, not_found: &str) -> Reply {
        if self.config.repositories.iter().any(|r| r.private)
            && let Err(refused) = self.need(name, None, Access::Read)
        {
            return refused;
        }
        Reply::error(
            StatusCode::NOT_FOUND,
            format!("repository {name:?} {not_found}"),
        )
    }

    fn token(&self) -> Result<&TokenRow, Reply> {
        // Accounts and keys belong to the write API.
        self.publisher()?;
        self.token.as_ref().ok_or_else(|| {
            Reply::error(
                StatusCode::UNAUTHORIZED,
                "this needs an API key: set HEX_API_KEY (mix) or the repository's api_key (rebar3)",
            )
        })
    }

    /// The caller's token as stored, its `@member` scopes unexpanded: what
    /// a token it creates inherits, so that the child follows the
    /// memberships too.
    async fn stored_token(&self) -> Result<TokenRow, Reply> {
        let id = self.token()?.id.clone();
        self.db(move |c| hdb::token(c, &id))
            .await?
            .ok_or_else(|| Reply::internal("an authenticated key vanished"))
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

    /// What this key may read in repository `repo` of ours, for the
    /// catalog's readers; `None` when it may read everything there.
    fn visible(&self, repo: &str) -> Result<Option<crate::catalog::Visible>, Reply> {
        Ok(self.read(repo, None)?.map(|scopes| {
            let repo = repo.to_owned();
            let visible: crate::catalog::Visible = Arc::new(move |name: &str, version: &str| {
                auth::may_read_release(&scopes, &repo, name, version)
            });
            visible
        }))
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

    /// The writer, or the answer of a server that hosts nothing.
    fn publisher(&self) -> Result<&Arc<crate::hosted::service::Publisher>, Reply> {
        self.state.publisher.as_ref().ok_or_else(no_repository)
    }

    async fn change(&self, repo: &str, change: Change, admin: bool) -> Result<Outcome, Reply> {
        self.publisher()?
            .apply(Arc::clone(&self.config), repo, change, self.actor(admin))
            .await
            .map_err(hosted_error)
    }

    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, Reply> {
        self.publisher()?
            .db()
            .call(f)
            .await
            .map_err(|e| Reply::internal(format!("API database call failed: {e}")))
    }

    async fn audit(&self, action: &str, target: String, detail: Value) -> Result<(), Reply> {
        let entry = self.audit_entry(action, target, detail);
        self.db(move |c| hdb::audit(c, &entry)).await
    }

    /// An audit-log entry of this request's caller, to write in the same
    /// transaction as the change it records.
    fn audit_entry(&self, action: &str, target: String, detail: Value) -> AuditEntry {
        AuditEntry {
            at: unix_now() as i64,
            actor: self.actor(false).user,
            token: self.token.as_ref().map(|t| t.id.clone()),
            action: action.to_owned(),
            target,
            detail: detail.to_string(),
            client: self.client.map(|c| c.to_string()),
        }
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

    fn release_json(&self, r: &ReleaseRow, downloads: Option<u64>) -> Value {
        let requirements = requirements_json(r.requirements.iter().map(|d| {
            (
                &d.name,
                d.app.as_deref(),
                d.optional,
                &d.requirement,
                d.repository.as_deref(),
            )
        }));
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
            "downloads": downloads,
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
        downloads: Option<&Counts>,
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
            "downloads": downloads.map(counts_json),
            "inserted_at": rows.iter().map(|r| r.inserted_at).min().map(iso),
            "updated_at": rows.iter().map(|r| r.updated_at).max().map(iso),
        })
    }

    /// Which packages this request's path describes: a repository of ours
    /// (hosted packages and its curated view of the mirror), or the
    /// upstream mirror itself (`/api` with no default repository, or
    /// `/api/repos/UPSTREAM`).
    fn source(&self) -> Result<Source, Reply> {
        let upstream = &self.config.upstream.repository;
        match &self.repo {
            Some(name) if self.config.repositories.iter().any(|r| &r.name == name) => {
                Ok(Source::Ours(name.clone()))
            }
            Some(name) if name == upstream => Ok(Source::Upstream(name.clone())),
            Some(name) => Err(self.unknown_repository(name, "is not served here")),
            None => Ok(Source::Upstream(upstream.clone())),
        }
    }

    /// The upstream mirror's name, then our repositories' names.
    fn repo_names(&self) -> Vec<String> {
        std::iter::once(self.config.upstream.repository.clone())
            .chain(self.config.repositories.iter().map(|r| r.name.clone()))
            .collect()
    }

    /// Repository `name` as hex.pm shows one, if it exists and the caller
    /// may know of it (a private one needs a key that may read it).
    fn repo_json(&self, name: &str) -> Option<Value> {
        let ours = self.config.repositories.iter().find(|r| r.name == name);
        let private = ours.is_some_and(|r| r.private);
        if ours.is_none() && name != self.config.upstream.repository {
            return None;
        }
        if private && self.read(name, None).is_err() {
            return None;
        }
        Some(json!({
            "name": name,
            "public": !private,
            "active": true,
            "url": format!("{}/repos/{name}", self.base),
            // What `mix hex.repo add --fetch-public-key` pins for ours.
            "hexmirror": {
                "kind": if ours.is_some() { "ours" } else { "mirror" },
                "public_key_fingerprint": ours
                    .and(self.config.signing.key.as_ref())
                    .map(|k| k.public_key().fingerprint()),
            },
        }))
    }

    /// Download counts of `names` in `repo` (none without a catalog: the
    /// field is then left out, never shown as zero).
    async fn counts(
        &self,
        repo: &str,
        names: Vec<String>,
        visible: Option<crate::catalog::Visible>,
    ) -> Result<HashMap<String, Counts>, Reply> {
        let Some(catalog) = &self.state.catalog else {
            return Ok(HashMap::new());
        };
        let repo = repo.to_owned();
        catalog
            .call(move |c| {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                let today = unix_now() / 86_400;
                match &visible {
                    Some(v) => crate::catalog::downloads::visible_package_counts(
                        c, &repo, &names, today, v,
                    ),
                    None => crate::catalog::downloads::package_counts(c, &repo, &names, today),
                }
            })
            .await
            .map_err(|e| Reply::internal(format!("catalog read failed: {e}")))
    }

    /// All downloads of one release (none without a catalog).
    async fn release_downloads(
        &self,
        repo: &str,
        name: &str,
        version: &str,
    ) -> Result<Option<u64>, Reply> {
        let Some(catalog) = &self.state.catalog else {
            return Ok(None);
        };
        let release = crate::catalog::downloads::Release {
            repository: repo.to_owned(),
            name: name.to_owned(),
            version: version.to_owned(),
        };
        catalog
            .call(move |c| crate::catalog::downloads::release_count(c, &release))
            .await
            .map(Some)
            .map_err(|e| Reply::internal(format!("catalog read failed: {e}")))
    }

    /// The catalog, or the answer when there is none.
    fn catalog(&self) -> Result<&crate::catalog::Catalog, Reply> {
        self.state.catalog.as_ref().ok_or_else(|| {
            Reply::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the catalog of mirrored packages is unavailable (see the server log); \
                 `hexmirror catalog rebuild` makes it",
            )
        })
    }

    /// Mirrored package `name` of the upstream, as the catalog has it.
    async fn mirrored(&self, name: &str) -> Result<crate::catalog::PackageView, Reply> {
        let (up, n) = (self.config.upstream.repository.clone(), name.to_owned());
        let found = self
            .catalog()?
            .call(move |c| crate::catalog::package(c, &up, &n))
            .await
            .map_err(|e| Reply::internal(format!("catalog read failed: {e}")))?;
        found.ok_or_else(|| {
            Reply::error(
                StatusCode::NOT_FOUND,
                format!("no package {name} in the mirror"),
            )
        })
    }

    /// Mirrored package `name` as repository `repo` of ours shows it to
    /// this caller: a version-limited key sees only the releases it may read.
    async fn mirrored_in(
        &self,
        repo: &str,
        name: &str,
    ) -> Result<crate::catalog::PackageView, Reply> {
        let limit = self.read(repo, Some(name))?;
        let mut view = self.mirrored(name).await?;
        // The repository's curation may deny releases: it shows what its
        // own record lists.
        if let Some(served) = self.curated_versions(repo, name).await {
            view.releases.retain(|r| served.contains(&r.version));
        }
        if let Some(scopes) = limit {
            view.releases
                .retain(|r| auth::may_read_release(&scopes, repo, name, &r.version));
            if view.releases.is_empty() {
                return Err(Reply::error(
                    StatusCode::NOT_FOUND,
                    format!("no release of {name} in repository {repo} that this key may read"),
                ));
            }
        }
        Ok(view)
    }

    /// The versions our repository `repo` serves of upstream package
    /// `name`: its re-signed record in the live tree, verified with our key
    /// (`None` when it cannot be read: the catalog's view stands).
    async fn curated_versions(
        &self,
        repo: &str,
        name: &str,
    ) -> Option<std::collections::HashSet<String>> {
        let key = self.config.signing.key.as_ref()?.public_key().clone();
        crate::registry::PackageName::parse(name).ok()?;
        let path = self
            .config
            .data_dir
            .join("current/repos")
            .join(repo)
            .join("packages")
            .join(name);
        let (repo, name, max) = (
            repo.to_owned(),
            name.to_owned(),
            self.config.upstream.max_registry_bytes,
        );
        tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&path).ok()?;
            let record =
                crate::registry::verify_package_within(&bytes, &key, &repo, &name, max).ok()?;
            Some(
                record
                    .into_inner()
                    .releases
                    .into_iter()
                    .map(|r| r.version)
                    .collect(),
            )
        })
        .await
        .ok()
        .flatten()
    }

    /// Whether our repository `repo` serves the upstream package `name`
    /// (its curated view, as the served tree holds it).
    fn serves_mirrored(&self, repo: &str, name: &str) -> bool {
        crate::registry::PackageName::parse(name).is_ok()
            && self
                .config
                .data_dir
                .join("current/repos")
                .join(repo)
                .join("packages")
                .join(name)
                .is_file()
    }

    fn mirrored_release_json(
        &self,
        repo: &str,
        p: &crate::catalog::PackageView,
        r: &crate::catalog::ReleaseView,
        downloads: Option<u64>,
    ) -> Value {
        let requirements = requirements_json(r.requirements.iter().map(|d| {
            (
                &d.name,
                d.app.as_deref(),
                d.optional,
                &d.requirement,
                d.repository.as_deref(),
            )
        }));
        let app = r
            .meta
            .as_ref()
            .and_then(|m| m.get("app"))
            .and_then(Value::as_str);
        let meta = r.meta.as_ref().map(|m| {
            json!({"app": m.get("app"), "build_tools": m.get("build_tools"), "elixir": m.get("elixir")})
        });
        json!({
            "version": r.version,
            "checksum": r.outer_checksum,
            "inner_checksum": r.inner_checksum,
            "has_docs": r.has_docs,
            "url": self.release_url(&p.name, &r.version),
            "html_url": self.release_url(&p.name, &r.version),
            "docs_html_url": null,
            "package_url": self.package_url(&p.name),
            "requirements": requirements,
            "meta": meta,
            "retirement": r.retired.as_ref().map(|(reason, message)| json!({"reason": reason, "message": message})),
            "publisher": null,
            "downloads": downloads,
            "configs": snippets::configs(&p.name, app, &r.version, repo),
            // From the signed record when the upstream fills it; never
            // the mirror's own dates (those are under "hexmirror").
            "inserted_at": r.published_at.map(|t| iso(t as i64)),
            "updated_at": null,
            "hexmirror": {"source": "mirror", "first_seen": iso(r.first_seen as i64), "metadata_held": r.meta.is_some()},
        })
    }

    fn mirrored_package_json(
        &self,
        repo: &str,
        p: &crate::catalog::PackageView,
        downloads: Option<&Counts>,
    ) -> Value {
        let stable = p.releases.iter().find(|r| {
            crate::version::Version::parse(&r.version).is_ok_and(|v| !v.is_pre_release())
        });
        let pick = stable.or(p.releases.first());
        let meta = p.meta();
        let field = |k: &str| meta.and_then(|m| m.get(k)).cloned();
        let configs = pick.map_or_else(
            || json!({}),
            |r| {
                let app = r
                    .meta
                    .as_ref()
                    .and_then(|m| m.get("app"))
                    .and_then(Value::as_str);
                snippets::configs(&p.name, app, &r.version, repo)
            },
        );
        let retirements: serde_json::Map<String, Value> = p
            .releases
            .iter()
            .filter_map(|r| {
                let (reason, message) = r.retired.as_ref()?;
                Some((
                    r.version.clone(),
                    json!({"reason": reason, "message": message}),
                ))
            })
            .collect();
        json!({
            "name": p.name,
            "repository": repo,
            "url": self.package_url(&p.name),
            "html_url": self.package_url(&p.name),
            "docs_html_url": null,
            // Clients index these: an absent list or map is shown empty.
            "meta": {
                "description": field("description"),
                "licenses": field("licenses").unwrap_or_else(|| json!([])),
                "links": field("links").unwrap_or_else(|| json!({})),
                "maintainers": [],
            },
            "releases": p.releases.iter().map(|r| json!({
                "version": r.version, "url": self.release_url(&p.name, &r.version),
                "has_docs": r.has_docs, "inserted_at": r.published_at.map(|t| iso(t as i64))})).collect::<Vec<_>>(),
            "retirements": retirements,
            "configs": configs,
            "downloads": downloads.map(counts_json),
            "latest_version": p.releases.first().map(|r| &r.version),
            "latest_stable_version": stable.map(|r| &r.version),
            "inserted_at": p.releases.iter().filter_map(|r| r.published_at).min().map(|t| iso(t as i64)),
            "updated_at": p.updated_at.map(|u| iso(u as i64)),
            "hexmirror": {"source": "mirror", "first_seen": iso(p.first_seen as i64), "metadata_held": meta.is_some()},
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
/// The `permissions` of a key-creating body (`default` when absent), and
/// the scopes they grant.
fn body_permissions(
    body: &Value,
    default: HexPermission,
) -> Result<(Vec<HexPermission>, Vec<Scope>), Reply> {
    let unprocessable = |m: String| Reply::error(StatusCode::UNPROCESSABLE_ENTITY, m);
    let perms: Vec<HexPermission> = match body.get("permissions") {
        None => vec![default],
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| unprocessable(format!("permissions: {e}")))?,
    };
    let scopes = auth::scopes_from_permissions(&perms).map_err(|e| unprocessable(e.to_string()))?;
    Ok((perms, scopes))
}

/// `done`, with `entry` written to the audit log in the same transaction
/// when `changed` says the change was made.
fn audit_if<T, E>(
    done: Result<T, E>,
    c: &rusqlite::Connection,
    entry: &AuditEntry,
    changed: impl FnOnce(&T) -> bool,
) -> rusqlite::Result<Result<T, E>> {
    if done.as_ref().is_ok_and(changed) {
        hdb::audit(c, entry)?;
    }
    Ok(done)
}

/// Text field `key` of a request body, empty when absent or not text.
fn text_field(body: &Value, key: &str) -> String {
    body.get(key)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

/// The answer to a token the database would not create.
fn token_error(e: TokenError) -> Reply {
    match e {
        e @ TokenError::Db(_) => internal_error(&e),
        e => Reply::error(e.status(), e.to_string()),
    }
}

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

/// A package's download counts as hex.pm shows them.
fn counts_json(c: &Counts) -> Value {
    json!({"all": c.all, "recent": c.recent, "week": c.week, "day": c.day})
}

/// A release's `requirements` as Hex shows them: a map by dependency name
/// of (name, app, optional, requirement, repository).
fn requirements_json<'a>(
    deps: impl Iterator<
        Item = (
            &'a String,
            Option<&'a str>,
            bool,
            &'a String,
            Option<&'a str>,
        ),
    >,
) -> Value {
    Value::Object(
        deps.map(|(name, app, optional, requirement, repository)| {
            (
                name.clone(),
                json!({"app": app.unwrap_or(name), "optional": optional,
                       "requirement": requirement, "repository": repository}),
            )
        })
        .collect(),
    )
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

/// What a server with no repository of its own answers to what needs one.
fn no_repository() -> Reply {
    Reply::error(
        StatusCode::NOT_FOUND,
        "this server hosts no repository of its own: only the read API of mirrored \
         packages is here (add a [[repository]] to the configuration to publish)",
    )
}

/// `/api` on a server with neither a repository of its own nor a catalog.
pub(super) async fn no_api(headers: HeaderMap) -> Rendered {
    answer(&headers, async {
        Err(Reply::error(
            StatusCode::NOT_FOUND,
            "this server has no API: it hosts no repository of its own \
             (add a [[repository]] to the configuration) and has no catalog",
        ))
    })
    .await
}
