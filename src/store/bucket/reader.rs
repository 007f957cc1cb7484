//! A read-only node's view of the bucket: the generation the pointer names,
//! verified, and the content of its files, verified and kept in memory.
//!
//! The bucket is not trusted. A pointer is followed only to a manifest (and
//! delta) that verifies with the writer's key, whose version is the
//! pointer's and not below the one served before; every object is hashed
//! against the manifest before it is served or kept. The view switches as a
//! whole: one atomic swap of the snapshot, and the content cache is keyed by
//! SHA-256, so it cannot serve one generation's path with another's bytes.
//!
//! When the bucket is down, what is cached is served, the rest answers
//! 503, and [`Reader::health`] says degraded.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::{Bucket, BucketError, Fetched, POINTER, Pointer, base_key, blob_key, delta_key};
use crate::manifest::{self, ManifestError, ManifestPublicKey};

/// One fetch that concurrent misses of the same content share.
type Inflight = tokio::sync::OnceCell<Result<Bytes, Arc<ReaderError>>>;

/// How long a failed fetch keeps the node reported as degraded.
pub const FETCH_ERROR_MEMORY: u64 = 300;

/// How long a pointer that could not be followed (a manifest that does not
/// verify, disagrees or is missing) is not followed again while unchanged:
/// each try may download a base manifest of up to 90 MB.
pub const RETRY_REJECTED: u64 = 60;

/// Independent locks over the cache, so hits on different files never meet.
const SHARDS: usize = 32;

/// Why the view could not follow the pointer, or a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    /// The bucket could not be reached or refused.
    #[error(transparent)]
    Bucket(#[from] BucketError),
    /// The pointer names a manifest that is not in the bucket.
    #[error("bucket {bucket}: the pointer names {key}, which is missing")]
    Missing {
        /// The bucket.
        bucket: String,
        /// The missing object.
        key: String,
    },
    /// The manifest (or delta) failed verification.
    #[error("bucket {bucket}: {key}: {source}")]
    Manifest {
        /// The bucket.
        bucket: String,
        /// The object.
        key: String,
        /// Why.
        #[source]
        source: ManifestError,
    },
    /// The pointer and the manifest it names disagree.
    #[error(
        "bucket {bucket}: the pointer says version {pointer} of {generation}, the manifest is \
         version {manifest}"
    )]
    Inconsistent {
        /// The bucket.
        bucket: String,
        /// The pointer's version.
        pointer: u64,
        /// Its generation.
        generation: String,
        /// The manifest's version.
        manifest: u64,
    },
    /// A manifest's bytes are not the ones the pointer names.
    #[error(
        "bucket {bucket}: {key} is not the manifest the pointer names (its SHA-256 differs); not \
         followed"
    )]
    NotNamed {
        /// The bucket.
        bucket: String,
        /// The manifest object.
        key: String,
    },
    /// The pointer is the one that failed before, unchanged: not followed
    /// again until [`RETRY_REJECTED`] has passed.
    #[error("{0} (the pointer has not changed since; tried again at most once a minute)")]
    Rejected(Arc<ReaderError>),
    /// A verification task on the blocking pool died.
    #[error("verifying a manifest from the bucket: the task died; see the log")]
    Task,
    /// An object's content is not what the manifest says.
    #[error("bucket {bucket}: {key} does not match the manifest's SHA-256 and size; not served")]
    Corrupt {
        /// The bucket.
        bucket: String,
        /// The object.
        key: String,
    },
}

/// One served file: its content's hash and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct File {
    /// SHA-256 of the content (the blob's name).
    pub sha256: [u8; 32],
    /// Size in bytes.
    pub size: u64,
}

/// The generation a node serves: a verified base manifest's files, and the
/// changes its delta makes (hosted patches), kept apart so that a patch
/// costs a reader its few changed paths, not a copy of the whole tree.
#[derive(Debug)]
pub struct Snapshot {
    /// The manifest's version (the delta's when patched).
    pub version: u64,
    /// The generation's name.
    pub generation: String,
    /// When the pair was signed (Unix seconds): no file is newer.
    pub signed_at: u64,
    /// When it lapses.
    pub expires_at: u64,
    /// The base manifest's files by path.
    base: Arc<HashMap<String, File>>,
    /// The delta's: new content, or `None` for a path it removes.
    changed: HashMap<String, Option<File>>,
    /// The base manifest's bytes, served as `hexmirror-manifest.json`.
    pub manifest: Bytes,
    /// Their SHA-256, hashed once (the file is up to 90 MB).
    pub manifest_sha256: [u8; 32],
    /// The delta's bytes and SHA-256, served as `hexmirror-manifest-delta.json`.
    pub delta: Option<(Bytes, [u8; 32])>,
    /// The pull-through proxy's files the writer published ([`super::proxied`]).
    proxy: Option<Arc<ProxyList>>,
}

/// A verified proxy file list.
#[derive(Debug)]
struct ProxyList {
    named: super::ProxyRef,
    signed_at: u64,
    expires_at: u64,
    files: HashMap<String, File>,
}

impl Snapshot {
    /// The file served at `path`, if any.
    pub fn file(&self, path: &str) -> Option<File> {
        match self.changed.get(path) {
            Some(changed) => *changed,
            None => self.base.get(path).copied(),
        }
    }

    /// A file of the upstream's own tree that the generation lacks and the
    /// writer's proxy fetched, with when its list was signed.
    /// A lapsed list serves nothing (`now`: Unix seconds).
    pub fn proxied(&self, path: &str, now: u64) -> Option<(File, u64)> {
        let list = self.proxy.as_ref().filter(|l| now < l.expires_at)?;
        Some((*list.files.get(path)?, list.signed_at))
    }

    fn proxy_ref(&self) -> Option<&super::ProxyRef> {
        self.proxy.as_ref().map(|p| &p.named)
    }
}

/// A verified base manifest, without its file list as text: what a reader
/// keeps while the pointer names it.
struct Base {
    version: u64,
    generation: String,
    signed_at: u64,
    expires_at: u64,
    files: Arc<HashMap<String, File>>,
    bytes: Bytes,
    sha256: [u8; 32],
}

fn file_of(entry: &manifest::FileEntry) -> Option<File> {
    crate::store::FileRef::from_entry(entry).map(|f| File {
        sha256: f.sha256,
        size: f.size,
    })
}

/// What one poll did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refresh {
    /// No pointer in the bucket yet.
    Empty,
    /// The pointer did not change.
    Unchanged,
    /// Now serving this version.
    Switched(u64),
}

/// Health of a read-only node.
#[derive(Debug, Clone)]
pub struct Health {
    /// The served version, if any.
    pub version: Option<u64>,
    /// The served generation.
    pub generation: Option<String>,
    /// Its expiry.
    pub expires_at: Option<u64>,
    /// Unix time of the last poll that reached the bucket.
    pub last_ok: Option<u64>,
    /// The last poll's failure, if the last poll failed.
    pub error: Option<String>,
    /// The last failed fetch of a file's content (Unix time, error), kept
    /// for [`FETCH_ERROR_MEMORY`] seconds: a damaged object stays damaged
    /// while polls succeed.
    pub fetch_error: Option<(u64, String)>,
    /// Why the proxy file list the pointer names is not served, until one
    /// is: the generation is served without it.
    pub proxy_error: Option<String>,
    /// Cached bytes and their budget.
    pub cached_bytes: u64,
    /// The budget.
    pub budget: u64,
    /// Cache hits and misses.
    pub hits: u64,
    /// Misses (fetched from the bucket).
    pub misses: u64,
}

#[derive(Default)]
struct PollState {
    pointer_etag: Option<String>,
    /// The pointer (ETag) that last failed, until when it is not followed
    /// again, and why.
    rejected: Option<(String, u64, Arc<ReaderError>)>,
    /// The verified base manifest: a delta over it needs no second
    /// download of the base.
    base: Option<Arc<Base>>,
}

/// A read-only node's view of the bucket.
pub struct Reader {
    bucket: Bucket,
    key: ManifestPublicKey,
    snapshot: ArcSwapOption<Snapshot>,
    poll: tokio::sync::Mutex<PollState>,
    cache: ContentCache,
    /// Fetches in progress, by content: concurrent misses wait on one.
    inflight: Mutex<HashMap<[u8; 32], Arc<Inflight>>>,
    last_ok: AtomicU64,
    error: Mutex<Option<String>>,
    fetch_error: Mutex<Option<(u64, String)>>,
    /// Why the named proxy list is not served ([`Health::proxy_error`]).
    proxy_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("bucket", &self.bucket.name())
            .finish_non_exhaustive()
    }
}

impl Reader {
    /// A view of `bucket` verified with `key`, keeping up to `budget` bytes
    /// of content in memory.
    pub fn new(bucket: Bucket, key: ManifestPublicKey, budget: u64) -> Self {
        Self {
            bucket,
            key,
            snapshot: ArcSwapOption::empty(),
            poll: tokio::sync::Mutex::new(PollState::default()),
            cache: ContentCache::new(budget),
            inflight: Mutex::new(HashMap::new()),
            last_ok: AtomicU64::new(0),
            error: Mutex::new(None),
            fetch_error: Mutex::new(None),
            proxy_error: Mutex::new(None),
        }
    }

    /// The bucket, for messages.
    pub fn bucket(&self) -> &Bucket {
        &self.bucket
    }

    /// The generation served now.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.load_full()
    }

    fn note(&self, outcome: Result<(), &dyn std::fmt::Display>, now: u64) {
        let mut error = self.error.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok(()) => {
                self.last_ok.store(now, Ordering::Relaxed);
                *error = None;
            }
            Err(e) => *error = Some(e.to_string()),
        }
    }

    fn clear_proxy_error(&self) {
        *self.proxy_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn note_fetch(&self, e: &ReaderError, now: u64) {
        tracing::error!("{e}");
        *self.fetch_error.lock().unwrap_or_else(|p| p.into_inner()) = Some((now, e.to_string()));
    }

    /// Asks for the pointer and, when it moved, switches to the generation
    /// it names, verified. On any failure the served view is unchanged.
    pub async fn refresh(&self, now: u64) -> Result<Refresh, ReaderError> {
        let outcome = self.refresh_inner(now).await;
        match &outcome {
            Ok(_) => self.note(Ok(()), now),
            Err(e) => self.note(Err(e), now),
        }
        outcome
    }

    async fn refresh_inner(&self, now: u64) -> Result<Refresh, ReaderError> {
        let mut poll = self.poll.lock().await;
        let rejected = poll.rejected.take().filter(|(_, until, _)| now < *until);
        let asked = match &rejected {
            Some((etag, ..)) => Some(etag.as_str()),
            None => poll.pointer_etag.as_deref(),
        };
        let object = match self
            .bucket
            .get_if_changed(POINTER, asked, super::SMALL_OBJECT)
            .await?
        {
            Fetched::NotModified => {
                return match rejected {
                    Some((etag, until, e)) => {
                        poll.rejected = Some((etag, until, Arc::clone(&e)));
                        Err(ReaderError::Rejected(e))
                    }
                    None => Ok(Refresh::Unchanged),
                };
            }
            Fetched::Missing => return Ok(Refresh::Empty),
            Fetched::Body(object) => object,
        };
        let etag = object.etag.clone();
        match self.switch_to(&object.bytes, now, &mut poll).await {
            Ok(refresh) => {
                poll.pointer_etag = etag;
                Ok(refresh)
            }
            Err(e @ (ReaderError::Bucket(_) | ReaderError::Task)) => Err(e),
            Err(e) => {
                let e = Arc::new(e);
                if let Some(etag) = etag {
                    poll.rejected = Some((etag, now + RETRY_REJECTED, Arc::clone(&e)));
                }
                Err(ReaderError::Rejected(e))
            }
        }
    }

    /// Follows the pointer `bytes` to its generation, verified, and serves it.
    async fn switch_to(
        &self,
        bytes: &Bytes,
        now: u64,
        poll: &mut PollState,
    ) -> Result<Refresh, ReaderError> {
        let pointer: Pointer = self.bucket.parse(POINTER, bytes)?;
        if pointer.proxy.is_none() {
            self.clear_proxy_error();
        }
        let served = self.snapshot.load();
        if let Some(s) = served.as_ref()
            && s.version == pointer.version
            && s.generation == pointer.generation
            && hex::encode(s.manifest_sha256) == pointer.base_sha256
            && s.delta.as_ref().map(|(_, sha)| hex::encode(sha)) == pointer.delta_sha256
            && s.proxy_ref() == pointer.proxy.as_ref()
        {
            return Ok(Refresh::Unchanged);
        }
        let base = match &poll.base {
            Some(base)
                if base.version == pointer.base
                    && hex::encode(base.sha256) == pointer.base_sha256 =>
            {
                Arc::clone(base)
            }
            _ => {
                let key = base_key(pointer.base);
                let bytes = self.fetch_object(&key, super::MAX_MANIFEST).await?;
                let verifying = self.key.clone();
                let blob = bytes.clone();
                let parsed = tokio::task::spawn_blocking(move || {
                    let sha256: [u8; 32] = Sha256::digest(&blob).into();
                    let m = manifest::verify_base(&blob, &verifying)?;
                    let files = m
                        .files
                        .iter()
                        .filter_map(|(path, entry)| Some((path.clone(), file_of(entry)?)))
                        .collect();
                    Ok::<_, ManifestError>(Base {
                        sha256,
                        version: m.version,
                        generation: m.generation,
                        signed_at: m.signed_at,
                        expires_at: m.expires_at,
                        files: Arc::new(files),
                        bytes: blob,
                    })
                })
                .await
                .map_err(|_| ReaderError::Task)?
                .map_err(|e| self.bad(&key, e))?;
                if hex::encode(parsed.sha256) != pointer.base_sha256 {
                    return Err(self.not_named(&key));
                }
                Arc::new(parsed)
            }
        };
        let last = served.as_ref().map(|s| s.version);
        let (version, signed_at, expires_at, changed, delta_bytes, key_name) = match pointer.delta {
            None => (
                base.version,
                base.signed_at,
                base.expires_at,
                HashMap::new(),
                None,
                base_key(pointer.base),
            ),
            Some(v) => {
                let key = delta_key(v);
                let bytes = self.fetch_object(&key, super::MAX_DELTA).await?;
                let (verifying, blob, bound) = (self.key.clone(), bytes.clone(), Arc::clone(&base));
                let (delta, sha) = tokio::task::spawn_blocking(move || {
                    let delta = manifest::verify_delta(&blob, &verifying)?;
                    manifest::check_binding(&delta, bound.version, &bound.generation)?;
                    Ok::<_, ManifestError>((delta, Sha256::digest(&blob).into()))
                })
                .await
                .map_err(|_| ReaderError::Task)?
                .map_err(|e| self.bad(&key, e))?;
                if Some(hex::encode(sha)) != pointer.delta_sha256 {
                    return Err(self.not_named(&key));
                }
                let changed = delta
                    .files
                    .iter()
                    .map(|(path, entry)| (path.clone(), entry.as_ref().and_then(file_of)))
                    .collect();
                (
                    delta.version,
                    delta.signed_at,
                    base.expires_at.min(delta.expires_at),
                    changed,
                    Some((bytes, sha)),
                    key,
                )
            }
        };
        manifest::check_freshness(version, signed_at, expires_at, now, last)
            .map_err(|e| self.bad(&key_name, e))?;
        if version != pointer.version || base.generation != pointer.generation {
            return Err(ReaderError::Inconsistent {
                bucket: self.bucket.name().to_owned(),
                pointer: pointer.version,
                generation: pointer.generation,
                manifest: version,
            });
        }
        // The proxy's list never holds the generation back: one that does
        // not verify (or has lapsed) is left out, the last good one kept,
        // and the failure shows in `/health`. Only a bucket that cannot be
        // reached fails the switch (tried again next poll).
        let held = served.as_ref().and_then(|s| s.proxy.clone());
        let proxy = match &pointer.proxy {
            None => None,
            Some(named) if held.as_ref().is_some_and(|l| l.named == *named) => {
                self.clear_proxy_error();
                held
            }
            Some(named) => {
                let last = held.as_ref().map(|l| l.named.version);
                match self.proxy_list(named, now, last).await {
                    Ok(list) => {
                        self.clear_proxy_error();
                        Some(Arc::new(list))
                    }
                    Err(e)
                        if matches!(&e, ReaderError::Task)
                            || matches!(&e, ReaderError::Bucket(b)
                                if !matches!(b, BucketError::TooLarge { .. })) =>
                    {
                        return Err(e);
                    }
                    Err(e) => {
                        tracing::error!("{e}; the generation is served without it");
                        *self.proxy_error.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(e.to_string());
                        held.filter(|l| l.expires_at > now)
                    }
                }
            }
        };
        self.snapshot.store(Some(Arc::new(Snapshot {
            version,
            generation: base.generation.clone(),
            signed_at,
            expires_at,
            base: Arc::clone(&base.files),
            changed,
            manifest: base.bytes.clone(),
            manifest_sha256: base.sha256,
            delta: delta_bytes,
            proxy,
        })));
        poll.base = Some(base);
        Ok(Refresh::Switched(version))
    }

    /// Reads and verifies the proxy file list `named`: its hash, signature,
    /// kind, expiry, and no version below `last`.
    async fn proxy_list(
        &self,
        named: &super::ProxyRef,
        now: u64,
        last: Option<u64>,
    ) -> Result<ProxyList, ReaderError> {
        let key = super::proxy_key(named.version);
        let bytes = self.fetch_object(&key, super::MAX_PROXY_SET).await?;
        let verifying = self.key.clone();
        let (named, k) = (named.clone(), key.clone());
        let checked = tokio::task::spawn_blocking(move || {
            if hex::encode(Sha256::digest(&bytes)) != named.sha256 {
                return Ok(None);
            }
            let list = super::proxied::verify(&bytes, &verifying)?;
            manifest::check_freshness(list.version, list.signed_at, list.expires_at, now, last)?;
            if list.version != named.version {
                return Err(ManifestError::DeltaMismatch {
                    reason: format!(
                        "the pointer names version {}, the list is version {}",
                        named.version, list.version
                    ),
                });
            }
            let files = list
                .files
                .iter()
                .filter_map(|(path, entry)| Some((path.clone(), file_of(entry.as_ref()?)?)))
                .collect();
            Ok(Some(ProxyList {
                named,
                signed_at: list.signed_at,
                expires_at: list.expires_at,
                files,
            }))
        })
        .await
        .map_err(|_| ReaderError::Task)?
        .map_err(|e| self.bad(&k, e))?;
        checked.ok_or_else(|| self.not_named(&key))
    }

    fn not_named(&self, key: &str) -> ReaderError {
        ReaderError::NotNamed {
            bucket: self.bucket.name().to_owned(),
            key: key.to_owned(),
        }
    }

    fn bad(&self, key: &str, source: ManifestError) -> ReaderError {
        ReaderError::Manifest {
            bucket: self.bucket.name().to_owned(),
            key: key.to_owned(),
            source,
        }
    }

    async fn fetch_object(&self, key: &str, max: u64) -> Result<Bytes, ReaderError> {
        match self.bucket.get(key, max).await? {
            Some(object) => Ok(object.bytes),
            None => Err(ReaderError::Missing {
                bucket: self.bucket.name().to_owned(),
                key: key.to_owned(),
            }),
        }
    }

    /// The content of `file`: from memory, or fetched from the bucket and
    /// checked against its hash and size before it is kept or served.
    /// Concurrent misses of one file share a single fetch, so a hot file
    /// that just left the cache (or a new generation's) costs the bucket
    /// one request, not one per waiting client.
    pub async fn content(&self, file: File, now: u64) -> Result<Bytes, Arc<ReaderError>> {
        if let Some(bytes) = self.cache.get(&file.sha256) {
            return Ok(bytes);
        }
        let cell = Arc::clone(
            self.inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(file.sha256)
                .or_default(),
        );
        let result = cell
            .get_or_init(|| self.fetch_checked(file, now))
            .await
            .clone();
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if inflight
            .get(&file.sha256)
            .is_some_and(|c| Arc::ptr_eq(c, &cell))
        {
            inflight.remove(&file.sha256);
        }
        result
    }

    async fn fetch_checked(&self, file: File, now: u64) -> Result<Bytes, Arc<ReaderError>> {
        let key = blob_key(&file.sha256);
        // The manifest says how large it is: nothing larger is read.
        let fetched = match self.fetch_object(&key, file.size).await {
            Ok(bytes) => bytes,
            Err(ReaderError::Bucket(BucketError::TooLarge { .. })) => {
                let e = ReaderError::Corrupt {
                    bucket: self.bucket.name().to_owned(),
                    key,
                };
                self.note_fetch(&e, now);
                return Err(Arc::new(e));
            }
            Err(e) => {
                self.note_fetch(&e, now);
                return Err(Arc::new(e));
            }
        };
        let checked = {
            let bytes = fetched.clone();
            tokio::task::spawn_blocking(move || {
                bytes.len() as u64 == file.size && Sha256::digest(&bytes)[..] == file.sha256
            })
            .await
            .unwrap_or(false)
        };
        if !checked {
            let e = ReaderError::Corrupt {
                bucket: self.bucket.name().to_owned(),
                key,
            };
            self.note_fetch(&e, now);
            return Err(Arc::new(e));
        }
        self.cache.put(file.sha256, fetched.clone());
        Ok(fetched)
    }

    /// What `/health` and `/metrics` report.
    pub fn health(&self) -> Health {
        let snapshot = self.snapshot.load();
        let last_ok = self.last_ok.load(Ordering::Relaxed);
        Health {
            version: snapshot.as_ref().map(|s| s.version),
            generation: snapshot.as_ref().map(|s| s.generation.clone()),
            expires_at: snapshot.as_ref().map(|s| s.expires_at),
            last_ok: (last_ok > 0).then_some(last_ok),
            error: self.error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            fetch_error: self
                .fetch_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .filter(|(at, _)| crate::clock::unix_now() < at + FETCH_ERROR_MEMORY),
            proxy_error: self
                .proxy_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            cached_bytes: self.cache.used.load(Ordering::Relaxed),
            budget: self.cache.budget,
            hits: self.cache.hits.load(Ordering::Relaxed),
            misses: self.cache.misses.load(Ordering::Relaxed),
        }
    }
}

/// Follows the pointer every `every` until `stop`: the read-only node's
/// background task.
pub async fn follow(
    reader: Arc<Reader>,
    every: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        match reader.refresh(crate::clock::unix_now()).await {
            Ok(Refresh::Switched(version)) => {
                tracing::info!(
                    bucket = reader.bucket.name(),
                    version,
                    "serving a new generation from the bucket"
                );
            }
            Ok(Refresh::Empty) => {
                tracing::debug!(
                    bucket = reader.bucket.name(),
                    "no generation in the bucket yet"
                );
            }
            Ok(Refresh::Unchanged) => {}
            Err(e) => tracing::warn!("following the bucket's pointer: {e}"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

type ContentShard = RwLock<HashMap<[u8; 32], Bytes>>;

/// Content by SHA-256 within a byte budget; the oldest entries leave first.
struct ContentCache {
    shards: Box<[ContentShard]>,
    order: Mutex<VecDeque<([u8; 32], u64)>>,
    used: AtomicU64,
    budget: u64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl ContentCache {
    fn new(budget: u64) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            order: Mutex::new(VecDeque::new()),
            used: AtomicU64::new(0),
            budget,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn shard(&self, sha: &[u8; 32]) -> &ContentShard {
        &self.shards[sha[0] as usize % SHARDS]
    }

    fn get(&self, sha: &[u8; 32]) -> Option<Bytes> {
        let hit = self
            .shard(sha)
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(sha)
            .cloned();
        let counter = if hit.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }

    fn put(&self, sha: [u8; 32], bytes: Bytes) {
        let cost = bytes.len() as u64;
        // One entry may take at most a quarter of the budget, so a few large
        // tarballs cannot flush everything else.
        if cost > self.budget / 4 {
            return;
        }
        let mut order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut shard = self.shard(&sha).write().unwrap_or_else(|p| p.into_inner());
            if shard.insert(sha, bytes).is_some() {
                return;
            }
        }
        order.push_back((sha, cost));
        let mut used = self.used.fetch_add(cost, Ordering::Relaxed) + cost;
        while used > self.budget {
            let Some((old, size)) = order.pop_front() else {
                break;
            };
            self.shard(&old)
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&old);
            used = self.used.fetch_sub(size, Ordering::Relaxed) - size;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_content_cache_keeps_to_its_budget_and_drops_the_oldest_first() {
        let cache = ContentCache::new(100);
        let sha = |i: u8| [i; 32];
        for i in 0..5 {
            cache.put(sha(i), Bytes::from(vec![i; 20]));
        }
        assert_eq!(cache.used.load(Ordering::Relaxed), 100);
        cache.put(sha(9), Bytes::from(vec![9; 25]));
        assert!(cache.used.load(Ordering::Relaxed) <= 100);
        assert!(cache.get(&sha(0)).is_none() && cache.get(&sha(1)).is_none());
        assert_eq!(cache.get(&sha(9)).unwrap(), Bytes::from(vec![9; 25]));
        assert_eq!(cache.get(&sha(4)).unwrap(), Bytes::from(vec![4; 20]));
        // Too large for one entry: served, never kept.
        cache.put(sha(7), Bytes::from(vec![7; 26]));
        assert!(cache.get(&sha(7)).is_none());
    }

    mod follow {
        use std::collections::BTreeMap;

        use object_store::PutMode;

        use super::super::*;
        use crate::manifest::{Delta, FileEntry, Manifest, ManifestKey, UpstreamState};

        const NOW: u64 = 1_000_000;

        /// A memory bucket and the writer's key.
        fn setup() -> (Bucket, ManifestKey, Reader) {
            let bucket =
                Bucket::with_store(Arc::new(object_store::memory::InMemory::new()), "b", "");
            let key = ManifestKey::generate();
            let reader = Reader::new(bucket.clone(), key.public(), 1 << 20);
            (bucket, key, reader)
        }

        fn base(version: u64, generation: &str) -> Manifest {
            let content = format!("content of {version}");
            let files = BTreeMap::from([(
                "names".to_owned(),
                FileEntry {
                    sha256: hex::encode(Sha256::digest(content.as_bytes())),
                    size: content.len() as u64,
                },
            )]);
            Manifest {
                expires_at: NOW + 3600,
                files,
                generation: generation.into(),
                signed_at: NOW - 10,
                upstream: UpstreamState {
                    names_etag: None,
                    synced_at: NOW - 10,
                    url: "http://upstream".into(),
                    versions_etag: None,
                },
                version,
            }
        }

        fn delta(base: &Manifest, version: u64) -> Delta {
            Delta {
                base_version: base.version,
                expires_at: NOW + 3600,
                files: BTreeMap::from([("packages/new".to_owned(), None)]),
                generation: base.generation.clone(),
                signed_at: NOW - 5,
                version,
            }
        }

        async fn put(bucket: &Bucket, key: &str, bytes: Vec<u8>) -> String {
            bucket
                .put(key, Bytes::from(bytes.clone()), PutMode::Overwrite)
                .await
                .unwrap();
            hex::encode(Sha256::digest(&bytes))
        }

        /// Uploads a base (and a delta) and points at them, as a writer does.
        async fn publish(
            bucket: &Bucket,
            key: &ManifestKey,
            m: &Manifest,
            d: Option<&Delta>,
        ) -> Pointer {
            let base_sha256 = put(bucket, &base_key(m.version), manifest::sign(m, key)).await;
            let delta_sha256 = match d {
                Some(d) => {
                    Some(put(bucket, &delta_key(d.version), manifest::sign_delta(d, key)).await)
                }
                None => None,
            };
            let pointer = Pointer {
                version: d.map_or(m.version, |d| d.version),
                generation: m.generation.clone(),
                base: m.version,
                base_sha256,
                delta: d.map(|d| d.version),
                delta_sha256,
                proxy: None,
                holder: "test".into(),
                written_at: NOW,
            };
            point(bucket, &pointer).await;
            pointer
        }

        async fn point(bucket: &Bucket, pointer: &Pointer) {
            put(bucket, POINTER, serde_json::to_vec(pointer).unwrap()).await;
        }

        fn served(reader: &Reader) -> Option<u64> {
            reader.snapshot().map(|s| s.version)
        }

        #[tokio::test]
        async fn a_signed_generation_is_followed_and_a_delta_over_it_too() {
            let (bucket, key, reader) = setup();
            let m = base(5, "g5");
            publish(&bucket, &key, &m, None).await;
            assert_eq!(reader.refresh(NOW).await.unwrap(), Refresh::Switched(5));
            assert_eq!(reader.refresh(NOW).await.unwrap(), Refresh::Unchanged);
            publish(&bucket, &key, &m, Some(&delta(&m, 6))).await;
            assert_eq!(reader.refresh(NOW).await.unwrap(), Refresh::Switched(6));
            let snapshot = reader.snapshot().unwrap();
            assert!(snapshot.file("names").is_some());
            assert!(snapshot.file("packages/new").is_none());
        }

        #[tokio::test]
        async fn a_manifest_signed_by_another_key_is_refused_and_not_downloaded_again_for_a_while()
        {
            let (bucket, key, reader) = setup();
            publish(&bucket, &key, &base(5, "g5"), None).await;
            reader.refresh(NOW).await.unwrap();
            let forged = base(6, "g6");
            let pointer = publish(&bucket, &ManifestKey::generate(), &forged, None).await;
            let e = reader.refresh(NOW).await.unwrap_err();
            assert!(
                matches!(&e, ReaderError::Rejected(inner) if matches!(**inner, ReaderError::Manifest { .. })),
                "{e}"
            );
            assert_eq!(
                served(&reader),
                Some(5),
                "the view stays on the last good generation"
            );
            // The right bytes appear under the same pointer: not looked at
            // again until the retry interval has passed.
            let good = manifest::sign(&forged, &key);
            point(
                &bucket,
                &Pointer {
                    base_sha256: hex::encode(Sha256::digest(&good)),
                    ..pointer.clone()
                },
            )
            .await;
            put(&bucket, &base_key(6), good).await;
            // (A changed pointer is a new ETag: followed at once.)
            assert_eq!(reader.refresh(NOW + 1).await.unwrap(), Refresh::Switched(6));
        }

        #[tokio::test]
        async fn an_unchanged_rejected_pointer_is_retried_only_after_the_interval() {
            let (bucket, key, reader) = setup();
            let m = base(5, "g5");
            let pointer = publish(&bucket, &key, &m, None).await;
            // The manifest goes missing before the reader first looks.
            bucket.delete(&base_key(5)).await.unwrap();
            assert!(matches!(
                reader.refresh(NOW).await,
                Err(ReaderError::Rejected(_))
            ));
            put(&bucket, &base_key(5), manifest::sign(&m, &key)).await;
            assert!(matches!(
                reader.refresh(NOW + 10).await,
                Err(ReaderError::Rejected(_))
            ));
            assert_eq!(served(&reader), None);
            assert_eq!(
                reader.refresh(NOW + RETRY_REJECTED).await.unwrap(),
                Refresh::Switched(pointer.version)
            );
        }

        #[tokio::test]
        async fn a_pointer_back_to_an_older_generation_is_refused() {
            let (bucket, key, reader) = setup();
            let old = base(5, "g5");
            let old_pointer = publish(&bucket, &key, &old, None).await;
            publish(&bucket, &key, &base(7, "g7"), None).await;
            reader.refresh(NOW).await.unwrap();
            point(&bucket, &old_pointer).await;
            let e = reader.refresh(NOW).await.unwrap_err();
            assert!(
                e.to_string().contains("rollback") || e.to_string().contains("older"),
                "{e}"
            );
            assert_eq!(served(&reader), Some(7));
        }

        #[tokio::test]
        async fn a_pointer_that_disagrees_with_its_manifest_is_refused() {
            let (bucket, key, reader) = setup();
            let pointer = publish(&bucket, &key, &base(5, "g5"), None).await;
            point(
                &bucket,
                &Pointer {
                    version: 9,
                    ..pointer.clone()
                },
            )
            .await;
            let e = reader.refresh(NOW).await.unwrap_err();
            assert!(
                matches!(&e, ReaderError::Rejected(inner) if matches!(**inner, ReaderError::Inconsistent { .. })),
                "{e}"
            );
            // Other bytes than the pointer names, even validly signed ones.
            let other = manifest::sign(&base(5, "g5-other"), &key);
            put(&bucket, &base_key(5), other).await;
            point(&bucket, &pointer).await;
            let e = reader.refresh(NOW).await.unwrap_err();
            assert!(
                matches!(&e, ReaderError::Rejected(inner) if matches!(**inner, ReaderError::NotNamed { .. })),
                "{e}"
            );
            assert_eq!(served(&reader), None);
        }

        #[tokio::test]
        async fn a_delta_bound_to_another_base_is_refused() {
            let (bucket, key, reader) = setup();
            let m = base(5, "g5");
            publish(&bucket, &key, &m, None).await;
            reader.refresh(NOW).await.unwrap();
            let elsewhere = base(4, "g4");
            publish(&bucket, &key, &m, Some(&delta(&elsewhere, 6))).await;
            let e = reader.refresh(NOW).await.unwrap_err();
            assert!(e.to_string().contains("applies to version 4"), "{e}");
            assert_eq!(served(&reader), Some(5));
        }

        /// A proxy list over `files`, uploaded, and the pointer naming it.
        async fn publish_proxy(
            bucket: &Bucket,
            key: &ManifestKey,
            pointer: &Pointer,
            list: &Delta,
        ) -> Pointer {
            let sha256 = put(
                bucket,
                &super::super::super::proxy_key(list.version),
                manifest::sign_delta(list, key),
            )
            .await;
            let next = Pointer {
                proxy: Some(super::super::super::ProxyRef {
                    version: list.version,
                    sha256,
                }),
                ..pointer.clone()
            };
            point(bucket, &next).await;
            next
        }

        fn proxy_list(version: u64) -> Delta {
            let content = b"a proxied record";
            Delta {
                base_version: 0,
                expires_at: NOW + 3600,
                files: BTreeMap::from([(
                    "packages/proxied".to_owned(),
                    Some(FileEntry {
                        sha256: hex::encode(Sha256::digest(content)),
                        size: content.len() as u64,
                    }),
                )]),
                generation: manifest::PROXY_SET.into(),
                signed_at: NOW - 1,
                version,
            }
        }

        fn listed_version(reader: &Reader) -> Option<u64> {
            reader.snapshot()?.proxy_ref().map(|r| r.version)
        }

        #[tokio::test]
        async fn the_proxy_list_serves_what_the_generation_lacks_and_a_bad_one_never_holds_it_back()
        {
            let (bucket, key, reader) = setup();
            let m = base(5, "g5");
            let pointer = publish(&bucket, &key, &m, None).await;
            let with_list = publish_proxy(&bucket, &key, &pointer, &proxy_list(1)).await;
            assert_eq!(reader.refresh(NOW).await.unwrap(), Refresh::Switched(5));
            let snapshot = reader.snapshot().unwrap();
            assert!(snapshot.file("packages/proxied").is_none());
            assert_eq!(
                snapshot.proxied("packages/proxied", NOW).unwrap().1,
                NOW - 1
            );
            assert!(reader.health().proxy_error.is_none());
            // A generation's delta in the list's place: the generation is
            // still followed, the last good list kept, the node degraded.
            let impostor = Delta {
                version: 2,
                ..delta(&m, 2)
            };
            publish_proxy(&bucket, &key, &pointer, &impostor).await;
            reader.refresh(NOW).await.unwrap();
            assert_eq!(listed_version(&reader), Some(1));
            let health = reader.health();
            assert!(
                health
                    .proxy_error
                    .as_deref()
                    .is_some_and(|e| e.contains("not the pull-through proxy's")),
                "{health:?}"
            );
            // A newer list is taken; an older one after it is a rollback.
            publish_proxy(&bucket, &key, &with_list, &proxy_list(3)).await;
            reader.refresh(NOW + 1).await.unwrap();
            assert_eq!(listed_version(&reader), Some(3));
            point(&bucket, &with_list).await;
            reader.refresh(NOW + 2).await.unwrap();
            assert_eq!(listed_version(&reader), Some(3));
        }

        #[tokio::test]
        async fn a_restarted_reader_serves_the_generation_beside_a_lapsed_proxy_list() {
            let (bucket, key, reader) = setup();
            let pointer = publish(&bucket, &key, &base(5, "g5"), None).await;
            let lapsed = Delta {
                expires_at: NOW - 1,
                ..proxy_list(1)
            };
            publish_proxy(&bucket, &key, &pointer, &lapsed).await;
            assert_eq!(reader.refresh(NOW).await.unwrap(), Refresh::Switched(5));
            let snapshot = reader.snapshot().unwrap();
            assert!(snapshot.file("names").is_some());
            assert!(snapshot.proxied("packages/proxied", NOW).is_none());
            assert!(reader.health().proxy_error.is_some());
            // The writer stops naming a list: the node is whole again.
            point(&bucket, &pointer).await;
            reader.refresh(NOW + 1).await.unwrap();
            assert!(reader.health().proxy_error.is_none());
            // A list held in memory serves nothing once it lapses.
            let brief = Delta {
                expires_at: NOW + 10,
                ..proxy_list(2)
            };
            publish_proxy(&bucket, &key, &pointer, &brief).await;
            reader.refresh(NOW + 2).await.unwrap();
            let snapshot = reader.snapshot().unwrap();
            assert!(snapshot.proxied("packages/proxied", NOW + 9).is_some());
            assert!(snapshot.proxied("packages/proxied", NOW + 10).is_none());
        }

        #[test]
        fn a_proxy_list_never_passes_for_a_generation_delta() {
            let list = proxy_list(6);
            assert!(manifest::check_binding(&list, 5, "g5").is_err());
            assert!(manifest::check_proxy_set(&list).is_ok());
            assert!(manifest::check_proxy_set(&delta(&base(5, "g5"), 6)).is_err());
        }
    }
}
