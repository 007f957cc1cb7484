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

mod installs;
pub use installs::InstallsError;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::config::{Config, ProxyConfig, UpstreamConfig};
use crate::registry::{self, PackageName, RegistryError};
use crate::store::{FileRef, Store, StoreError};
use crate::tarball::{Limits, TarballError};
use crate::upstream::release::{self, ReleaseError, Sums};
use crate::upstream::{Fetched, Upstream, UpstreamError, Validators};

/// Consecutive upstream failures that open the circuit.
const BREAKER_FAILURES: u32 = 5;
/// How long an open circuit stays open before one trial request.
const BREAKER_COOLDOWN: Duration = Duration::from_secs(30);

/// Why a proxied file cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The upstream does not have it (or the record has no such release).
    #[error("not found upstream")]
    NotFound,
    /// The upstream failed and nothing is cached (HTTP 502).
    #[error("upstream unavailable: {0}")]
    Upstream(#[from] UpstreamError),
    /// The upstream failed repeatedly; it is left alone for a while.
    #[error(
        "upstream unavailable: it failed {BREAKER_FAILURES} times in a row, not asking it again for {}s",
        BREAKER_COOLDOWN.as_secs()
    )]
    CircuitOpen,
    /// The upstream sent something that does not verify (HTTP 502).
    #[error("upstream sent {path} that does not verify: {source}")]
    Refused {
        /// The file.
        path: String,
        /// Why it was refused.
        source: Refusal,
    },
    /// The upstream sent something that did not verify a moment ago; it is
    /// not asked again until the back-off ends (HTTP 502).
    #[error("upstream sent {path} that did not verify; not asking again for another {secs_left}s")]
    RecentlyRefused {
        /// The file.
        path: String,
        /// Seconds until it is asked for again.
        secs_left: u64,
    },
    /// The tarball could not be fetched and stored.
    #[error(transparent)]
    Release(ReleaseError),
    /// Local storage failed (HTTP 500).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored record could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A verification task died (a bug).
    #[error("the verification task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The HTTP client could not be built.
    #[error("cannot build the upstream client: {0}")]
    Client(reqwest::Error),
}

/// What an upstream file failed.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// A registry file: signature, origin, name, format.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A tarball: checksums, structure, limits.
    #[error(transparent)]
    Tarball(#[from] TarballError),
    /// The release's record gives no checksum to check the tarball against.
    #[error("its signed record has no 32-byte outer checksum")]
    NoChecksum,
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
    store: Arc<Store>,
    upstream: Upstream,
    upstream_cfg: UpstreamConfig,
    settings: ProxyConfig,
    root: PathBuf,
    /// The served generation, read before asking the upstream for a record
    /// a tarball needs.
    tree: PathBuf,
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Paths the upstream said it does not have.
    negative: Expiring,
    /// Paths whose upstream copy did not verify (the quarantine's back-off,
    /// per path).
    refused: Expiring,
    validators: Mutex<HashMap<String, Validators>>,
    breaker: Mutex<Breaker>,
    metrics: ProxyMetrics,
    /// Told of every record and tarball the proxy verified.
    catalog: Option<crate::catalog::Catalog>,
    /// Told of every file linked, when a bucket writer publishes them.
    links: std::sync::OnceLock<Arc<crate::store::bucket::proxied::Pending>>,
}

impl Proxy {
    /// A proxy for `config`'s upstream, caching under `DATA_DIR/proxy`.
    pub fn new(
        config: &Config,
        catalog: Option<crate::catalog::Catalog>,
    ) -> Result<Arc<Self>, ProxyError> {
        let store = Arc::new(Store::open(&config.data_dir)?);
        // A request waits on this; one quick retry, then the stale copy.
        let mut upstream_cfg = config.upstream.clone();
        upstream_cfg.retries = upstream_cfg.retries.min(1);
        let upstream = Upstream::new(&upstream_cfg, config.mirror.concurrency.max(8))
            .map_err(ProxyError::Client)?;
        let root = config.data_dir.join("proxy");
        for dir in [root.join("packages"), root.join("tarballs")] {
            std::fs::create_dir_all(&dir).map_err(|source| StoreError {
                action: "create directory",
                path: dir.clone(),
                source,
            })?;
        }
        Ok(Arc::new(Self {
            store,
            upstream,
            upstream_cfg,
            settings: config.proxy.clone(),
            tree: config.data_dir.join("current"),
            root,
            inflight: Mutex::default(),
            negative: Expiring::default(),
            refused: Expiring::default(),
            validators: Mutex::default(),
            breaker: Mutex::default(),
            metrics: ProxyMetrics::default(),
            catalog,
            links: std::sync::OnceLock::new(),
        }))
    }

    /// Reports every file linked from now on to `pending`, which the bucket
    /// writer publishes for read-only nodes.
    pub fn report_links_to(&self, pending: Arc<crate::store::bucket::proxied::Pending>) {
        let _ = self.links.set(pending);
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
        self.refused_recently(rel)?;
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

    /// A refusal of `rel` still within its back-off.
    fn refused_recently(&self, rel: &str) -> Result<(), ProxyError> {
        match self.refused.until(rel) {
            Some(until) => Err(ProxyError::RecentlyRefused {
                path: rel.to_owned(),
                secs_left: until.saturating_duration_since(Instant::now()).as_secs() + 1,
            }),
            None => Ok(()),
        }
    }

    fn negative_hit(&self, rel: &str) -> bool {
        self.negative.until(rel).is_some()
    }

    async fn fetch(self: &Arc<Self>, rel: &str, kind: Kind) -> Result<(), ProxyError> {
        let cached = self.root.join(rel).is_file();
        if self.circuit_open() {
            return self.stale_or(cached, ProxyError::CircuitOpen);
        }
        match kind {
            Kind::Tarball { name, version } => self.fetch_tarball(rel, &name, &version).await,
            kind => self.fetch_registry(rel, kind, cached).await,
        }
    }

    /// Counts one upstream request and its duration around `request`.
    async fn timed<T>(&self, request: impl Future<Output = T>) -> T {
        let started = Instant::now();
        self.metrics
            .upstream_requests
            .fetch_add(1, Ordering::Relaxed);
        let out = request.await;
        self.metrics
            .upstream_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        out
    }

    fn remember_missing(&self, rel: &str) {
        self.negative.remember(rel, self.settings.negative_ttl);
    }

    /// A tarball, checked against its verified record exactly as a sync
    /// checks it (the same function does both).
    async fn fetch_tarball(
        self: &Arc<Self>,
        rel: &str,
        name: &str,
        version: &str,
    ) -> Result<(), ProxyError> {
        let sums = self.release(name, version).await?;
        let package = PackageName::parse(name).map_err(|_| ProxyError::NotFound)?;
        let limits = Arc::new(Limits::default());
        let fetched = self
            .timed(release::fetch_tarball(
                &self.upstream,
                &self.store,
                &package,
                version,
                sums,
                limits,
            ))
            .await;
        let file = match fetched {
            Ok((file, metadata)) => {
                if let Some(catalog) = &self.catalog {
                    catalog.note_tarball(file.sha256, metadata).await;
                }
                file
            }
            Err(ReleaseError::Upstream(e)) => {
                self.upstream_failed(&e);
                return Err(e.into());
            }
            Err(ReleaseError::NotFound { .. }) => {
                self.upstream_ok();
                self.remember_missing(rel);
                return Err(ProxyError::NotFound);
            }
            Err(ReleaseError::Refused { source, .. }) => {
                self.upstream_ok();
                return Err(self.refused(rel, "tarball", Refusal::Tarball(source)));
            }
            Err(e) => return Err(ProxyError::Release(e)),
        };
        self.upstream_ok();
        self.link(rel, file).await
    }

    /// `/names`, `/versions` or a package record, conditionally when cached.
    async fn fetch_registry(
        self: &Arc<Self>,
        rel: &str,
        kind: Kind,
        cached: bool,
    ) -> Result<(), ProxyError> {
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
        let fetched = self
            .timed(self.upstream.get(
                rel,
                &validators,
                self.upstream_cfg.max_registry_bytes + (1 << 20),
            ))
            .await;
        let (body, validators) = match fetched {
            Err(e) => {
                self.upstream_failed(&e);
                return self.stale_or(cached, e.into());
            }
            Ok(Fetched::NotFound) => {
                self.upstream_ok();
                self.remember_missing(rel);
                return Err(ProxyError::NotFound);
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
                return Ok(());
            }
            Ok(Fetched::Body { body, validators }) => (body, validators),
        };
        self.upstream_ok();
        let this = Arc::clone(self);
        let verified = tokio::task::spawn_blocking(move || {
            let (deps, record) = match this.verify_registry(&kind, &body) {
                Ok(found) => found,
                Err(refusal) => return Ok(Err(refusal)),
            };
            Ok::<_, StoreError>(Ok((this.store.put_bytes(&body)?, deps, record)))
        })
        .await??;
        let (file, deps, record) = verified.map_err(|r| self.refused(rel, "registry", r))?;
        self.link(rel, file).await?;
        if let (Some(record), Some(catalog)) = (record, &self.catalog) {
            // What the proxy serves, the catalog shows (no /names date:
            // the proxy did not fetch /names for it).
            let repo = self.upstream_cfg.repository.clone();
            let put = catalog
                .call(move |c| {
                    let tx = c.transaction()?;
                    let entry = crate::catalog::Entry {
                        origin: crate::catalog::Origin::Mirrored,
                        repository: &repo,
                        record: &record,
                        updated_at: None,
                    };
                    crate::catalog::put(&tx, &entry, crate::clock::unix_now())?;
                    tx.commit()
                })
                .await;
            if let Err(e) = put {
                tracing::warn!(path = rel, "catalog: {e}");
            }
        }
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

    /// Fetches a dependency's record in the background. Boxed: the future
    /// contains `ensure`, which spawns this, and the cycle needs a name.
    fn prefetch(self: Arc<Self>, package: String) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            if let Err(e) = self.ensure(&format!("packages/{package}")).await {
                tracing::debug!(%package, "prefetch skipped: {e}");
            }
        })
    }

    fn stale_or(&self, cached: bool, error: ProxyError) -> Result<(), ProxyError> {
        if cached {
            self.metrics.stale_served.fetch_add(1, Ordering::Relaxed);
            Ok(())
        } else {
            Err(error)
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

    /// Counts and logs a refused upstream file.
    fn refused(&self, rel: &str, kind: &'static str, source: Refusal) -> ProxyError {
        *self
            .metrics
            .verification_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_default() += 1;
        tracing::warn!(path = rel, "refused from the upstream: {source}");
        self.refused.remember(rel, self.settings.negative_ttl);
        ProxyError::Refused {
            path: rel.to_owned(),
            source,
        }
    }

    /// The checksums a tarball must have, from the verified record (the
    /// served tree's, else the proxy's, fetched if needed). Read and
    /// verified on the blocking pool.
    async fn release(self: &Arc<Self>, name: &str, version: &str) -> Result<Sums, ProxyError> {
        let rel = format!("packages/{name}");
        let from_tree = self.tree.join(&rel);
        let path = if from_tree.is_file() {
            from_tree
        } else {
            Box::pin(self.ensure(&rel)).await?;
            self.root.join(&rel)
        };
        let (this, name, version) = (Arc::clone(self), name.to_owned(), version.to_owned());
        tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&path).map_err(|source| ProxyError::Read {
                path: path.clone(),
                source,
            })?;
            let (key, repo) = (&this.upstream_cfg.public_key, &this.upstream_cfg.repository);
            let max = this.upstream_cfg.max_registry_bytes;
            let record = registry::verify_package_within(&bytes, key, repo, &name, max)
                .map_err(|e| this.refused(&rel, "record", Refusal::Registry(e)))?
                .into_inner();
            let release = record
                .releases
                .iter()
                .find(|r| r.version == version)
                .ok_or(ProxyError::NotFound)?;
            Sums::of(release).ok_or_else(|| this.refused(&rel, "record", Refusal::NoChecksum))
        })
        .await?
    }

    /// Verifies a registry file; returns, for a record, its dependencies in
    /// this repository (to prefetch). Blocking. Tarballs never come here
    /// (`fetch` sends them to `fetch_tarball`); one would be refused.
    /// Verifies a registry file; returns the dependencies to prefetch and,
    /// for a package record, the record (for the catalog).
    fn verify_registry(
        &self,
        kind: &Kind,
        body: &[u8],
    ) -> Result<(Vec<String>, Option<registry::proto::package::Package>), Refusal> {
        let (key, repo) = (&self.upstream_cfg.public_key, &self.upstream_cfg.repository);
        let max = self.upstream_cfg.max_registry_bytes;
        let deps = match kind {
            Kind::Names => {
                registry::verify_names_within(body, key, repo, max).map(|_| Vec::new())?
            }
            Kind::Versions => {
                registry::verify_versions_within(body, key, repo, max).map(|_| Vec::new())?
            }
            Kind::Package(name) => {
                let record =
                    registry::verify_package_within(body, key, repo, name, max)?.into_inner();
                let mut deps: Vec<String> = record
                    .releases
                    .iter()
                    .flat_map(|rel| &rel.dependencies)
                    .filter(|d| d.repository.as_deref().is_none_or(|x| x == repo.as_str()))
                    .map(|d| d.package.clone())
                    .collect();
                deps.sort();
                deps.dedup();
                return Ok((deps, Some(record)));
            }
            Kind::Tarball { .. } => return Err(Refusal::NoChecksum),
        };
        Ok((deps, None))
    }

    /// Links the stored blob `file` at `rel` through the store (one rename,
    /// directory fsync), then dates it now: the cache's age is its own.
    async fn link(self: &Arc<Self>, rel: &str, file: FileRef) -> Result<(), ProxyError> {
        let (this, rel) = (Arc::clone(self), rel.to_owned());
        tokio::task::spawn_blocking(move || {
            this.store.link_into(&this.root, &rel, &file)?;
            if let Some(pending) = this.links.get() {
                pending.linked(&rel, file);
            }
            let target = this.root.join(&rel);
            if let Err(e) = std::fs::File::options()
                .append(true)
                .open(&target)
                .and_then(|f| f.set_modified(SystemTime::now()))
            {
                tracing::debug!(path = %target.display(), "cannot date the cached file: {e}");
            }
            Ok(())
        })
        .await?
    }
}

/// Paths remembered for a while (a 404, a refusal), forgotten once past.
#[derive(Debug, Default)]
struct Expiring(Mutex<HashMap<String, Instant>>);

impl Expiring {
    fn remember(&self, rel: &str, ttl: Duration) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(rel.to_owned(), Instant::now() + ttl);
    }

    /// Until when `rel` is remembered; `None` once that has passed.
    fn until(&self, rel: &str) -> Option<Instant> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(rel) {
            Some(until) if Instant::now() < *until => Some(*until),
            Some(_) => {
                map.remove(rel);
                None
            }
            None => None,
        }
    }
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
