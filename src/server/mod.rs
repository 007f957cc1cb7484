//! The read-only HTTP server over the served tree.
//!
//! Layout: [`paths`] turns a raw request path into a relative file path (pure,
//! and the only gate to the file system); `http` decides 200/206/304/416 from
//! the request headers (pure); `etag` opens a file and tags it by content.
//! This module wires them into one axum fallback handler.
//!
//! **Invariant:** the server never writes, and never opens a path that did not
//! come out of [`paths::parse`]. Files are opened by path on every request (the
//! root may be a symlink the writer swaps), and the ETag is computed from the
//! very handle that is streamed.
//!
//! Header choices: `/public_key` is `text/plain; charset=utf-8` (readable in a
//! browser; clients ignore the type); everything else is
//! `application/octet-stream` and never carries `Content-Encoding`, because
//! registry files are gzip *bodies* that clients gunzip themselves. `Range` is
//! honoured for GET only (RFC 9110 defines it for GET), so HEAD answers as a
//! full GET would.

mod bucket;
pub mod cache;
pub mod paths;
mod status;

mod conn;
pub use conn::Limits;
pub use conn::raise_open_file_limit;
mod etag;
mod http;
mod sendfile;

use std::io::{self, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use self::cache::ResponseCache;
use self::etag::EtagCache;
use self::http::{Conditions, Outcome, Validators};
use self::paths::{FileTarget, Kind, PathError, Target};

/// Read size for streaming files to the socket.
const STREAM_CHUNK: usize = 64 * 1024;
/// Files up to this size are read whole and sent from memory (and kept in
/// the response cache).
const SMALL_FILE: u64 = cache::MAX_ENTRY;

/// What every request handler shares: the root and the ETag memo.
#[derive(Debug)]
struct ServerState {
    root: PathBuf,
    etags: EtagCache,
    /// Ready responses of the served generation's small files.
    cache: Arc<ResponseCache>,
    /// Repositories under `/repos/` that are public (ours); any other is
    /// treated as an organisation repository and cached privately.
    public_repos: PublicRepos,
    /// The data directory, for `/health` and `/metrics` to read sync state.
    data_dir: Option<PathBuf>,
    metrics: status::Metrics,
    /// The API, whose gate guards private repositories.
    api: Option<Arc<crate::api::ApiState>>,
    /// The pull-through cache for upstream files the tree lacks.
    proxy: Option<Arc<crate::proxy::Proxy>>,
    /// Download counts.
    downloads: Option<Arc<crate::catalog::downloads::Counter>>,
    /// A read-only node's view of the bucket: files come from there, not
    /// from `root`.
    bucket: Option<Arc<crate::store::bucket::reader::Reader>>,
    /// The writer's link to the bucket, which `/health` reports on.
    bucket_writer: Option<Arc<crate::store::bucket::writer::BucketWriter>>,
}

/// The names of our public repositories, shared with the server so a
/// configuration reload can change them while it runs.
#[derive(Debug, Clone, Default)]
pub struct PublicRepos(Arc<std::sync::RwLock<std::collections::BTreeSet<String>>>);

impl PublicRepos {
    /// A set holding `names`.
    pub fn new(names: std::collections::BTreeSet<String>) -> Self {
        Self(Arc::new(std::sync::RwLock::new(names)))
    }

    /// Replaces the names; requests after this see the new set.
    pub fn set(&self, names: std::collections::BTreeSet<String>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = names;
    }

    fn contains(&self, name: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(name)
    }
}

/// How the router serves a tree beyond the files themselves.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Repositories under `/repos/` that are ours and public: cached publicly.
    pub public_repos: PublicRepos,
    /// The data directory, whose state database `/health` and `/metrics` read.
    pub data_dir: Option<PathBuf>,
    /// The write API under `/api`, and the read gate of private repositories.
    pub api: Option<Arc<crate::api::ApiState>>,
    /// The pull-through cache (proxy mode).
    pub proxy: Option<Arc<crate::proxy::Proxy>>,
    /// Where tarball downloads are counted.
    pub downloads: Option<Arc<crate::catalog::downloads::Counter>>,
    /// The web UI; `None`: no UI.
    pub ui: Option<crate::ui::Settings>,
    /// The response cache, shared with the hosted writer that brackets its
    /// in-place changes; `None`: one of [`cache::DEFAULT_BUDGET`] of its own.
    pub cache: Option<Arc<ResponseCache>>,
    /// A read-only node: serve the generation the bucket's pointer names.
    pub bucket: Option<Arc<crate::store::bucket::reader::Reader>>,
    /// A writer publishing into a bucket: `/health` reports its state.
    pub bucket_writer: Option<Arc<crate::store::bucket::writer::BucketWriter>>,
}

/// What `serve` answers with: the router, and the tree's files without it.
#[derive(Clone)]
pub struct App {
    /// Every route: the tree (as its fallback), the API, the UI.
    pub router: Router,
    /// The tree's files, answered without the router's dispatch.
    pub tree: Option<Tree>,
}

impl From<Router> for App {
    fn from(router: Router) -> Self {
        Self { router, tree: None }
    }
}

/// The tree's files without the router: the router's matching, request
/// extensions and boxing were about 5% of a small file's cost. Answers only
/// what the router hands to its fallback ([`handle`]) anyway: GET and HEAD
/// under the tree's top-level names ([`crate::config::TREE_TOP`]), which no
/// route and no UI prefix may take.
#[derive(Debug, Clone)]
pub struct Tree(Arc<ServerState>);

impl Tree {
    /// Whether the router would hand this request to the tree's handler.
    pub(crate) fn takes(method: &Method, path: &str) -> bool {
        (*method == Method::GET || *method == Method::HEAD)
            && path
                .strip_prefix('/')
                .and_then(|p| p.split('/').next())
                .is_some_and(|top| crate::config::TREE_TOP.contains(&top))
    }

    /// The answer to a request's `head` from `client`, as [`handle`] gives it.
    pub(crate) async fn answer(
        &self,
        head: Head,
        client: Option<std::net::IpAddr>,
        lane: Option<&sendfile::Lane>,
    ) -> Response {
        respond(
            &self.0,
            &head.method,
            &head.path,
            &head.headers,
            client,
            lane,
        )
        .await
    }
}

/// What the tree's handler reads of a request, copied out of hyper's read
/// buffer.
///
/// hyper's header values and URI are slices of the connection's read buffer.
/// While a request holds them, hyper cannot reuse that buffer: its read-ahead
/// for the next request allocates a fresh 8 KiB one, and the request's drop
/// frees the old one. That large malloc and free (with glibc's consolidation
/// of its small bins) was 3-4% of a tarball's CPU at 512 connections. A copy
/// of a path and a few header values costs a few small allocations, and when
/// taken before the request's future is made, hyper reuses its buffer in
/// place.
pub(crate) struct Head {
    method: Method,
    path: String,
    headers: HeaderMap,
}

impl Head {
    /// Copies what the tree's handler needs from `req` and drops the rest.
    pub(crate) fn detach<B>(req: axum::http::Request<B>) -> Self {
        let (parts, _body) = req.into_parts();
        let mut headers = HeaderMap::with_capacity(parts.headers.len());
        for (name, value) in &parts.headers {
            // A clone would share the read buffer; `from_bytes` copies. A
            // value that was a header a moment ago is one again.
            if let Ok(mut copy) = HeaderValue::from_bytes(value.as_bytes()) {
                copy.set_sensitive(value.is_sensitive());
                headers.append(name.clone(), copy);
            }
        }
        Self {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            headers,
        }
    }
}

/// Builds the router that serves the Hex tree rooted at `root`; everything
/// under `/repos/` is cached privately, as hex.pm does for organisations.
pub fn router(root: PathBuf) -> Router {
    router_with(root, Options::default())
}

/// Like [`router`], with [`Options`]: our public repositories and the data
/// directory behind `/health` and `/metrics`.
pub fn router_with(root: PathBuf, options: Options) -> Router {
    app_with(root, options).router
}

/// Like [`router_with`], with the tree's files also answerable without
/// the router (see [`Tree`]).
pub fn app_with(root: PathBuf, options: Options) -> App {
    let cache = options
        .cache
        .unwrap_or_else(|| Arc::new(ResponseCache::new(root.clone(), cache::DEFAULT_BUDGET)));
    let state = Arc::new(ServerState {
        root,
        etags: EtagCache::default(),
        cache,
        public_repos: options.public_repos,
        data_dir: options.data_dir,
        metrics: status::Metrics::default(),
        api: options.api.clone(),
        proxy: options.proxy.clone(),
        downloads: options.downloads.clone(),
        bucket: options.bucket.clone(),
        bucket_writer: options.bucket_writer.clone(),
    });
    state.metrics.mark_started();
    // One fallback for the tree instead of axum routes: validation must see
    // the raw, still-encoded path, and every shape is checked in `paths::parse`.
    let tree = Router::new()
        .route("/health", axum::routing::get(health))
        .route("/metrics", axum::routing::get(metrics))
        .fallback(handle)
        .with_state(Arc::clone(&state));
    // `/api` answers in the API's error shape even without an API, so a
    // client pointed here learns why instead of reading a text 404.
    let app = match options.api {
        Some(api) => tree.merge(crate::api::router(api)),
        None => tree.merge(crate::api::absent_router()),
    };
    let fast = Tree(Arc::clone(&state));
    let router = match &options.ui {
        Some(settings) => {
            let status: crate::ui::StatusFn = Arc::new(move || {
                status::report(
                    &state.root,
                    state.data_dir.as_deref(),
                    state.proxy.as_deref(),
                    state.bucket_writer.as_deref(),
                )
            });
            app.clone().merge(crate::ui::router(settings, app, status))
        }
        None => app,
    };
    App {
        router,
        tree: Some(fast),
    }
}

async fn health(State(state): State<Arc<ServerState>>) -> Response {
    if let Some(reader) = &state.bucket {
        return status::bucket_health(reader);
    }
    on_blocking_pool("/health", state, |s| {
        status::health(
            &s.root,
            s.data_dir.as_deref(),
            s.proxy.as_deref(),
            s.bucket_writer.as_deref(),
        )
    })
    .await
}

async fn metrics(State(state): State<Arc<ServerState>>) -> Response {
    if let Some(reader) = &state.bucket {
        return status::bucket_metrics(&state.metrics, reader);
    }
    on_blocking_pool("/metrics", state, |s| {
        status::metrics(
            &s.metrics,
            &s.cache,
            &s.root,
            s.data_dir.as_deref(),
            s.proxy.as_deref(),
        )
    })
    .await
}

/// Runs a status page (it reads the manifest and the database) off the
/// async threads.
async fn on_blocking_pool(
    path: &'static str,
    state: Arc<ServerState>,
    page: fn(&ServerState) -> Response,
) -> Response {
    tokio::task::spawn_blocking(move || page(&state))
        .await
        .unwrap_or_else(|e| {
            ServeError::Task {
                path: path.into(),
                source: e,
            }
            .into_response()
        })
}

/// Serves `router` on `listener` until `shutdown` completes, then drains
/// open connections (see [`conn`]: the cap, the header timeout).
pub async fn run(
    listener: tokio::net::TcpListener,
    app: impl Into<App>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving the mirror tree");
    }
    conn::serve(listener, app.into(), limits, shutdown).await
}

/// Why a request did not get its file.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("file not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error(transparent)]
    Upstream(crate::proxy::ProxyError),
    #[error(transparent)]
    Installs(crate::proxy::InstallsError),
    /// A read-only node could not get the file from the bucket.
    #[error(transparent)]
    Bucket(Arc<crate::store::bucket::reader::ReaderError>),
    #[error("serving {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("serving {path}: file task did not finish: {source}")]
    Task {
        path: PathBuf,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl ServeError {
    fn is_internal(&self) -> bool {
        matches!(self, Self::Io { .. } | Self::Task { .. } | Self::Bucket(_))
    }
}

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        // No side effects here: the handler logs internal errors, and their
        // detail (local paths) never reaches the client.
        let (status, body) = match &self {
            Self::Path(PathError::Unknown) | Self::NotFound => {
                (StatusCode::NOT_FOUND, "not found\n".to_owned())
            }
            Self::Path(e @ PathError::BadSegment { .. }) => {
                (StatusCode::BAD_REQUEST, format!("bad request: {e}\n"))
            }
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n".to_owned(),
            ),
            Self::Upstream(e) => (
                StatusCode::BAD_GATEWAY,
                format!("not mirrored yet, and the upstream could not supply it: {e}\n"),
            ),
            Self::Installs(e) => (StatusCode::BAD_GATEWAY, format!("{e}\n")),
            Self::Bucket(e)
                if matches!(
                    **e,
                    crate::store::bucket::reader::ReaderError::Corrupt { .. }
                ) =>
            {
                (
                    StatusCode::BAD_GATEWAY,
                    "the stored copy of this file failed its check; the operator is told\n"
                        .to_owned(),
                )
            }
            Self::Bucket(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "storage unavailable; try again shortly\n".to_owned(),
            ),
            Self::Io { .. } | Self::Task { .. } => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal server error\n".to_owned(),
            ),
        };
        let mut res = text_response(status, body);
        let headers = res.headers_mut();
        if matches!(self, Self::MethodNotAllowed) {
            headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        // A 404 may turn into a file at the next sync; keep caches from holding it.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        res
    }
}

async fn handle(
    State(state): State<Arc<ServerState>>,
    crate::api::ClientAddr(client): crate::api::ClientAddr,
    request: axum::extract::Request,
) -> Response {
    let lane = request.extensions().get::<Arc<sendfile::Lane>>().cloned();
    Tree(state)
        .answer(Head::detach(request), client, lane.as_deref())
        .await
}

async fn respond(
    state: &Arc<ServerState>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    client: Option<std::net::IpAddr>,
    lane: Option<&sendfile::Lane>,
) -> Response {
    let res = match serve(state, method, path, headers, client, lane).await {
        Ok(res) => {
            // A private repository's gate answers with the API's replies;
            // an internal one carries its cause for this log only.
            match res.extensions().get::<crate::api::Detail>() {
                Some(detail) => tracing::error!(%method, path, error = %detail.0, "request failed"),
                None => tracing::debug!(%method, path, status = res.status().as_u16(), "request"),
            }
            res
        }
        Err(e) => {
            if e.is_internal() {
                tracing::error!(%method, path, error = %e, "request failed");
            } else {
                tracing::debug!(%method, path, error = %e, "request refused");
            }
            e.into_response()
        }
    };
    let sent = if *method == Method::GET {
        res.headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0)
    } else {
        0
    };
    state
        .metrics
        .record(status::route_label(path), res.status().as_u16(), sent);
    // A tarball sent whole is a download; the path becomes a release when
    // the counts are written, off the request path.
    if *method == Method::GET
        && res.status() == StatusCode::OK
        && path.ends_with(".tar")
        && let Some(counter) = &state.downloads
    {
        counter.count(path, crate::clock::unix_now() / 86_400);
    }
    res
}

async fn serve(
    state: &Arc<ServerState>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    client: Option<std::net::IpAddr>,
    lane: Option<&sendfile::Lane>,
) -> Result<Response, ServeError> {
    // Validate before the method so a bad path is a 400 whatever the verb.
    let target = paths::parse(path)?;
    if method != Method::GET && method != Method::HEAD {
        return Err(ServeError::MethodNotAllowed);
    }
    match target {
        Target::Root => Ok(text_response(
            StatusCode::OK,
            "hexmirror: a read-only Hex package repository mirror\n".to_owned(),
        )),
        Target::File(target) => {
            // One generation for the whole request: the gate, the manifest
            // and the file all read the directory this epoch names.
            let epoch = state
                .bucket
                .is_none()
                .then(|| state.cache.epoch())
                .flatten();
            let tree = epoch.as_ref().map_or(state.root.as_path(), |e| e.dir());
            if let (Some(api), Some(org)) = (&state.api, &target.org)
                && api.is_gated(org)
            {
                // Boxed, as are the bucket and the proxy below: their states
                // would otherwise size every request's future (3.3 KB with
                // the proxy's inline), which hyper moves into a connection's
                // slot that, at hundreds of connections, is cold in cache.
                match Box::pin(api.gate(tree, org, &target.relative, headers, client)).await {
                    crate::api::Gate::Open => {}
                    crate::api::Gate::Refused(res) => return Ok(res),
                    crate::api::Gate::Filtered(bytes) => {
                        return Ok(serve_bytes(method, target.kind, &bytes, headers));
                    }
                }
            }
            if let Some(reader) = &state.bucket {
                return Box::pin(bucket::serve_file(state, reader, method, &target, headers)).await;
            }
            let file = serve_file(state, epoch.as_ref(), tree, method, &target, headers, lane);
            match file.await {
                Err(ServeError::NotFound) => {
                    Box::pin(proxied(state, method, &target, headers)).await
                }
                other => other,
            }
        }
    }
}

/// Serves generated bytes (a filtered index file): strong ETag from the
/// content, 304 on a match, never cached by shared caches.
fn serve_bytes(method: &Method, kind: Kind, bytes: &[u8], headers: &HeaderMap) -> Response {
    use sha2::Digest;
    let etag = etag::from_sha256(&sha2::Sha256::digest(bytes));
    let matches = joined(headers, &header::IF_NONE_MATCH)
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut res = if matches {
        Response::new(Body::empty())
    } else if *method == Method::GET {
        Response::new(Body::from(bytes.to_vec()))
    } else {
        Response::new(Body::empty())
    };
    *res.status_mut() = if matches {
        StatusCode::NOT_MODIFIED
    } else {
        StatusCode::OK
    };
    let h = res.headers_mut();
    set(h, header::ETAG, &etag);
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    h.insert(header::CONTENT_TYPE, content_type(kind));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    res
}

/// A file the tree lacks: fetched through the proxy when there is one and
/// the path is the upstream's (never `/repos/...`).
async fn proxied(
    state: &Arc<ServerState>,
    method: &Method,
    target: &FileTarget,
    headers: &HeaderMap,
) -> Result<Response, ServeError> {
    if target.kind == Kind::Installs {
        return installs(state, method, target, headers).await;
    }
    let Some(proxy) = &state.proxy else {
        return Err(ServeError::NotFound);
    };
    if target.org.is_some() || !matches!(target.kind, Kind::Registry | Kind::Tarball) {
        return Err(ServeError::NotFound);
    }
    let rel = target.relative.to_string_lossy().into_owned();
    match proxy.ensure(&rel).await {
        Ok(()) => serve_file(state, None, proxy.root(), method, target, headers, None).await,
        Err(crate::proxy::ProxyError::NotFound) => Err(ServeError::NotFound),
        Err(e) => Err(ServeError::Upstream(e)),
    }
}

/// An `installs/` file the tree lacks: the upstream's copy through the proxy,
/// as received; with no copy anywhere, the Hex release list is an empty one
/// (a valid answer: "nothing newer"), so clients stop reporting a failed
/// update check. Other installs files are a plain 404.
async fn installs(
    state: &Arc<ServerState>,
    method: &Method,
    target: &FileTarget,
    headers: &HeaderMap,
) -> Result<Response, ServeError> {
    let rel = target.relative.to_string_lossy().into_owned();
    let upstream = match &state.proxy {
        Some(proxy) => proxy.installs(&rel).await.map_err(ServeError::Installs)?,
        None => None,
    };
    let bytes = match upstream {
        Some(bytes) => bytes,
        None if rel.ends_with(".csv") => Vec::new(),
        None => return Err(ServeError::NotFound),
    };
    let mut res = serve_bytes(method, Kind::Installs, &bytes, headers);
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        cache_control(target, &state.public_repos),
    );
    res.headers_mut()
        .insert(header::CONTENT_TYPE, installs_type(&rel));
    Ok(res)
}

/// The list is CSV; installers are archives.
fn installs_type(rel: &str) -> HeaderValue {
    if rel.ends_with(".csv") {
        HeaderValue::from_static("text/csv; charset=utf-8")
    } else {
        HeaderValue::from_static("application/octet-stream")
    }
}

/// The body of a file response: kept bytes, or a handle to stream from.
enum Source {
    /// The whole file, and the handle it was read through when the
    /// connection may send it from there (see [`sendfile`]).
    Memory(Bytes, Option<Arc<std::fs::File>>),
    File(std::fs::File, PathBuf),
    /// HEAD: no body is sent, none was read.
    Nothing,
}

/// What a file response is built from.
struct FileAnswer {
    /// The strong ETag (visible ASCII, so also readable as text).
    etag: HeaderValue,
    last_modified: Option<SystemTime>,
    last_modified_header: Option<HeaderValue>,
    len: u64,
    /// `Content-Length` of the whole file, when already formatted.
    len_header: Option<HeaderValue>,
    source: Source,
}

/// Serves a file of `root`, the directory of `epoch` when the tree's own
/// (the proxy's files have none).
async fn serve_file(
    state: &Arc<ServerState>,
    epoch: Option<&Arc<cache::Epoch>>,
    root: &std::path::Path,
    method: &Method,
    target: &FileTarget,
    headers: &HeaderMap,
    lane: Option<&sendfile::Lane>,
) -> Result<Response, ServeError> {
    // The manifest is read from the epoch's generation but never kept:
    // re-signing rewrites it in place.
    let epoch = epoch.filter(|_| target.kind != Kind::Manifest);
    if let Some(epoch) = epoch {
        let hit = epoch.get(&target.relative);
        state.cache.note(hit.is_some());
        if let Some(entry) = hit {
            let answer = FileAnswer {
                etag: entry.etag.clone(),
                last_modified: entry.last_modified,
                last_modified_header: entry.last_modified_header.clone(),
                len: entry.body.len() as u64,
                len_header: Some(entry.len_header.clone()),
                source: Source::Memory(entry.body.clone(), entry.file.clone()),
            };
            return file_response(state, method, target, headers, answer, lane).await;
        }
    }
    // A miss reads from the epoch's generation, never through the link, so
    // what it keeps belongs to that epoch.
    let path = root.join(&target.relative);
    let wants_body = method == Method::GET;
    let (opened, content) = {
        let state = Arc::clone(state);
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            let Some(mut opened) = etag::open_tagged(&path, &state.etags)? else {
                return Ok(None);
            };
            // Registry files and most tarballs are small: read them in this
            // same blocking hop instead of streaming through tokio::fs, which
            // costs a pool hop per read (the benchmark showed the gap).
            let content = if wants_body && opened.len <= SMALL_FILE {
                let mut buf = Vec::with_capacity(opened.len as usize);
                std::io::Read::read_to_end(&mut opened.file, &mut buf)?;
                Some(Bytes::from(buf))
            } else {
                None
            };
            Ok::<_, io::Error>(Some((opened, content)))
        })
    }
    .await
    .map_err(|source| ServeError::Task {
        path: path.clone(),
        source,
    })?
    .map_err(|source| ServeError::Io {
        path: path.clone(),
        source,
    })?
    .ok_or(ServeError::NotFound)?;

    // RFC 9110 forbids a Last-Modified later than the response date.
    let last_modified = opened
        .modified
        .map(|m| http::truncate_to_secs(m.min(SystemTime::now())));
    let last_modified_header =
        last_modified.and_then(|lm| HeaderValue::from_str(&httpdate::fmt_http_date(lm)).ok());
    let Ok(etag) = HeaderValue::from_str(&opened.etag) else {
        return Err(ServeError::Io {
            path,
            source: io::Error::other("ETag is not a header value"),
        });
    };
    let source = match content {
        Some(bytes) => {
            // Tree files are content-addressed blobs, never rewritten in
            // place: the handle keeps reading the bytes just read.
            let file = (bytes.len() as u64 >= sendfile::MIN_BODY).then(|| Arc::new(opened.file));
            // The bytes read are the ones hashed: same handle, no seek since.
            if let Some(epoch) = epoch
                && bytes.len() as u64 == opened.len
            {
                epoch.put(
                    &target.relative,
                    cache::Entry {
                        body: bytes.clone(),
                        etag: etag.clone(),
                        last_modified,
                        last_modified_header: last_modified_header.clone(),
                        len_header: HeaderValue::from(opened.len),
                        file: file.clone(),
                    },
                );
            }
            Source::Memory(bytes, file)
        }
        None if wants_body => Source::File(opened.file, path),
        None => Source::Nothing,
    };
    let answer = FileAnswer {
        etag,
        last_modified,
        last_modified_header,
        len: opened.len,
        len_header: None,
        source,
    };
    file_response(state, method, target, headers, answer, lane).await
}

/// The response for a file: 200, 206, 304 or 416 as the request's
/// conditions and range decide, with its validators and cache headers.
async fn file_response(
    state: &ServerState,
    method: &Method,
    target: &FileTarget,
    headers: &HeaderMap,
    answer: FileAnswer,
    lane: Option<&sendfile::Lane>,
) -> Result<Response, ServeError> {
    let if_none_match = joined(headers, &header::IF_NONE_MATCH);
    let conditions = Conditions {
        if_none_match: if_none_match.as_deref(),
        if_modified_since: single(headers, &header::IF_MODIFIED_SINCE),
        range: single(headers, &header::RANGE),
        if_range: single(headers, &header::IF_RANGE),
    };
    let validators = Validators {
        etag: answer.etag.to_str().unwrap_or_default(),
        last_modified: answer.last_modified,
        len: answer.len,
    };
    let outcome = http::evaluate(&conditions, &validators, method == Method::GET);

    let mut res = Response::new(Body::empty());
    // Room for every header below at once: one allocation, no growth.
    *res.headers_mut() = HeaderMap::with_capacity(9);
    let h = res.headers_mut();
    h.insert(header::ETAG, answer.etag.clone());
    h.insert(
        header::CACHE_CONTROL,
        cache_control(target, &state.public_repos),
    );
    if let Some(lm) = answer.last_modified_header {
        h.insert(header::LAST_MODIFIED, lm);
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );

    let len = answer.len;
    let (status, body_range) = match outcome {
        Outcome::NotModified => {
            // A 304 may carry Content-Length only if it equals the 200's; set it
            // so axum does not fill in 0 for the empty body.
            let whole = answer.len_header.clone();
            h.insert(
                header::CONTENT_LENGTH,
                whole.unwrap_or_else(|| HeaderValue::from(len)),
            );
            (StatusCode::NOT_MODIFIED, None)
        }
        Outcome::Full => (StatusCode::OK, Some((0, len))),
        Outcome::Partial { start, end } => {
            set(
                h,
                header::CONTENT_RANGE,
                &format!("bytes {start}-{end}/{len}"),
            );
            (StatusCode::PARTIAL_CONTENT, Some((start, end - start + 1)))
        }
        Outcome::Unsatisfiable => {
            let mut res = text_response(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range not satisfiable\n".to_owned(),
            );
            set(
                res.headers_mut(),
                header::CONTENT_RANGE,
                &format!("bytes */{len}"),
            );
            res.headers_mut()
                .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            return Ok(res);
        }
    };
    *res.status_mut() = status;

    if let Some((start, count)) = body_range {
        let h = res.headers_mut();
        let ctype = match target.kind {
            Kind::Installs => installs_type(&target.relative.to_string_lossy()),
            kind => content_type(kind),
        };
        h.insert(header::CONTENT_TYPE, ctype);
        let whole = answer.len_header.filter(|_| count == len);
        h.insert(
            header::CONTENT_LENGTH,
            whole.unwrap_or_else(|| HeaderValue::from(count)),
        );
        match answer.source {
            Source::Memory(content, file) => {
                let end = (start + count).min(content.len() as u64) as usize;
                let body = content.slice(start.min(end as u64) as usize..end);
                if let (Some(lane), Some(file)) = (lane, file)
                    && method == Method::GET
                    && body.len() as u64 >= sendfile::MIN_BODY
                {
                    lane.register(sendfile::FromFile {
                        body: body.clone(),
                        file,
                        offset: start,
                    });
                }
                *res.body_mut() = Body::from(body);
            }
            Source::File(file, path) if method == Method::GET => {
                let mut file = tokio::fs::File::from_std(file);
                if start > 0 {
                    file.seek(SeekFrom::Start(start))
                        .await
                        .map_err(|source| ServeError::Io { path, source })?;
                }
                let stream = ReaderStream::with_capacity(file.take(count), STREAM_CHUNK);
                *res.body_mut() = Body::from_stream(stream);
            }
            Source::File(..) | Source::Nothing => {}
        }
    }
    Ok(res)
}

fn cache_control(target: &FileTarget, public_repos: &PublicRepos) -> HeaderValue {
    // Mirrors hex.pm (registry_builder.ex, assets.ex): org repos are private.
    let private = target
        .org
        .as_ref()
        .is_some_and(|org| !public_repos.contains(org));
    let value = match (private, target.kind) {
        (false, Kind::Registry | Kind::PublicKey) => "public, max-age=3600",
        (false, Kind::Tarball) => "public, max-age=604800",
        (false, Kind::Docs) => "public, max-age=86400",
        (true, Kind::Registry | Kind::PublicKey) => "private, max-age=3600",
        (true, Kind::Tarball | Kind::Docs) => "private, max-age=86400",
        // Changes with every generation: caches must ask again each time.
        (_, Kind::Manifest) => "no-cache",
        // A new Hex release changes the list: an hour, like the registry.
        (_, Kind::Installs) => "public, max-age=3600",
    };
    HeaderValue::from_static(value)
}

fn content_type(kind: Kind) -> HeaderValue {
    match kind {
        Kind::PublicKey => HeaderValue::from_static("text/plain; charset=utf-8"),
        Kind::Manifest => HeaderValue::from_static("application/json"),
        Kind::Registry | Kind::Tarball | Kind::Docs | Kind::Installs => {
            HeaderValue::from_static("application/octet-stream")
        }
    }
}

fn text_response(status: StatusCode, body: String) -> Response {
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // Error bodies may echo part of the request path; keep browsers from sniffing them.
    res.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}

/// Sets a header from text we built; values that cannot be headers are dropped.
fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// A header that must appear at most once; repeated or non-ASCII counts as absent.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok()
}

/// A list header, its field lines joined as RFC 9110 allows.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let parts: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

#[cfg(test)]
mod tests;
