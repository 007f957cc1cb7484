//! Garbage collection in the bucket: blobs and manifests no live generation
//! references, once they are older than the grace period.
//!
//! Live: the manifests the pointer names, the newest `keep` base manifests
//! up to it, and every manifest written within the grace period (a reader
//! still on the previous generation fetches its files lazily). A blob is
//! kept when a live manifest names it, or when it was written within the
//! grace period (an upload in progress has not written its manifest yet).
//! Runs only in the process that holds the lease, between its uploads, so
//! no upload can find a blob present that this is about to delete.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use super::{Bucket, BucketError};
use crate::manifest::{self, ManifestError, ManifestPublicKey};

/// Why a collection stopped. Nothing a live generation needs was deleted.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The bucket could not be reached or refused.
    #[error(transparent)]
    Bucket(#[from] BucketError),
    /// A live manifest is missing or does not verify: what it references is
    /// unknown, so nothing is deleted.
    #[error("bucket {bucket}: live manifest {key}: {problem}; nothing was deleted")]
    Manifest {
        /// The bucket.
        bucket: String,
        /// The manifest's key.
        key: String,
        /// What is wrong.
        problem: ManifestProblem,
    },
    /// A verification task died.
    #[error("bucket garbage collection: a verification task died")]
    Task,
}

/// What is wrong with a live manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestProblem {
    /// It is not in the bucket.
    #[error("missing")]
    Missing,
    /// It does not verify.
    #[error(transparent)]
    Invalid(#[from] ManifestError),
}

/// What a collection removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collected {
    /// Manifest objects deleted.
    pub manifests: usize,
    /// Blob objects deleted.
    pub blobs: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// A manifest object's version and whether it is a delta, from its key.
fn parse_manifest_key(key: &str) -> Option<(u64, bool)> {
    let name = key.strip_prefix("manifests/")?;
    let (digits, delta) = match name.strip_suffix("-delta.json") {
        Some(d) => (d, true),
        None => (name.strip_suffix(".json")?, false),
    };
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
        .map(|v| (v, delta))
}

/// Deletes what no live generation of the bucket references (see the
/// module doc); `now` is the wall clock.
pub async fn collect(
    bucket: &Bucket,
    key: &ManifestPublicKey,
    keep: usize,
    grace: Duration,
    now: SystemTime,
) -> Result<Collected, GcError> {
    let Some((pointer, _)) = bucket.pointer().await? else {
        return Ok(Collected::default());
    };
    let young = |modified: SystemTime| now.duration_since(modified).unwrap_or_default() < grace;
    let manifests = bucket.list("manifests").await?;
    let mut bases: Vec<u64> = manifests
        .iter()
        .filter_map(|(k, _)| parse_manifest_key(k))
        .filter(|&(v, delta)| !delta && v <= pointer.base)
        .map(|(v, _)| v)
        .collect();
    bases.sort_unstable_by(|a, b| b.cmp(a));
    let newest: HashSet<u64> = bases.into_iter().take(keep.max(1)).collect();
    let mut live: Vec<String> = Vec::new();
    let mut dead: Vec<String> = Vec::new();
    for (k, meta) in &manifests {
        let Some((version, delta)) = parse_manifest_key(k) else {
            continue;
        };
        let named = if delta {
            pointer.delta == Some(version)
        } else {
            pointer.base == version || newest.contains(&version)
        };
        if named || version > pointer.version || young(meta.last_modified.into()) {
            live.push(k.clone());
        } else {
            dead.push(k.clone());
        }
    }
    for named in [
        Some(super::base_key(pointer.base)),
        pointer.delta.map(super::delta_key),
    ]
    .into_iter()
    .flatten()
    {
        if !live.contains(&named) {
            return Err(GcError::Manifest {
                bucket: bucket.name().to_owned(),
                key: named,
                problem: ManifestProblem::Missing,
            });
        }
    }
    let mut referenced: HashSet<String> = HashSet::new();
    for k in &live {
        let problem = |problem| GcError::Manifest {
            bucket: bucket.name().to_owned(),
            key: k.clone(),
            problem,
        };
        let object = bucket
            .get(k, super::MAX_MANIFEST)
            .await?
            .ok_or_else(|| problem(ManifestProblem::Missing))?;
        let (verifying, is_delta) = (key.clone(), k.ends_with("-delta.json"));
        let shas = tokio::task::spawn_blocking(move || {
            let entries: Vec<manifest::FileEntry> = if is_delta {
                manifest::verify_delta(&object.bytes, &verifying)?
                    .files
                    .into_values()
                    .flatten()
                    .collect()
            } else {
                manifest::verify_base(&object.bytes, &verifying)?
                    .files
                    .into_values()
                    .collect()
            };
            Ok::<_, ManifestError>(entries)
        })
        .await
        .map_err(|_| GcError::Task)?
        .map_err(|e| problem(e.into()))?;
        for entry in shas {
            if let Some(file) = crate::store::FileRef::from_entry(&entry) {
                referenced.insert(super::blob_key(&file.sha256));
            }
        }
    }
    let mut collected = Collected::default();
    for (k, meta) in bucket.list("blobs").await? {
        if !referenced.contains(&k) && !young(meta.last_modified.into()) {
            bucket.delete(&k).await?;
            collected.blobs += 1;
            collected.bytes += meta.size;
        }
    }
    // Manifests last: an interrupted run leaves dead manifests, never a
    // live one missing, and the next run finishes.
    for k in dead {
        bucket.delete(&k).await?;
        collected.manifests += 1;
    }
    Ok(collected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_keys_parse_back_to_their_versions() {
        assert_eq!(
            parse_manifest_key(&super::super::base_key(42)),
            Some((42, false))
        );
        assert_eq!(
            parse_manifest_key(&super::super::delta_key(7)),
            Some((7, true))
        );
        assert_eq!(parse_manifest_key("manifests/12.json"), None);
        assert_eq!(parse_manifest_key("blobs/sha256/ab/x"), None);
    }
}
