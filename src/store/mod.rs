//! The data directory: content-addressed blobs, the served tree, and the
//! SQLite state database.
//!
//! ```text
//! DATA_DIR/hexmirror.db         state: validators, packages, releases, sync history
//! DATA_DIR/blobs/sha256/ab/HEX  verified tarballs, named by their SHA-256
//! DATA_DIR/tmp/                 temp files (same file system, never served)
//! DATA_DIR/generations/gN/      generation N of the served tree (hard links to blobs)
//! DATA_DIR/current              symlink to the served generation
//! ```
//!
//! Every blob write is atomic: temp file, fsync, rename, fsync of the
//! directory. Every served file is a hard link to its blob, so each content
//! is stored once however many generations and repositories serve it. These
//! functions block: call them from `spawn_blocking`.

pub mod bucket;
pub mod db;
pub mod generation;

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::registry::PackageName;

pub use db::{Db, DbError};
pub use generation::{
    Current, FileMap, FileRef, GenerationError, KEEP_GENERATIONS, MANIFEST_DELTA_FILE,
    MANIFEST_FILE, MAX_DELTA_FILES, NotPatchable, Patchable, Peek, base_signers, list_files,
    manifest_lifetime, peek_manifest, read_manifest,
};

/// A store operation that failed, with the path it failed on.
#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {source}", path.display())]
pub struct StoreError {
    /// What was being done, e.g. "write", "rename".
    pub action: &'static str,
    /// The path involved.
    pub path: PathBuf,
    /// The OS error.
    pub source: io::Error,
}

fn err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Handle on a data directory.
#[derive(Debug)]
pub struct Store {
    data_dir: PathBuf,
    blobs: PathBuf,
    tmp: PathBuf,
    counter: AtomicU64,
}

/// The served tree's path for a package record.
pub fn package_path(name: &PackageName) -> String {
    format!("packages/{name}")
}

/// The served tree's path for a tarball. `version` must have passed
/// [`crate::registry::is_valid_version`].
pub fn tarball_path(name: &PackageName, version: &str) -> String {
    format!("tarballs/{name}-{version}.tar")
}

impl Store {
    /// Opens (creating if needed) the data directory and checks it is
    /// writable.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let store = Self {
            data_dir: data_dir.to_owned(),
            blobs: data_dir.join("blobs").join("sha256"),
            tmp: data_dir.join("tmp"),
            counter: AtomicU64::new(0),
        };
        for dir in [&store.blobs, &store.tmp] {
            fs::create_dir_all(dir).map_err(err("create directory", dir))?;
        }
        let probe = store.tmp.join(".write-probe");
        fs::write(&probe, b"").map_err(err("write to data directory", &probe))?;
        let _ = fs::remove_file(&probe);
        Ok(store)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Takes the data directory's writer lock, or returns `None` if another
    /// process holds it. The lock lasts as long as the returned file. Temp
    /// files left by an interrupted writer are removed once it is held.
    pub fn try_lock(&self) -> Result<Option<File>, StoreError> {
        let path = self.data_dir.join("writer.lock");
        let file = File::create(&path).map_err(err("create", &path))?;
        match file.try_lock() {
            Ok(()) => {
                // Temp files older than a few minutes are garbage from a
                // crash; younger ones may belong to `serve` storing a proxied
                // or published file right now (it writes without this lock).
                let entries = fs::read_dir(&self.tmp).map_err(err("list", &self.tmp))?;
                let cutoff = std::time::SystemTime::now() - std::time::Duration::from_secs(600);
                for entry in entries.flatten() {
                    let old = entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .is_ok_and(|m| m < cutoff);
                    if old {
                        let _ = fs::remove_file(entry.path());
                    }
                }
                Ok(Some(file))
            }
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(err("lock", &path)(e)),
        }
    }

    /// Where the blob with this SHA-256 lives (it may not exist).
    pub fn blob_path(&self, sha256: &[u8; 32]) -> PathBuf {
        let hex = hex::encode(sha256);
        self.blobs.join(&hex[..2]).join(hex)
    }

    /// True when a verified blob with this SHA-256 is stored.
    pub fn has_blob(&self, sha256: &[u8; 32]) -> bool {
        self.blob_path(sha256).is_file()
    }

    /// Stores a blob whose SHA-256 the caller computed from `bytes` itself.
    pub fn put_blob(&self, sha256: &[u8; 32], bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.blob_path(sha256);
        if path.is_file() {
            return Ok(());
        }
        let dir = path.parent().unwrap_or(&self.blobs);
        fs::create_dir_all(dir).map_err(err("create directory", dir))?;
        self.write_atomic(&path, bytes)
    }

    fn tmp_path(&self) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.tmp.join(format!(
            "{}-{n}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ))
    }

    fn write_atomic(&self, target: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let tmp = self.tmp_path();
        let result = (|| {
            let mut f = File::create(&tmp).map_err(err("create", &tmp))?;
            f.write_all(bytes).map_err(err("write", &tmp))?;
            f.sync_all().map_err(err("fsync", &tmp))
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        self.commit(&tmp, target)
    }

    fn commit(&self, tmp: &Path, target: &Path) -> Result<(), StoreError> {
        self.commit_quiet(tmp, target)?;
        sync_dir(target.parent().unwrap_or(&self.data_dir))
    }

    /// Renames `tmp` over `target`; the caller fsyncs the directory.
    fn commit_quiet(&self, tmp: &Path, target: &Path) -> Result<(), StoreError> {
        if let Err(e) = fs::rename(tmp, target) {
            let _ = fs::remove_file(tmp);
            return Err(err("rename into place", target)(e));
        }
        Ok(())
    }
}

/// fsync a directory so a rename in it survives a power cut.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Makes a temp file that looks left over from a crash long ago.
    fn stale(path: &Path) {
        fs::write(path, b"half").unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        File::options()
            .append(true)
            .open(path)
            .and_then(|f| f.set_modified(old))
            .unwrap();
    }

    #[test]
    fn lock_is_exclusive_and_cleans_leftover_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        stale(&dir.path().join("tmp/123-0-dead"));
        // A young temp file may be `serve` writing a proxied file right now.
        fs::write(dir.path().join("tmp/789-0-serving"), b"young").unwrap();
        let lock = store.try_lock().unwrap();
        let left: Vec<_> = fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["789-0-serving"]);
        fs::remove_file(dir.path().join("tmp/789-0-serving")).unwrap();
        stale(&dir.path().join("tmp/456-0-live"));
        assert!(lock.is_some());
        let again = Store::open(dir.path()).unwrap();
        assert!(again.try_lock().unwrap().is_none());
        assert_eq!(
            fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            1,
            "a live writer's temp file survives"
        );
        drop(lock);
        assert!(again.try_lock().unwrap().is_some());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
