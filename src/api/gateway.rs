//! The read gateway (seed 001): `/v1/package`, `/v1/release`,
//! `/v1/releases`, `/v1/search`, `/v1/meta`, in its envelope
//! (`{data, meta: {timestamp, request_id}, status, message, success}`),
//! over the mirror of the upstream, from the catalog. JSON only.
//!
//! Fields the mirror does not know (owners, a docs site) are left out
//! rather than given a made-up value; downloads are the mirror's own counts.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::ApiState;
use crate::catalog::query::{self, Sort};
use crate::catalog::{PackageView, ReleaseView};

type Params = Query<BTreeMap<String, String>>;

/// The endpoints, for `/v1/meta`.
const ENDPOINTS: [&str; 5] = [
    "/v1/package",
    "/v1/releases",
    "/v1/release",
    "/v1/search",
    "/v1/meta",
];

/// A gateway answer: the envelope around `data`, or an error.
fn envelope(status: StatusCode, message: &str, data: Value) -> Response {
    let request_id = format!("{:032x}", rand::random::<u128>());
    let ok = status.is_success();
    let body = json!({
        "data": data,
        "meta": {
            "timestamp": crate::manifest::rfc3339(crate::clock::unix_now()),
            "request_id": request_id,
        },
        "status": if ok { "ok" } else { "error" },
        "message": message,
        "success": ok,
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}

/// A refusal, answered in the envelope with `success: false`.
#[derive(Debug)]
pub(super) struct Refusal {
    status: StatusCode,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        envelope(self.status, &self.message, Value::Null)
    }
}

fn fail(status: StatusCode, message: String) -> Refusal {
    Refusal { status, message }
}

/// A required query parameter.
fn required<'a>(q: &'a BTreeMap<String, String>, key: &str) -> Result<&'a str, Refusal> {
    q.get(key)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            fail(
                StatusCode::BAD_REQUEST,
                format!("the `{key}` parameter is required"),
            )
        })
}

/// An optional bounded number; out of range or unreadable is a 400.
fn number(
    q: &BTreeMap<String, String>,
    key: &str,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
) -> Result<usize, Refusal> {
    super::wire::bounded(q, key, default, range)
        .map_err(|e| fail(StatusCode::BAD_REQUEST, e.to_string()))
}

/// A catalog read that failed: logged here, a bare 500 to the client.
fn read_failed(e: crate::catalog::CatalogError) -> Refusal {
    tracing::error!("catalog read failed: {e}");
    fail(
        StatusCode::INTERNAL_SERVER_ERROR,
        "catalog read failed".into(),
    )
}

/// The catalog, or the refusal when there is none.
fn catalog(state: &ApiState) -> Result<crate::catalog::Catalog, Refusal> {
    state.catalog.clone().ok_or_else(|| {
        fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "the catalog is unavailable; `hexmirror catalog rebuild` makes it".into(),
        )
    })
}

/// Download counts of mirrored packages `names`.
async fn counts(
    state: &ApiState,
    names: Vec<String>,
) -> Result<std::collections::HashMap<String, crate::catalog::downloads::Counts>, Refusal> {
    let repo = state.config().upstream.repository.clone();
    catalog(state)?
        .call(move |c| {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            crate::catalog::downloads::package_counts(
                c,
                &repo,
                &names,
                crate::clock::unix_now() / 86_400,
            )
        })
        .await
        .map_err(read_failed)
}

/// The catalog's view of mirrored package `name`.
async fn package_view(state: &ApiState, name: &str) -> Result<PackageView, Refusal> {
    let catalog = catalog(state)?;
    let (repo, n) = (state.config().upstream.repository.clone(), name.to_owned());
    let found = catalog
        .call(move |c| crate::catalog::package(c, &repo, &n))
        .await
        .map_err(read_failed)?;
    found.ok_or_else(|| {
        fail(
            StatusCode::NOT_FOUND,
            format!("no package {name} in the mirror"),
        )
    })
}

fn date(secs: Option<u64>) -> Value {
    secs.map_or(Value::Null, |s| Value::String(crate::manifest::rfc3339(s)))
}

fn release_entry(r: &ReleaseView) -> Value {
    json!({"version": r.version, "has_docs": r.has_docs, "inserted_at": date(r.published_at)})
}

fn latest_stable(p: &PackageView) -> Option<&str> {
    p.releases
        .iter()
        .find(|r| crate::version::Version::parse(&r.version).is_ok_and(|v| !v.is_pre_release()))
        .map(|r| r.version.as_str())
}

/// `GET /v1/package?name=`.
pub(super) async fn package(
    State(state): State<Arc<ApiState>>,
    Query(q): Params,
) -> Result<Response, Refusal> {
    let name = required(&q, "name")?;
    let p = package_view(&state, name).await?;
    let downloads = counts(&state, vec![p.name.clone()]).await?;
    let meta = p.meta().cloned().unwrap_or(Value::Null);
    let data = json!({"package": {
        "downloads": downloads.get(&p.name).map(|c| json!({"all": c.all, "recent": c.recent, "week": c.week, "day": c.day})),
        "name": p.name,
        "description": meta.get("description"),
        "licenses": meta.get("licenses").cloned().unwrap_or_else(|| json!([])),
        "links": meta.get("links").cloned().unwrap_or_else(|| json!({})),
        "inserted_at": date(p.releases.iter().filter_map(|r| r.published_at).min()),
        "updated_at": date(p.updated_at),
        "version_count": p.releases.len(),
        "latest_version": p.releases.first().map(|r| &r.version),
        "latest_stable_version": latest_stable(&p),
        "recent_releases": p.releases.iter().take(8).map(release_entry).collect::<Vec<_>>(),
    }});
    Ok(envelope(StatusCode::OK, "Package retrieved", data))
}

/// `GET /v1/releases?name=&limit=` (1-500, default 50).
pub(super) async fn releases(
    State(state): State<Arc<ApiState>>,
    Query(q): Params,
) -> Result<Response, Refusal> {
    let (name, limit) = (required(&q, "name")?, number(&q, "limit", 50, 1..=500)?);
    let p = package_view(&state, name).await?;
    let listed: Vec<Value> = p.releases.iter().take(limit).map(release_entry).collect();
    let data = json!({
        "package": p.name,
        "latest": p.releases.first().map(|r| &r.version),
        "total": p.releases.len(),
        "count": listed.len(),
        "releases": listed,
    });
    Ok(envelope(StatusCode::OK, "Releases retrieved", data))
}

/// `GET /v1/release?name=&version=`.
pub(super) async fn release(
    State(state): State<Arc<ApiState>>,
    Query(q): Params,
) -> Result<Response, Refusal> {
    let (name, version) = (required(&q, "name")?, required(&q, "version")?);
    let p = package_view(&state, name).await?;
    let r = p
        .releases
        .iter()
        .find(|r| r.version == version)
        .ok_or_else(|| {
            fail(
                StatusCode::NOT_FOUND,
                format!("{name} has no release {version}"),
            )
        })?;
    let meta = r.meta.clone().unwrap_or(Value::Null);
    let data = json!({"release": {
        "package": p.name,
        "version": r.version,
        "checksum": r.outer_checksum,
        "has_docs": r.has_docs,
        "inserted_at": date(r.published_at),
        "app": meta.get("app"),
        "elixir": meta.get("elixir"),
        "build_tools": meta.get("build_tools"),
        "retirement": r.retired.as_ref().map(|(reason, message)| json!({"reason": reason, "message": message})),
        "dependencies": r.requirements.iter().map(|d| json!({
            "name": d.name,
            "app": d.app.clone().unwrap_or_else(|| d.name.clone()),
            "optional": d.optional,
            "requirement": d.requirement,
        })).collect::<Vec<_>>(),
    }});
    Ok(envelope(StatusCode::OK, "Release retrieved", data))
}

/// `GET /v1/search?q=&page=&limit=` (1-100, default 20), hex.pm's syntax.
pub(super) async fn search(
    State(state): State<Arc<ApiState>>,
    Query(q): Params,
) -> Result<Response, Refusal> {
    let text = required(&q, "q")?.to_owned();
    let page = number(&q, "page", 1, 1..=1_000_000)?;
    let limit = number(&q, "limit", 20, 1..=query::PAGE_SIZE)?;
    let catalog = catalog(&state)?;
    let view = crate::catalog::View::Mirror(state.config().upstream.repository.clone());
    let parsed =
        query::Query::read(&text).map_err(|e| fail(StatusCode::BAD_REQUEST, e.to_string()))?;
    let found = catalog
        .call(move |c| crate::catalog::search(c, &view, &parsed, Sort::Name, page, limit, None))
        .await;
    let found = found.map_err(|e| {
        tracing::error!("catalog search failed: {e}");
        fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "catalog search failed".into(),
        )
    })?;
    let downloads = counts(&state, found.iter().map(|p| p.name.clone()).collect()).await?;
    let results: Vec<Value> = found
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "downloads_all": downloads.get(&p.name).map(|c| c.all),
                "description": p.meta().and_then(|m| m.get("description")),
                "latest_version": p.releases.first().map(|r| &r.version),
            })
        })
        .collect();
    let data = json!({"query": text, "page": page, "count": results.len(), "results": results});
    Ok(envelope(StatusCode::OK, "Packages searched", data))
}

/// `GET /v1/meta`.
pub(super) async fn meta(State(state): State<Arc<ApiState>>) -> Response {
    let data = json!({
        "source": format!("hexmirror: the verified mirror of {} ({})", state.config().upstream.repository, state.config().upstream.url),
        "note": "/v1/package = metadata and recent releases; /v1/releases = the release history; \
                 /v1/release = one release's dependencies, Elixir requirement and build tools; \
                 /v1/search = hex.pm's search syntax over the mirror. Download counts are this \
                 mirror's own; owners are not kept and are left out.",
        "endpoints": ENDPOINTS,
    });
    envelope(StatusCode::OK, "Meta retrieved", data)
}
