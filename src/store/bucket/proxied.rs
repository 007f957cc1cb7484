//! The pull-through proxy's files in the bucket, so that read-only nodes
//! serve what the writer fetched on request, not only synced generations.
//!
//! The proxy verifies every file it fetches exactly as a sync does and
//! links it under `DATA_DIR/proxy/`; it reports each link here
//! ([`Pending`]). The writer publishes them as one signed list of the
//! proxy's files (a [`Delta`] over base version 0 named
//! [`manifest::PROXY_SET`]), cumulative and versioned, after the blobs it
//! names: blobs, then `proxy/VVVV.json` (created once), then the pointer's
//! `proxy` field, by the same fenced pointer switch as a generation. A
//! reader serves a path of that list when the generation lacks it.
//!
//! The list is re-signed before half its lifetime has passed, as the
//! generation's manifest is, so that readers never hold an expired one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::lease::Fence;
use super::upload::{UploadError, absent, create_manifest, switch_pointer, upload_blobs};
use super::{Bucket, BucketError, Pointer, ProxyRef, proxy_key};
use crate::manifest::{self, Delta, FileEntry, ManifestKey, ManifestPublicKey};
use crate::store::{FileRef, Store, StoreError};

/// What is wrong with the proxy file list the pointer names.
#[derive(Debug, thiserror::Error)]
pub enum ProxySetProblem {
    /// It is not in the bucket.
    #[error("the pointer names it and it is missing")]
    Missing,
    /// Its bytes are not the ones the pointer names.
    #[error("its SHA-256 is not the one the pointer names")]
    NotNamed,
    /// It does not verify, or is not a proxy list.
    #[error(transparent)]
    Invalid(#[from] manifest::ManifestError),
}

/// Files the proxy linked since the writer last published them.
#[derive(Debug)]
pub struct Pending {
    root: PathBuf,
    linked: Mutex<BTreeMap<String, FileRef>>,
}

impl Pending {
    /// For the proxy directory `root` (`DATA_DIR/proxy`).
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            linked: Mutex::default(),
        }
    }

    /// The proxy linked `file` at `rel` (a path under its root).
    pub fn linked(&self, rel: &str, file: FileRef) {
        self.lock().insert(rel.to_owned(), file);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, FileRef>> {
        self.linked.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self) -> BTreeMap<String, FileRef> {
        std::mem::take(&mut *self.lock())
    }

    /// Puts back what a failed publish took, under anything linked since.
    fn restore(&self, taken: BTreeMap<String, FileRef>) {
        let mut linked = self.lock();
        for (rel, file) in taken {
            linked.entry(rel).or_insert(file);
        }
    }
}

/// What the writer last published (or found in the bucket).
#[derive(Debug, Clone, Default)]
pub struct Published {
    version: u64,
    sha256: String,
    signed_at: u64,
    /// When the changes it holds were taken from [`Pending`]: a file the
    /// proxy relinked after that is hashed again by a restart's scan.
    taken_at: u64,
    files: Arc<BTreeMap<String, FileEntry>>,
    /// The proxy directory was compared with this list since start.
    scanned: bool,
}

/// Verifies a proxy file list read from the bucket: signature, and that it
/// is a proxy list at all.
pub fn verify(bytes: &[u8], key: &ManifestPublicKey) -> Result<Delta, manifest::ManifestError> {
    let delta = manifest::verify_delta(bytes, key)?;
    manifest::check_proxy_set(&delta)?;
    Ok(delta)
}

/// Files under the proxy directory that `known` lacks or that changed after
/// `since` (Unix seconds), hashed: what a previous process linked and did
/// not publish.
fn scan(
    store: &Store,
    root: &Path,
    known: &BTreeMap<String, FileEntry>,
    since: u64,
) -> Result<BTreeMap<String, FileRef>, StoreError> {
    let mut found = BTreeMap::new();
    let since = SystemTime::UNIX_EPOCH + Duration::from_secs(since);
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(StoreError {
                    action: "list",
                    path: dir,
                    source,
                });
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                dirs.push(path);
                continue;
            }
            let Some(rel) = path
                .strip_prefix(root)
                .ok()
                .and_then(|r| r.to_str())
                .map(str::to_owned)
            else {
                continue;
            };
            // A tarball never changes; a record the proxy refreshed does.
            let changed = !rel.starts_with("tarballs/") && meta.modified().is_ok_and(|m| m > since);
            if known.contains_key(&rel) && !changed {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|source| StoreError {
                action: "read",
                path: path.clone(),
                source,
            })?;
            let sha256: [u8; 32] = Sha256::digest(&bytes).into();
            // Only what the store holds as a blob can be uploaded.
            if store.has_blob(&sha256) {
                found.insert(
                    rel,
                    FileRef {
                        sha256,
                        size: bytes.len() as u64,
                    },
                );
            }
        }
    }
    Ok(found)
}

/// Publishes the proxy's files linked since the last publish (and, the
/// first time, any the proxy directory holds that the bucket's list lacks),
/// or re-signs the list when half its lifetime is gone. `None` when there
/// was nothing to do or no generation is served yet. Files not published
/// (that, or a failure) go back to `pending` for the next round.
#[allow(clippy::too_many_arguments)]
pub async fn publish(
    bucket: &Bucket,
    store: &Arc<Store>,
    signing: &ManifestKey,
    fence: &dyn Fence,
    pending: &Pending,
    published: &mut Option<Published>,
    expiry: Duration,
    now: &(dyn Fn() -> u64 + Sync),
) -> Result<Option<u64>, UploadError> {
    let lister = Lister {
        bucket,
        store,
        signing,
        fence,
        root: &pending.root,
        expiry,
        now,
    };
    let taken_at = now();
    let mut changes = pending.take();
    let outcome = lister.publish(published, &mut changes, taken_at).await;
    // What was not published (a failure, or no generation served yet)
    // waits for the next round; a success left nothing here.
    pending.restore(changes);
    outcome
}

/// What one publish of the list works with.
struct Lister<'a> {
    bucket: &'a Bucket,
    store: &'a Arc<Store>,
    signing: &'a ManifestKey,
    fence: &'a dyn Fence,
    /// The proxy directory.
    root: &'a Path,
    expiry: Duration,
    now: &'a (dyn Fn() -> u64 + Sync),
}

impl Lister<'_> {
    /// [`publish`] of `changes`, taken from the pending list at `taken_at`.
    async fn publish(
        &self,
        published: &mut Option<Published>,
        changes: &mut BTreeMap<String, FileRef>,
        taken_at: u64,
    ) -> Result<Option<u64>, UploadError> {
        let (bucket, signing) = (self.bucket, self.signing);
        let Some((pointer, etag)) = bucket.pointer().await? else {
            return Ok(None);
        };
        // What the bucket serves, read again only when another process changed it.
        let current = match (&pointer.proxy, published.take()) {
            (Some(named), Some(p)) if p.version == named.version && p.sha256 == named.sha256 => p,
            (Some(named), _) => match load(bucket, named, &signing.public()).await {
                Ok(loaded) => loaded,
                // The writer is the list's only author: one missing, damaged or
                // oversized in the bucket is rebuilt from the proxy directory,
                // under a higher version.
                Err(
                    e @ (UploadError::ProxySet { .. }
                    | UploadError::Bucket(BucketError::TooLarge { .. })),
                ) => {
                    tracing::warn!(
                        bucket = bucket.name(),
                        "{e}; rebuilding the proxy file list from the proxy directory"
                    );
                    Published {
                        version: named.version,
                        ..Published::default()
                    }
                }
                Err(e) => return Err(e),
            },
            (None, _) => Published::default(),
        };
        // On any failure the list in hand is kept (no reload, no rescan of
        // what the scan already gave back to `pending`).
        let mut scanned = current.scanned;
        let written = self
            .write_list((&pointer, etag), &current, &mut scanned, changes, taken_at)
            .await;
        match written {
            Ok(Some(next)) => {
                let version = next.version;
                *published = Some(next);
                Ok(Some(version))
            }
            Ok(None) => {
                *published = Some(Published {
                    scanned: true,
                    ..current
                });
                Ok(None)
            }
            Err(e) => {
                *published = Some(Published { scanned, ..current });
                Err(e)
            }
        }
    }

    /// Scans once, then uploads the changed files' blobs, a new list above
    /// every list in the bucket, and the pointer naming it. `None`: nothing
    /// changed and no re-signing is due.
    async fn write_list(
        &self,
        (pointer, etag): (&Pointer, Option<String>),
        current: &Published,
        scanned: &mut bool,
        changes: &mut BTreeMap<String, FileRef>,
        taken_at: u64,
    ) -> Result<Option<Published>, UploadError> {
        let Self {
            bucket,
            store,
            signing,
            fence,
            root,
            expiry,
            now,
        } = *self;
        if !*scanned {
            let (store, root, known, since) = (
                Arc::clone(store),
                root.to_path_buf(),
                Arc::clone(&current.files),
                current.taken_at,
            );
            let found =
                tokio::task::spawn_blocking(move || scan(&store, &root, &known, since)).await??;
            for (rel, file) in found {
                changes.entry(rel).or_insert(file);
            }
            *scanned = true;
        }
        let due = current.version > 0 && current.signed_at + expiry.as_secs() / 2 <= now();
        let changed = changes
            .iter()
            .any(|(rel, file)| current.files.get(rel) != Some(&file.entry()));
        if !changed && !due {
            changes.clear();
            return Ok(None);
        }
        let wanted = changes.values().map(|f| (f.sha256, f.size)).collect();
        let missing = absent(bucket, wanted).await?;
        upload_blobs(
            bucket,
            store,
            fence,
            missing.into_iter().map(|(sha, _)| sha).collect(),
        )
        .await?;
        // Above every list in the bucket: one a crash or a shutdown left
        // unnamed is passed over, never overwritten.
        let highest = bucket
            .list("proxy")
            .await?
            .iter()
            .filter_map(|(k, _)| parse_proxy_key(k))
            .max()
            .unwrap_or(0);
        let version = highest.max(current.version) + 1;
        let signed_at = now();
        let (files, bytes, sha256) = {
            let (previous, changes) = (Arc::clone(&current.files), changes.clone());
            let signing = signing.clone();
            let expires_at = signed_at + expiry.as_secs();
            tokio::task::spawn_blocking(move || {
                let mut files = (*previous).clone();
                for (rel, file) in changes {
                    files.insert(rel, file.entry());
                }
                let delta = Delta {
                    base_version: 0,
                    expires_at,
                    files: files
                        .iter()
                        .map(|(k, v)| (k.clone(), Some(v.clone())))
                        .collect(),
                    generation: manifest::PROXY_SET.to_owned(),
                    signed_at,
                    version,
                };
                let bytes = Bytes::from(manifest::sign_delta(&delta, &signing));
                let sha256 = hex::encode(Sha256::digest(&bytes));
                (Arc::new(files), bytes, sha256)
            })
            .await?
        };
        if bytes.len() as u64 > super::MAX_PROXY_SET {
            return Err(UploadError::ProxySetTooLarge {
                bucket: bucket.name().to_owned(),
                files: files.len(),
                bytes: bytes.len() as u64,
            });
        }
        fence.hold().await?;
        create_manifest(bucket, &proxy_key(version), &bytes).await?;
        let next = Pointer {
            proxy: Some(ProxyRef {
                version,
                sha256: sha256.clone(),
            }),
            written_at: now(),
            ..pointer.clone()
        };
        switch_pointer(bucket, fence, &next, Some(etag), now).await?;
        changes.clear();
        Ok(Some(Published {
            version,
            sha256,
            signed_at,
            taken_at,
            files,
            scanned: true,
        }))
    }
}

/// A proxy file list's version, from its key ([`proxy_key`]).
pub fn parse_proxy_key(key: &str) -> Option<u64> {
    super::version_digits(key.strip_prefix("proxy/")?.strip_suffix(".json")?)
}

/// Reads and verifies the list the pointer names.
async fn load(
    bucket: &Bucket,
    named: &ProxyRef,
    key: &ManifestPublicKey,
) -> Result<Published, UploadError> {
    let k = proxy_key(named.version);
    let object =
        bucket
            .get(&k, super::MAX_PROXY_SET)
            .await?
            .ok_or_else(|| UploadError::ProxySet {
                bucket: bucket.name().to_owned(),
                key: k.clone(),
                problem: ProxySetProblem::Missing,
            })?;
    let (key, named) = (key.clone(), named.clone());
    let checked = tokio::task::spawn_blocking(move || {
        if hex::encode(Sha256::digest(&object.bytes)) != named.sha256 {
            return Err(ProxySetProblem::NotNamed);
        }
        let delta = verify(&object.bytes, &key)?;
        Ok(Published {
            version: delta.version,
            sha256: named.sha256,
            signed_at: delta.signed_at,
            // The previous process took its changes before it signed, by
            // at most the upload of their blobs: an hour's margin covers it.
            taken_at: delta.signed_at.saturating_sub(3600),
            files: Arc::new(
                delta
                    .files
                    .into_iter()
                    .filter_map(|(path, entry)| Some((path, entry?)))
                    .collect(),
            ),
            scanned: false,
        })
    })
    .await?;
    checked.map_err(|problem| UploadError::ProxySet {
        bucket: bucket.name().to_owned(),
        key: k,
        problem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_finds_the_proxy_s_files_the_bucket_list_lacks_or_that_changed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let root = dir.path().join("proxy");
        let listed = store.put_bytes(b"listed record").unwrap();
        let unlisted = store.put_bytes(b"unlisted tarball").unwrap();
        store.link_into(&root, "packages/listed", &listed).unwrap();
        store
            .link_into(&root, "tarballs/unlisted-1.0.0.tar", &unlisted)
            .unwrap();
        let known = BTreeMap::from([("packages/listed".to_owned(), listed.entry())]);
        let later = crate::clock::unix_now() + 60;
        let found = scan(&store, &root, &known, later).unwrap();
        assert_eq!(
            found,
            BTreeMap::from([("tarballs/unlisted-1.0.0.tar".to_owned(), unlisted)])
        );
        // Changed since the list was signed: hashed again.
        let found = scan(&store, &root, &known, 0).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found["packages/listed"], listed);
    }

    #[tokio::test]
    async fn files_wait_for_a_generation_then_are_listed_re_signed_and_rebuilt() {
        use crate::store::bucket::lease::Unfenced;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let root = dir.path().join("proxy");
        let bucket = Bucket::with_store(Arc::new(object_store::memory::InMemory::new()), "b", "");
        let key = ManifestKey::generate();
        let pending = Pending::new(root.clone());
        let record = store.put_bytes(b"a proxied record").unwrap();
        store.link_into(&root, "packages/p", &record).unwrap();
        pending.linked("packages/p", record);
        let expiry = Duration::from_secs(1000);
        let mut published = None;
        let at = |t: u64| move || t;
        let run = |published: &mut Option<Published>, t: u64| {
            let (bucket, store, key, pending) = (&bucket, &store, &key, &pending);
            let mut published = published.take();
            async move {
                let now = at(t);
                let got = publish(
                    bucket,
                    store,
                    key,
                    &Unfenced,
                    pending,
                    &mut published,
                    expiry,
                    &now,
                )
                .await;
                (got, published)
            }
        };
        // No generation served yet: nothing is written, the file waits.
        let (got, p) = run(&mut published, 100).await;
        assert_eq!(got.unwrap(), None);
        published = p;
        assert_eq!(pending.lock().len(), 1);
        let pointer = Pointer {
            version: 1,
            generation: "g1".into(),
            base: 1,
            base_sha256: String::new(),
            delta: None,
            delta_sha256: None,
            proxy: None,
            holder: String::new(),
            written_at: 100,
        };
        bucket
            .put(
                super::super::POINTER,
                serde_json::to_vec(&pointer).unwrap().into(),
                object_store::PutMode::Overwrite,
            )
            .await
            .unwrap();
        let (got, p) = run(&mut published, 110).await;
        assert_eq!(got.unwrap(), Some(1));
        published = p;
        assert!(pending.lock().is_empty());
        assert!(
            bucket
                .get_head(&super::super::blob_key(&record.sha256))
                .await
                .unwrap()
                .is_some()
        );
        let listed = |v: u64| {
            let bucket = bucket.clone();
            let public = key.public();
            async move {
                let object = bucket.get(&proxy_key(v), 1 << 20).await.unwrap().unwrap();
                verify(&object.bytes, &public).unwrap().files
            }
        };
        assert!(listed(1).await.contains_key("packages/p"));
        // Nothing new, not due: nothing written.
        let (got, p) = run(&mut published, 120).await;
        assert_eq!(got.unwrap(), None);
        published = p;
        // Half its lifetime gone: re-signed.
        let (got, p) = run(&mut published, 110 + 500).await;
        assert_eq!(got.unwrap(), Some(2));
        // A restarted writer meets a damaged list: rebuilt from the proxy
        // directory, above it.
        drop(p);
        bucket
            .put(
                &proxy_key(2),
                bytes::Bytes::from_static(b"garbage"),
                object_store::PutMode::Overwrite,
            )
            .await
            .unwrap();
        let (got, _) = run(&mut None, 700).await;
        assert_eq!(got.unwrap(), Some(3));
        assert!(listed(3).await.contains_key("packages/p"));
    }
}
