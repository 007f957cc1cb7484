//! Releases: publish (and replace), revert, retire and unretire, docs, and
//! reading one release.

use super::*;

pub(in crate::api) async fn publish(
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
        let bytes = read_upload(body, &req.config, "package tarball").await?;
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
                format!(
                    "the tarball's metadata names package {name:?}, the URL names {url_name:?}"
                ),
            ));
        }
        req.need(&repo, Some(&name), Access::Write)?;
        let admin = req
            .token
            .as_ref()
            .is_some_and(|t| auth::allows(&t.scopes, &repo, Some(&name), Access::Admin));
        let replace = q.get("replace").is_some_and(|v| v == "true");
        let outcome = req
            .change(&repo, Change::Publish { upload, replace }, admin)
            .await?;
        let row = outcome
            .release
            .ok_or_else(|| internal_error(&"a publish produced no release"))?;
        // A release just published has no downloads yet: a real count of 0.
        let body = req.release_json(
            &row,
            req.release_downloads(&repo, &row.package, &row.version)
                .await?,
        );
        Ok(if outcome.created {
            Reply::new(StatusCode::CREATED, body).with_header(
                header::LOCATION,
                req.release_url(&row.package, &row.version),
            )
        } else {
            Reply::ok(body)
        })
    })
    .await
}

/// The common shape of the release-level changes. `make` builds the change
/// once the caller is known to be allowed, and may check an upload on the
/// blocking pool first, so nothing is unpacked while the writer waits.
/// An uploaded tarball's bytes, within `[api] max_tarball_bytes`. Called
/// only once the caller is authorised: hyper answers `Expect: 100-continue`
/// when the body is first read, so an unauthorised client never uploads.
async fn read_upload(body: Body, config: &Config, what: &str) -> Result<Vec<u8>, Reply> {
    let limit = usize::try_from(config.api.max_tarball_bytes).unwrap_or(usize::MAX);
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        Reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{what} is larger than the limit of {limit} bytes ([api] max_tarball_bytes)"),
        )
    })?;
    Ok(bytes.to_vec())
}

async fn release_change<F>(
    state: Arc<ApiState>,
    client: Option<std::net::IpAddr>,
    p: BTreeMap<String, String>,
    headers: HeaderMap,
    make: impl FnOnce(String, String, Arc<Config>) -> F,
    created: StatusCode,
) -> Rendered
where
    F: Future<Output = Result<Change, Reply>>,
{
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
        let change = make(name.clone(), version.clone(), Arc::clone(&req.config)).await?;
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

pub(in crate::api) async fn revert(
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
        |name, version, _| async move { Ok(Change::Revert { name, version }) },
        StatusCode::NO_CONTENT,
    )
    .await
}

pub(in crate::api) async fn retire(
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
        move |name, version, _| async move {
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

pub(in crate::api) async fn unretire(
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
        |name, version, _| async move {
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

pub(in crate::api) async fn publish_docs(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
    body: Body,
) -> Rendered {
    release_change(
        state,
        client,
        p,
        headers,
        move |name, version, config| async move {
            // After the write check in `release_change`.
            let tarball = read_upload(body, &config, "docs tarball").await?;
            let docs = tokio::task::spawn_blocking(move || DocsUpload::inspect(tarball, &config))
                .await
                .map_err(HostedError::from)
                .and_then(|r| r)
                .map_err(hosted_error)?;
            Ok(Change::Docs {
                name,
                version,
                tarball: Some(docs),
            })
        },
        StatusCode::CREATED,
    )
    .await
}

pub(in crate::api) async fn revert_docs(
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
        |name, version, _| async move {
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

pub(in crate::api) async fn get_release(
    State(state): State<Arc<ApiState>>,
    ClientAddr(client): ClientAddr,
    Path(p): Params,
    headers: HeaderMap,
) -> Rendered {
    answer(&headers, async {
        let req = request(state, &headers, client, &p).await?;
        let (name, version) = (param(&p, "name"), param(&p, "version"));
        let no_release = |repo: &str| {
            Reply::error(
                StatusCode::NOT_FOUND,
                format!("{name} {version} is not a release in repository {repo}"),
            )
        };
        // A mirrored package: the upstream's, or in our repository's view.
        let (view, repo) = match req.source()? {
            Source::Upstream(up) => (req.mirrored(name).await?, up),
            Source::Ours(repo) => match req.visible_rows(&repo, name).await {
                Ok(rows) => {
                    let row = rows
                        .iter()
                        .find(|r| r.version == version)
                        .ok_or_else(|| no_release(&repo))?;
                    let downloads = req.release_downloads(&repo, name, version).await?;
                    return Ok(Reply::ok(req.release_json(row, downloads)));
                }
                Err(_) if req.serves_mirrored(&repo, name) => {
                    (req.mirrored_in(&repo, name).await?, repo)
                }
                Err(e) => return Err(e),
            },
        };
        let release = view
            .releases
            .iter()
            .find(|r| r.version == version)
            .ok_or_else(|| no_release(&repo))?;
        let downloads = req.release_downloads(&repo, name, version).await?;
        Ok(Reply::ok(
            req.mirrored_release_json(&repo, &view, release, downloads),
        ))
    })
    .await
}
