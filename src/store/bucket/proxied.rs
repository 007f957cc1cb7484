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
use super::upload::{UploadError, create_manifest, switch_pointer, upload_blob};
use super::{Bucket, Pointer, ProxyRef, blob_key, proxy_key};
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
    files: BTreeMap<String, FileEntry>,
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
            let changed = meta.modified().is_ok_and(|m| m > since);
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
/// was nothing to do or no generation is served yet (the files wait).
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
    let Some((pointer, etag)) = bucket.pointer().await? else {
        return Ok(None);
    };
    let public = signing.public();
    // What the bucket serves, read again only when another process changed it.
    let current = match (&pointer.proxy, published.as_ref()) {
        (Some(named), Some(p)) if p.version == named.version && p.sha256 == named.sha256 => {
            p.clone()
        }
        (Some(named), _) => match load(bucket, named, &public).await {
            Ok(loaded) => loaded,
            // The writer is the list's only author: one missing or damaged
            // in the bucket is rebuilt from the proxy directory, under a
            // higher version.
            Err(UploadError::ProxySet { key, problem, .. }) => {
                tracing::warn!(
                    bucket = bucket.name(),
                    key,
                    "the proxy file list the pointer names is unusable ({problem}); rebuilding it \
                     from the proxy directory"
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
    let mut changes = pending.take();
    if !current.scanned {
        let (store, root, known, since) = (
            Arc::clone(store),
            pending.root.clone(),
            current.files.clone(),
            current.signed_at,
        );
        let found = tokio::task::spawn_blocking(move || scan(&store, &root, &known, since)).await?;
        match found {
            Ok(found) => {
                for (rel, file) in found {
                    changes.entry(rel).or_insert(file);
                }
            }
            Err(e) => {
                pending.restore(changes);
                return Err(e.into());
            }
        }
    }
    let outcome = publish_changes(
        bucket, store, signing, fence, &pointer, etag, current, &changes, expiry, now,
    )
    .await;
    match outcome {
        Ok((done, version)) => {
            *published = Some(done);
            Ok(version)
        }
        Err(e) => {
            pending.restore(changes);
            Err(e)
        }
    }
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
            files: delta
                .files
                .into_iter()
                .filter_map(|(path, entry)| Some((path, entry?)))
                .collect(),
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

/// Uploads the changed files' blobs, then the new list, then the pointer.
#[allow(clippy::too_many_arguments)]
async fn publish_changes(
    bucket: &Bucket,
    store: &Arc<Store>,
    signing: &ManifestKey,
    fence: &dyn Fence,
    pointer: &Pointer,
    etag: Option<String>,
    current: Published,
    changes: &BTreeMap<String, FileRef>,
    expiry: Duration,
    now: &(dyn Fn() -> u64 + Sync),
) -> Result<(Published, Option<u64>), UploadError> {
    let mut files = current.files.clone();
    let mut changed = false;
    for (rel, file) in changes {
        let entry = file.entry();
        if files.get(rel) != Some(&entry) {
            files.insert(rel.clone(), entry);
            changed = true;
        }
    }
    let due = current.version > 0 && current.signed_at + expiry.as_secs() / 2 <= now();
    if !changed && !due {
        return Ok((
            Published {
                scanned: true,
                ..current
            },
            None,
        ));
    }
    for file in changes.values() {
        if bucket.get_head(&blob_key(&file.sha256)).await?.is_none() {
            upload_blob(bucket, store, fence, &file.sha256).await?;
        }
    }
    let signed_at = now();
    // A list a crash left unnamed under the next version is passed over.
    let mut version = current
        .version
        .max(pointer.proxy.as_ref().map_or(0, |p| p.version));
    let mut attempts = 0;
    let sha256 = loop {
        version += 1;
        attempts += 1;
        let delta = Delta {
            base_version: 0,
            expires_at: signed_at + expiry.as_secs(),
            files: files
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect(),
            generation: manifest::PROXY_SET.to_owned(),
            signed_at,
            version,
        };
        let key = signing.clone();
        let bytes =
            tokio::task::spawn_blocking(move || Bytes::from(manifest::sign_delta(&delta, &key)))
                .await?;
        fence.hold().await?;
        match create_manifest(bucket, &proxy_key(version), &bytes).await {
            Ok(()) => break hex::encode(Sha256::digest(&bytes)),
            Err(UploadError::Conflict { .. }) if attempts < 4 => continue,
            Err(e) => return Err(e),
        }
    };
    let next = Pointer {
        proxy: Some(ProxyRef {
            version,
            sha256: sha256.clone(),
        }),
        written_at: now(),
        ..pointer.clone()
    };
    switch_pointer(bucket, fence, &next, Some(etag), now).await?;
    Ok((
        Published {
            version,
            sha256,
            signed_at,
            files,
            scanned: true,
        },
        Some(version),
    ))
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
}
