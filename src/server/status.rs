//! `GET /health` (JSON liveness: tree, database, last sync; 503 when the tree
//! cannot be served) and `GET /metrics` (Prometheus text). Both only read:
//! the manifest of the current generation and the state database, read-only.

use std::collections::BTreeMap;
use std::path::Path;

use crate::store::bucket::writer::BucketWriter;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

use crate::clock::unix_now;
use crate::store::{MANIFEST_DELTA_FILE, MANIFEST_FILE};

/// The routes requests are counted under ([`route_label`]).
const ROUTES: [&str; 6] = [
    "registry",
    "tarball",
    "docs",
    "public_key",
    "manifest",
    "other",
];
/// Statuses counted without a lock; any other goes to `rare`.
const STATUSES: [u16; 12] = [200, 206, 304, 400, 401, 403, 404, 405, 416, 500, 502, 503];

/// Request counters kept by the server: per-route, per-status atomics, so
/// counting takes no lock that every request shares.
#[derive(Debug, Default)]
pub(super) struct Metrics {
    requests: [[AtomicU64; STATUSES.len()]; ROUTES.len()],
    bytes: [AtomicU64; ROUTES.len()],
    /// Statuses outside [`STATUSES`] (not expected from the file server).
    rare: Mutex<BTreeMap<(&'static str, u16), u64>>,
    started: AtomicU64,
}

impl Metrics {
    /// Counts one answered request.
    pub(super) fn record(&self, route: &'static str, status: u16, body_bytes: u64) {
        let r = ROUTES
            .iter()
            .position(|x| *x == route)
            .unwrap_or(ROUTES.len() - 1);
        match STATUSES.iter().position(|x| *x == status) {
            Some(i) => {
                self.requests[r][i].fetch_add(1, Ordering::Relaxed);
            }
            None => {
                let mut rare = self.rare.lock().unwrap_or_else(|p| p.into_inner());
                *rare.entry((ROUTES[r], status)).or_default() += 1;
            }
        }
        if body_bytes > 0 {
            self.bytes[r].fetch_add(body_bytes, Ordering::Relaxed);
        }
    }

    pub(super) fn mark_started(&self) {
        self.started.store(unix_now(), Ordering::Relaxed);
    }

    /// Every non-zero request count by (route, status), in order.
    fn request_counts(&self) -> BTreeMap<(&'static str, u16), u64> {
        let mut out = self.rare.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (r, row) in self.requests.iter().enumerate() {
            for (i, n) in row.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    *out.entry((ROUTES[r], STATUSES[i])).or_default() += n;
                }
            }
        }
        out
    }

    /// Every non-zero byte count by route.
    fn byte_counts(&self) -> BTreeMap<&'static str, u64> {
        ROUTES
            .iter()
            .zip(&self.bytes)
            .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// The metrics label of a request path: what kind of file it asks for.
pub(super) fn route_label(path: &str) -> &'static str {
    let mut segments = path.trim_start_matches('/').split('/');
    let mut first = segments.next().unwrap_or("");
    if first == "repos" {
        segments.next();
        first = segments.next().unwrap_or("");
    }
    match first {
        "names" | "versions" | "packages" => "registry",
        "tarballs" => "tarball",
        "docs" => "docs",
        "public_key" => "public_key",
        MANIFEST_FILE | MANIFEST_DELTA_FILE => "manifest",
        _ => "other",
    }
}

/// What the current generation's manifest says, read without verifying
/// (health reports; `hexmirror verify` is the check).
#[derive(Debug, Default)]
struct TreeState {
    version: Option<u64>,
    expires_at: Option<u64>,
    /// No generation published yet (no sync, no publish): a fact about a
    /// fresh install, not a fault.
    absent: bool,
    /// A manifest that is there but cannot be read.
    error: Option<String>,
}

fn tree_state(root: &Path) -> TreeState {
    // `exists` follows the `current` symlink: a missing link or a link to
    // nothing both mean nothing was published yet.
    if !root.join(MANIFEST_FILE).exists() {
        return TreeState {
            absent: true,
            ..TreeState::default()
        };
    }
    match crate::store::peek_manifest(root) {
        Ok(peek) => TreeState {
            version: Some(peek.version),
            expires_at: Some(peek.expires_at),
            absent: false,
            error: None,
        },
        Err(e) => TreeState {
            error: Some(e.to_string()),
            ..TreeState::default()
        },
    }
}

/// The last finished sync and the last successful one, from the database.
#[derive(Debug, Default)]
struct SyncState {
    /// The database does not exist yet: the first sync, publish or token
    /// creates it. Nothing to report, nothing wrong.
    absent: bool,
    last_finished: Option<(u64, u64, String, u64)>, // finished_at, duration, status, failed
    last_ok: Option<u64>,
    /// Newest upstream `updated_at` seen by the last sync, and the newest published.
    newest: (Option<u64>, Option<u64>),
    /// The quarantined packages (name, kind, since), by name.
    quarantined: Vec<(String, String, u64)>,
    /// The far side of an air gap: the last bundle imported.
    bundle: Option<BundleState>,
    error: Option<String>,
}

/// The last air-gap bundle imported here.
#[derive(Debug, Default)]
struct BundleState {
    sequence: u64,
    imported_at: Option<u64>,
    /// The upstream sync time the bundle carried: how fresh the tree is.
    upstream_synced_at: Option<u64>,
}

fn sync_state(data_dir: &Path) -> SyncState {
    use rusqlite::{Connection, OpenFlags, OptionalExtension};
    let path = data_dir.join("hexmirror.db");
    if !path.exists() {
        return SyncState {
            absent: true,
            ..SyncState::default()
        };
    }
    let result = (|| -> rusqlite::Result<SyncState> {
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        // Created but without its tables yet: `serve` makes the file while
        // it starts, and a request may come in between.
        let created: Option<String> = conn
            .query_row(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'syncs'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if created.is_none() {
            return Ok(SyncState {
                absent: true,
                ..SyncState::default()
            });
        }
        let last_finished = conn
            .query_row(
                "SELECT finished_at, finished_at - started_at, status, COALESCE(failed, 0)
                 FROM syncs WHERE finished_at IS NOT NULL ORDER BY id DESC LIMIT 1",
                [],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, i64>(1)? as u64,
                        r.get(2)?,
                        r.get::<_, i64>(3)? as u64,
                    ))
                },
            )
            .optional()?;
        let last_ok = conn
            .query_row(
                "SELECT MAX(finished_at) FROM syncs WHERE status IN ('ok', 'up-to-date')",
                [],
                |r| r.get::<_, Option<i64>>(0),
            )?
            .map(|t| t as u64);
        let meta = |key: &str| -> rusqlite::Result<Option<u64>> {
            Ok(conn
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
                    r.get::<_, String>(0)
                })
                .optional()?
                .and_then(|v| v.parse().ok()))
        };
        // Databases made before the quarantine existed gain its table when
        // a writer next opens them; until then there is nothing in it.
        let has_quarantine = conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'quarantine'",
                [],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        let quarantined = if has_quarantine {
            let mut stmt =
                conn.prepare("SELECT package, kind, since FROM quarantine ORDER BY package")?;
            stmt.query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?.max(0) as u64))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        use crate::store::db::{BUNDLE_IMPORTED_AT, BUNDLE_SEQUENCE, BUNDLE_UPSTREAM_SYNCED_AT};
        let bundle = match meta(BUNDLE_SEQUENCE)? {
            Some(sequence) => Some(BundleState {
                sequence,
                imported_at: meta(BUNDLE_IMPORTED_AT)?,
                upstream_synced_at: meta(BUNDLE_UPSTREAM_SYNCED_AT)?,
            }),
            None => None,
        };
        Ok(SyncState {
            bundle,
            quarantined,
            newest: (
                meta("upstream_newest_seen")?,
                meta("upstream_newest_mirrored")?,
            ),
            last_finished,
            last_ok,
            absent: false,
            error: None,
        })
    })();
    result.unwrap_or_else(|e| SyncState {
        error: Some(format!("{}: {e}", path.display())),
        ..SyncState::default()
    })
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut res = Response::new(body.into());
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// `GET /health`.
pub(super) fn health(
    root: &Path,
    data_dir: Option<&Path>,
    proxy: Option<&crate::proxy::Proxy>,
    bucket: Option<&BucketWriter>,
) -> Response {
    let (status, body) = health_body(root, data_dir, proxy, bucket);
    respond(status, "application/json", format!("{body}\n"))
}

/// What the UI's status page shows: `/health`'s body, with the recent
/// syncs, every quarantined package with its reason, the proxy cache and
/// how far the mirror is behind the upstream.
pub(crate) fn report(
    root: &Path,
    data_dir: Option<&Path>,
    proxy: Option<&crate::proxy::Proxy>,
    bucket: Option<&BucketWriter>,
) -> serde_json::Value {
    let (_, mut body) = health_body(root, data_dir, proxy, bucket);
    let history = data_dir.map(|d| sync_history(d, 20)).unwrap_or_default();
    let now = unix_now();
    if let Some(obj) = body.as_object_mut() {
        obj.insert(
            "syncs".into(),
            serde_json::json!(
                history
                    .syncs
                    .iter()
                    .map(|s| serde_json::json!({
                        "started_at": crate::manifest::rfc3339(s.started_at),
                        "duration_secs": s.finished_at.map(|f| f.saturating_sub(s.started_at)),
                        "status": s.status,
                        "packages": s.packages,
                        "releases": s.releases,
                        "failed": s.failed,
                    }))
                    .collect::<Vec<_>>()
            ),
        );
        obj.insert(
            "quarantined".into(),
            serde_json::json!(
                history
                    .quarantined
                    .iter()
                    .map(|(name, kind, reason, since, tries)| serde_json::json!({
                        "package": name, "kind": kind, "reason": reason,
                        "since": crate::manifest::rfc3339(*since), "tries": tries,
                    }))
                    .collect::<Vec<_>>()
            ),
        );
        let newest = data_dir
            .map(sync_state)
            .map(|s| s.newest)
            .unwrap_or_default();
        obj.insert(
            "lag_secs".into(),
            serde_json::json!(
                newest
                    .0
                    .zip(newest.1)
                    .map(|(seen, mirrored)| seen.saturating_sub(mirrored))
            ),
        );
        obj.insert(
            "manifest_expires_in_secs".into(),
            serde_json::json!(tree_state(root).expires_at.map(|e| e as i64 - now as i64)),
        );
        if let Some(p) = proxy {
            let (files, bytes) = cached_files(p.root());
            let m = p.metrics();
            use std::sync::atomic::Ordering::Relaxed;
            obj.insert(
                "proxy_cache".into(),
                serde_json::json!({
                    "files": files, "bytes": bytes,
                    "hits": m.hits.load(Relaxed), "misses": m.misses.load(Relaxed),
                    "upstream_errors": m.upstream_errors.load(Relaxed),
                    "circuit_open": p.circuit_open(),
                }),
            );
        }
    }
    body
}

/// The files under the proxy's directory and their bytes (a bounded walk:
/// the proxy keeps `packages/`, `tarballs/` and a few index files).
fn cached_files(root: &Path) -> (u64, u64) {
    let mut stack = vec![root.to_owned()];
    let (mut files, mut bytes) = (0u64, 0u64);
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => {
                    files += 1;
                    bytes += m.len();
                }
                Err(_) => {}
            }
        }
    }
    (files, bytes)
}

/// One sync as the database recorded it.
#[derive(Debug)]
struct SyncRow {
    started_at: u64,
    finished_at: Option<u64>,
    status: String,
    packages: Option<i64>,
    releases: Option<i64>,
    failed: Option<i64>,
}

/// The recent syncs and the whole quarantine.
#[derive(Debug, Default)]
struct History {
    syncs: Vec<SyncRow>,
    quarantined: Vec<(String, String, String, u64, i64)>,
}

fn sync_history(data_dir: &Path, last: usize) -> History {
    use rusqlite::{Connection, OpenFlags, OptionalExtension};
    let path = data_dir.join("hexmirror.db");
    if !path.exists() {
        return History::default();
    }
    let read = || -> rusqlite::Result<History> {
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let has = |table: &str| -> rusqlite::Result<bool> {
            Ok(conn
                .query_row(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                    [table],
                    |_| Ok(()),
                )
                .optional()?
                .is_some())
        };
        let mut out = History::default();
        if has("syncs")? {
            out.syncs = conn
                .prepare(
                    "SELECT started_at, finished_at, status, packages, releases, failed
                     FROM syncs ORDER BY id DESC LIMIT ?1",
                )?
                .query_map([last as i64], |r| {
                    Ok(SyncRow {
                        started_at: r.get::<_, i64>(0)?.max(0) as u64,
                        finished_at: r.get::<_, Option<i64>>(1)?.map(|t| t.max(0) as u64),
                        status: r.get(2)?,
                        packages: r.get(3)?,
                        releases: r.get(4)?,
                        failed: r.get(5)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
        }
        if has("quarantine")? {
            out.quarantined = conn
                .prepare(
                    "SELECT package, kind, reason, since, tries FROM quarantine ORDER BY package LIMIT 1000",
                )?
                .query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)?.max(0) as u64, r.get(4)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
        }
        Ok(out)
    };
    read().unwrap_or_default()
}

/// `/health`'s status code and body.
fn health_body(
    root: &Path,
    data_dir: Option<&Path>,
    proxy: Option<&crate::proxy::Proxy>,
    bucket: Option<&BucketWriter>,
) -> (StatusCode, serde_json::Value) {
    let bucket = bucket.map(BucketWriter::status);
    let tree = tree_state(root);
    let sync = data_dir.map(sync_state);
    let now = unix_now();
    let expired = tree.expires_at.is_some_and(|e| e <= now);
    // A proxy serves what it can fetch even before any sync.
    let tree_ok = !tree.absent && tree.error.is_none();
    let servable = tree_ok || proxy.is_some();
    // Faults only: what a fresh install has not made yet (no generation, no
    // database) is reported as information below, not counted here.
    let degraded = expired
        || tree.error.is_some()
        || bucket.as_ref().is_some_and(|b| b.error.is_some())
        || sync.as_ref().is_some_and(|s| {
            s.error.is_some()
                || !s.quarantined.is_empty()
                || s.last_finished.as_ref().is_some_and(|l| l.2 == "failed")
        });
    let tree_note = tree.absent.then(|| {
        if proxy.is_some() {
            "no generation published yet (no sync so far); files are fetched from the upstream on request"
        } else {
            "no generation published yet: run `hexmirror sync`"
        }
    });
    let body = serde_json::json!({
        "status": if !servable { "unavailable" } else if degraded { "degraded" } else { "ok" },
        "storage": {
            "ok": servable,
            "published": !tree.absent,
            "note": tree_note,
            "generation": tree.version,
            "manifest_expires_at": tree.expires_at.map(crate::manifest::rfc3339),
            "manifest_expired": expired,
            "error": tree.error,
        },
        "database": sync.as_ref().map(|s| serde_json::json!({
            "ok": s.error.is_none(),
            "exists": !s.absent,
            "note": s.absent.then_some("not created yet: the first sync, publish or `hexmirror token` creates it"),
            "error": s.error,
        })),
        "last_sync": sync.as_ref().and_then(|s| s.last_finished.as_ref()).map(|(at, took, status, failed)| serde_json::json!({
            "finished_at": crate::manifest::rfc3339(*at),
            "duration_secs": took,
            "status": status,
            "failures": failed,
        })),
        "quarantine": sync.as_ref().map(|s| serde_json::json!({
            "count": s.quarantined.len(),
            "first": s.quarantined.iter().take(5).map(|q| &q.0).collect::<Vec<_>>(),
            "note": (!s.quarantined.is_empty()).then_some(
                "these packages keep their last good state; `hexmirror status` lists them with reasons"
            ),
        })),
        "upstream": sync.as_ref().map(|s| serde_json::json!({
            "last_successful_sync_age_secs": s.last_ok.map(|t| now.saturating_sub(t)),
        })),
        "air_gap": sync.as_ref().and_then(|s| s.bundle.as_ref()).map(|b| serde_json::json!({
            "last_bundle": b.sequence,
            "imported_at": b.imported_at.map(crate::manifest::rfc3339),
            "upstream_synced_at": b.upstream_synced_at.map(crate::manifest::rfc3339),
            "upstream_age_secs": b.upstream_synced_at.map(|t| now.saturating_sub(t)),
        })),
        "proxy": proxy.map(|p| serde_json::json!({
            "enabled": true,
            "circuit_open": p.circuit_open(),
        })),
        "bucket": bucket.map(|b| serde_json::json!({
            "role": "writer",
            "bucket": b.bucket,
            "published_version": b.published,
            "lease_until": b.lease_until.map(crate::manifest::rfc3339),
            "error": b.error.map(|(at, error)| serde_json::json!({
                "at": crate::manifest::rfc3339(at),
                "error": error,
            })),
        })),
    });
    let status = if servable {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

/// `GET /health` of a read-only node: the generation it follows in the
/// bucket. `degraded` while the bucket fails (cached files are still
/// served), the served manifest has expired, or the proxy's file list the
/// pointer names is not served; `unavailable` before the first generation
/// was read.
pub(super) fn bucket_health(reader: &crate::store::bucket::reader::Reader) -> Response {
    let health = reader.health();
    let now = unix_now();
    let expired = health.expires_at.is_some_and(|e| e <= now);
    let servable = health.version.is_some();
    let degraded = health.error.is_some()
        || health.fetch_error.is_some()
        || health.proxy_error.is_some()
        || expired;
    let body = serde_json::json!({
        "status": if !servable { "unavailable" } else if degraded { "degraded" } else { "ok" },
        "role": "reader",
        "storage": {
            "kind": "s3",
            "bucket": reader.bucket().name(),
            "ok": servable,
            "published": servable,
            "generation": health.version,
            "generation_name": health.generation,
            "manifest_expires_at": health.expires_at.map(crate::manifest::rfc3339),
            "manifest_expired": expired,
            "last_reached_at": health.last_ok.map(crate::manifest::rfc3339),
            "error": health.error,
            "last_fetch_error": health.fetch_error.map(|(at, error)| serde_json::json!({
                "at": crate::manifest::rfc3339(at),
                "error": error,
            })),
            "proxy_list_error": health.proxy_error,
        },
        "cache": {
            "bytes": health.cached_bytes,
            "budget_bytes": health.budget,
        },
    });
    let status = if servable {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    respond(status, "application/json", format!("{body}\n"))
}

/// `GET /metrics` of a read-only node.
pub(super) fn bucket_metrics(
    metrics: &Metrics,
    reader: &crate::store::bucket::reader::Reader,
) -> Response {
    let health = reader.health();
    let mut out = common_metrics(metrics, (health.hits, health.misses, health.cached_bytes));
    generation_gauges(&mut out, health.version, health.expires_at);
    let help = "1 while the bucket fails to answer (cached files are still served) or the \
                proxy's file list it names is not served.";
    gauge(
        &mut out,
        "hexmirror_bucket_degraded",
        help,
        u64::from(health.error.is_some() || health.proxy_error.is_some()),
    );
    if let Some(t) = health.last_ok {
        let help = "When the bucket last answered a poll (Unix time).";
        gauge(
            &mut out,
            "hexmirror_bucket_last_ok_timestamp_seconds",
            help,
            t,
        );
    }
    respond(StatusCode::OK, "text/plain; version=0.0.4", out)
}

/// The served generation's manifest version and expiry, local or bucket.
fn generation_gauges(out: &mut String, version: Option<u64>, expires_at: Option<u64>) {
    if let Some(v) = version {
        let help = "Manifest version of the served generation.";
        gauge(out, "hexmirror_generation", help, v);
    }
    if let Some(e) = expires_at {
        let help = "When the served manifest expires (Unix time).";
        gauge(out, "hexmirror_manifest_expiry_timestamp_seconds", help, e);
    }
}

/// One metric family's `# HELP` and `# TYPE` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A gauge with its header.
fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    use std::fmt::Write;
    family(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

/// What every node reports first: requests, bytes, start time, and its
/// cache's hits, misses and bytes held.
fn common_metrics(metrics: &Metrics, (hits, misses, held): (u64, u64, u64)) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    family(
        &mut out,
        "hexmirror_http_requests_total",
        "counter",
        "Requests answered, by route and status.",
    );
    for ((route, status), n) in &metrics.request_counts() {
        let _ = writeln!(
            out,
            "hexmirror_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
        );
    }
    family(
        &mut out,
        "hexmirror_http_response_bytes_total",
        "counter",
        "Body bytes sent, by route.",
    );
    for (route, n) in &metrics.byte_counts() {
        let _ = writeln!(
            out,
            "hexmirror_http_response_bytes_total{{route=\"{route}\"}} {n}"
        );
    }
    gauge(
        &mut out,
        "hexmirror_start_time_seconds",
        "When this server started (Unix time).",
        metrics.started.load(Ordering::Relaxed),
    );
    for (name, help, n) in [
        (
            "hexmirror_cache_hits_total",
            "Files answered from the response cache.",
            hits,
        ),
        (
            "hexmirror_cache_misses_total",
            "Cacheable files read from disk.",
            misses,
        ),
        (
            "hexmirror_sendfile_bytes_total",
            "Response body bytes sent from the page cache with sendfile.",
            super::sendfile::bytes_sent(),
        ),
    ] {
        family(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {n}");
    }
    gauge(
        &mut out,
        "hexmirror_cache_bytes",
        "Bytes held by the response cache for the served generation.",
        held,
    );
    out
}

/// `GET /metrics`.
pub(super) fn metrics(
    metrics: &Metrics,
    cache: &super::cache::ResponseCache,
    root: &Path,
    data_dir: Option<&Path>,
    proxy: Option<&crate::proxy::Proxy>,
) -> Response {
    use std::fmt::Write;
    let mut out = common_metrics(metrics, cache.stats());
    let tree = tree_state(root);
    generation_gauges(&mut out, tree.version, tree.expires_at);
    if let Some(sync) = data_dir.map(sync_state) {
        if let Some((at, took, _, failed)) = &sync.last_finished {
            let help = "When the last sync finished (Unix time).";
            gauge(&mut out, "hexmirror_last_sync_timestamp_seconds", help, *at);
            let help = "How long the last sync took.";
            gauge(
                &mut out,
                "hexmirror_last_sync_duration_seconds",
                help,
                *took,
            );
            let help = "Packages or releases the last sync could not mirror.";
            gauge(&mut out, "hexmirror_last_sync_failures", help, *failed);
        }
        if let (Some(seen), Some(mirrored)) = sync.newest {
            let help = "Newest upstream package update seen by the last sync (Unix time).";
            gauge(
                &mut out,
                "hexmirror_upstream_newest_update_timestamp_seconds",
                help,
                seen,
            );
            let help = "Newest upstream update seen minus newest update published here.";
            let lag = seen.saturating_sub(mirrored);
            gauge(&mut out, "hexmirror_upstream_lag_seconds", help, lag);
        }
        if let Some(b) = &sync.bundle {
            let help = "Sequence of the last air-gap bundle imported.";
            gauge(&mut out, "hexmirror_bundle_sequence", help, b.sequence);
            if let Some(at) = b.imported_at {
                let help = "When the last air-gap bundle was imported (Unix time).";
                gauge(
                    &mut out,
                    "hexmirror_bundle_imported_timestamp_seconds",
                    help,
                    at,
                );
            }
            if let Some(at) = b.upstream_synced_at {
                let help = "The upstream sync the last imported bundle carries (Unix time): the newest upstream state here.";
                gauge(
                    &mut out,
                    "hexmirror_bundle_upstream_synced_timestamp_seconds",
                    help,
                    at,
                );
            }
        }
        let help = "Packages held back by the quarantine (each keeps its last good state).";
        gauge(
            &mut out,
            "hexmirror_quarantined_packages",
            help,
            sync.quarantined.len() as u64,
        );
        family(
            &mut out,
            "hexmirror_quarantined_packages_by_kind",
            "gauge",
            "Quarantined packages by the kind of their last failure.",
        );
        for kind in crate::plan::FailureKind::ALL {
            let n = sync
                .quarantined
                .iter()
                .filter(|q| q.1 == kind.as_str())
                .count();
            let _ = writeln!(
                out,
                "hexmirror_quarantined_packages_by_kind{{kind=\"{}\"}} {n}",
                kind.as_str()
            );
        }
        if let Some(oldest) = sync.quarantined.iter().map(|q| q.2).min() {
            let help = "Seconds since the longest-quarantined package first failed.";
            let age = unix_now().saturating_sub(oldest);
            gauge(
                &mut out,
                "hexmirror_quarantine_oldest_age_seconds",
                help,
                age,
            );
        }
        if let Some(ok) = sync.last_ok {
            let help = "Seconds since the last complete sync.";
            let age = unix_now().saturating_sub(ok);
            gauge(
                &mut out,
                "hexmirror_last_successful_sync_age_seconds",
                help,
                age,
            );
        }
    }
    if let Some(p) = proxy {
        proxy_metrics(&mut out, p);
    }
    respond(StatusCode::OK, "text/plain; version=0.0.4", out)
}

fn proxy_metrics(out: &mut String, proxy: &crate::proxy::Proxy) {
    use std::fmt::Write;
    let m = proxy.metrics();
    let counter = |out: &mut String, name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    };
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    counter(
        out,
        "hexmirror_proxy_cache_hits_total",
        "Proxied requests answered from the cache.",
        get(&m.hits),
    );
    counter(
        out,
        "hexmirror_proxy_cache_misses_total",
        "Proxied requests that needed the upstream.",
        get(&m.misses),
    );
    counter(
        out,
        "hexmirror_upstream_requests_total",
        "Requests the proxy sent upstream.",
        get(&m.upstream_requests),
    );
    counter(
        out,
        "hexmirror_upstream_errors_total",
        "Proxy upstream requests that failed.",
        get(&m.upstream_errors),
    );
    counter(
        out,
        "hexmirror_upstream_request_seconds_total",
        "Time spent in proxy upstream requests (divide by requests for the mean latency).",
        get(&m.upstream_micros) / 1_000_000,
    );
    counter(
        out,
        "hexmirror_proxy_stale_served_total",
        "Cached files served stale because the upstream failed.",
        get(&m.stale_served),
    );
    counter(
        out,
        "hexmirror_proxy_circuit_opened_total",
        "Times the upstream circuit breaker opened.",
        get(&m.breaker_opened),
    );
    let _ = writeln!(
        out,
        "# HELP hexmirror_verification_failures_total Upstream files refused, by kind.\n# TYPE hexmirror_verification_failures_total counter"
    );
    for (kind, n) in m
        .verification_failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        let _ = writeln!(
            out,
            "hexmirror_verification_failures_total{{kind=\"{kind}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP hexmirror_proxy_circuit_open Whether the upstream circuit breaker is open.\n# TYPE hexmirror_proxy_circuit_open gauge\nhexmirror_proxy_circuit_open {}",
        u8::from(proxy.circuit_open())
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels() {
        assert_eq!(route_label("/packages/foo"), "registry");
        assert_eq!(route_label("/repos/acme/tarballs/foo-1.0.0.tar"), "tarball");
        assert_eq!(route_label("/hexmirror-manifest.json"), "manifest");
        assert_eq!(route_label("/nope"), "other");
        assert_eq!(route_label("/"), "other");
    }

    fn body(res: Response) -> serde_json::Value {
        let bytes = futures_body(res);
        serde_json::from_slice(&bytes).unwrap()
    }

    fn futures_body(res: Response) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(axum::body::to_bytes(res.into_body(), usize::MAX))
            .unwrap()
            .to_vec()
    }

    #[test]
    fn a_fresh_data_directory_is_information_not_a_fault() {
        let dir = tempfile::tempdir().unwrap();
        let res = health(&dir.path().join("current"), Some(dir.path()), None, None);
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        let b = body(res);
        assert_eq!(b["status"], "unavailable");
        assert_eq!(b["database"]["ok"], true, "{b}");
        assert_eq!(b["database"]["exists"], false, "{b}");
        assert_eq!(b["storage"]["published"], false, "{b}");
        assert!(b["storage"]["error"].is_null(), "{b}");
    }

    #[test]
    fn a_broken_database_is_a_fault() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hexmirror.db"), b"not a database").unwrap();
        let state = sync_state(dir.path());
        assert!(state.error.is_some());
        assert!(!state.absent);
    }

    #[test]
    fn health_without_a_tree_is_503_and_metrics_still_answer() {
        let dir = tempfile::tempdir().unwrap();
        let res = health(dir.path(), Some(dir.path()), None, None);
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        let m = Metrics::default();
        m.record("registry", 200, 10);
        m.record("registry", 200, 5);
        let cache = super::super::cache::ResponseCache::new(dir.path().into(), 0);
        let res = metrics(&m, &cache, dir.path(), Some(dir.path()), None);
        assert_eq!(res.status(), StatusCode::OK);
    }
}
