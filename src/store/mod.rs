//! The data directory: content-addressed blobs, the served tree, and the
//! SQLite state database.
//!
//! ```text
//! DATA_DIR/hexmirror.db         state: validators, packages, releases, sync history
//! DATA_DIR/blobs/sha256/ab/HEX  verified tarballs, named by their SHA-256
//! DATA_DIR/tmp/                 temp files (same file system, never served)
//! DATA_DIR/tree/                the served tree, laid out like the upstream
//! ```
//!
//! Every write into `blobs/` and `tree/` is atomic: temp file, fsync, rename,
//! fsync of the directory. A tarball in the tree is a hard link to its blob,
//! so it is stored once. These functions block: call them from
//! `spawn_blocking`.

pub mod db;

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::registry::PackageName;

pub use db::{Db, DbError};

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
    tree: PathBuf,
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
            tree: data_dir.join("tree"),
            blobs: data_dir.join("blobs").join("sha256"),
            tmp: data_dir.join("tmp"),
            counter: AtomicU64::new(0),
        };
        for dir in [&store.tree, &store.blobs, &store.tmp] {
            fs::create_dir_all(dir).map_err(err("create directory", dir))?;
        }
        for sub in ["packages", "tarballs"] {
            let dir = store.tree.join(sub);
            fs::create_dir_all(&dir).map_err(err("create directory", &dir))?;
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

    /// The root of the served tree.
    pub fn tree(&self) -> &Path {
        &self.tree
    }

    /// Takes the data directory's writer lock, or returns `None` if another
    /// process holds it. The lock lasts as long as the returned file. Temp
    /// files left by an interrupted writer are removed once it is held.
    pub fn try_lock(&self) -> Result<Option<File>, StoreError> {
        let path = self.data_dir.join("writer.lock");
        let file = File::create(&path).map_err(err("create", &path))?;
        match file.try_lock() {
            Ok(()) => {
                // Only a writer makes temp files and we are now the only
                // writer, so whatever is there is garbage from a crash.
                let entries = fs::read_dir(&self.tmp).map_err(err("list", &self.tmp))?;
                for entry in entries.flatten() {
                    let _ = fs::remove_file(entry.path());
                }
                Ok(Some(file))
            }
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(err("lock", &path)(e)),
        }
    }

    fn blob_path(&self, sha256: &[u8; 32]) -> PathBuf {
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

    /// Makes the tree file `rel` (a tarball path) a hard link to a stored
    /// blob, replacing what was there atomically.
    pub fn link_blob(&self, rel: &str, sha256: &[u8; 32]) -> Result<(), StoreError> {
        let blob = self.blob_path(sha256);
        let target = self.tree.join(rel);
        if same_file(&blob, &target) {
            return Ok(());
        }
        let tmp = self.tmp_path();
        match fs::hard_link(&blob, &tmp) {
            Ok(()) => {}
            // File systems without hard links still get a correct tree.
            Err(_) => {
                let bytes = fs::read(&blob).map_err(err("read", &blob))?;
                return self.write_atomic(&target, &bytes);
            }
        }
        self.commit(&tmp, &target)
    }

    /// Writes `bytes` to the tree file `rel` atomically.
    pub fn write_tree_file(&self, rel: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.write_atomic(&self.tree.join(rel), bytes)
    }

    /// Reads the tree file `rel`, `None` if it does not exist.
    pub fn read_tree_file(&self, rel: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.tree.join(rel);
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err("read", &path)(e)),
        }
    }

    /// True when the tree file `rel` exists.
    pub fn tree_file_exists(&self, rel: &str) -> bool {
        self.tree.join(rel).is_file()
    }

    /// Removes the tree file `rel`; a missing file is not an error.
    pub fn remove_tree_file(&self, rel: &str) -> Result<(), StoreError> {
        let path = self.tree.join(rel);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(path.parent().unwrap_or(&self.tree)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err("remove", &path)(e)),
        }
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
        if let Err(e) = fs::rename(tmp, target) {
            let _ = fs::remove_file(tmp);
            return Err(err("rename into place", target)(e));
        }
        sync_dir(target.parent().unwrap_or(&self.data_dir))
    }
}

/// fsync a directory so a rename in it survives a power cut.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("fsync directory", dir))
}

#[cfg(unix)]
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &Path, _: &Path) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn sha(b: &[u8]) -> [u8; 32] {
        Sha256::digest(b).into()
    }

    #[test]
    fn blobs_are_linked_into_the_tree_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let body = b"tarball bytes";
        store.put_blob(&sha(body), body).unwrap();
        assert!(store.has_blob(&sha(body)));
        store.link_blob("tarballs/a-1.0.0.tar", &sha(body)).unwrap();
        store.link_blob("tarballs/b-1.0.0.tar", &sha(body)).unwrap();
        let a = store.tree().join("tarballs/a-1.0.0.tar");
        assert_eq!(fs::read(&a).unwrap(), body);
        assert!(same_file(&a, &store.tree().join("tarballs/b-1.0.0.tar")));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn tree_files_are_replaced_atomically_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.write_tree_file("names", b"one").unwrap();
        store.write_tree_file("names", b"two").unwrap();
        assert_eq!(store.read_tree_file("names").unwrap().unwrap(), b"two");
        store.remove_tree_file("names").unwrap();
        store.remove_tree_file("names").unwrap();
        assert!(store.read_tree_file("names").unwrap().is_none());
    }

    #[test]
    fn lock_is_exclusive_and_cleans_leftover_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        fs::write(dir.path().join("tmp/123-0-dead"), b"half").unwrap();
        let lock = store.try_lock().unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        fs::write(dir.path().join("tmp/456-0-live"), b"live").unwrap();
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
