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
use crate::manifest::{
    self, Delta, FileEntry, FileList, ManifestKey, ManifestPublicKey, ManifestRef, UpstreamState,
};

/// Generations kept at least, whatever their age (the current one included),
/// by syncs and by `hexmirror gc`.
pub const KEEP_GENERATIONS: usize = 3;

/// Name of the manifest file at the root of every generation.
pub const MANIFEST_FILE: &str = "hexmirror-manifest.json";

/// Name of the signed delta beside it, once a hosted change patched the
/// generation (see [`crate::manifest::Delta`]).
pub const MANIFEST_DELTA_FILE: &str = "hexmirror-manifest-delta.json";

/// Reads a generation's manifest and, if there is one, its delta.
pub fn read_manifest(root: &Path) -> Result<(Vec<u8>, Option<Vec<u8>>), StoreError> {
    let path = root.join(MANIFEST_FILE);
    let base = fs::read(&path).map_err(err("read", &path))?;
    let path = root.join(MANIFEST_DELTA_FILE);
    let delta = match fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(err("read", &path)(e)),
    };
    Ok((base, delta))
}

/// A generation's manifest version and expiry (with its delta, if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peek {
    /// The delta's version, else the manifest's.
    pub version: u64,
    /// The earlier of the two expiries.
    pub expires_at: u64,
}

/// Reads a generation's manifest version and expiry without verifying:
/// enough for health reports and to decide whether re-signing is due, never
/// to trust. Parses only those two fields (a full-scale manifest is 90 MB).
pub fn peek_manifest(root: &Path) -> Result<Peek, String> {
    #[derive(serde::Deserialize)]
    struct Signed {
        expires_at: u64,
        version: u64,
    }
    #[derive(serde::Deserialize)]
    struct File {
        signed: Signed,
    }
    let (base, delta) = read_manifest(root).map_err(|e| e.to_string())?;
    let parse = |bytes: &[u8], name: &str| {
        serde_json::from_slice::<File>(bytes)
            .map(|f| f.signed)
            .map_err(|e| format!("{}: {e}", root.join(name).display()))
    };
    let base = parse(&base, MANIFEST_FILE)?;
    Ok(match delta {
        Some(d) => {
            let delta = parse(&d, MANIFEST_DELTA_FILE)?;
            Peek {
                version: delta.version,
                expires_at: base.expires_at.min(delta.expires_at),
            }
        }
        None => Peek {
            version: base.version,
            expires_at: base.expires_at,
        },
    })
}

/// The current generation, as a hosted change patches it in place.
#[derive(Debug, Clone)]
pub struct Patchable {
    /// Its id, which is also its base manifest's version.
    pub id: u64,
    /// Its directory.
    pub dir: PathBuf,
    /// The delta already applied to it, if any.
    pub delta: Option<Delta>,
}

/// The order a patch touches files in, so a client reading the tree while
/// it changes never finds a name before what it points to: tarballs and
/// docs first, then package records, then `/names` and `/versions`, then
/// removals of records, then removals of tarballs.
fn patch_rank(path: &str, present: bool) -> u8 {
    let leaf =
        |dir: &str| path.starts_with(&format!("{dir}/")) || path.contains(&format!("/{dir}/"));
    let blob = leaf("tarballs") || leaf("docs");
    match (present, blob, leaf("packages")) {
        (true, true, _) => 0,
        (true, false, true) => 1,
        (true, false, false) => 2,
        (false, false, _) => 3,
        (false, true, _) => 4,
    }
}

/// A served file: which blob it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRef {
    /// SHA-256 of the content, which is also the blob's name.
    pub sha256: [u8; 32],
    /// Size in bytes.
    pub size: u64,
}

impl FileRef {
    /// The file as a manifest lists it.
    pub fn entry(&self) -> FileEntry {
        FileEntry {
            sha256: hex::encode(self.sha256),
            size: self.size,
        }
    }

    /// The file a manifest entry describes (`None`: not a SHA-256).
    pub fn from_entry(entry: &FileEntry) -> Option<Self> {
        Some(Self {
            sha256: hex::decode(&entry.sha256).ok()?.try_into().ok()?,
            size: entry.size,
        })
    }
}

/// Every file of a generation but the manifest, by path relative to its root.
pub type FileMap = BTreeMap<String, FileRef>;

/// A manifest's file list as references (entries `verify` already checked).
fn file_map(files: &BTreeMap<String, FileEntry>) -> FileMap {
    files
        .iter()
        .filter_map(|(p, f)| Some((p.clone(), FileRef::from_entry(f)?)))
        .collect()
}

/// Most files a delta may list before a hosted change publishes a complete
/// generation instead (bounds the delta at a few hundred KB).
pub const MAX_DELTA_FILES: usize = 4096;

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
        let parsed = read_manifest(&dir)
            .map_err(|e| e.to_string())
            .and_then(|(base, delta)| {
                manifest::verify_with_delta(&base, delta.as_deref(), key, 0, None)
                    .map_err(|e| e.to_string())
            });
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
        Current {
            files: file_map(&m.files),
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
        let generation = dir_name(version);
        let manifest = ManifestRef {
            version,
            generation: &generation,
            signed_at,
            expires_at: signed_at + expiry.as_secs(),
            upstream: &upstream,
            files: FileList(files.iter().map(|(p, f)| (p.as_str(), &f.sha256, f.size))),
        };
        let bytes = manifest::sign_ref(&manifest, key);
        self.publish_generation(version, files, &bytes)?;
        Ok(())
    }

    /// The current generation and its delta, for a hosted change to patch.
    /// `Ok(None)`: nothing is published yet. An error means the delta is
    /// unusable (damaged, another key, another base): the caller publishes a
    /// complete generation instead.
    pub fn patchable(&self, key: &ManifestPublicKey) -> Result<Option<Patchable>, String> {
        let Some((id, dir)) = self.current().map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let path = dir.join(MANIFEST_DELTA_FILE);
        let delta = match fs::read(&path) {
            Ok(bytes) => {
                let delta = manifest::verify_delta(&bytes, key)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                if delta.base_version != id {
                    return Err(format!(
                        "{}: applies to version {}, the generation is {id}",
                        path.display(),
                        delta.base_version
                    ));
                }
                Some(delta)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Ok(Some(Patchable { id, dir, delta }))
    }

    /// Signs the next delta of `at` (its previous delta plus `changes`) as
    /// version `version` and patches the generation with it.
    pub fn patch_signed(
        &self,
        at: &Patchable,
        version: u64,
        changes: &[(String, Option<FileRef>)],
        expiry: Duration,
        key: &ManifestKey,
    ) -> Result<(), StoreError> {
        let signed_at = crate::clock::unix_now();
        let mut files = at
            .delta
            .as_ref()
            .map(|d| d.files.clone())
            .unwrap_or_default();
        for (path, file) in changes {
            files.insert(path.clone(), file.as_ref().map(FileRef::entry));
        }
        let delta = Delta {
            base_version: at.id,
            expires_at: signed_at + expiry.as_secs(),
            files,
            generation: dir_name(at.id),
            signed_at,
            version,
        };
        self.patch_generation(&at.dir, &manifest::sign_delta(&delta, key), changes)
    }

    /// The files of `at` as its base manifest and delta list them: what a
    /// failed change puts back.
    pub fn patchable_files(
        &self,
        at: &Patchable,
        key: &ManifestPublicKey,
    ) -> Result<FileMap, String> {
        let path = at.dir.join(MANIFEST_FILE);
        let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut m = manifest::verify(&bytes, key, 0, None)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if let Some(delta) = &at.delta {
            manifest::apply_delta(&mut m, delta.clone());
        }
        Ok(file_map(&m.files))
    }

    /// Patches generation directory `dir` in place: writes `delta` (the
    /// signed, cumulative delta that already lists `changes`) beside its
    /// manifest, then links or removes each changed file in [`patch_rank`]
    /// order, each with one `rename`. The delta goes first so that a crash
    /// part-way is finished by [`Store::roll_forward`]. Every blob must
    /// already be stored. Takes the writer lock's holder only.
    pub fn patch_generation(
        &self,
        dir: &Path,
        delta: &[u8],
        changes: &[(String, Option<FileRef>)],
    ) -> Result<(), StoreError> {
        self.write_atomic(&dir.join(MANIFEST_DELTA_FILE), delta)?;
        self.place_all(dir, changes)?;
        Ok(())
    }

    /// Places every change in [`patch_rank`] order, then fsyncs the
    /// directories it touched. Returns how many files it changed.
    fn place_all(
        &self,
        dir: &Path,
        changes: &[(String, Option<FileRef>)],
    ) -> Result<usize, StoreError> {
        let mut ordered: Vec<&(String, Option<FileRef>)> = changes.iter().collect();
        ordered.sort_by_key(|(path, file)| patch_rank(path, file.is_some()));
        let mut dirs = std::collections::BTreeSet::new();
        let mut changed = 0;
        for (path, file) in ordered {
            if self.place(dir, path, file.as_ref())? {
                changed += 1;
                let target = dir.join(path);
                dirs.insert(target.parent().unwrap_or(dir).to_owned());
            }
        }
        for d in &dirs {
            sync_dir(d)?;
        }
        Ok(changed)
    }

    /// Makes the current generation's files match its delta, finishing a
    /// patch a crash interrupted. Returns how many files it fixed. Takes the
    /// writer lock's holder only.
    pub fn roll_forward(&self, key: &ManifestPublicKey) -> Result<usize, String> {
        let Some(Patchable {
            dir,
            delta: Some(delta),
            ..
        }) = self.patchable(key)?
        else {
            return Ok(0);
        };
        let mut changes = Vec::with_capacity(delta.files.len());
        for (path, entry) in delta.files {
            let file = match entry {
                Some(e) => {
                    let file = FileRef::from_entry(&e)
                        .ok_or_else(|| format!("delta entry {path:?}: bad sha256"))?;
                    if !self.has_blob(&file.sha256) {
                        return Err(format!(
                            "delta entry {path:?}: blob {} is missing; run `hexmirror sync` to publish a complete generation",
                            e.sha256
                        ));
                    }
                    Some(file)
                }
                None => None,
            };
            changes.push((path, file));
        }
        self.place_all(&dir, &changes).map_err(|e| e.to_string())
    }

    /// Makes `dir/path` the blob `file` (or absent). Returns whether it
    /// changed anything.
    fn place(&self, dir: &Path, path: &str, file: Option<&FileRef>) -> Result<bool, StoreError> {
        use std::os::unix::fs::MetadataExt;
        let target = dir.join(path);
        let Some(file) = file else {
            return match fs::remove_file(&target) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(err("remove", &target)(e)),
            };
        };
        let blob = self.blob_path(&file.sha256);
        let blob_ino = fs::metadata(&blob).map_err(err("stat blob", &blob))?.ino();
        if fs::symlink_metadata(&target).is_ok_and(|m| m.ino() == blob_ino) {
            return Ok(false);
        }
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(err("create directory", parent))?;
        }
        // Link under tmp/ (same file system) and rename over the old name,
        // so a reader sees the old file or the new one, never neither.
        let tmp = self.tmp_path();
        fs::hard_link(&blob, &tmp).map_err(err("link blob", &tmp))?;
        self.commit_quiet(&tmp, &target)?;
        Ok(true)
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
    fn a_patch_edits_the_current_generation_and_roll_forward_finishes_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = ManifestKey::generate();
        let upstream = UpstreamState {
            names_etag: None,
            synced_at: 0,
            url: "http://upstream".into(),
            versions_etag: None,
        };
        let [a, b, c, d, e] = [b"a", b"b", b"c", b"d", b"e"].map(|x| store.put_bytes(x).unwrap());
        let files: FileMap = [
            ("names".to_string(), a),
            ("packages/x".to_string(), b),
            ("tarballs/x-1.tar".to_string(), c),
        ]
        .into();
        let expiry = Duration::from_secs(3600);
        store
            .publish_signed(1, &files, upstream, expiry, &key)
            .unwrap();
        let at = store.patchable(&key.public()).unwrap().unwrap();
        assert_eq!((at.id, at.delta.is_none()), (1, true));
        let changes = vec![
            ("packages/x".to_string(), Some(e)),
            ("tarballs/x-1.tar".to_string(), None),
            ("docs/x-2.tar.gz".to_string(), Some(d)),
        ];
        store.patch_signed(&at, 2, &changes, expiry, &key).unwrap();
        let root = store.current_link();
        assert_eq!(store.current().unwrap().unwrap().0, 1, "patched in place");
        assert_eq!(fs::read(root.join("packages/x")).unwrap(), b"e");
        assert_eq!(fs::read(root.join("docs/x-2.tar.gz")).unwrap(), b"d");
        assert!(!root.join("tarballs/x-1.tar").exists());
        let current = store.load_current(&key.public());
        assert_eq!(current.version, 2);
        let expected: FileMap = [
            ("docs/x-2.tar.gz".to_string(), d),
            ("names".to_string(), a),
            ("packages/x".to_string(), e),
        ]
        .into();
        assert_eq!(current.files, expected);

        // A crash after the delta, before the files: roll forward finishes it.
        fs::remove_file(root.join("packages/x")).unwrap();
        fs::hard_link(store.blob_path(&b.sha256), root.join("packages/x")).unwrap();
        fs::hard_link(store.blob_path(&c.sha256), root.join("tarballs/x-1.tar")).unwrap();
        fs::remove_file(root.join("docs/x-2.tar.gz")).unwrap();
        assert_eq!(store.roll_forward(&key.public()).unwrap(), 3);
        assert_eq!(fs::read(root.join("packages/x")).unwrap(), b"e");
        assert!(!root.join("tarballs/x-1.tar").exists());
        assert_eq!(store.roll_forward(&key.public()).unwrap(), 0);

        // The next patch builds on the delta; a delta of another key is refused.
        let at = store.patchable(&key.public()).unwrap().unwrap();
        assert_eq!(at.delta.as_ref().unwrap().version, 2);
        assert_eq!(store.patchable_files(&at, &key.public()).unwrap(), expected);
        assert!(store.patchable(&ManifestKey::generate().public()).is_err());
    }

    #[test]
    fn patches_write_what_is_pointed_to_before_what_points() {
        let mut paths = [
            ("repos/r/names", true),
            ("repos/r/tarballs/x-1.tar", false),
            ("repos/r/packages/x", true),
            ("repos/r/tarballs/x-2.tar", true),
            ("packages/y", false),
            ("docs/x-2.tar.gz", true),
        ];
        paths.sort_by_key(|(p, present)| patch_rank(p, *present));
        let order: Vec<_> = paths.iter().map(|(p, _)| *p).collect();
        assert_eq!(
            order,
            [
                "repos/r/tarballs/x-2.tar",
                "docs/x-2.tar.gz",
                "repos/r/packages/x",
                "repos/r/names",
                "packages/y",
                "repos/r/tarballs/x-1.tar",
            ]
        );
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
