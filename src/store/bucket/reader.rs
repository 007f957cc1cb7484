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
}

impl Snapshot {
    /// The file served at `path`, if any.
    pub fn file(&self, path: &str) -> Option<File> {
        match self.changed.get(path) {
            Some(changed) => *changed,
            None => self.base.get(path).copied(),
        }
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
        let object = match self
            .bucket
            .get_if_changed(POINTER, poll.pointer_etag.as_deref(), super::SMALL_OBJECT)
            .await?
        {
            Fetched::NotModified => return Ok(Refresh::Unchanged),
            Fetched::Missing => return Ok(Refresh::Empty),
            Fetched::Body(object) => object,
        };
        let pointer: Pointer = self.bucket.parse(POINTER, &object.bytes)?;
        let served = self.snapshot.load();
        if let Some(s) = served.as_ref()
            && s.version == pointer.version
            && s.generation == pointer.generation
        {
            poll.pointer_etag = object.etag;
            return Ok(Refresh::Unchanged);
        }
        let base = match &poll.base {
            Some(base) if base.version == pointer.base => Arc::clone(base),
            _ => {
                let key = base_key(pointer.base);
                let bytes = self.fetch_object(&key, super::MAX_MANIFEST).await?;
                let verifying = self.key.clone();
                let blob = bytes.clone();
                let parsed = tokio::task::spawn_blocking(move || {
                    let m = manifest::verify_base(&blob, &verifying)?;
                    let files = m
                        .files
                        .iter()
                        .filter_map(|(path, entry)| Some((path.clone(), file_of(entry)?)))
                        .collect();
                    Ok::<_, ManifestError>(Base {
                        sha256: Sha256::digest(&blob).into(),
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
        })));
        poll.base = Some(base);
        poll.pointer_etag = object.etag;
        Ok(Refresh::Switched(version))
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
}
