//! Ready responses for the small files of the served generation, held in
//! memory so that a hit costs no blocking-pool hop, no open, read or close,
//! and no lock that every request shares.
//!
//! Entries belong to an *epoch*: the generation `current` pointed to when
//! the epoch began. Requests read the link (`readlink`) at most once per
//! [`RECHECK`]: a sync's switch is seen within a millisecond, and a hit
//! makes no system call at all (a `readlink` per request was 4% of a
//! tarball's cost). A link that changed starts a new, empty epoch. A file
//! read on a miss comes from that epoch's generation directory, not
//! through the link, and is put only into that epoch: a read that raced a
//! switch can never land in the next one.
//!
//! A hosted change patches the served generation in place, in a promised
//! per-file order (tarballs, then records, then `/names` and `/versions`).
//! The writer brackets it ([`ResponseCache::begin_change`] and
//! [`ResponseCache::end_change`]): while a change runs, nothing is read from
//! or put into the cache, so readers see the files in the writer's order as
//! they would without a cache; the change ends with a fresh epoch.
//!
//! Memory is bounded by a byte budget per epoch: once it is spent, misses
//! are served from disk as before and nothing more is kept until the next
//! epoch (a sync, a hosted change). Files above [`MAX_ENTRY`] are never
//! kept; they stream from disk.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use axum::body::Bytes;
use axum::http::HeaderValue;

/// The largest file kept: the size below which a file is read whole anyway.
pub const MAX_ENTRY: u64 = 256 * 1024;
/// Default budget of one epoch.
pub const DEFAULT_BUDGET: u64 = 256 * 1024 * 1024;
/// What an entry costs beyond its body: key, headers, map slot.
const ENTRY_OVERHEAD: u64 = 256;
/// How long a read of `current` stands for the requests that follow.
pub const RECHECK: std::time::Duration = std::time::Duration::from_millis(1);
/// Independent locks over the entries, so that hits on different files
/// never meet on one lock (and hits on one file take it shared).
const SHARDS: usize = 64;

/// One cached file: its bytes and the validators its responses carry.
#[derive(Debug)]
pub struct Entry {
    /// The whole file.
    pub body: Bytes,
    /// The strong ETag, quotes included, ready for the header.
    pub etag: HeaderValue,
    /// Modification time, truncated to seconds and not in the future.
    pub last_modified: Option<SystemTime>,
    /// The same, formatted for the header.
    pub last_modified_header: Option<HeaderValue>,
    /// `Content-Length` of the whole file, formatted once.
    pub len_header: HeaderValue,
    /// The handle `body` was read through, kept for bodies the
    /// connection's lane sends with `sendfile` (see [`super::sendfile`]).
    pub file: Option<Arc<std::fs::File>>,
}

/// Keys are paths of files that exist in the tree (only a file read from
/// the generation is kept), so no request can choose colliding keys: a fast
/// hash serves. SipHash, hashing each path twice (shard, then map), was
/// 0.7% of a small file's CPU at 512 connections.
type Hasher = foldhash::fast::RandomState;

type Shard = RwLock<HashMap<PathBuf, Arc<Entry>, Hasher>>;

/// The cache of one generation.
#[derive(Debug)]
pub struct Epoch {
    /// What `current` pointed to when this epoch began.
    link: PathBuf,
    /// The generation directory: where misses read from.
    dir: PathBuf,
    shards: Box<[Shard]>,
    used: AtomicU64,
    budget: u64,
    /// Handles kept open, and how many may be.
    files: AtomicUsize,
    max_files: usize,
    hasher: Hasher,
    /// How many hosted changes had ended when this epoch began: one that
    /// ended since makes it stale, whatever it holds.
    seq: u64,
}

impl Drop for Epoch {
    /// Closing thousands of kept handles (and freeing the disk blocks of a
    /// collected blob at its last close) is file work: it goes to the
    /// blocking pool when there is one.
    fn drop(&mut self) {
        if *self.files.get_mut() > 0
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let shards = std::mem::take(&mut self.shards);
            drop(runtime.spawn_blocking(move || drop(shards)));
        }
    }
}

impl Epoch {
    fn new(link: PathBuf, dir: PathBuf, budget: u64, max_files: usize, seq: u64) -> Self {
        Self {
            link,
            dir,
            seq,
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            used: AtomicU64::new(0),
            budget,
            files: AtomicUsize::new(0),
            max_files,
            hasher: Default::default(),
        }
    }

    /// The generation directory this epoch serves.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn shard(&self, key: &Path) -> &Shard {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    /// The entry for `key` (a path relative to the tree), if kept.
    pub fn get(&self, key: &Path) -> Option<Arc<Entry>> {
        self.shard(key)
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Keeps `entry` for `key` if the budget allows; its file handle only
    /// while open handles stay within the cap (the bytes serve without it).
    pub fn put(&self, key: &Path, mut entry: Entry) {
        let cost = entry.body.len() as u64 + key.as_os_str().len() as u64 + ENTRY_OVERHEAD;
        if entry.body.len() as u64 > MAX_ENTRY {
            return;
        }
        let reserved = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                (used + cost <= self.budget).then_some(used + cost)
            });
        if reserved.is_err() {
            return;
        }
        if entry.file.is_some()
            && self
                .files
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < self.max_files).then_some(n + 1)
                })
                .is_err()
        {
            entry.file = None;
        }
        let mut shard = self.shard(key).write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = shard.insert(key.to_owned(), Arc::new(entry)) {
            // Two misses raced on one file: the first copy's cost is freed.
            self.used.fetch_sub(cost, Ordering::Relaxed);
            if old.file.is_some() {
                self.files.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Bytes held.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}

/// The response cache of one served tree.
#[derive(Debug)]
pub struct ResponseCache {
    /// The `current` link of the data directory.
    root: PathBuf,
    budget: u64,
    /// File handles an epoch may keep open: a quarter of the process's
    /// open-file limit, the rest left to connections and the writer.
    max_files: usize,
    epoch: ArcSwapOption<Epoch>,
    /// Hosted changes running now; while any is, the cache is bypassed.
    changing: AtomicUsize,
    /// Hosted changes ended so far (see [`Epoch::seq`]).
    changes: AtomicU64,
    /// When `current` was last read, on `clock`.
    checked: AtomicU64,
    /// Monotonic nanoseconds; injected by tests.
    clock: fn() -> u64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl ResponseCache {
    /// A cache for the tree at `root` (the data directory's `current`
    /// link) holding at most `budget` bytes per epoch; 0 turns it off.
    pub fn new(root: PathBuf, budget: u64) -> Self {
        Self {
            root,
            budget,
            max_files: super::conn::open_file_limit() / 4,
            epoch: ArcSwapOption::const_empty(),
            changing: AtomicUsize::new(0),
            changes: AtomicU64::new(0),
            checked: AtomicU64::new(0),
            clock: monotonic_nanos,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The epoch of the generation `current` points to now, or `None` when
    /// the cache is off, a hosted change is running, or `root` is not a
    /// link (a plain directory has no generation to key entries by).
    pub fn epoch(&self) -> Option<Arc<Epoch>> {
        // Read before anything else: a change that ends after this makes
        // the epoch returned stale for every later request.
        let seq = self.changes.load(Ordering::SeqCst);
        if self.budget == 0 || self.changing.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let now = (self.clock)();
        let loaded = self.epoch.load_full();
        let current = loaded.as_ref().filter(|e| e.seq == seq);
        if let Some(current) = current
            && now.saturating_sub(self.checked.load(Ordering::Relaxed)) < RECHECK.as_nanos() as u64
        {
            return Some(Arc::clone(current));
        }
        let link = std::fs::read_link(&self.root).ok()?;
        if let Some(current) = current
            && current.link == link
        {
            self.checked.fetch_max(now, Ordering::Relaxed);
            return Some(Arc::clone(current));
        }
        Some(self.install(loaded, link, seq, now))
    }

    /// Starts the epoch of `link` over `loaded`, what this request saw
    /// before it read the link. A request that read the link earlier must
    /// not put back an epoch another one already replaced: it takes the
    /// newer one instead.
    fn install(&self, loaded: Option<Arc<Epoch>>, link: PathBuf, seq: u64, now: u64) -> Arc<Epoch> {
        let dir = match self.root.parent() {
            Some(parent) => parent.join(&link),
            None => link.clone(),
        };
        let fresh = Arc::new(Epoch::new(link, dir, self.budget, self.max_files, seq));
        let previous = self
            .epoch
            .compare_and_swap(&loaded, Some(Arc::clone(&fresh)));
        let installed = match (&*previous, &loaded) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !installed {
            return self
                .epoch
                .load_full()
                .filter(|e| e.seq == seq)
                .unwrap_or(fresh);
        }
        self.checked.fetch_max(now, Ordering::Relaxed);
        fresh
    }

    /// The same cache on another clock.
    #[cfg(test)]
    pub(crate) fn with_clock(mut self, clock: fn() -> u64) -> Self {
        self.clock = clock;
        self
    }

    /// Counts a lookup.
    pub fn note(&self, hit: bool) {
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Hits, misses, and bytes held by the current epoch.
    pub fn stats(&self) -> (u64, u64, u64) {
        let used = self.epoch.load().as_ref().map_or(0, |e| e.used());
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
            used,
        )
    }
}

/// Nanoseconds since the first call: a clock that never goes back.
fn monotonic_nanos() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}

impl crate::hosted::service::ChangeWatch for ResponseCache {
    /// A hosted change is about to patch the served generation in place.
    fn begin_change(&self) {
        self.changing.fetch_add(1, Ordering::SeqCst);
    }

    /// The change is done (or failed): every epoch begun so far is stale.
    fn end_change(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        self.epoch.store(None);
        self.changing.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A clock for tests, one per thread, that moves only when told.
#[cfg(test)]
pub(crate) mod test_clock {
    thread_local!(static NOW: std::cell::Cell<u64> = const { std::cell::Cell::new(0) });

    /// This thread's time.
    pub(crate) fn test_clock() -> u64 {
        NOW.with(|n| n.get())
    }

    /// Moves this thread's time on.
    pub(crate) fn advance(by: std::time::Duration) {
        NOW.with(|n| n.set(n.get() + by.as_nanos() as u64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hosted::service::ChangeWatch;

    fn entry(body: &'static [u8]) -> Entry {
        Entry {
            body: Bytes::from_static(body),
            etag: HeaderValue::from_static("\"x\""),
            last_modified: None,
            last_modified_header: None,
            len_header: HeaderValue::from(body.len()),
            file: None,
        }
    }

    fn tree() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::TempDir::new().unwrap();
        std::fs::create_dir_all(dir.path().join("generations/1")).unwrap();
        std::fs::create_dir_all(dir.path().join("generations/2")).unwrap();
        let link = dir.path().join("current");
        std::os::unix::fs::symlink("generations/1", &link).unwrap();
        (dir, link)
    }

    fn switch(link: &Path, to: &str) {
        let tmp = link.with_extension("tmp");
        std::os::unix::fs::symlink(to, &tmp).unwrap();
        std::fs::rename(&tmp, link).unwrap();
    }

    use test_clock::{advance, test_clock};

    #[test]
    fn an_entry_lives_as_long_as_its_generation_and_no_change_runs() {
        let (_dir, link) = tree();
        let cache = ResponseCache::new(link.clone(), 1 << 20).with_clock(test_clock);
        let key = Path::new("names");
        let first = cache.epoch().unwrap();
        let e = &first;
        assert!(e.dir().ends_with("generations/1"));
        e.put(key, entry(b"one"));
        let again = cache.epoch().unwrap();
        assert_eq!(again.get(key).unwrap().body, "one");

        // A switch of `current` starts an empty epoch on the new generation,
        // once the last read of the link is older than RECHECK.
        switch(&link, "generations/2");
        advance(RECHECK / 2);
        assert!(
            Arc::ptr_eq(&cache.epoch().unwrap(), &first),
            "read too recently"
        );
        advance(RECHECK / 2);
        let next = cache.epoch().unwrap();
        let n = &next;
        assert!(n.get(key).is_none());
        assert!(n.dir().ends_with("generations/2"));
        // A read that began before the switch lands in the old epoch only.
        e.put(Path::new("versions"), entry(b"old"));
        assert!(n.get(Path::new("versions")).is_none());

        // During a hosted change the cache is bypassed; after it, empty.
        n.put(key, entry(b"two"));
        cache.begin_change();
        assert!(cache.epoch().is_none());
        cache.end_change();
        let after = cache.epoch().unwrap();
        assert!(after.get(key).is_none());
        assert!(
            !Arc::ptr_eq(&after, &next),
            "an epoch begun before a change is stale after it"
        );
    }

    #[test]
    fn a_late_reader_of_the_link_does_not_put_back_an_older_epoch() {
        let (_dir, link) = tree();
        let cache = ResponseCache::new(link.clone(), 1 << 20).with_clock(test_clock);
        // Two requests saw no epoch; the one that read the link second
        // (generation 2) installs first.
        let newer = cache.install(None, "generations/2".into(), 0, 10);
        let late = cache.install(None, "generations/1".into(), 0, 5);
        assert!(
            Arc::ptr_eq(&late, &newer),
            "the late reader takes the newer epoch"
        );
        assert!(Arc::ptr_eq(&cache.epoch().unwrap(), &newer));
        assert!(newer.dir().ends_with("generations/2"));
    }

    #[test]
    fn the_budget_bounds_what_is_kept() {
        let (_dir, link) = tree();
        let cache = ResponseCache::new(link, 2 * ENTRY_OVERHEAD + 40);
        let epoch = cache.epoch().unwrap();
        let e = &epoch;
        e.put(Path::new("a"), entry(b"0123456789"));
        e.put(Path::new("b"), entry(b"0123456789"));
        e.put(Path::new("c"), entry(b"0123456789"));
        assert!(e.get(Path::new("a")).is_some() && e.get(Path::new("b")).is_some());
        assert!(e.get(Path::new("c")).is_none(), "over budget");
        assert!(e.used() <= 2 * ENTRY_OVERHEAD + 40);
        // Off, or a plain directory: no epoch at all.
        let dir = tempfile::TempDir::new().unwrap();
        assert!(
            ResponseCache::new(dir.path().to_owned(), 1 << 20)
                .epoch()
                .is_none()
        );
        let (_d, link) = tree();
        assert!(ResponseCache::new(link, 0).epoch().is_none());
    }
}
