//! Generations of the served tree.
//!
//! A generation is a complete, immutable directory under
//! `DATA_DIR/generations/` in which every file is a hard link to a blob, plus
//! the signed manifest that lists them. `DATA_DIR/current` is a symlink to
//! the served generation and is switched with one `rename`, so a reader that
//! resolves `current` once sees exactly one generation, and every path it
//! then opens stays valid for as long as that generation is kept.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::{Store, StoreError, err, sync_dir};
use crate::manifest::{self, FileEntry, Manifest, ManifestKey, ManifestPublicKey, UpstreamState};

/// Generations kept at least, whatever their age (the current one included),
/// by syncs and by `hexmirror gc`.
pub const KEEP_GENERATIONS: usize = 3;

/// Name of the manifest file at the root of every generation.
pub const MANIFEST_FILE: &str = "hexmirror-manifest.json";

/// A served file: which blob it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRef {
    /// SHA-256 of the content, which is also the blob's name.
    pub sha256: [u8; 32],
    /// Size in bytes.
    pub size: u64,
}

/// Every file of a generation but the manifest, by path relative to its root.
pub type FileMap = BTreeMap<String, FileRef>;

/// Directory name of generation `id` (zero-padded so names sort by id).
fn dir_name(id: u64) -> String {
    format!("g{id:012}")
}

fn parse_dir_name(name: &str) -> Option<u64> {
    name.strip_prefix('g')?.parse().ok()
}

/// The current generation as the next one starts from it.
#[derive(Debug, Clone, Default)]
pub struct Current {
    /// Its files.
    pub files: FileMap,
    /// Its manifest version (0 when there is none).
    pub version: u64,
    /// When its manifest expires.
    pub expires_at: u64,
    /// The upstream state its manifest records.
    pub upstream: Option<UpstreamState>,
}

impl Store {
    /// Reads the current generation's manifest. One that does not verify (a
    /// rotated manifest key, a damaged disk) is not trusted as a file list:
    /// the caller then starts from nothing and reuses verified blobs.
    pub fn load_current(&self, key: &ManifestPublicKey) -> Current {
        let Ok(Some((id, dir))) = self.current() else {
            return Current::default();
        };
        let path = dir.join(MANIFEST_FILE);
        let parsed = fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| manifest::verify(&bytes, key, 0, None).map_err(|e| e.to_string()));
        let m = match parsed {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(path = %path.display(), "current manifest unusable ({e}); rebuilding from the upstream");
                return Current {
                    version: id,
                    ..Current::default()
                };
            }
        };
        let files = m
            .files
            .iter()
            .filter_map(|(p, f)| {
                let sha: [u8; 32] = hex::decode(&f.sha256).ok()?.try_into().ok()?;
                Some((
                    p.clone(),
                    FileRef {
                        sha256: sha,
                        size: f.size,
                    },
                ))
            })
            .collect();
        Current {
            files,
            version: m.version.max(id),
            expires_at: m.expires_at,
            upstream: Some(m.upstream),
        }
    }

    /// Signs a manifest for `files` as generation `version`, publishes the
    /// generation and switches `current` to it.
    pub fn publish_signed(
        &self,
        version: u64,
        files: &FileMap,
        upstream: UpstreamState,
        expiry: Duration,
        key: &ManifestKey,
    ) -> Result<(), StoreError> {
        let signed_at = crate::clock::unix_now();
        let manifest = Manifest {
            version,
            generation: dir_name(version),
            signed_at,
            expires_at: signed_at + expiry.as_secs(),
            upstream,
            files: files
                .iter()
                .map(|(p, f)| {
                    (
                        p.clone(),
                        FileEntry {
                            sha256: hex::encode(f.sha256),
                            size: f.size,
                        },
                    )
                })
                .collect(),
        };
        let bytes = manifest::sign(&manifest, key);
        self.publish_generation(version, files, &bytes)?;
        Ok(())
    }

    /// The generations directory.
    pub fn generations_dir(&self) -> PathBuf {
        self.data_dir.join("generations")
    }

    /// The `current` symlink (what `serve` and nginx serve).
    pub fn current_link(&self) -> PathBuf {
        self.data_dir.join("current")
    }

    /// Id and directory of the current generation, if any.
    pub fn current(&self) -> Result<Option<(u64, PathBuf)>, StoreError> {
        let link = self.current_link();
        match fs::read_link(&link) {
            Ok(target) => {
                let id = target
                    .file_name()
                    .and_then(|n| parse_dir_name(&n.to_string_lossy()))
                    .ok_or_else(|| StoreError {
                        action: "read generation id from",
                        path: link.clone(),
                        source: std::io::Error::other(format!(
                            "unexpected target {}",
                            target.display()
                        )),
                    })?;
                Ok(Some((id, self.data_dir.join(target))))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err("read symlink", &link)(e)),
        }
    }

    /// Stores `bytes` as a blob (if new) and returns its reference.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<FileRef, StoreError> {
        let sha256: [u8; 32] = Sha256::digest(bytes).into();
        self.put_blob(&sha256, bytes)?;
        Ok(FileRef {
            sha256,
            size: bytes.len() as u64,
        })
    }

    /// The reference of a stored blob (its size read from disk).
    pub fn blob_ref(&self, sha256: &[u8; 32]) -> Result<FileRef, StoreError> {
        let path = self.blob_path(sha256);
        let size = fs::metadata(&path).map_err(err("stat blob", &path))?.len();
        Ok(FileRef {
            sha256: *sha256,
            size,
        })
    }

    /// True when the blob exists and its content still hashes to its name.
    /// A blob that does not (a bad disk, a hand edit) is removed, so the
    /// caller fetches a good copy; generations that link the bad one keep it
    /// until they are pruned, and `verify` reports it there.
    pub fn blob_is_intact(&self, sha256: &[u8; 32]) -> Result<bool, StoreError> {
        let path = self.blob_path(sha256);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(err("read blob", &path)(e)),
        };
        if Sha256::digest(&bytes).as_slice() == sha256 {
            return Ok(true);
        }
        tracing::warn!(blob = %path.display(), "stored blob does not match its checksum; removing it to fetch it again");
        fs::remove_file(&path).map_err(err("remove corrupt blob", &path))?;
        Ok(false)
    }

    /// Reads a blob.
    pub fn read_blob(&self, sha256: &[u8; 32]) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(sha256);
        fs::read(&path).map_err(err("read blob", &path))
    }

    /// Writes generation `id` with `files` and the manifest bytes, then
    /// makes it current. Every blob in `files` must already be stored.
    pub fn publish_generation(
        &self,
        id: u64,
        files: &FileMap,
        manifest: &[u8],
    ) -> Result<PathBuf, StoreError> {
        let root = self.generations_dir();
        fs::create_dir_all(&root).map_err(err("create directory", &root))?;
        let building = root.join(format!(".building-{}", dir_name(id)));
        if building.exists() {
            fs::remove_dir_all(&building).map_err(err("remove stale", &building))?;
        }
        fs::create_dir(&building).map_err(err("create directory", &building))?;
        let mut dirs = std::collections::BTreeSet::new();
        for (rel, file) in files {
            let target = building.join(rel);
            if let Some(parent) = target.parent()
                && dirs.insert(parent.to_owned())
            {
                fs::create_dir_all(parent).map_err(err("create directory", parent))?;
            }
            let blob = self.blob_path(&file.sha256);
            fs::hard_link(&blob, &target).map_err(err("link blob into generation", &target))?;
        }
        let manifest_path = building.join(MANIFEST_FILE);
        fs::write(&manifest_path, manifest).map_err(err("write", &manifest_path))?;
        fs::File::open(&manifest_path)
            .and_then(|f| f.sync_all())
            .map_err(err("fsync", &manifest_path))?;
        // Directory entries of hard links are metadata: fsync every directory
        // so the generation is durable before anything points at it.
        for dir in dirs.iter().rev() {
            sync_dir(dir)?;
        }
        sync_dir(&building)?;
        let final_dir = root.join(dir_name(id));
        fs::rename(&building, &final_dir).map_err(err("rename into place", &final_dir))?;
        sync_dir(&root)?;
        self.switch_current(id)?;
        Ok(final_dir)
    }

    /// Points `current` at generation `id` atomically.
    fn switch_current(&self, id: u64) -> Result<(), StoreError> {
        let relative = Path::new("generations").join(dir_name(id));
        let tmp = self
            .data_dir
            .join(format!(".current-{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&relative, &tmp).map_err(err("create symlink", &tmp))?;
        let link = self.current_link();
        fs::rename(&tmp, &link).map_err(err("switch", &link))?;
        sync_dir(&self.data_dir)
    }

    /// Removes generations other than the current one that are older than
    /// `grace` (by the time they stopped being current, approximated by the
    /// mtime of the next generation), keeping at least `keep` of the newest.
    /// Also removes half-built generations. Returns how many were removed.
    pub fn prune_generations(&self, keep: usize, grace: Duration) -> Result<usize, StoreError> {
        let root = self.generations_dir();
        let current = self.current()?.map(|(id, _)| id);
        let mut ids = Vec::new();
        let entries = match fs::read_dir(&root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(err("list", &root)(e)),
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".building-") {
                fs::remove_dir_all(entry.path()).map_err(err("remove", &entry.path()))?;
                removed += 1;
            } else if let Some(id) = parse_dir_name(&name) {
                ids.push((id, entry.path()));
            }
        }
        ids.sort();
        let now = SystemTime::now();
        let newest = ids.len().saturating_sub(keep.max(1));
        for i in 0..newest {
            let (id, path) = &ids[i];
            if Some(*id) == current {
                continue;
            }
            // A generation stopped being served when its successor appeared.
            let retired_at = fs::metadata(&ids[i + 1].1)
                .and_then(|m| m.modified())
                .unwrap_or(now);
            if now.duration_since(retired_at).unwrap_or_default() < grace {
                continue;
            }
            fs::remove_dir_all(path).map_err(err("remove generation", path))?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Removes blobs that no generation links to (their link count is 1).
    /// Only safe under the writer lock: a sync's fresh blobs are unlinked
    /// until its generation is published. Returns (blobs, bytes) removed.
    pub fn collect_garbage(&self) -> Result<(u64, u64), StoreError> {
        use std::os::unix::fs::MetadataExt;
        let mut removed = (0, 0);
        let shards = match fs::read_dir(&self.blobs) {
            Ok(s) => s,
            Err(e) => return Err(err("list", &self.blobs)(e)),
        };
        for shard in shards.flatten() {
            let Ok(blobs) = fs::read_dir(shard.path()) else {
                continue;
            };
            for blob in blobs.flatten() {
                let path = blob.path();
                let meta = fs::metadata(&path).map_err(err("stat", &path))?;
                if meta.nlink() <= 1 {
                    fs::remove_file(&path).map_err(err("remove blob", &path))?;
                    removed.0 += 1;
                    removed.1 += meta.len();
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_blob_is_detected_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store.put_bytes(b"good").unwrap();
        assert!(store.blob_is_intact(&a.sha256).unwrap());
        fs::write(store.blob_path(&a.sha256), b"evil").unwrap();
        assert!(!store.blob_is_intact(&a.sha256).unwrap());
        assert!(!store.has_blob(&a.sha256));
        assert!(!store.blob_is_intact(&[0; 32]).unwrap());
    }

    #[test]
    fn publish_switches_current_and_prune_keeps_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store.put_bytes(b"a").unwrap();
        let b = store.put_bytes(b"b").unwrap();
        let files: FileMap = [("names".to_string(), a), ("packages/x".to_string(), b)].into();
        store.publish_generation(1, &files, b"m1").unwrap();
        let (id, path) = store.current().unwrap().unwrap();
        assert_eq!(id, 1);
        assert_eq!(fs::read(path.join("packages/x")).unwrap(), b"b");
        assert_eq!(
            fs::read(store.current_link().join(MANIFEST_FILE)).unwrap(),
            b"m1"
        );

        let only_a: FileMap = [("names".to_string(), a)].into();
        store.publish_generation(2, &only_a, b"m2").unwrap();
        assert_eq!(store.current().unwrap().unwrap().0, 2);
        // Generation 1 is still in its grace period, then goes.
        assert_eq!(
            store
                .prune_generations(1, Duration::from_secs(3600))
                .unwrap(),
            0
        );
        assert_eq!(store.prune_generations(1, Duration::ZERO).unwrap(), 1);
        assert!(store.current_link().join("names").is_file());
        // b is now referenced by nothing and is collected; a is kept.
        assert_eq!(store.collect_garbage().unwrap(), (1, 1));
        assert!(store.has_blob(&a.sha256));
        assert!(!store.has_blob(&b.sha256));
    }
}
