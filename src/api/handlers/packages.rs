//! Packages: reading one or the list, and managing their owners.

use super::*;

pub(in crate::api) async fn get_package(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let name = param(&p, "name").to_owned();
        let repo = match req.source()? {
            Source::Upstream(up) => {
                let view = req.mirrored(&name).await?;
                let counts = req.counts(&up, vec![name.clone()], None).await?;
                return Ok(Reply::ok(req.mirrored_package_json(
                    &up,
                    &view,
                    counts.get(&name),
                )));
            }
            Source::Ours(repo) => repo,
        };
        let rows = match req.visible_rows(&repo, &name).await {
            Ok(rows) => rows,
            // Not hosted here: the repository's view of the mirror, if it
            // serves the package.
            Err(_) if req.serves_mirrored(&repo, &name) => {
                let view = req.mirrored_in(&repo, &name).await?;
                let counts = req
                    .counts(&repo, vec![name.clone()], req.visible(&repo)?)
                    .await?;
                return Ok(Reply::ok(req.mirrored_package_json(
                    &repo,
                    &view,
                    counts.get(&name),
                )));
            }
            Err(e) => return Err(e),
        };
        let (r, n) = (repo.clone(), name.clone());
        let owners = req.db(move |c| hdb::owners(c, &r, &n)).await?;
        let counts = req
            .counts(&repo, vec![name.clone()], req.visible(&repo)?)
            .await?;
        Ok(Reply::ok(req.package_json(
            &repo,
            &name,
            &rows,
            &owners,
            counts.get(&name),
        )))
    })
    .await
}

pub(in crate::api) async fn list_packages(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    Query(q): QueryMap,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let query = crate::catalog::query::Query::read(q.get("search").map_or("", String::as_str))
            .map_err(|e| Reply::error(StatusCode::BAD_REQUEST, e.to_string()))?;
        let sort = crate::catalog::query::Sort::parse(q.get("sort").map(String::as_str));
        let page = crate::catalog::query::page(q.get("page").map(String::as_str));
        let (repo, view, visible) = match req.source()? {
            Source::Upstream(up) => (up.clone(), crate::catalog::View::Mirror(up), None),
            Source::Ours(repo) => {
                // A version-limited key's search matches, sorts and counts
                // on the releases it may read only.
                let visible = req.visible(&repo)?;
                let view = crate::catalog::View::Ours {
                    repository: repo.clone(),
                    upstream: req.config.upstream.repository.clone(),
                };
                (repo, view, visible)
            }
        };
        let searched = visible.clone();
        let mut found = req
            .catalog()?
            .call(move |c| {
                crate::catalog::search(
                    c,
                    &view,
                    &query,
                    sort,
                    page,
                    crate::catalog::query::PAGE_SIZE,
                    searched,
                )
            })
            .await
            .map_err(|e| Reply::internal(format!("catalog search failed: {e}")))?;
        // Deny rules keep releases out of a curated repository: its mirrored
        // packages show what its own records list.
        let curated = req
            .config
            .repositories
            .iter()
            .any(|r| r.name == repo && !r.deny.is_empty());
        if curated {
            for v in &mut found {
                if v.repository != repo
                    && let Some(served) = req.curated_versions(&repo, &v.name).await
                {
                    v.releases.retain(|r| served.contains(&r.version));
                }
            }
            found.retain(|v| !v.releases.is_empty());
        }
        // A version-limited key sees only the releases it may read (the
        // search left out packages with none).
        if let Some(visible) = &visible {
            for v in &mut found {
                v.releases.retain(|r| visible(&v.name, &r.version));
            }
        }
        let counts = req
            .counts(
                &repo,
                found.iter().map(|v| v.name.clone()).collect(),
                visible,
            )
            .await?;
        // Hosted packages answer as their own endpoint does, from their rows.
        let hosted: Vec<String> = found
            .iter()
            .filter(|v| v.repository == repo && repo != req.config.upstream.repository)
            .map(|v| v.name.clone())
            .collect();
        let r = repo.clone();
        let rows = if hosted.is_empty() {
            BTreeMap::new()
        } else {
            req.db(move |c| {
                let mut by_name: BTreeMap<String, Vec<ReleaseRow>> = BTreeMap::new();
                for name in &hosted {
                    by_name.insert(name.clone(), hdb::releases(c, &r, name)?);
                }
                Ok(by_name)
            })
            .await?
        };
        let listed: Vec<Value> = found
            .iter()
            .map(|v| match rows.get(&v.name) {
                Some(rows) => {
                    let visible: Vec<ReleaseRow> = rows
                        .iter()
                        .filter(|row| v.releases.iter().any(|r| r.version == row.version))
                        .cloned()
                        .collect();
                    req.package_json(&repo, &v.name, &visible, &[], counts.get(&v.name))
                }
                None => req.mirrored_package_json(&repo, v, counts.get(&v.name)),
            })
            .collect();
        Ok(Reply::ok(Value::Array(listed)))
    })
    .await
}

pub(in crate::api) async fn list_owners(
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

pub(in crate::api) async fn get_owner(
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

fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 64
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.@".contains(&b))
}

pub(in crate::api) async fn add_owner(
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

pub(in crate::api) async fn remove_owner(
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

/// A bounded number from the query string, or a 400 naming it.
fn bounded(
    q: &BTreeMap<String, String>,
    key: &str,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
) -> Result<usize, Reply> {
    wire::bounded(q, key, default, range)
        .map_err(|e| Reply::error(StatusCode::BAD_REQUEST, e.to_string()))
}

/// `GET /api/packages/NAME/dependents`: the packages of the path's
/// repository depending on NAME, through which releases (JSR's shape:
/// `items`, `total`). In a repository of ours that is its hosted packages
/// and the mirrored ones it serves; a private one needs read access.
pub(in crate::api) async fn dependents(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    Query(q): QueryMap,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let name = param(&p, "name").to_owned();
        let limit = bounded(&q, "limit", 20, 1..=100)?;
        let page = bounded(&q, "page", 1, 1..=usize::MAX)?;
        let per_package = bounded(&q, "versions_per_package_limit", 10, 1..=10)?;
        let up = req.config.upstream.repository.clone();
        let mut reads = None;
        let (view, target) = match req.source()? {
            Source::Upstream(up) => {
                req.mirrored(&name).await?;
                (crate::catalog::View::Mirror(up.clone()), up)
            }
            Source::Ours(repo) => {
                reads = req.read(&repo, Some(&name))?.map(|s| (repo.clone(), s));
                // NAME is one of ours, or the upstream's served here.
                let target = match req.visible_rows(&repo, &name).await {
                    Ok(_) => repo.clone(),
                    Err(_) if req.serves_mirrored(&repo, &name) => up.clone(),
                    Err(e) => return Err(e),
                };
                let view = crate::catalog::View::Ours {
                    repository: repo,
                    upstream: up,
                };
                (view, target)
            }
        };
        let mut all = req
            .catalog()?
            .call(move |c| crate::catalog::dependents(c, &view, &target, &name))
            .await
            .map_err(|e| Reply::internal(format!("catalog read failed: {e}")))?;
        // A version-limited key learns only of releases it may read.
        if let Some((repo, scopes)) = &reads {
            for d in &mut all {
                d.versions
                    .retain(|v| auth::may_read_release(scopes, repo, &d.name, v));
            }
            all.retain(|d| !d.versions.is_empty());
        }
        let items: Vec<Value> = all
            .iter()
            .skip((page - 1).saturating_mul(limit))
            .take(limit)
            .map(|d| {
                json!({
                    "repository": d.repository,
                    "package": d.name,
                    "versions": d.versions.iter().take(per_package).collect::<Vec<_>>(),
                    "total_versions": d.versions.len(),
                })
            })
            .collect();
        Ok(Reply::ok(json!({"items": items, "total": all.len()})))
    })
    .await
}

/// `GET /api/repos`: the repositories a caller may read: the mirror of
/// the upstream, and each repository of ours that is public or that the
/// caller's key may read.
pub(in crate::api) async fn list_repos(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let repos: Vec<Value> = req
            .repo_names()
            .into_iter()
            .filter_map(|name| req.repo_json(&name))
            .collect();
        Ok(Reply::ok(Value::Array(repos)))
    })
    .await
}

/// `GET /api/repos/NAME`.
pub(in crate::api) async fn get_repo(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let name = param(&p, "repo");
        // A private repository the caller may not read is not there.
        req.repo_json(name).map(Reply::ok).ok_or_else(|| {
            Reply::error(
                StatusCode::NOT_FOUND,
                format!("no repository {name:?} here"),
            )
        })
    })
    .await
}

/// `GET /api/stats`: the mirror's counts, newest releases, most recently
/// updated and most downloaded packages, and how far it is behind the
/// upstream (JSR's `newest` and `updated`, with hex.pm's figures).
pub(in crate::api) async fn stats(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let Source::Upstream(up) = req.source()? else {
            return Err(Reply::error(
                StatusCode::NOT_FOUND,
                format!(
                    "stats cover the mirror of the upstream: /api/repos/{}/stats",
                    req.config.upstream.repository
                ),
            ));
        };
        let repo = up.clone();
        let s = req
            .catalog()?
            .call(move |c| crate::catalog::stats(c, &repo, 10))
            .await
            .map_err(|e| Reply::internal(format!("catalog read failed: {e}")))?;
        // The sync's own figures, from the state database (read-only).
        let data_dir = req.config.data_dir.clone();
        let sync = tokio::task::spawn_blocking(move || -> Option<(Option<u64>, Option<u64>)> {
            let db = crate::store::Db::open_read_only(&data_dir).ok()??;
            db.call_blocking(|c| {
                let get = |k: &str| -> rusqlite::Result<Option<u64>> {
                    Ok(crate::store::db::meta(c, k)?.and_then(|v| v.parse().ok()))
                };
                Ok((get("upstream_newest_seen")?, get("upstream_newest_mirrored")?))
            })
            .ok()
        })
        .await
        .ok()
        .flatten();
        let date = |t: u64| iso(t as i64);
        Ok(Reply::ok(json!({
            "repository": up,
            "packages": s.packages,
            "releases": s.releases,
            "newest": s.newest.iter().map(|(n, v, published, seen)| json!({
                "name": n, "version": v,
                "published_at": published.map(date), "first_seen": date(*seen)})).collect::<Vec<_>>(),
            "updated": s.updated.iter().map(|(n, at)| json!({"name": n, "updated_at": date(*at)})).collect::<Vec<_>>(),
            "most_downloaded": s.most_downloaded.iter().map(|(n, d)| json!({"name": n, "downloads": d})).collect::<Vec<_>>(),
            "sync": sync.map(|(seen, mirrored)| json!({
                "newest_upstream_update": seen.map(date),
                "newest_mirrored_update": mirrored.map(date),
                "lag_secs": seen.zip(mirrored).map(|(s, m)| s.saturating_sub(m)),
            })),
        })))
    })
    .await
}
