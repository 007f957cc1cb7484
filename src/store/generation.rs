//! Generations of the served tree.
//!
//! A generation is a complete directory under `DATA_DIR/generations/` in
//! which every file is a hard link to a blob, plus the signed manifest that
//! lists them. `DATA_DIR/current` is a symlink to the served generation and
//! is switched with one `rename`, so a reader that resolves `current` once
//! sees exactly one generation. A sync never changes a generation once it is
//! published; a hosted change patches the current one in place (a signed
//! delta first, then one `rename` per file, in an order where nothing names
//! a missing file), so a reader sees each file whole, old or new.

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

pub use crate::manifest::{MANIFEST_DELTA_FILE, MANIFEST_FILE};

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
pub fn peek_manifest(root: &Path) -> Result<Peek, GenerationError> {
    if let Some(quick) = peek_quick(root)? {
        return Ok(quick);
    }
    let (base, delta) = read_manifest(root)?;
    let base = signed_fields(&base, &root.join(MANIFEST_FILE))?;
    Ok(match delta {
        Some(d) => {
            let delta = signed_fields(&d, &root.join(MANIFEST_DELTA_FILE))?;
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

/// [`peek_manifest`] from the manifest's first and last bytes (and the
/// small delta), without reading its file list; `None` when its ends are
/// not laid out as ours are.
fn peek_quick(root: &Path) -> Result<Option<Peek>, GenerationError> {
    use std::io::{Read, Seek, SeekFrom};
    const END: u64 = 4096;
    let path = root.join(MANIFEST_FILE);
    let mut file = fs::File::open(&path).map_err(err("open", &path))?;
    let len = file.metadata().map_err(err("stat", &path))?.len();
    let mut head = vec![0; END.min(len) as usize];
    file.read_exact(&mut head).map_err(err("read", &path))?;
    let mut tail = Vec::new();
    file.seek(SeekFrom::Start(len.saturating_sub(END)))
        .and_then(|_| file.read_to_end(&mut tail))
        .map_err(err("read", &path))?;
    let Some((expires_at, version)) = crate::manifest::peek_ends(&head, &tail) else {
        return Ok(None);
    };
    let path = root.join(MANIFEST_DELTA_FILE);
    let delta = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Some(Peek {
                version,
                expires_at,
            }));
        }
        Err(e) => return Err(err("read", &path)(e).into()),
    };
    // The delta lists only what hosted changes touched: parse it whole.
    let signed = signed_fields(&delta, &path)?;
    Ok(Some(Peek {
        version: signed.version,
        expires_at: expires_at.min(signed.expires_at),
    }))
}

/// The two fields every signed file has that a peek wants.
#[derive(serde::Deserialize)]
struct SignedFields {
    expires_at: u64,
    version: u64,
}

/// [`SignedFields`] of a manifest or delta file (`path`, for errors).
fn signed_fields(bytes: &[u8], path: &Path) -> Result<SignedFields, GenerationError> {
    #[derive(serde::Deserialize)]
    struct File {
        signed: SignedFields,
    }
    serde_json::from_slice::<File>(bytes)
        .map(|f| f.signed)
        .map_err(|source| GenerationError::Malformed {
            path: path.to_owned(),
            source,
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

/// Why the writer cannot build the next generation from the current one.
/// The current generation stays served, untouched.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    /// Disk trouble.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The current generation's manifest is neither verifiable nor readable
    /// as a hint, so its file list cannot be known.
    #[error(
        "the current generation {} has no readable manifest ({source}); refusing to build the next \
         generation from it, which would drop its files: restore the manifest or run `hexmirror sync`",
        dir.display()
    )]
    Unreadable {
        /// The generation's directory.
        dir: PathBuf,
        /// Why the manifest could not be read.
        source: manifest::ManifestError,
    },
    /// The manifest key could not be read or made.
    #[error(transparent)]
    Key(#[from] crate::keyfiles::KeyFileError),
    /// The state database failed.
    #[error(transparent)]
    Db(#[from] super::DbError),
    /// A manifest does not verify.
    #[error("{}: {source}", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// Why it was refused.
        source: manifest::ManifestError,
    },
    /// A manifest is not even the manifest format.
    #[error("{}: not a manifest ({source})", path.display())]
    Malformed {
        /// The manifest file.
        path: PathBuf,
        /// The parser's reason.
        source: serde_json::Error,
    },
    /// The delta can no longer be applied: a blob it names is gone.
    #[error(
        "delta entry {path:?}: blob {sha256} is missing; run `hexmirror sync` to publish a complete generation"
    )]
    MissingBlob {
        /// The entry.
        path: String,
        /// The blob it names.
        sha256: String,
    },
    /// The delta cannot be applied at all.
    #[error(transparent)]
    NotPatchable(#[from] NotPatchable),
    /// A file of the current generation is not a stored (verified) blob.
    #[error(
        "{} is not a stored blob: the served generation was edited by hand; refusing to carry it \
         into the next generation, remove it or run `hexmirror sync`",
        path.display()
    )]
    NotABlob {
        /// The file.
        path: PathBuf,
    },
    /// The next generation would drop files that no change removes.
    #[error(
        "refusing to publish generation {version}: it would drop {count} files of the current \
         generation that this change does not remove (first: {}); nothing was changed",
        first.join(", ")
    )]
    WouldDrop {
        /// The generation that was refused.
        version: u64,
        /// How many files it would have lost.
        count: usize,
        /// The first few of them.
        first: Vec<String>,
    },
}

/// Why a hosted change cannot patch the current generation in place; the
/// writer then publishes a complete generation instead.
#[derive(Debug, thiserror::Error)]
pub enum NotPatchable {
    /// Disk trouble.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The delta beside the manifest does not verify or is damaged.
    #[error("{}: {source}", path.display())]
    Delta {
        /// The delta file.
        path: PathBuf,
        /// Why it was refused.
        source: manifest::ManifestError,
    },
    /// The delta applies to another generation.
    #[error("{}: applies to version {base}, the generation is {id}", path.display())]
    OtherBase {
        /// The delta file.
        path: PathBuf,
        /// The version it names as its base.
        base: u64,
        /// The generation it sits in.
        id: u64,
    },
    /// The base manifest is not signed by the configured key (it was
    /// rotated): a delta signed now would not verify against it.
    #[error("{} is signed by another key ({found}); the manifest key was changed", path.display())]
    OtherKey {
        /// The base manifest.
        path: PathBuf,
        /// The key ids it names.
        found: String,
    },
}

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
    /// False when the manifest does not verify with the configured key (a
    /// rotated key) and the file list was rebuilt from the directory: the
    /// next publication re-signs it.
    pub signed_by_key: bool,
}

impl Store {
    /// Reads the current generation's file list, from its manifest when that
    /// verifies with `key`. When it does not (a rotated manifest key, a delta
    /// signed by the old key) the files are still verified blobs, so the list
    /// is rebuilt from the directory itself; the next publication signs it
    /// with `key`. Never returns fewer files than the generation holds: an
    /// unreadable generation is an error, not an empty list.
    pub fn load_current(&self, key: &ManifestPublicKey) -> Result<Current, GenerationError> {
        let Some((id, dir)) = self.current()? else {
            return Ok(Current {
                signed_by_key: true,
                ..Current::default()
            });
        };
        let (base, delta) = read_manifest(&dir)?;
        match manifest::verify_with_delta(&base, delta.as_deref(), key, 0, None) {
            Ok(m) => {
                // The file's bytes go before the map is made from the parsed
                // manifest (75 MB at hex.pm's size, beside both).
                drop((base, delta));
                Ok(Current {
                    files: file_map(&m.files),
                    version: m.version.max(id),
                    expires_at: m.expires_at,
                    upstream: Some(m.upstream),
                    signed_by_key: true,
                })
            }
            Err(e) => {
                tracing::warn!(
                    generation = %dir.display(),
                    "current manifest does not verify with the configured key ({e}); \
                     rebuilding its file list from the generation's files"
                );
                // The unverified manifest says which blob each file claims
                // to be; the directory proves it (same inode as the blob).
                let hint = manifest::read_unverified(&base, delta.as_deref())
                    .or_else(|_| manifest::read_unverified(&base, None))
                    .map_err(|source| GenerationError::Unreadable {
                        dir: dir.clone(),
                        source,
                    })?;
                let files = self.files_in(&dir, &file_map(&hint.files))?;
                Ok(Current {
                    files,
                    version: hint.version.max(id),
                    // Due at once: the next publication re-signs.
                    expires_at: 0,
                    upstream: Some(UpstreamState {
                        // Validators the old key vouched for are not reused.
                        names_etag: None,
                        versions_etag: None,
                        ..hint.upstream
                    }),
                    signed_by_key: false,
                })
            }
        }
    }

    /// The files of directory `dir` (a generation, or the proxy's tree),
    /// each proven a stored blob by hashing it: what an air-gap export
    /// carries of the proxy's cache.
    pub fn proven_files(&self, dir: &Path) -> Result<FileMap, GenerationError> {
        self.files_in(dir, &FileMap::new())
    }

    /// Moves a file whose SHA-256 the caller verified into the blob store
    /// (a rename: same file system). The caller fsyncs blob directories
    /// with [`Store::sync_blob_dirs`] before publishing a generation that
    /// names it.
    pub fn adopt_blob(&self, sha256: &[u8; 32], file: &Path) -> Result<(), StoreError> {
        let path = self.blob_path(sha256);
        if path.is_file() {
            return fs::remove_file(file).map_err(err("remove", file));
        }
        match fs::rename(file, &path) {
            // The fan-out directory is made on first use only.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && file.exists() => {
                let dir = path.parent().unwrap_or(&self.blobs);
                fs::create_dir_all(dir).map_err(err("create directory", dir))?;
                fs::rename(file, &path).map_err(err("rename into the blob store", &path))
            }
            other => other.map_err(err("rename into the blob store", &path)),
        }
    }

    /// fsyncs the blob directories of `blobs`, once each.
    pub fn sync_blob_dirs<'a>(
        &self,
        blobs: impl IntoIterator<Item = &'a [u8; 32]>,
    ) -> Result<(), StoreError> {
        let dirs: std::collections::BTreeSet<PathBuf> = blobs
            .into_iter()
            .filter_map(|b| self.blob_path(b).parent().map(Path::to_owned))
            .collect();
        dirs.iter().try_for_each(|d| sync_dir(d))
    }

    /// The files of generation directory `dir` (but its manifest), each
    /// proven a stored blob: by inode when `hint` names the blob, else by
    /// hashing it and finding that blob.
    fn files_in(&self, dir: &Path, hint: &FileMap) -> Result<FileMap, GenerationError> {
        use std::os::unix::fs::MetadataExt;
        let mut files = FileMap::new();
        for rel in list_files(dir)? {
            let path = dir.join(&rel);
            let meta = fs::symlink_metadata(&path).map_err(err("stat", &path))?;
            let linked = hint.get(&rel).filter(|f| {
                f.size == meta.len()
                    && fs::metadata(self.blob_path(&f.sha256))
                        .is_ok_and(|b| b.ino() == meta.ino() && b.dev() == meta.dev())
            });
            let file = match linked {
                Some(f) => *f,
                None => {
                    let bytes = fs::read(&path).map_err(err("read", &path))?;
                    let sha256: [u8; 32] = Sha256::digest(&bytes).into();
                    if !self.has_blob(&sha256) {
                        return Err(GenerationError::NotABlob { path });
                    }
                    FileRef {
                        sha256,
                        size: bytes.len() as u64,
                    }
                }
            };
            files.insert(rel, file);
        }
        Ok(files)
    }

    /// Refuses `files` as the next generation if it lacks a file of the
    /// current one (as its directory holds it) that `removed` does not name.
    fn check_no_loss(
        &self,
        version: u64,
        files: &FileMap,
        removed: &dyn Fn(&str) -> bool,
    ) -> Result<(), GenerationError> {
        let Some((_, dir)) = self.current()? else {
            return Ok(());
        };
        let mut dropped: Vec<String> = list_files(&dir)?
            .into_iter()
            .filter(|p| !files.contains_key(p) && !removed(p))
            .collect();
        if dropped.is_empty() {
            return Ok(());
        }
        let count = dropped.len();
        dropped.truncate(5);
        tracing::error!(version, count, "refused a generation that would lose files");
        Err(GenerationError::WouldDrop {
            version,
            count,
            first: dropped,
        })
    }

    /// Signs a manifest for `files` as generation `version`, publishes the
    /// generation and switches `current` to it.
    ///
    /// `removed` names the files of the current generation that this
    /// publication removes on purpose; dropping any other is refused.
    pub fn publish_signed(
        &self,
        version: u64,
        files: &FileMap,
        removed: &dyn Fn(&str) -> bool,
        upstream: UpstreamState,
        expiry: Duration,
        key: &ManifestKey,
    ) -> Result<(), GenerationError> {
        self.check_no_loss(version, files, removed)?;
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
        self.publish_generation(version, files, |out| {
            manifest::write_signed_ref(&manifest, key, std::io::BufWriter::new(out))
        })?;
        Ok(())
    }

    /// Re-signs the current generation's manifest (same files, next version)
    /// when less than half of `expiry` is left, or at once when the manifest
    /// key (at `key_path`) was rotated. `Ok(None)`: nothing to do, nothing
    /// published yet (no key is created then), or a sync holds the data
    /// directory (it re-signs itself when due). Blocking.
    pub fn resign_if_due(
        &self,
        db: &super::Db,
        key_path: &Path,
        expiry: Duration,
    ) -> Result<Option<u64>, GenerationError> {
        self.resign(db, key_path, expiry, false)
    }

    /// Re-signs the current generation's manifest now, due or not (an
    /// air-gap heartbeat needs a new version with a new expiry). `Ok(None)`:
    /// nothing published yet, or a sync holds the data directory.
    pub fn resign_now(
        &self,
        db: &super::Db,
        key_path: &Path,
        expiry: Duration,
    ) -> Result<Option<u64>, GenerationError> {
        self.resign(db, key_path, expiry, true)
    }

    fn resign(
        &self,
        db: &super::Db,
        key_path: &Path,
        expiry: Duration,
        force: bool,
    ) -> Result<Option<u64>, GenerationError> {
        if self.current()?.is_none() {
            return Ok(None);
        }
        let key = crate::keyfiles::manifest_key(key_path)?;
        let lifetime = expiry.as_secs();
        let due = |expires_at: u64| {
            force || expires_at.saturating_sub(crate::clock::unix_now()) <= lifetime / 2
        };
        // Look before taking the lock: verifying a full-scale manifest takes
        // a second, and publishes wait for the lock meanwhile.
        let keyid = key.public().keyid();
        if let Ok(peek) = peek_manifest(&self.current_link())
            && !due(peek.expires_at)
            && base_signers(&self.current_link())?.contains(&keyid)
        {
            return Ok(None);
        }
        let Some(_lock) = self.try_lock()? else {
            return Ok(None);
        };
        let current = self.load_current(&key.public())?;
        let Some(upstream) = current.upstream.clone() else {
            return Ok(None);
        };
        if current.signed_by_key && !due(current.expires_at) {
            return Ok(None);
        }
        // A tree imported across an air gap is signed no longer than its
        // exporter vouched for: only a heartbeat bundle extends it.
        let expiry = manifest_lifetime(db, expiry)?;
        if current.signed_by_key
            && crate::clock::unix_now() + expiry.as_secs() <= current.expires_at
        {
            return Ok(None);
        }
        let recorded = db
            .call_blocking(|c| super::db::meta(c, "manifest_version"))?
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let version = current.version.max(recorded) + 1;
        self.publish_signed(version, &current.files, &|_| false, upstream, expiry, &key)?;
        db.call_blocking(|c| super::db::set_meta(c, "manifest_version", &version.to_string()))?;
        Ok(Some(version))
    }

    /// The current generation and its delta, for a hosted change to patch.
    /// `Ok(None)`: nothing is published yet. An error means it cannot be
    /// patched (a damaged delta, another key, another base): the caller
    /// publishes a complete generation instead.
    pub fn patchable(&self, key: &ManifestPublicKey) -> Result<Option<Patchable>, NotPatchable> {
        let Some((id, dir)) = self.current()? else {
            return Ok(None);
        };
        let found = base_signers(&dir)?;
        if !found.contains(&key.keyid()) {
            return Err(NotPatchable::OtherKey {
                path: dir.join(MANIFEST_FILE),
                found: found.join(", "),
            });
        }
        let path = dir.join(MANIFEST_DELTA_FILE);
        let delta = match fs::read(&path) {
            Ok(bytes) => {
                let delta =
                    manifest::verify_delta(&bytes, key).map_err(|source| NotPatchable::Delta {
                        path: path.clone(),
                        source,
                    })?;
                if delta.base_version != id {
                    return Err(NotPatchable::OtherBase {
                        path,
                        base: delta.base_version,
                        id,
                    });
                }
                Some(delta)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(err("read", &path)(e).into()),
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
    ) -> Result<FileMap, GenerationError> {
        let path = at.dir.join(MANIFEST_FILE);
        let bytes = fs::read(&path).map_err(err("read", &path))?;
        let mut m = manifest::verify(&bytes, key, 0, None)
            .map_err(|source| GenerationError::Manifest { path, source })?;
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
    pub fn roll_forward(&self, key: &ManifestPublicKey) -> Result<usize, GenerationError> {
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
            // `verify_delta` checked every digest, so this always converts.
            let file = entry.as_ref().and_then(FileRef::from_entry);
            if let Some(f) = &file
                && !self.has_blob(&f.sha256)
            {
                return Err(GenerationError::MissingBlob {
                    path,
                    sha256: hex::encode(f.sha256),
                });
            }
            changes.push((path, file));
        }
        Ok(self.place_all(&dir, &changes)?)
    }

    /// Makes `root/rel` a link to the stored blob `file`, replacing what was
    /// there in one `rename` and making the directory entry durable: how the
    /// pull-through cache writes into the directory it serves from.
    pub fn link_into(&self, root: &Path, rel: &str, file: &FileRef) -> Result<(), StoreError> {
        self.place(root, rel, Some(file))?;
        let target = root.join(rel);
        sync_dir(target.parent().unwrap_or(root))
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

    /// Writes generation `id` with `files` and the manifest file that
    /// `write_manifest` writes, then makes it current. Every blob in `files`
    /// must already be stored.
    pub fn publish_generation(
        &self,
        id: u64,
        files: &FileMap,
        write_manifest: impl FnOnce(&mut fs::File) -> std::io::Result<()>,
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
        let mut file = fs::File::create(&manifest_path).map_err(err("create", &manifest_path))?;
        write_manifest(&mut file).map_err(err("write", &manifest_path))?;
        file.sync_all().map_err(err("fsync", &manifest_path))?;
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

/// How long a manifest signed now may live: `configured`, or less on the
/// far side of an air gap, where the last imported bundle's expiry caps it
/// (blocking).
pub fn manifest_lifetime(db: &super::Db, configured: Duration) -> Result<Duration, super::DbError> {
    let cap = db
        .call_blocking(|c| super::db::meta(c, super::db::BUNDLE_EXPIRES_AT))?
        .and_then(|v| v.parse::<u64>().ok());
    Ok(match cap {
        Some(cap) => configured.min(Duration::from_secs(
            cap.saturating_sub(crate::clock::unix_now()),
        )),
        None => configured,
    })
}

/// Every file under generation directory `dir` but its manifest and delta,
/// as paths relative to it.
pub fn list_files(dir: &Path) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(err("list", &d))? {
            let entry = entry.map_err(err("list", &d))?;
            let path = entry.path();
            if entry.file_type().map_err(err("stat", &path))?.is_dir() {
                stack.push(path);
                continue;
            }
            let Ok(rel) = path.strip_prefix(dir) else {
                continue;
            };
            let rel = rel.to_string_lossy().into_owned();
            if rel != MANIFEST_FILE && rel != MANIFEST_DELTA_FILE {
                out.push(rel);
            }
        }
    }
    Ok(out)
}

/// The key ids generation `dir`'s base manifest claims to be signed by,
/// unverified: it is too large to verify per change, and its signature list
/// closes it. Empty when it has none (or no manifest).
pub fn base_signers(dir: &Path) -> Result<Vec<String>, StoreError> {
    let base = dir.join(MANIFEST_FILE);
    Ok(read_tail(&base, 1024)
        .map_err(err("read", &base))?
        .as_deref()
        .and_then(manifest::tail_keyids)
        .unwrap_or_default())
}

/// The last `n` bytes of a file (all of it if shorter); `None` if absent.
fn read_tail(path: &Path, n: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(n)))?;
    let mut buf = Vec::with_capacity(n.min(len) as usize);
    f.read_to_end(&mut buf)?;
    Ok(Some(buf))
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
            .publish_signed(1, &files, &|_| false, upstream, expiry, &key)
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
        let current = store.load_current(&key.public()).unwrap();
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

    fn upstream() -> UpstreamState {
        UpstreamState {
            names_etag: Some("\"n\"".into()),
            synced_at: 7,
            url: "http://upstream".into(),
            versions_etag: None,
        }
    }

    /// A store whose current generation 1 (signed by `key`) holds three files.
    fn published(key: &ManifestKey) -> (tempfile::TempDir, Store, FileMap) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let [a, b, c] = [b"a", b"b", b"c"].map(|x| store.put_bytes(x).unwrap());
        let files: FileMap = [
            ("names".to_string(), a),
            ("packages/x".to_string(), b),
            ("tarballs/x-1.tar".to_string(), c),
        ]
        .into();
        let expiry = Duration::from_secs(3600);
        store
            .publish_signed(1, &files, &|_| false, upstream(), expiry, key)
            .unwrap();
        (dir, store, files)
    }

    #[test]
    fn resign_check_before_the_first_publish_creates_no_key() {
        // Regression: `serve` ran this check at start and created the
        // manifest key; killed in between, it left an empty key file that
        // made every later sync fail.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let db = super::super::Db::open(dir.path()).unwrap();
        let key = dir.path().join("keys/manifest.pem");
        let expiry = Duration::from_secs(3600);
        assert!(store.resign_if_due(&db, &key, expiry).unwrap().is_none());
        assert!(!key.exists());
    }

    #[test]
    fn resign_is_due_at_once_after_a_key_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let db = super::super::Db::open(dir.path()).unwrap();
        let (old, new) = (dir.path().join("old.pem"), dir.path().join("new.pem"));
        let expiry = Duration::from_secs(3600);
        let a = store.put_bytes(b"a").unwrap();
        let files: FileMap = [("names".to_string(), a)].into();
        let old_key = crate::keyfiles::manifest_key(&old).unwrap();
        store
            .publish_signed(1, &files, &|_| false, upstream(), expiry, &old_key)
            .unwrap();
        assert_eq!(store.resign_if_due(&db, &old, expiry).unwrap(), None);
        assert_eq!(store.resign_if_due(&db, &new, expiry).unwrap(), Some(2));
        let new_key = crate::keyfiles::manifest_key(&new).unwrap();
        let current = store.load_current(&new_key.public()).unwrap();
        assert!(current.signed_by_key);
        assert_eq!(current.files, files);
        assert_eq!(store.resign_if_due(&db, &new, expiry).unwrap(), None);
    }

    #[test]
    fn a_far_side_never_signs_past_the_last_bundle_s_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let db = super::super::Db::open(dir.path()).unwrap();
        let key_path = dir.path().join("m.pem");
        let key = crate::keyfiles::manifest_key(&key_path).unwrap();
        let week = Duration::from_secs(7 * 86_400);
        let files: FileMap = [("names".to_string(), store.put_bytes(b"a").unwrap())].into();
        let now = crate::clock::unix_now();
        let cap = now + 3600;
        let set_cap = |cap: u64| {
            db.call_blocking(move |c| {
                super::super::db::set_meta(c, super::super::db::BUNDLE_EXPIRES_AT, &cap.to_string())
            })
            .unwrap()
        };
        set_cap(cap);
        assert_eq!(manifest_lifetime(&db, week).unwrap().as_secs(), 3600);
        let lifetime = manifest_lifetime(&db, week).unwrap();
        store
            .publish_signed(1, &files, &|_| false, upstream(), lifetime, &key)
            .unwrap();
        // Due by the configured week, but the exporter vouched for an hour:
        // re-signing would not extend anything, so it does not happen.
        assert_eq!(store.resign_if_due(&db, &key_path, week).unwrap(), None);
        // A heartbeat moved the cap: the next check extends up to it.
        set_cap(now + 2 * 86_400);
        assert_eq!(store.resign_if_due(&db, &key_path, week).unwrap(), Some(2));
        let current = store.load_current(&key.public()).unwrap();
        assert!(current.expires_at <= now + 2 * 86_400 + 1);
        assert!(current.expires_at > cap);
    }

    #[test]
    fn a_rotated_key_rebuilds_the_file_list_from_the_generation() {
        // Regression: a manifest (or delta) signed by the previous key was
        // read as an empty file list, and the next publication dropped
        // every file of the tree.
        let (old, new) = (ManifestKey::generate(), ManifestKey::generate());
        let (_dir, store, files) = published(&old);
        let (a, d) = (files["names"], store.put_bytes(b"d").unwrap());
        let expiry = Duration::from_secs(3600);
        let at = store.patchable(&old.public()).unwrap().unwrap();
        let changes = vec![("repos/r/packages/y".to_string(), Some(d))];
        store.patch_signed(&at, 2, &changes, expiry, &old).unwrap();
        let mut expected = files.clone();
        expected.insert("repos/r/packages/y".into(), d);

        // The new key can neither verify nor patch it, but reads every file.
        assert!(matches!(
            store.patchable(&new.public()),
            Err(NotPatchable::OtherKey { .. })
        ));
        let current = store.load_current(&new.public()).unwrap();
        assert!(!current.signed_by_key);
        assert_eq!(current.files, expected);
        assert_eq!(current.version, 2);
        assert_eq!(current.expires_at, 0, "due for re-signing at once");
        assert_eq!(current.upstream.as_ref().unwrap().names_etag, None);

        // A file the hint does not name is hashed and found among the blobs;
        // one that is no blob at all is refused, never dropped.
        let root = store.current_link();
        fs::hard_link(store.blob_path(&a.sha256), root.join("extra")).unwrap();
        assert_eq!(store.load_current(&new.public()).unwrap().files["extra"], a);
        fs::write(root.join("stray"), b"not a blob").unwrap();
        assert!(matches!(
            store.load_current(&new.public()),
            Err(GenerationError::NotABlob { .. })
        ));
        fs::remove_file(root.join("stray")).unwrap();

        // An unreadable manifest is an error, not an empty list.
        fs::write(root.join(MANIFEST_FILE), b"{").unwrap();
        fs::remove_file(root.join(MANIFEST_DELTA_FILE)).unwrap();
        assert!(matches!(
            store.load_current(&new.public()),
            Err(GenerationError::Unreadable { .. })
        ));
    }

    #[test]
    fn a_generation_that_drops_files_nobody_removed_is_refused() {
        let key = ManifestKey::generate();
        let (_dir, store, files) = published(&key);
        let a = files["names"];
        let expiry = Duration::from_secs(3600);
        let fewer: FileMap = [("names".to_string(), a)].into();
        let refused =
            store.publish_signed(2, &fewer, &|p| p == "packages/x", upstream(), expiry, &key);
        match refused {
            Err(GenerationError::WouldDrop { count, first, .. }) => {
                assert_eq!((count, first), (1, vec!["tarballs/x-1.tar".to_string()]));
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(store.current().unwrap().unwrap().0, 1, "nothing changed");
        let removed = |p: &str| p.starts_with("packages/") || p.starts_with("tarballs/");
        store
            .publish_signed(2, &fewer, &removed, upstream(), expiry, &key)
            .unwrap();
        assert_eq!(store.current().unwrap().unwrap().0, 2);
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
        store
            .publish_generation(1, &files, |f| std::io::Write::write_all(f, b"m1"))
            .unwrap();
        let (id, path) = store.current().unwrap().unwrap();
        assert_eq!(id, 1);
        assert_eq!(fs::read(path.join("packages/x")).unwrap(), b"b");
        assert_eq!(
            fs::read(store.current_link().join(MANIFEST_FILE)).unwrap(),
            b"m1"
        );

        let only_a: FileMap = [("names".to_string(), a)].into();
        store
            .publish_generation(2, &only_a, |f| std::io::Write::write_all(f, b"m2"))
            .unwrap();
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
