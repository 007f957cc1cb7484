//! The pull-through cache: a file of the upstream tree that the served
//! generation lacks is fetched on request, verified exactly as a sync
//! verifies it (signature and origin for registry files; outer and inner
//! checksums and structure for tarballs, against the verified record), stored
//! as a blob and linked under `DATA_DIR/proxy/`, from where it is served.
//!
//! - One fetch per file: concurrent requests for the same path wait for the
//!   first one and then read what it stored.
//! - Records, `/names` and `/versions` are re-asked (conditionally) once
//!   older than `record_ttl`; tarballs never change and are kept.
//! - Upstream 404s are remembered for `negative_ttl`.
//! - A circuit breaker stops asking a failing upstream for a while; what is
//!   cached keeps being served, stale records included.
//!
//! Only the upstream's own paths are proxied, never `/repos/...`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::config::{Config, ProxyConfig, UpstreamConfig};
use crate::registry::{self, PackageName};
use crate::store::{Store, StoreError};
use crate::tarball::{self, Expected, Limits};
use crate::upstream::{Fetched, Upstream, UpstreamError, Validators};

/// Consecutive upstream failures that open the circuit.
const BREAKER_FAILURES: u32 = 5;
/// How long an open circuit stays open before one trial request.
const BREAKER_COOLDOWN: Duration = Duration::from_secs(30);
/// Largest registry file accepted from the upstream.
const MAX_REGISTRY: u64 = 64 * 1024 * 1024;

/// Why a proxied file cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The upstream does not have it (or the record has no such release).
    #[error("not found upstream")]
    NotFound,
    /// The upstream failed and nothing is cached (HTTP 502).
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    /// The upstream sent something that does not verify (HTTP 502).
    #[error("upstream sent {path} that does not verify: {reason}")]
    Verification {
        /// The file.
        path: String,
        /// Why it was refused.
        reason: String,
    },
    /// Local storage failed (HTTP 500).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the proxy counts, for `/metrics`.
#[derive(Debug, Default)]
pub struct ProxyMetrics {
    /// Requests answered from the cache.
    pub hits: AtomicU64,
    /// Requests that needed the upstream.
    pub misses: AtomicU64,
    /// Requests sent upstream.
    pub upstream_requests: AtomicU64,
    /// Upstream requests that failed (transport, 5xx after retries).
    pub upstream_errors: AtomicU64,
    /// Sum of upstream request durations, in microseconds.
    pub upstream_micros: AtomicU64,
    /// Stale files served because the upstream failed.
    pub stale_served: AtomicU64,
    /// Times the circuit breaker opened.
    pub breaker_opened: AtomicU64,
    /// Verification failures by kind (signature, origin, checksum, structure...).
    pub verification_failures: Mutex<BTreeMap<&'static str, u64>>,
}

#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

/// The pull-through cache; shared by every request.
#[derive(Debug)]
pub struct Proxy {
    store: Store,
    upstream: Upstream,
    upstream_cfg: UpstreamConfig,
    settings: ProxyConfig,
    root: PathBuf,
    /// The served generation, read before asking the upstream for a record
    /// a tarball needs.
    tree: PathBuf,
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    negative: Mutex<HashMap<String, Instant>>,
    validators: Mutex<HashMap<String, Validators>>,
    breaker: Mutex<Breaker>,
    metrics: ProxyMetrics,
}

impl Proxy {
    /// A proxy for `config`'s upstream, caching under `DATA_DIR/proxy`.
    pub fn new(config: &Config) -> Result<Arc<Self>, String> {
        let store = Store::open(&config.data_dir).map_err(|e| e.to_string())?;
        // A request waits on this; one quick retry, then the stale copy.
        let mut upstream_cfg = config.upstream.clone();
        upstream_cfg.retries = upstream_cfg.retries.min(1);
        let upstream = Upstream::new(&upstream_cfg, config.mirror.concurrency.max(8))
            .map_err(|e| format!("cannot build the upstream client: {e}"))?;
        let root = config.data_dir.join("proxy");
        std::fs::create_dir_all(root.join("packages"))
            .and_then(|()| std::fs::create_dir_all(root.join("tarballs")))
            .map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        Ok(Arc::new(Self {
            store,
            upstream,
            upstream_cfg,
            settings: config.proxy.clone(),
            tree: config.data_dir.join("current"),
            root,
            inflight: Mutex::default(),
            negative: Mutex::default(),
            validators: Mutex::default(),
            breaker: Mutex::default(),
            metrics: ProxyMetrics::default(),
        }))
    }

    /// The directory cached files are served from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The proxy's counters.
    pub fn metrics(&self) -> &ProxyMetrics {
        &self.metrics
    }

    /// Whether the circuit breaker is open now.
    pub fn circuit_open(&self) -> bool {
        let b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        b.open_until.is_some_and(|t| Instant::now() < t)
    }

    /// Makes `rel` (`names`, `versions`, `packages/NAME` or
    /// `tarballs/NAME-VERSION.tar`) available under [`Proxy::root`].
    pub async fn ensure(self: &Arc<Self>, rel: &str) -> Result<(), ProxyError> {
        let kind = Kind::of(rel).ok_or(ProxyError::NotFound)?;
        if self.fresh(rel, &kind) {
            self.metrics.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if self.negative_hit(rel) {
            return Err(ProxyError::NotFound);
        }
        let gate = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(inflight.entry(rel.to_owned()).or_default())
        };
        let result = {
            let _one_fetch = gate.lock().await;
            // Whoever held the gate before us may have stored it.
            if self.fresh(rel, &kind) {
                self.metrics.hits.fetch_add(1, Ordering::Relaxed);
                Ok(())
            } else if self.negative_hit(rel) {
                Err(ProxyError::NotFound)
            } else {
                self.metrics.misses.fetch_add(1, Ordering::Relaxed);
                self.fetch(rel, kind).await
            }
        };
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        // Two references: the map's and ours; nobody else is waiting.
        if Arc::strong_count(&gate) <= 2 {
            inflight.remove(rel);
        }
        result
    }

    /// The cached file exists and, for a registry file, is young enough.
    fn fresh(&self, rel: &str, kind: &Kind) -> bool {
        let Ok(meta) = std::fs::metadata(self.root.join(rel)) else {
            return false;
        };
        match kind {
            Kind::Tarball { .. } => true,
            _ => meta
                .modified()
                .ok()
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .is_some_and(|age| age < self.settings.record_ttl),
        }
    }

    fn negative_hit(&self, rel: &str) -> bool {
        let mut negative = self.negative.lock().unwrap_or_else(|p| p.into_inner());
        match negative.get(rel) {
            Some(until) if Instant::now() < *until => true,
            Some(_) => {
                negative.remove(rel);
                false
            }
            None => false,
        }
    }

    async fn fetch(self: &Arc<Self>, rel: &str, kind: Kind) -> Result<(), ProxyError> {
        let cached = self.root.join(rel).is_file();
        if self.circuit_open() {
            return self.stale_or(cached, "the upstream is failing (circuit open)".into());
        }
        let validators = if cached {
            self.validators
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(rel)
                .cloned()
                .unwrap_or_default()
        } else {
            Validators::default()
        };
        let limit = match kind {
            Kind::Tarball { .. } => Limits::default().max_tarball,
            _ => MAX_REGISTRY,
        };
        // A tarball is checked against its record: get that first.
        let expected = match &kind {
            Kind::Tarball { name, version } => Some(self.release(name, version).await?),
            _ => None,
        };
        let started = Instant::now();
        self.metrics
            .upstream_requests
            .fetch_add(1, Ordering::Relaxed);
        let fetched = self.upstream.get(rel, &validators, limit).await;
        self.metrics
            .upstream_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        match fetched {
            Err(e) => {
                self.upstream_failed(&e);
                self.stale_or(cached, e.to_string())
            }
            Ok(Fetched::NotFound) => {
                self.upstream_ok();
                self.negative
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(rel.to_owned(), Instant::now() + self.settings.negative_ttl);
                Err(ProxyError::NotFound)
            }
            Ok(Fetched::NotModified) => {
                self.upstream_ok();
                let path = self.root.join(rel);
                // Touch: fresh for another TTL.
                let touched = std::fs::File::options()
                    .append(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(SystemTime::now()));
                if let Err(e) = touched {
                    tracing::debug!(path = %path.display(), "cannot refresh mtime: {e}");
                }
                Ok(())
            }
            Ok(Fetched::Body { body, validators }) => {
                self.upstream_ok();
                let this = Arc::clone(self);
                let rel_owned = rel.to_owned();
                let stored = tokio::task::spawn_blocking(move || {
                    this.verify_and_store(&rel_owned, &kind, &body, expected.as_ref())
                })
                .await
                .map_err(|e| ProxyError::Unavailable(format!("verification task failed: {e}")))?;
                let deps = stored?;
                if self.settings.prefetch {
                    // Each fetched record prefetches its own dependencies:
                    // the closure, one fetch per package at most.
                    for dep in deps {
                        tokio::spawn(Arc::clone(self).prefetch(dep));
                    }
                }
                self.validators
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(rel.to_owned(), validators);
                Ok(())
            }
        }
    }

    /// Fetches a dependency's record in the background. Boxed: the future
    /// contains `ensure`, which spawns this, and the cycle needs a name.
    fn prefetch(self: Arc<Self>, package: String) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            if let Err(e) = self.ensure(&format!("packages/{package}")).await {
                tracing::debug!(%package, "prefetch skipped: {e}");
            }
        })
    }

    fn stale_or(&self, cached: bool, reason: String) -> Result<(), ProxyError> {
        if cached {
            self.metrics.stale_served.fetch_add(1, Ordering::Relaxed);
            Ok(())
        } else {
            Err(ProxyError::Unavailable(reason))
        }
    }

    fn upstream_ok(&self) {
        let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        b.failures = 0;
        b.open_until = None;
    }

    fn upstream_failed(&self, e: &UpstreamError) {
        self.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
        let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        b.failures += 1;
        if b.failures >= BREAKER_FAILURES && b.open_until.is_none_or(|t| Instant::now() >= t) {
            b.open_until = Some(Instant::now() + BREAKER_COOLDOWN);
            self.metrics.breaker_opened.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                failures = b.failures,
                "upstream failing ({e}); not asking it for {BREAKER_COOLDOWN:?}"
            );
        }
    }

    fn verification_failed(&self, kind: &'static str) {
        *self
            .metrics
            .verification_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_default() += 1;
    }

    /// The checksums a tarball must have, from the verified record (the
    /// served tree's, else the proxy's, fetched if needed).
    async fn release(
        self: &Arc<Self>,
        name: &str,
        version: &str,
    ) -> Result<ReleaseSums, ProxyError> {
        let rel = format!("packages/{name}");
        let from_tree = self.tree.join(&rel);
        let path = if from_tree.is_file() {
            from_tree
        } else {
            Box::pin(self.ensure(&rel)).await?;
            self.root.join(&rel)
        };
        let bytes = std::fs::read(&path).map_err(|e| ProxyError::Unavailable(e.to_string()))?;
        let record = registry::verify_package(
            &bytes,
            &self.upstream_cfg.public_key,
            &self.upstream_cfg.repository,
            name,
        )
        .map_err(|e| ProxyError::Verification {
            path: rel.clone(),
            reason: e.to_string(),
        })?
        .into_inner();
        let release = record
            .releases
            .into_iter()
            .find(|r| r.version == version)
            .ok_or(ProxyError::NotFound)?;
        Ok(ReleaseSums {
            outer: release.outer_checksum.unwrap_or_default(),
            inner: release.inner_checksum,
        })
    }

    fn verify_and_store(
        &self,
        rel: &str,
        kind: &Kind,
        body: &[u8],
        expected: Option<&ReleaseSums>,
    ) -> Result<Vec<String>, ProxyError> {
        let refuse = |what: &'static str, reason: String| {
            self.verification_failed(what);
            tracing::warn!(path = rel, "refused from the upstream: {reason}");
            ProxyError::Verification {
                path: rel.to_owned(),
                reason,
            }
        };
        let (key, repo) = (&self.upstream_cfg.public_key, &self.upstream_cfg.repository);
        // A record's dependencies in this repository, for prefetching.
        let checked = match kind {
            Kind::Names => registry::verify_names(body, key, repo).map(|_| Vec::new()),
            Kind::Versions => registry::verify_versions(body, key, repo).map(|_| Vec::new()),
            Kind::Package(name) => registry::verify_package(body, key, repo, name).map(|r| {
                let mut deps: Vec<String> = r
                    .into_inner()
                    .releases
                    .iter()
                    .flat_map(|rel| &rel.dependencies)
                    .filter(|d| d.repository.as_deref().is_none_or(|x| x == repo.as_str()))
                    .map(|d| d.package.clone())
                    .collect();
                deps.sort();
                deps.dedup();
                deps
            }),
            Kind::Tarball { name, version } => {
                let sums = expected.ok_or_else(|| refuse("record", "no record".into()))?;
                let exp = Expected {
                    name,
                    version,
                    outer_checksum: &sums.outer,
                    inner_checksum: Some(&sums.inner),
                };
                return match tarball::verify(body, &exp, &Limits::default()) {
                    Ok(_) => self.link(rel, body).map(|()| Vec::new()),
                    Err(e) => Err(refuse("tarball", e.to_string())),
                };
            }
        };
        match checked {
            Ok(deps) => self.link(rel, body).map(|()| deps),
            Err(e) => Err(refuse("registry", e.to_string())),
        }
    }

    /// Stores `body` as a blob and links it at `rel`, replacing atomically.
    fn link(&self, rel: &str, body: &[u8]) -> Result<(), ProxyError> {
        let file = self.store.put_bytes(body)?;
        let target = self.root.join(rel);
        let tmp = self.root.join(format!(
            ".{}-{:08x}",
            rel.replace('/', "_"),
            fastrand::u32(..)
        ));
        let blob = self.store.blob_path(&file.sha256);
        let io = |action: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| StoreError {
                action,
                path,
                source,
            }
        };
        std::fs::hard_link(&blob, &tmp).map_err(io("link blob into the proxy cache", &tmp))?;
        // A hard link shares the blob's mtime; the cache's age is its own.
        let _ = std::fs::File::options()
            .append(true)
            .open(&tmp)
            .and_then(|f| f.set_modified(SystemTime::now()));
        std::fs::rename(&tmp, &target).map_err(io("rename into the proxy cache", &target))?;
        Ok(())
    }
}

struct ReleaseSums {
    outer: Vec<u8>,
    inner: Vec<u8>,
}

/// What a proxied path is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Names,
    Versions,
    Package(String),
    Tarball { name: String, version: String },
}

impl Kind {
    /// Parses a path relative to the tree root; `None` for anything else.
    fn of(rel: &str) -> Option<Self> {
        match rel {
            "names" => return Some(Self::Names),
            "versions" => return Some(Self::Versions),
            _ => {}
        }
        if let Some(name) = rel.strip_prefix("packages/") {
            return PackageName::parse(name)
                .ok()
                .map(|_| Self::Package(name.to_owned()));
        }
        let file = rel.strip_prefix("tarballs/")?.strip_suffix(".tar")?;
        let (name, version) = file.split_once('-')?;
        (PackageName::parse(name).is_ok() && registry::is_valid_version(version)).then(|| {
            Self::Tarball {
                name: name.to_owned(),
                version: version.to_owned(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_of_paths() {
        assert_eq!(Kind::of("names"), Some(Kind::Names));
        assert_eq!(
            Kind::of("packages/plug"),
            Some(Kind::Package("plug".into()))
        );
        assert_eq!(
            Kind::of("tarballs/plug-1.0.0+b.tar"),
            Some(Kind::Tarball {
                name: "plug".into(),
                version: "1.0.0+b".into()
            })
        );
        for bad in [
            "packages/Plug",
            "tarballs/plug.tar",
            "tarballs/plug-.tar",
            "public_key",
            "repos/x/names",
            "docs/a-1.0.0.tar.gz",
        ] {
            assert_eq!(Kind::of(bad), None, "{bad}");
        }
    }
}
