//! Content-derived ETags, memoised per file identity.
//!
//! The ETag is `"` + hex(sha256(file)[..16]) + `"`, so every node and every
//! rewrite of identical bytes yields the same tag. Hashing a 16 MiB tarball on
//! every request would be wasteful, so tags are cached by path and checked
//! against the file identity seen through `fstat` on the open handle: a file
//! replaced by rename (new inode) or rewritten (new size, mtime or ctime) is
//! hashed again.
//!
//! Everything here blocks; callers run it inside `spawn_blocking`.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

/// Default bound on cached entries; about 200 bytes each, so ~40 MB at most.
pub const DEFAULT_CAPACITY: usize = 200_000;

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_nanos: i128,
    ctime_nanos: i128,
}

#[cfg(unix)]
fn file_id(meta: &Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt;
    let nanos = |secs: i64, nsec: i64| i128::from(secs) * 1_000_000_000 + i128::from(nsec);
    FileId {
        dev: meta.dev(),
        ino: meta.ino(),
        len: meta.len(),
        mtime_nanos: nanos(meta.mtime(), meta.mtime_nsec()),
        ctime_nanos: nanos(meta.ctime(), meta.ctime_nsec()),
    }
}

#[cfg(not(unix))]
fn file_id(meta: &Metadata) -> FileId {
    let mtime_nanos = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128);
    FileId {
        dev: 0,
        ino: 0,
        len: meta.len(),
        mtime_nanos,
        ctime_nanos: 0,
    }
}

/// A bounded map from path to the ETag of the file version last seen there.
#[derive(Debug)]
pub struct EtagCache {
    entries: Mutex<HashMap<PathBuf, (FileId, String)>>,
    capacity: usize,
}

impl Default for EtagCache {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
}

impl EtagCache {
    /// A cache that is cleared when it would grow past `capacity` entries.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    fn get(&self, path: &Path, id: FileId) -> Option<String> {
        // A panic elsewhere cannot leave a half-written entry, so a poisoned
        // lock is still safe to use; requests must not panic in turn.
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match entries.get(path) {
            Some((seen, etag)) if *seen == id => Some(etag.clone()),
            _ => None,
        }
    }

    fn put(&self, path: &Path, id: FileId, etag: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        // Clearing is crude but O(1) amortised and keeps the bound hard; a
        // refill costs one hash per hot file.
        if entries.len() >= self.capacity && !entries.contains_key(path) {
            entries.clear();
        }
        entries.insert(path.to_owned(), (id, etag.to_owned()));
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A regular file opened for serving, positioned at byte 0.
#[derive(Debug)]
pub struct Opened {
    /// The handle the ETag was computed from; stream this one.
    pub file: File,
    /// Length from `fstat` on that handle.
    pub len: u64,
    /// Modification time from the same `fstat`, if the platform has one.
    pub modified: Option<SystemTime>,
    /// The strong ETag, quotes included.
    pub etag: String,
}

/// Opens `path`, and tags it from the same handle that will be streamed, so
/// the ETag always describes the bytes sent even if the path is swapped.
/// Returns `Ok(None)` when there is no regular file at `path`.
pub fn open_tagged(path: &Path, cache: &EtagCache) -> io::Result<Option<Opened>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if is_missing(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(None);
    }
    let id = file_id(&meta);
    let etag = match cache.get(path, id) {
        Some(etag) => etag,
        None => {
            let etag = hash_etag(&mut file)?;
            file.seek(SeekFrom::Start(0))?;
            cache.put(path, id, &etag);
            etag
        }
    };
    Ok(Some(Opened {
        file,
        len: meta.len(),
        modified: meta.modified().ok(),
        etag,
    }))
}

fn is_missing(e: &io::Error) -> bool {
    // NotADirectory: a path component is a regular file, e.g. `names/x`.
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Reads `reader` to the end and formats the strong ETag of its bytes.
fn hash_etag(reader: &mut impl Read) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(from_sha256(&hasher.finalize()))
}

/// The ETag of content whose SHA-256 is `digest`: its first 16 bytes in
/// hex, quoted. One formula for every node and every source (a file, a
/// generated body, a bucket object), so a tag never depends on who serves.
pub(super) fn from_sha256(digest: &[u8]) -> String {
    format!("\"{}\"", hex::encode(&digest[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_via_rename(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let tmp = dir.join(".tmp");
        std::fs::write(&tmp, bytes).unwrap();
        let path = dir.join(name);
        std::fs::rename(&tmp, &path).unwrap();
        path
    }

    #[test]
    fn etag_is_truncated_sha256_of_content() {
        // sha256("abc") = ba7816bf8f01cfea414140de5dae2223 b00361a3...
        let etag = hash_etag(&mut &b"abc"[..]).unwrap();
        assert_eq!(etag, "\"ba7816bf8f01cfea414140de5dae2223\"");
    }

    #[test]
    fn handle_is_rewound_and_cached() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_via_rename(dir.path(), "f", b"abc");
        let cache = EtagCache::default();
        let mut opened = open_tagged(&path, &cache).unwrap().unwrap();
        let mut body = Vec::new();
        opened.file.read_to_end(&mut body).unwrap();
        assert_eq!(body, b"abc");
        assert_eq!(opened.len, 3);
        assert_eq!(cache.len(), 1);
        let again = open_tagged(&path, &cache).unwrap().unwrap();
        assert_eq!(again.etag, opened.etag);
    }

    #[test]
    fn replaced_files_are_rehashed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = EtagCache::default();
        let path = write_via_rename(dir.path(), "f", b"one");
        let first = open_tagged(&path, &cache).unwrap().unwrap().etag;
        write_via_rename(dir.path(), "f", b"one");
        let same = open_tagged(&path, &cache).unwrap().unwrap().etag;
        assert_eq!(first, same);
        // Same length, new inode: the cache must not answer with the old tag.
        write_via_rename(dir.path(), "f", b"two");
        let other = open_tagged(&path, &cache).unwrap().unwrap().etag;
        assert_ne!(first, other);
    }

    #[test]
    fn missing_and_non_files_are_none() {
        let dir = tempfile::tempdir().unwrap();
        let cache = EtagCache::default();
        assert!(
            open_tagged(&dir.path().join("nope"), &cache)
                .unwrap()
                .is_none()
        );
        assert!(open_tagged(dir.path(), &cache).unwrap().is_none());
        let file = write_via_rename(dir.path(), "f", b"x");
        assert!(open_tagged(&file.join("below"), &cache).unwrap().is_none());
    }

    #[test]
    fn cache_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = EtagCache::with_capacity(3);
        for i in 0..10 {
            let path = write_via_rename(dir.path(), &format!("f{i}"), b"x");
            open_tagged(&path, &cache).unwrap().unwrap();
            assert!(cache.len() <= 3);
        }
    }
}
