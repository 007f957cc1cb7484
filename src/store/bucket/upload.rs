//! The writer's side: publish the local current generation into the bucket.
//!
//! Order, so that a reader following the pointer never meets a missing
//! object and a writer killed at any step leaves the old pointer whole:
//! 1. every blob the manifest names that the bucket lacks;
//! 2. the base manifest and the delta, each under its own version's key
//!    (immutable: created, never overwritten);
//! 3. the pointer, with a conditional put on the ETag this writer read
//!    before step 1 (fencing), and only while the lease has time left.
//!
//! The lease is renewed as the upload goes ([`Fence`]), and the upload
//! stops the moment it cannot be kept. A run after a crash finds the blobs
//! (and perhaps its manifests) already there and does the rest; a manifest
//! key that holds other bytes than this writer's (another writer's orphan)
//! stops it, and the pointer names each manifest's SHA-256, so nobody
//! follows it to other bytes than the writer's.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::{PutMode, UpdateVersion};

use super::lease::{Fence, LeaseError};
use super::{Bucket, BucketError, POINTER, Pointer, Put, base_key, blob_key, delta_key};
use crate::manifest::{self, ManifestError, ManifestPublicKey};
use crate::store::{Store, StoreError, read_manifest};
use sha2::{Digest, Sha256};

/// Uploads at once.
const PARALLEL: usize = 16;
/// A pointer is not written with less lease than this left: the write
/// itself may take a while, and clocks differ a little.
const LEASE_MARGIN_SECS: u64 = 2;

/// Why a generation was not published into the bucket. The pointer is
/// unchanged in every case.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The local tree could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The local manifest does not verify with this writer's key.
    #[error("manifest of the local generation {generation}: {source}")]
    Manifest {
        /// The generation directory's name.
        generation: String,
        /// Why.
        #[source]
        source: ManifestError,
    },
    /// The bucket could not be reached or refused.
    #[error(transparent)]
    Bucket(#[from] BucketError),
    /// The bucket already serves a newer manifest than this writer has.
    #[error(
        "bucket {bucket} serves manifest version {theirs}, newer than this data directory's \
         {ours}: another writer published there; this one must not go back. Take over only with \
         the data directory that wrote it (or a copy of it)"
    )]
    Behind {
        /// The bucket.
        bucket: String,
        /// The local version.
        ours: u64,
        /// The bucket's.
        theirs: u64,
    },
    /// The pointer changed between this writer's read and its write.
    #[error(
        "bucket {bucket}: the pointer changed while this writer published (another writer?); \
         nothing was switched. `serve` tries again on its next round; if this repeats, see who \
         holds lease.json"
    )]
    Fenced {
        /// The bucket.
        bucket: String,
    },
    /// The lease could not be kept while uploading.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// A manifest key already holds other bytes than this writer's.
    #[error(
        "bucket {bucket}: {key} already holds another manifest than this data directory's (a \
         writer on another data directory published this version and never switched to it?); \
         nothing was switched. Remove that object only if no pointer names it"
    )]
    Conflict {
        /// The bucket.
        bucket: String,
        /// The manifest's key.
        key: String,
    },
    /// The proxy file list the pointer names cannot be used (the writer
    /// then rebuilds it from its proxy directory).
    #[error("bucket {bucket}: proxy file list {key}: {problem}")]
    ProxySet {
        /// The bucket.
        bucket: String,
        /// The list's key.
        key: String,
        /// What is wrong.
        #[source]
        problem: super::proxied::ProxySetProblem,
    },
    /// The proxy file list would be larger than readers read.
    #[error(
        "bucket {bucket}: the proxy file list would list {files} files in {bytes} bytes, more \
         than read-only nodes read ({max} bytes); not published. Mirror these packages by sync \
         instead of serving them through the proxy",
        max = super::MAX_PROXY_SET
    )]
    ProxySetTooLarge {
        /// The bucket.
        bucket: String,
        /// Files listed.
        files: usize,
        /// The signed list's size.
        bytes: u64,
    },
    /// The lease ends too soon to switch the pointer safely.
    #[error(
        "bucket {bucket}: the lease ends at {expires_at} (Unix time), too soon to switch; tried \
         again once it is renewed. If this repeats, check the clocks and lease_ttl_secs"
    )]
    LeaseLapsing {
        /// The bucket.
        bucket: String,
        /// Its expiry.
        expires_at: u64,
    },
    /// There is no local generation yet.
    #[error("no generation to publish: run a sync first")]
    NothingLocal,
    /// A blocking task died.
    #[error("reading the local generation: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uploaded {
    /// The pointer already named this version.
    AlreadyServed {
        /// The version.
        version: u64,
    },
    /// The pointer now names this version.
    Switched {
        /// The version.
        version: u64,
        /// Blobs uploaded.
        blobs: usize,
        /// Their bytes.
        bytes: u64,
    },
}

/// The local current generation's manifest, read for upload.
struct Local {
    generation: String,
    base: Bytes,
    base_version: u64,
    /// SHA-256 of `base`, hex.
    base_sha256: String,
    delta: Option<(Bytes, u64)>,
    /// SHA-256 of the delta, hex.
    delta_sha256: Option<String>,
    version: u64,
    /// Content of the whole generation (`Some`) or of the delta only.
    blobs: Vec<([u8; 32], u64)>,
}

/// Reads and verifies the local current generation. With `base_known`
/// (the base's version and SHA-256 are the pointer's), only the delta's
/// blobs are listed: the base's are in the bucket already.
fn read_local(
    store: &Store,
    key: &ManifestPublicKey,
    base_known: &dyn Fn(u64, &str) -> bool,
) -> Result<Local, UploadError> {
    let (_, dir) = store.current()?.ok_or(UploadError::NothingLocal)?;
    let generation = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bad = |source| UploadError::Manifest {
        generation: generation.clone(),
        source,
    };
    let (base, delta) = read_manifest(&dir)?;
    let base_sha256 = hex::encode(Sha256::digest(&base));
    let delta_sha256 = delta.as_ref().map(|d| hex::encode(Sha256::digest(d)));
    let peeked = manifest::peek_ends(
        &base[..base.len().min(256)],
        &base[base.len().saturating_sub(4096)..],
    );
    let blobs_of = |files: &mut dyn Iterator<Item = &manifest::FileEntry>| {
        let mut seen = HashSet::new();
        files
            .filter_map(crate::store::FileRef::from_entry)
            .filter(|f| seen.insert(f.sha256))
            .map(|f| (f.sha256, f.size))
            .collect::<Vec<_>>()
    };
    match (peeked, &delta) {
        // Patched, over a base already uploaded: only the delta is new.
        (Some((_, base_version)), Some(d)) if base_known(base_version, &base_sha256) => {
            let parsed = manifest::verify_delta(d, key).map_err(bad)?;
            manifest::check_binding(&parsed, base_version, &generation).map_err(bad)?;
            let blobs = blobs_of(&mut parsed.files.values().flatten());
            Ok(Local {
                version: parsed.version,
                delta: Some((Bytes::from(d.clone()), parsed.version)),
                base: Bytes::from(base),
                base_version,
                base_sha256,
                delta_sha256,
                generation,
                blobs,
            })
        }
        _ => {
            let verified = manifest::verify_base(&base, key).map_err(bad)?;
            let base_version = verified.version;
            let (merged, delta) = match delta {
                Some(d) => {
                    let merged = manifest::with_delta(verified, &d, key).map_err(bad)?;
                    let version = merged.version;
                    (merged, Some((Bytes::from(d), version)))
                }
                None => (verified, None),
            };
            let blobs = blobs_of(&mut merged.files.values());
            Ok(Local {
                version: merged.version,
                generation,
                base: Bytes::from(base),
                base_version,
                base_sha256,
                delta,
                delta_sha256,
                blobs,
            })
        }
    }
}

/// Publishes the local current generation into the bucket (see the module
/// doc for the order). `holder` is written into the pointer; `fence`
/// keeps the lease (and is asked before every write). The pointer keeps
/// naming the proxy's file list only with `keep_proxy` (the proxy is on):
/// nobody re-signs it otherwise, and it would lapse.
#[allow(clippy::too_many_arguments)]
pub async fn publish(
    bucket: &Bucket,
    store: Arc<Store>,
    key: &ManifestPublicKey,
    holder: &str,
    fence: &dyn Fence,
    keep_proxy: bool,
    now: impl Fn() -> u64 + Sync,
) -> Result<Uploaded, UploadError> {
    let pointer = bucket.pointer().await?;
    let served_base = pointer
        .as_ref()
        .map(|(p, _)| (p.base, p.base_sha256.clone()));
    let local = {
        let key = key.clone();
        let served_base = served_base.clone();
        tokio::task::spawn_blocking(move || {
            let known = |v: u64, sha: &str| {
                served_base
                    .as_ref()
                    .is_some_and(|(bv, bs)| *bv == v && bs == sha)
            };
            read_local(&store, &key, &known).map(|l| (l, store))
        })
        .await??
    };
    let (local, store) = local;
    if let Some((served, _)) = &pointer {
        if served.version == local.version
            && served.generation == local.generation
            && served.base_sha256 == local.base_sha256
            && served.delta_sha256 == local.delta_sha256
        {
            return Ok(Uploaded::AlreadyServed {
                version: local.version,
            });
        }
        if served.version > local.version {
            return Err(UploadError::Behind {
                bucket: bucket.name().to_owned(),
                ours: local.version,
                theirs: served.version,
            });
        }
    }
    // What the bucket has: listed once for a whole generation; asked one by
    // one for a delta's few files.
    let whole = served_base != Some((local.base_version, local.base_sha256.clone()));
    let present: HashSet<String> = if whole {
        bucket
            .list("blobs")
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    } else {
        HashSet::new()
    };
    let missing: Vec<([u8; 32], u64)> = if whole {
        local
            .blobs
            .iter()
            .filter(|(sha, _)| !present.contains(&blob_key(sha)))
            .copied()
            .collect()
    } else {
        absent(bucket, local.blobs.clone()).await?
    };
    let bytes: u64 = missing.iter().map(|(_, size)| size).sum();
    let count = missing.len();
    upload_blobs(
        bucket,
        &store,
        fence,
        missing.iter().map(|(sha, _)| *sha).collect(),
    )
    .await?;
    // A patch over the base the pointer already names has nothing new
    // there: the base (up to 90 MB) is not sent again.
    if whole {
        fence.hold().await?;
        create_manifest(bucket, &base_key(local.base_version), &local.base).await?;
    }
    if let Some((delta, version)) = &local.delta {
        fence.hold().await?;
        create_manifest(bucket, &delta_key(*version), delta).await?;
    }
    let next = Pointer {
        version: local.version,
        generation: local.generation,
        base: local.base_version,
        base_sha256: local.base_sha256,
        delta: local.delta.as_ref().map(|(_, v)| *v),
        delta_sha256: local.delta_sha256,
        proxy: pointer
            .as_ref()
            .and_then(|(p, _)| p.proxy.clone())
            .filter(|_| keep_proxy),
        holder: holder.to_owned(),
        written_at: now(),
    };
    switch_pointer(bucket, fence, &next, pointer.map(|(_, etag)| etag), &now).await?;
    Ok(Uploaded::Switched {
        version: next.version,
        blobs: count,
        bytes,
    })
}

/// Of `blobs` (SHA-256, size), those the bucket lacks, asked one by one:
/// for a few files, where listing every blob would cost more.
pub(super) async fn absent(
    bucket: &Bucket,
    blobs: Vec<([u8; 32], u64)>,
) -> Result<Vec<([u8; 32], u64)>, UploadError> {
    let mut missing = Vec::new();
    for (sha, size) in blobs {
        if bucket.get_head(&blob_key(&sha)).await?.is_none() {
            missing.push((sha, size));
        }
    }
    Ok(missing)
}

/// Uploads the local blobs `shas`, [`PARALLEL`] at once, asking the lease
/// before each.
pub(super) async fn upload_blobs(
    bucket: &Bucket,
    store: &Store,
    fence: &dyn Fence,
    shas: Vec<[u8; 32]>,
) -> Result<(), UploadError> {
    futures::stream::iter(shas)
        .map(|sha| async move {
            fence.hold().await?;
            let path = store.blob_path(&sha);
            let content = tokio::fs::read(&path).await.map_err(|source| StoreError {
                action: "read blob",
                path,
                source,
            })?;
            bucket
                .put(&blob_key(&sha), Bytes::from(content), PutMode::Overwrite)
                .await?;
            fault_point("blob");
            Ok::<(), UploadError>(())
        })
        .buffer_unordered(PARALLEL)
        .try_collect::<()>()
        .await
}

/// Writes the pointer `next` in place of the one read with ETag `read`
/// (`None`: there was none), by a conditional put, and only with more than
/// the margin of lease left: the last step of every publish.
pub(super) async fn switch_pointer(
    bucket: &Bucket,
    fence: &dyn Fence,
    next: &Pointer,
    read: Option<Option<String>>,
    now: &(dyn Fn() -> u64 + Sync),
) -> Result<(), UploadError> {
    if let Some(expires_at) = fence.hold().await?
        && now() + LEASE_MARGIN_SECS >= expires_at
    {
        return Err(UploadError::LeaseLapsing {
            bucket: bucket.name().to_owned(),
            expires_at,
        });
    }
    fault_point("pointer");
    let mode = match read {
        Some(etag) => PutMode::Update(UpdateVersion {
            e_tag: etag,
            version: None,
        }),
        None => PutMode::Create,
    };
    let body = Bytes::from(serde_json::to_vec(next).unwrap_or_else(|_| unreachable!()));
    match bucket.put(POINTER, body, mode).await? {
        Put::Written(_) => Ok(()),
        Put::Exists | Put::Precondition => Err(UploadError::Fenced {
            bucket: bucket.name().to_owned(),
        }),
    }
}

/// Creates a manifest object, never overwriting one: found there already
/// (a run before a crash wrote it), it must hold these exact bytes.
pub(super) async fn create_manifest(
    bucket: &Bucket,
    key: &str,
    bytes: &Bytes,
) -> Result<(), UploadError> {
    match bucket.put(key, bytes.clone(), PutMode::Create).await? {
        Put::Written(_) => Ok(()),
        Put::Exists | Put::Precondition => {
            let limit = bytes.len() as u64;
            let same = match bucket.get(key, limit).await {
                Ok(Some(object)) => object.bytes == *bytes,
                Ok(None) | Err(BucketError::TooLarge { .. }) => false,
                Err(e) => return Err(e.into()),
            };
            if same {
                Ok(())
            } else {
                Err(UploadError::Conflict {
                    bucket: bucket.name().to_owned(),
                    key: key.to_owned(),
                })
            }
        }
    }
}

/// `HEXMIRROR_FAULT_BUCKET_KILL=POINT` kills the publish at POINT (`blob`:
/// after the first blob uploaded; `pointer`: just before the pointer).
fn fault_point(point: &str) {
    crate::fault::kill_at("HEXMIRROR_FAULT_BUCKET_KILL", point);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manifest_key_holding_other_bytes_is_a_conflict_and_the_same_bytes_are_not() {
        let bucket = Bucket::with_store(Arc::new(object_store::memory::InMemory::new()), "b", "");
        let key = base_key(7);
        let ours = Bytes::from_static(b"our signed manifest");
        create_manifest(&bucket, &key, &ours).await.unwrap();
        // Again after a crash between the manifest and the pointer: fine.
        create_manifest(&bucket, &key, &ours).await.unwrap();
        for theirs in [
            &b"their signed manifest"[..],
            b"ours, shorter",
            b"our signed manifest!",
        ] {
            let e = create_manifest(&bucket, &key, &Bytes::copy_from_slice(theirs))
                .await
                .unwrap_err();
            assert!(matches!(e, UploadError::Conflict { .. }), "{e}");
        }
        assert_eq!(bucket.get(&key, 1024).await.unwrap().unwrap().bytes, ours);
    }
}
