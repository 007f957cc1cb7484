//! One function per endpoint: authenticate, resolve the repository, check
//! the permission, then read the database or hand a change to the writer.

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
use crate::hosted::writer::{Actor, Change, ErrorKind, HostedError, Outcome, Upload};

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
            .db
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

pub(super) async fn publish(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    Query(q): QueryMap,
    headers: HeaderMap,
    body: Body,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let repo = req.repo()?;
        let url_name = p.get("name").cloned();
        // Refuse before reading the body: hyper answers `Expect:
        // 100-continue` only when the body is read, so an unauthorised
        // client never uploads its tarball.
        match &url_name {
            Some(name) => req.need(&repo, Some(name), Access::Write)?,
            None => req.token()?,
        };
        let limit = usize::try_from(req.config.api.max_tarball_bytes).unwrap_or(usize::MAX);
        let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
            Reply::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("package tarball is larger than the limit of {limit} bytes ([api] max_tarball_bytes)"),
            )
        })?;
        let config = Arc::clone(&req.config);
        let upload = tokio::task::spawn_blocking(move || Upload::inspect(bytes.to_vec(), &config))
            .await
            .map_err(HostedError::from)
            .and_then(|r| r)
            .map_err(hosted_error)?;
        let name = upload.name().to_owned();
        if let Some(url_name) = &url_name
            && *url_name != name
        {
            return Err(Reply::error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("the tarball's metadata names package {name:?}, the URL names {url_name:?}"),
            ));
        }
        req.need(&repo, Some(&name), Access::Write)?;
        let admin = req.token.as_ref().is_some_and(|t| auth::allows(&t.scopes, &repo, Some(&name), Access::Admin));
        let replace = q.get("replace").is_some_and(|v| v == "true");
        let outcome = req.change(&repo, Change::Publish { upload, replace }, admin).await?;
        let row = outcome
            .release
            .ok_or_else(|| internal_error(&"a publish produced no release"))?;
        let body = req.release_json(&row);
        Ok(if outcome.created {
            Reply::new(StatusCode::CREATED, body)
                .with_header(header::LOCATION, req.release_url(&row.package, &row.version))
        } else {
            Reply::ok(body)
        })
    })
    .await
}

/// The common shape of the release-level changes.
async fn release_change(
    state: Arc<ApiState>,
    client: Option<std::net::IpAddr>,
    p: BTreeMap<String, String>,
    headers: HeaderMap,
    make: impl FnOnce(String, String) -> Result<Change, Reply>,
    created: StatusCode,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let repo = req.repo()?;
        let (name, version) = (
            param(&p, "name").to_owned(),
            param(&p, "version").to_owned(),
        );
        req.need(&repo, Some(&name), Access::Write)?;
        let admin = req
            .token
            .as_ref()
            .is_some_and(|t| auth::allows(&t.scopes, &repo, Some(&name), Access::Admin));
        let change = make(name.clone(), version.clone())?;
        let docs = matches!(
            change,
            Change::Docs {
                tarball: Some(_),
                ..
            }
        );
        req.change(&repo, change, admin).await?;
        let mut reply = Reply::empty(created);
        if docs {
            reply = reply.with_header(
                header::LOCATION,
                format!("{}/repos/{repo}/docs/{name}-{version}.tar.gz", req.base),
            );
        }
        Ok(reply)
    })
    .await
}

pub(super) async fn revert(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    release_change(
        state,
        client,
        p,
        headers,
        |name, version| Ok(Change::Revert { name, version }),
        StatusCode::NO_CONTENT,
    )
    .await
}

pub(super) async fn retire(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Rendered {
    let parsed = wire::decode_body(&headers, &body);
    release_change(
        state,
        client,
        p,
        headers,
        move |name, version| {
            let body = parsed?;
            let reason = body.get("reason").and_then(Value::as_str).unwrap_or("");
            let reason = Retirement::parse(reason).ok_or_else(|| {
                Reply::error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("retirement reason {reason:?}: use other, invalid, security, deprecated or renamed"),
                )
            })?;
            let message = body.get("message").and_then(Value::as_str).unwrap_or("").to_owned();
            if message.chars().count() > 140 {
                return Err(Reply::error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "retirement message is longer than 140 characters",
                ));
            }
            Ok(Change::Retire { name, version, retirement: Some((reason, message)) })
        },
        StatusCode::NO_CONTENT,
    )
    .await
}

pub(super) async fn unretire(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    release_change(
        state,
        client,
        p,
        headers,
        |name, version| {
            Ok(Change::Retire {
                name,
                version,
                retirement: None,
            })
        },
        StatusCode::NO_CONTENT,
    )
    .await
}

pub(super) async fn publish_docs(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Rendered {
    let tarball = body.to_vec();
    release_change(
        state,
        client,
        p,
        headers,
        move |name, version| {
            Ok(Change::Docs {
                name,
                version,
                tarball: Some(tarball),
            })
        },
        StatusCode::CREATED,
    )
    .await
}

pub(super) async fn revert_docs(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    release_change(
        state,
        client,
        p,
        headers,
        |name, version| {
            Ok(Change::Docs {
                name,
                version,
                tarball: None,
            })
        },
        StatusCode::NO_CONTENT,
    )
    .await
}

pub(super) async fn get_release(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let repo = req.repo()?;
        let (name, version) = (param(&p, "name"), param(&p, "version"));
        let rows = req.visible_rows(&repo, name).await?;
        let row = rows.iter().find(|r| r.version == version).ok_or_else(|| {
            Reply::error(
                StatusCode::NOT_FOUND,
                format!("{name} {version} is not a release in repository {repo}"),
            )
        })?;
        Ok(Reply::ok(req.release_json(row)))
    })
    .await
}

pub(super) async fn get_package(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let repo = req.repo()?;
        let name = param(&p, "name").to_owned();
        let rows = req.visible_rows(&repo, &name).await?;
        let (r, n) = (repo.clone(), name.clone());
        let owners = req.db(move |c| hdb::owners(c, &r, &n)).await?;
        Ok(Reply::ok(req.package_json(&repo, &name, &rows, &owners)))
    })
    .await
}

pub(super) async fn list_packages(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    Query(q): QueryMap,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let repo = req.repo()?;
        let limit = req.read(&repo, None)?;
        let r = repo.clone();
        let rows = req
            .db(move |c| {
                let mut all = hdb::all_releases(c)?;
                all.retain(|row| row.repository == r);
                Ok(all)
            })
            .await?;
        let mut by_name: BTreeMap<String, Vec<ReleaseRow>> = BTreeMap::new();
        for row in rows {
            if limit
                .as_ref()
                .is_some_and(|s| !auth::may_read_release(s, &repo, &row.package, &row.version))
            {
                continue;
            }
            by_name.entry(row.package.clone()).or_default().push(row);
        }
        let search = q.get("search").map(|s| s.to_lowercase());
        let mut packages: Vec<(String, Vec<ReleaseRow>)> = by_name
            .into_iter()
            .filter(|(name, rows)| {
                search.as_ref().is_none_or(|s| {
                    name.contains(s.as_str())
                        || rows.iter().any(|r| {
                            r.meta
                                .get("description")
                                .and_then(Value::as_str)
                                .is_some_and(|d| d.to_lowercase().contains(s.as_str()))
                        })
                })
            })
            .collect();
        let newest =
            |rows: &[ReleaseRow], f: fn(&ReleaseRow) -> i64| rows.iter().map(f).max().unwrap_or(0);
        match q.get("sort").map(String::as_str).unwrap_or("name") {
            "name" => {}
            "inserted_at" => {
                packages.sort_by_key(|(_, rows)| std::cmp::Reverse(newest(rows, |r| r.inserted_at)))
            }
            "updated_at" | "recent_downloads" | "total_downloads" | "downloads" => {
                packages.sort_by_key(|(_, rows)| std::cmp::Reverse(newest(rows, |r| r.updated_at)))
            }
            other => {
                return Err(Reply::error(
                    StatusCode::BAD_REQUEST,
                    format!("sort {other:?}: use name, inserted_at or updated_at"),
                ));
            }
        }
        const PAGE: usize = 100;
        let page: usize = q
            .get("page")
            .and_then(|p| p.parse().ok())
            .filter(|p| *p >= 1)
            .unwrap_or(1);
        let listed: Vec<Value> = packages
            .iter()
            .skip((page - 1).saturating_mul(PAGE))
            .take(PAGE)
            .map(|(name, rows)| req.package_json(&repo, name, rows, &[]))
            .collect();
        Ok(Reply::ok(Value::Array(listed)))
    })
    .await
}

pub(super) async fn list_owners(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let repo = req.repo()?;
        let name = param(&p, "name").to_owned();
        req.visible_rows(&repo, &name).await?;
        let owners = req.db(move |c| hdb::owners(c, &repo, &name)).await?;
        Ok(Reply::ok(Value::Array(
            owners
                .into_iter()
                .map(|(u, l)| owner_json(&u, &l))
                .collect(),
        )))
    })
    .await
}

pub(super) async fn get_owner(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let repo = req.repo()?;
        let (name, user) = (param(&p, "name").to_owned(), param(&p, "user").to_owned());
        req.visible_rows(&repo, &name).await?;
        let owners = req.db(move |c| hdb::owners(c, &repo, &name)).await?;
        let (u, l) = owners
            .into_iter()
            .find(|(u, _)| *u == user)
            .ok_or_else(|| {
                Reply::error(
                    StatusCode::NOT_FOUND,
                    format!("{user} is not an owner of {}", param(&p, "name")),
                )
            })?;
        Ok(Reply::ok(owner_json(&u, &l)))
    })
    .await
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

fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 64
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.@".contains(&b))
}

pub(super) async fn add_owner(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let repo = req.repo()?;
        let (name, user) = (param(&p, "name").to_owned(), param(&p, "user").to_owned());
        req.need(&repo, Some(&name), Access::Admin)?;
        req.visible_rows(&repo, &name).await?;
        let body = wire::decode_body(&headers, &body)?;
        let level = body.get("level").and_then(Value::as_str).unwrap_or("maintainer").to_owned();
        if !matches!(level.as_str(), "full" | "maintainer") || !valid_user(&user) {
            return Err(Reply::error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("owner {user:?} with level {level:?}: the level is full or maintainer, user names are letters, digits, _-.@"),
            ));
        }
        let (r, n, u, l) = (repo.clone(), name.clone(), user.clone(), level.clone());
        req.db(move |c| hdb::put_owner(c, &r, &n, &u, &l)).await?;
        req.audit("owner.add", format!("{repo}/{name}"), json!({"user": user, "level": level})).await?;
        Ok(Reply::empty(StatusCode::NO_CONTENT))
    })
    .await
}

pub(super) async fn remove_owner(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let repo = req.repo()?;
        let (name, user) = (param(&p, "name").to_owned(), param(&p, "user").to_owned());
        req.need(&repo, Some(&name), Access::Admin)?;
        let (r, n, u) = (repo.clone(), name.clone(), user.clone());
        let removed = req
            .db(move |c| {
                let owners = hdb::owners(c, &r, &n)?;
                if owners.len() == 1 && owners[0].0 == u {
                    return Ok(None);
                }
                hdb::delete_owner(c, &r, &n, &u).map(Some)
            })
            .await?;
        match removed {
            None => Err(Reply::error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{user} is the last owner of {name}; add another owner first"),
            )),
            Some(false) => Err(Reply::error(
                StatusCode::NOT_FOUND,
                format!("{user} is not an owner of {name}"),
            )),
            Some(true) => {
                req.audit(
                    "owner.remove",
                    format!("{repo}/{name}"),
                    json!({"user": user}),
                )
                .await?;
                Ok(Reply::empty(StatusCode::NO_CONTENT))
            }
        }
    })
    .await
}

pub(super) async fn auth_test(
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

pub(super) async fn me(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &BTreeMap::new()).await?;
        let token = req.token()?;
        let user = token.username.clone();
        let owned = req.db(move |c| hdb::owned_packages(c, &user)).await?;
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
            "organizations": [],
            "packages": packages,
            "url": format!("{}/api/users/{}", req.base, token.username),
            "inserted_at": iso(token.created_at),
            "updated_at": iso(token.created_at),
        })))
    })
    .await
}

fn key_json(base: &str, t: &TokenRow, secret: Option<&str>) -> Value {
    json!({
        "name": t.name,
        "username": t.username,
        "permissions": auth::permissions_from_scopes(&t.scopes),
        "secret": secret,
        "authing_key": false,
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

pub(super) async fn list_keys(
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
                .map(|t| key_json(&req.base, t, None))
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

pub(super) async fn get_key(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let key = find_key(&req, param(&p, "key")).await?;
        Ok(Reply::ok(key_json(&req.base, &key, None)))
    })
    .await
}

pub(super) async fn delete_key(
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
        Ok(Reply::ok(key_json(&req.base, &key, None)))
    })
    .await
}

pub(super) async fn create_key(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &BTreeMap::new()).await?;
        let parent = req.token()?.clone();
        let body = wire::decode_body(&headers, &body)?;
        let name = body
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let perms: Vec<HexPermission> = match body.get("permissions") {
            None => vec![HexPermission {
                domain: "api".into(),
                resource: None,
                access: None,
                versions: None,
            }],
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                Reply::error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("permissions: {e}"),
                )
            })?,
        };
        let mut scopes = auth::scopes_from_permissions(&perms)
            .map_err(|e| Reply::error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
        // `api` (full access on hex.pm) means "everything I have" here.
        if perms
            .iter()
            .any(|p| p.domain == "api" && p.resource.is_none())
        {
            scopes = parent.scopes.clone();
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
        let user = parent.username.clone();
        let p2 = parent.clone();
        let created = req
            .db(move |c| Ok(create_token(c, &name, &user, scopes, expires_at, Some(&p2))))
            .await?;
        let (secret, row) = created.map_err(|e| match e {
            TokenError::Invalid(m) => Reply::error(StatusCode::UNPROCESSABLE_ENTITY, m),
            TokenError::Forbidden(m) => Reply::error(StatusCode::FORBIDDEN, m),
            TokenError::Internal(m) => internal_error(&m),
        })?;
        req.audit(
            "key.generate",
            row.name.clone(),
            json!({"id": row.id, "scopes": row.scopes, "expires_at": row.expires_at}),
        )
        .await?;
        Ok(Reply::new(
            StatusCode::CREATED,
            key_json(&req.base, &row, Some(&secret)),
        ))
    })
    .await
}

pub(super) async fn audit_logs(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Query(q): QueryMap,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &BTreeMap::new()).await?;
        req.need("*", None, Access::Admin)?;
        let page: u32 = q
            .get("page")
            .and_then(|p| p.parse().ok())
            .filter(|p| *p >= 1)
            .unwrap_or(1);
        let entries = req
            .db(move |c| hdb::audit_log(c, 100, (page - 1).saturating_mul(100)))
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
    })
    .await
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
