//! Download counts from read-only nodes, carried through the bucket: a
//! reader writes what it counted as a small batch object every ten poll
//! intervals (`[storage] poll_ms`; 10 s by default) as
//! `downloads/UNIX-RANDOM.json`, and the writer adds each batch to the
//! catalog once (its key's hash is remembered in the same transaction) and
//! then deletes it. A reader that cannot write keeps its counts for the
//! next try; a writer that dies between counting and deleting skips the
//! batch next time. Batches are outside input: paths are parsed as the
//! server's own are, days and counts are bounded, and a batch that does not
//! parse is set aside in the log and deleted.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::PutMode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::Catalog;
use super::downloads::{Counter, Taken, write_once};
use crate::store::bucket::Bucket;

/// Where batches live under the bucket's prefix.
const DIR: &str = "downloads";
/// A batch larger than this is not read.
const MAX_BATCH: u64 = 4 << 20;
/// A count larger than this in one batch is not believed.
const MAX_COUNT: u64 = 1 << 32;

/// One batch: (request path, Unix day, downloads).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    counts: Vec<(String, u64, u64)>,
}

/// A read-only node's task: writes what `counter` counted into the bucket
/// every `every` and once more at `stop`.
pub async fn push(counter: Arc<Counter>, bucket: Bucket, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        let stopping = stop.run_until_cancelled(tick.tick()).await.is_none();
        let counts = counter.take();
        if !counts.is_empty() {
            let batch = Batch {
                counts: counts
                    .iter()
                    .map(|((path, day), n)| (path.clone(), *day, *n))
                    .collect(),
            };
            let key = format!(
                "{DIR}/{}-{:016x}.json",
                crate::clock::unix_now(),
                rand::random::<u64>()
            );
            let body = Bytes::from(serde_json::to_vec(&batch).unwrap_or_else(|_| unreachable!()));
            if let Err(e) = bucket.put(&key, body, PutMode::Create).await {
                tracing::warn!("download counts not written to the bucket yet ({e}); kept");
                counter.restore(counts);
            }
        }
        if stopping {
            return;
        }
    }
}

/// The writer's task: adds the readers' batches to the catalog, each once,
/// every `every` until `stop`.
pub async fn pull(
    bucket: Bucket,
    catalog: Catalog,
    upstream: String,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    while stop.run_until_cancelled(tick.tick()).await.is_some() {
        match pull_once(&bucket, &catalog, &upstream).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(batches = n, "download counts from read-only nodes added"),
            Err(e) => tracing::warn!("download counts from read-only nodes: {e}; tried again"),
        }
    }
}

/// Why a pull stopped; the batches not yet deleted are read next time.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The bucket failed.
    #[error(transparent)]
    Bucket(#[from] crate::store::bucket::BucketError),
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] super::CatalogError),
}

/// One round of [`pull`]; returns the batches counted.
pub async fn pull_once(
    bucket: &Bucket,
    catalog: &Catalog,
    upstream: &str,
) -> Result<usize, PullError> {
    let today = crate::clock::unix_now() / 86_400;
    let mut counted = 0;
    for (key, meta) in bucket.list(DIR).await? {
        let bytes = if meta.size > MAX_BATCH {
            None
        } else {
            match bucket.get(&key, MAX_BATCH).await? {
                Some(object) => Some(object.bytes),
                None => continue,
            }
        };
        let id: [u8; 32] = Sha256::digest(format!("bucket batch {key}").as_bytes()).into();
        let up = upstream.to_owned();
        // Parsed where it is counted, on the blocking pool: a batch is up
        // to 4 MiB of JSON.
        let outcome = catalog
            .call(move |conn| {
                let Some(batch) = bytes.and_then(|b| serde_json::from_slice::<Batch>(&b).ok())
                else {
                    return Ok(None);
                };
                let counts: Taken = batch
                    .counts
                    .into_iter()
                    .filter(|(_, day, n)| {
                        *day + 3650 >= today && *day <= today + 1 && *n <= MAX_COUNT
                    })
                    .map(|(path, day, n)| ((path, day), n))
                    .collect();
                write_once(conn, &id, &counts, &up).map(Some)
            })
            .await?;
        match outcome {
            Some(true) => counted += 1,
            Some(false) => {}
            None => tracing::warn!(
                bucket = bucket.name(),
                key,
                "a download batch that does not parse (or is too large) was dropped"
            ),
        }
        bucket.delete(&key).await?;
    }
    Ok(counted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_counts_once_even_when_pulled_again_and_bad_ones_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        let bucket = Bucket::with_store(Arc::new(object_store::memory::InMemory::new()), "b", "p");
        let today = crate::clock::unix_now() / 86_400;
        let batch = Batch {
            counts: vec![
                ("/repos/acme/tarballs/beta-0.2.1.tar".into(), today, 2),
                ("/tarballs/alpha-1.0.0.tar".into(), today, 1),
                ("/tarballs/alpha-1.0.0.tar".into(), today + 400, 1),
                ("/etc/passwd".into(), today, 1),
            ],
        };
        let body = Bytes::from(serde_json::to_vec(&batch).unwrap());
        bucket
            .put("downloads/1-a.json", body.clone(), PutMode::Create)
            .await
            .unwrap();
        bucket
            .put(
                "downloads/2-b.json",
                Bytes::from_static(b"{not json"),
                PutMode::Create,
            )
            .await
            .unwrap();
        assert_eq!(pull_once(&bucket, &catalog, "hexpm").await.unwrap(), 1);
        assert!(bucket.list(DIR).await.unwrap().is_empty());
        // The same batch again (a writer that died before deleting it).
        bucket
            .put("downloads/1-a.json", body, PutMode::Create)
            .await
            .unwrap();
        assert_eq!(pull_once(&bucket, &catalog, "hexpm").await.unwrap(), 0);
        let counts = |repo: &'static str, name: &'static str| {
            let catalog = catalog.clone();
            async move {
                catalog
                    .call(move |c| super::super::downloads::package_counts(c, repo, &[name], today))
                    .await
                    .unwrap()[name]
                    .all
            }
        };
        assert_eq!(counts("acme", "beta").await, 2);
        assert_eq!(counts("hexpm", "alpha").await, 1);
    }
}
