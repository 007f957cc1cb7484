//! Ready responses for the small files of the served generation, held in
//! memory so that a hit costs no blocking-pool hop, no open, read or close,
//! and no lock that every request shares.
//!
//! Entries belong to an *epoch*: the generation `current` pointed to when
//! the epoch began. Every request reads the link once (`readlink`, the only
//! system call of a hit; the link is read on every request, so it never
//! leaves the dentry cache and never waits on a disk) and starts a new,
//! empty epoch when it changed. A file read on a miss comes from that
//! epoch's generation directory, not through the link, and is put only into
//! that epoch: a read that raced a switch can never land in the next one.
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
}

type Shard = RwLock<HashMap<PathBuf, Arc<Entry>>>;

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
    hasher: std::collections::hash_map::RandomState,
    /// How many hosted changes had ended when this epoch began: one that
    /// ended since makes it stale, whatever it holds.
    seq: u64,
}

impl Epoch {
    fn new(link: PathBuf, dir: PathBuf, budget: u64, seq: u64) -> Self {
        Self {
            link,
            dir,
            seq,
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            used: AtomicU64::new(0),
            budget,
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

    /// Keeps `entry` for `key` if the budget allows.
    pub fn put(&self, key: &Path, entry: Entry) {
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
        let mut shard = self.shard(key).write().unwrap_or_else(|p| p.into_inner());
        if shard.insert(key.to_owned(), Arc::new(entry)).is_some() {
            // Two misses raced on one file: the first copy's cost is freed.
            self.used.fetch_sub(cost, Ordering::Relaxed);
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
    epoch: ArcSwapOption<Epoch>,
    /// Hosted changes running now; while any is, the cache is bypassed.
    changing: AtomicUsize,
    /// Hosted changes ended so far (see [`Epoch::seq`]).
    changes: AtomicU64,
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
            epoch: ArcSwapOption::const_empty(),
            changing: AtomicUsize::new(0),
            changes: AtomicU64::new(0),
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
        let link = std::fs::read_link(&self.root).ok()?;
        if let Some(current) = self.epoch.load_full()
            && current.link == link
            && current.seq == seq
        {
            return Some(current);
        }
        let dir = match self.root.parent() {
            Some(parent) => parent.join(&link),
            None => link.clone(),
        };
        let fresh = Arc::new(Epoch::new(link, dir, self.budget, seq));
        // Requests racing here each store a valid empty epoch; the last
        // one stays.
        self.epoch.store(Some(Arc::clone(&fresh)));
        Some(fresh)
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

    #[test]
    fn an_entry_lives_as_long_as_its_generation_and_no_change_runs() {
        let (_dir, link) = tree();
        let cache = ResponseCache::new(link.clone(), 1 << 20);
        let key = Path::new("names");
        let first = cache.epoch().unwrap();
        let e = &first;
        assert!(e.dir().ends_with("generations/1"));
        e.put(key, entry(b"one"));
        let again = cache.epoch().unwrap();
        assert_eq!(again.get(key).unwrap().body, "one");

        // A switch of `current` starts an empty epoch on the new generation.
        switch(&link, "generations/2");
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
