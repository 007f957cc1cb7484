//! Garbage collection in the bucket: blobs and manifests no live generation
//! references, once they are older than the grace period.
//!
//! Live: the manifests the pointer names, the newest `keep` base manifests
//! up to it, any manifest above it (an upload in progress), any written
//! within the grace period, and any *replaced* within it: a generation is
//! replaced when the next one is published, so its replacement time is the
//! next manifest's write time (a reader still on the previous generation
//! fetches its files lazily). A live delta keeps the base it applies to. A
//! blob is kept when a live manifest names it, or when it was written
//! within the grace period (an upload in progress has not written its
//! manifest yet).
//!
//! The proxy's file lists follow the same rules (the named one, and those
//! written or replaced within the grace period, a list counting as replaced
//! when any later one was written within it, since the next by version may
//! be an orphan the pointer never named); one that does not verify
//! references nothing, since no reader serves it.
//!
//! Runs only in the process that holds the lease, and asks it ([`Fence`])
//! before every delete, so a collection that outlives its lease stops
//! before a new writer can count a blob present that this then deletes.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use super::lease::{Fence, LeaseError};
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
    /// The lease could not be kept; the collection stopped.
    #[error(transparent)]
    Lease(#[from] LeaseError),
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
    super::version_digits(digits).map(|v| (v, delta))
}

/// Deletes what no live generation of the bucket references (see the
/// module doc); `now` is the wall clock.
pub async fn collect(
    bucket: &Bucket,
    key: &ManifestPublicKey,
    fence: &dyn Fence,
    keep: usize,
    grace: Duration,
    now: SystemTime,
) -> Result<Collected, GcError> {
    let Some((pointer, _)) = bucket.pointer().await? else {
        return Ok(Collected::default());
    };
    let young = |modified: SystemTime| now.duration_since(modified).unwrap_or_default() < grace;
    // Every manifest object: (version, delta?, key, written).
    let manifests: Vec<(u64, bool, String, SystemTime)> = bucket
        .list("manifests")
        .await?
        .into_iter()
        .filter_map(|(k, meta)| {
            let (v, delta) = parse_manifest_key(&k)?;
            Some((v, delta, k, meta.last_modified.into()))
        })
        .collect();
    let (mut live, mut dead) = sort_out(manifests, &pointer, keep, &young);
    for named in [
        Some(super::base_key(pointer.base)),
        pointer.delta.map(super::delta_key),
    ]
    .into_iter()
    .flatten()
    {
        if !live.iter().any(|(k, _)| *k == named) {
            return Err(GcError::Manifest {
                bucket: bucket.name().to_owned(),
                key: named,
                problem: ManifestProblem::Missing,
            });
        }
    }
    let mut referenced: HashSet<String> = HashSet::new();
    // The proxy's file lists: the named one, and those written or replaced
    // within the grace period. One above the named that is older (a crash
    // or a shutdown between the list and the pointer) is an orphan: gone.
    let mut lists: Vec<(u64, String, SystemTime)> = bucket
        .list("proxy")
        .await?
        .into_iter()
        .filter_map(|(k, meta)| {
            Some((
                super::proxied::parse_proxy_key(&k)?,
                k,
                meta.last_modified.into(),
            ))
        })
        .collect();
    lists.sort_unstable_by_key(|(v, ..)| *v);
    let named = pointer.proxy.as_ref().map(|p| p.version);
    for (i, (version, k, written)) in lists.iter().enumerate() {
        if list_kept(&lists, i, named, &young) {
            match read_live(bucket, key, k, Kind::Proxy).await {
                Ok((blobs, _)) => referenced.extend(blobs),
                // Readers never serve a list that does not verify, so it
                // references nothing; the writer replaces a named one.
                Err(GcError::Manifest { problem, .. }) => {
                    tracing::warn!(
                        bucket = bucket.name(),
                        key = k,
                        "unusable proxy list: {problem}"
                    );
                    if Some(*version) != named && !young(*written) {
                        dead.push((*version, k.clone()));
                    }
                }
                Err(e) => return Err(e),
            }
        } else {
            dead.push((*version, k.clone()));
        }
    }
    let mut next = 0;
    while next < live.len() {
        let (k, is_delta) = live[next].clone();
        next += 1;
        let kind = if is_delta { Kind::Delta } else { Kind::Base };
        let (blobs, base) = read_live(bucket, key, &k, kind).await?;
        referenced.extend(blobs);
        // A live delta is served over its base: that base lives too.
        if let Some(base) = base
            && let Some(at) = dead
                .iter()
                .position(|(v, k)| *v == base && parse_manifest_key(k) == Some((base, false)))
        {
            let (_, k) = dead.remove(at);
            live.push((k, false));
        }
    }
    let mut collected = Collected::default();
    for (k, meta) in bucket.list("blobs").await? {
        if !referenced.contains(&k) && !young(meta.last_modified.into()) {
            fence.hold().await?;
            bucket.delete(&k).await?;
            collected.blobs += 1;
            collected.bytes += meta.size;
        }
    }
    // Manifests last: an interrupted run leaves dead manifests, never a
    // live one missing, and the next run finishes.
    for (_, k) in dead {
        fence.hold().await?;
        bucket.delete(&k).await?;
        collected.manifests += 1;
    }
    Ok(collected)
}

/// Splits manifest objects `(version, delta?, key, written)` into live
/// `(key, delta?)` and dead `(version, key)`, by the rules of the module doc.
#[allow(clippy::type_complexity)]
fn sort_out(
    mut manifests: Vec<(u64, bool, String, SystemTime)>,
    pointer: &super::Pointer,
    keep: usize,
    young: &dyn Fn(SystemTime) -> bool,
) -> (Vec<(String, bool)>, Vec<(u64, String)>) {
    manifests.sort_unstable_by_key(|(v, delta, ..)| (*v, *delta));
    let mut bases: Vec<u64> = manifests
        .iter()
        .filter(|&&(v, delta, ..)| !delta && v <= pointer.base)
        .map(|(v, ..)| *v)
        .collect();
    bases.sort_unstable_by(|a, b| b.cmp(a));
    let newest: HashSet<u64> = bases.into_iter().take(keep.max(1)).collect();
    let mut live = Vec::new();
    let mut dead = Vec::new();
    for (i, (version, delta, k, written)) in manifests.iter().enumerate() {
        let named = if *delta {
            pointer.delta == Some(*version)
        } else {
            pointer.base == *version || newest.contains(version)
        };
        // Replaced when the next generation was published: the next
        // manifest's write time.
        let replaced_recently = manifests
            .get(i + 1)
            .is_some_and(|(.., next_written)| young(*next_written));
        if named || *version > pointer.version || young(*written) || replaced_recently {
            live.push((k.clone(), *delta));
        } else {
            dead.push((*version, k.clone()));
        }
    }
    (live, dead)
}

/// Whether proxy list `i` of `lists` (sorted by version) stays: named by
/// the pointer, written within the grace period, or replaced within it.
/// A list is replaced by whichever later list the pointer named next, which
/// need not be the next by version (that may be an orphan), so any later
/// young list counts. Lists are cumulative: keeping one a little longer
/// keeps almost no blob that a newer one does not.
fn list_kept(
    lists: &[(u64, String, SystemTime)],
    i: usize,
    named: Option<u64>,
    young: &dyn Fn(SystemTime) -> bool,
) -> bool {
    let Some((version, _, written)) = lists.get(i) else {
        return false;
    };
    Some(*version) == named
        || young(*written)
        || lists[i + 1..].iter().any(|(.., later)| young(*later))
}

/// What a live object is.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Base,
    Delta,
    Proxy,
}

/// The blob keys a live manifest (or proxy list) names, verified, and the
/// base version a delta applies to.
async fn read_live(
    bucket: &Bucket,
    key: &ManifestPublicKey,
    k: &str,
    kind: Kind,
) -> Result<(Vec<String>, Option<u64>), GcError> {
    let problem = |problem| GcError::Manifest {
        bucket: bucket.name().to_owned(),
        key: k.to_owned(),
        problem,
    };
    let object = bucket
        .get(k, super::MAX_MANIFEST)
        .await?
        .ok_or_else(|| problem(ManifestProblem::Missing))?;
    let verifying = key.clone();
    let (entries, base) = tokio::task::spawn_blocking(move || match kind {
        Kind::Delta => {
            let delta = manifest::verify_delta(&object.bytes, &verifying)?;
            let base = delta.base_version;
            Ok::<_, ManifestError>((
                delta.files.into_values().flatten().collect::<Vec<_>>(),
                Some(base),
            ))
        }
        Kind::Proxy => {
            let list = super::proxied::verify(&object.bytes, &verifying)?;
            Ok((list.files.into_values().flatten().collect(), None))
        }
        Kind::Base => {
            let files = manifest::verify_base(&object.bytes, &verifying)?.files;
            Ok((files.into_values().collect(), None))
        }
    })
    .await
    .map_err(|_| GcError::Task)?
    .map_err(|e| problem(e.into()))?;
    let blobs = entries
        .iter()
        .filter_map(crate::store::FileRef::from_entry)
        .map(|file| super::blob_key(&file.sha256))
        .collect();
    Ok((blobs, base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generation_replaced_within_the_grace_period_stays_however_old_it_is() {
        let t = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let m = |v: u64, delta: bool, at: u64| {
            let key = if delta {
                super::super::delta_key(v)
            } else {
                super::super::base_key(v)
            };
            (v, delta, key, t(at))
        };
        // Base 1 long ago, its delta 2 long ago, base 3 long ago, base 4
        // long ago, base 5 (served) a minute ago: 4 was replaced a minute
        // ago, everything else long ago.
        let manifests = vec![
            m(1, false, 100),
            m(2, true, 200),
            m(3, false, 300),
            m(4, false, 400),
            m(5, false, 10_000),
        ];
        let pointer = super::super::Pointer {
            version: 5,
            generation: "g5".into(),
            base: 5,
            base_sha256: String::new(),
            delta: None,
            delta_sha256: None,
            proxy: None,
            holder: String::new(),
            written_at: 10_000,
        };
        let young = |at: SystemTime| at >= t(10_000 - 3600);
        let (live, dead) = sort_out(manifests.clone(), &pointer, 1, &young);
        let live: Vec<String> = live.into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            live,
            [super::super::base_key(4), super::super::base_key(5)],
            "the served base, and the one it replaced a minute ago"
        );
        assert_eq!(dead.iter().map(|(v, _)| *v).collect::<Vec<_>>(), [1, 2, 3]);
        // Keeping three bases keeps 3 too; the delta over 1 is dead with it.
        let (live, _) = sort_out(manifests, &pointer, 3, &young);
        assert_eq!(live.len(), 3);
    }

    #[test]
    fn a_proxy_list_replaced_recently_stays_when_an_old_orphan_lies_between() {
        let t = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let young = |at: SystemTime| at >= t(10_000 - 3600);
        // 1 named long ago, 2 an orphan from long ago (never named), 3
        // named a minute ago: 1 was replaced a minute ago, by 3.
        let lists = vec![
            (1, super::super::proxy_key(1), t(100)),
            (2, super::super::proxy_key(2), t(200)),
            (3, super::super::proxy_key(3), t(10_000)),
        ];
        let kept: Vec<bool> = (0..3)
            .map(|i| list_kept(&lists, i, Some(3), &young))
            .collect();
        assert_eq!(kept, [true, true, true]);
        // Later, with 3 itself old: only the named one stays.
        let young = |at: SystemTime| at >= t(20_000);
        let kept: Vec<bool> = (0..3)
            .map(|i| list_kept(&lists, i, Some(3), &young))
            .collect();
        assert_eq!(kept, [false, false, true]);
    }

    #[tokio::test]
    async fn a_collection_stops_before_its_first_delete_when_the_lease_is_gone_and_drops_orphaned_lists()
     {
        struct Lost;
        impl Fence for Lost {
            fn hold(&self) -> futures::future::BoxFuture<'_, Result<Option<u64>, LeaseError>> {
                Box::pin(async {
                    Err(LeaseError::Lost {
                        bucket: "b".into(),
                        holder: "another writer".into(),
                    })
                })
            }
        }
        use object_store::PutMode;
        use sha2::{Digest, Sha256};
        let bucket = Bucket::with_store(
            std::sync::Arc::new(object_store::memory::InMemory::new()),
            "b",
            "",
        );
        let key = crate::manifest::ManifestKey::generate();
        let mut pointer = None;
        for v in 1..=2u64 {
            let content = format!("blob {v}");
            let sha: [u8; 32] = Sha256::digest(content.as_bytes()).into();
            let m = manifest::Manifest {
                expires_at: u64::MAX,
                files: [(
                    "names".to_owned(),
                    manifest::FileEntry {
                        sha256: hex::encode(sha),
                        size: content.len() as u64,
                    },
                )]
                .into(),
                generation: format!("g{v}"),
                signed_at: 1,
                upstream: manifest::UpstreamState {
                    names_etag: None,
                    synced_at: 1,
                    url: "http://upstream".into(),
                    versions_etag: None,
                },
                version: v,
            };
            let put = |k: String, b: Vec<u8>| {
                let bucket = bucket.clone();
                async move {
                    bucket
                        .put(&k, bytes::Bytes::from(b), PutMode::Overwrite)
                        .await
                        .unwrap()
                }
            };
            put(super::super::blob_key(&sha), content.into_bytes()).await;
            put(super::super::base_key(v), manifest::sign(&m, &key)).await;
            pointer = Some(super::super::Pointer {
                version: v,
                generation: m.generation.clone(),
                base: v,
                base_sha256: String::new(),
                delta: None,
                delta_sha256: None,
                proxy: None,
                holder: String::new(),
                written_at: 1,
            });
        }
        // Proxy lists: the pointer names 1; 2 is an orphan a crash left
        // between the list and the pointer. Each names its own blob.
        for v in 1..=2u64 {
            let content = format!("proxied {v}");
            let sha: [u8; 32] = Sha256::digest(content.as_bytes()).into();
            let list = manifest::Delta {
                base_version: 0,
                expires_at: u64::MAX,
                files: [(
                    format!("packages/p{v}"),
                    Some(manifest::FileEntry {
                        sha256: hex::encode(sha),
                        size: content.len() as u64,
                    }),
                )]
                .into(),
                generation: manifest::PROXY_SET.into(),
                signed_at: 1,
                version: v,
            };
            let signed = manifest::sign_delta(&list, &key);
            if v == 1
                && let Some(p) = pointer.as_mut()
            {
                p.proxy = Some(super::super::ProxyRef {
                    version: 1,
                    sha256: hex::encode(Sha256::digest(&signed)),
                });
            }
            for (k, b) in [
                (super::super::blob_key(&sha), content.into_bytes()),
                (super::super::proxy_key(v), signed),
            ] {
                bucket
                    .put(&k, bytes::Bytes::from(b), PutMode::Overwrite)
                    .await
                    .unwrap();
            }
        }
        bucket
            .put(
                super::super::POINTER,
                serde_json::to_vec(&pointer).unwrap().into(),
                PutMode::Overwrite,
            )
            .await
            .unwrap();
        let later = SystemTime::now() + Duration::from_secs(86_400);
        let grace = Duration::from_secs(60);
        let stopped = collect(&bucket, &key.public(), &Lost, 1, grace, later).await;
        assert!(matches!(stopped, Err(GcError::Lease(_))), "{stopped:?}");
        assert_eq!(bucket.list("blobs").await.unwrap().len(), 4);
        assert_eq!(bucket.list("manifests").await.unwrap().len(), 2);
        let public = key.public();
        let unfenced = || {
            collect(
                &bucket,
                &public,
                &super::super::lease::Unfenced,
                1,
                grace,
                later,
            )
        };
        let c = unfenced().await.unwrap();
        // The first manifest and the orphaned list, and the blob each alone named.
        assert_eq!((c.manifests, c.blobs), (2, 2));
        let lists: Vec<String> = bucket
            .list("proxy")
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(lists, [super::super::proxy_key(1)]);
        // The named list damaged: no reader serves it, so it references
        // nothing, and the collection still runs.
        bucket
            .put(
                &super::super::proxy_key(1),
                bytes::Bytes::from_static(b"damaged"),
                PutMode::Overwrite,
            )
            .await
            .unwrap();
        let c = unfenced().await.unwrap();
        assert_eq!((c.manifests, c.blobs), (0, 1));
    }

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
