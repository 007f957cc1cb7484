//! One writer per bucket: a lease object taken with `If-None-Match: *`,
//! renewed and released with `If-Match` on its last ETag, and the start-up
//! probe that shows the store honours both.
//!
//! The probe proves only that the headers are honoured one request at a
//! time, not that the store applies them atomically: s3s-fs passes it and
//! still lets two racing creates both win. Where that matters, use a store
//! that writes conditionally at its storage layer (AWS S3, Ceph radosgw).
//!
//! Times are Unix seconds passed in by the caller, so tests drive expiry
//! without sleeping.

use std::path::Path;

use bytes::Bytes;
use object_store::{PutMode, UpdateVersion};
use serde::{Deserialize, Serialize};

use super::{Bucket, BucketError, LEASE, Put};

/// Who holds (or wants) the lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Holder {
    /// Random per process: the lease belongs to one running writer.
    pub instance: String,
    /// Random per data directory (`DATA_DIR/node-id`), so a `sync` run
    /// beside the `serve` that holds the lease can tell it is the same node.
    pub node: String,
    /// The machine's host name, for people.
    pub host: String,
    /// The process id, for people.
    pub pid: u32,
    /// The data directory, for people.
    pub data_dir: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} on {} (data directory {})",
            self.pid, self.host, self.data_dir
        )
    }
}

impl Holder {
    /// This process, for the data directory `data_dir` (its node id is
    /// created on first use).
    pub fn this_process(data_dir: &Path) -> Result<Self, std::io::Error> {
        Ok(Self {
            instance: random_id(),
            node: node_id(data_dir)?,
            host: host_name(),
            pid: std::process::id(),
            data_dir: data_dir.display().to_string(),
        })
    }
}

/// The lease object's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseBody {
    /// Who holds it.
    pub holder: Holder,
    /// Unix time it was taken.
    pub taken_at: u64,
    /// Unix time it lapses unless renewed (0: released).
    pub expires_at: u64,
}

/// Why the lease could not be taken or kept.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another writer holds it.
    #[error(
        "bucket {bucket}: another writer holds the lease: {holder}, until {until}; stop it, or \
         wait for the lease to lapse"
    )]
    Held {
        /// The bucket.
        bucket: String,
        /// The other writer.
        holder: Box<Holder>,
        /// When its lease lapses (RFC 3339).
        until: String,
    },
    /// Someone replaced the lease since this writer last wrote it.
    #[error("bucket {bucket}: the lease was taken over by {holder}; this writer stops writing")]
    Lost {
        /// The bucket.
        bucket: String,
        /// Who has it now, or "unknown" if it vanished.
        holder: String,
    },
    /// The store ignores a conditional header.
    #[error(
        "bucket {bucket}: the store ignores {header} on PUT, so it cannot hold a lease; use a \
         store that honours conditional puts, or set storage.lease = \"none\" and run exactly \
         one writer by deployment"
    )]
    Unconditional {
        /// The bucket.
        bucket: String,
        /// `If-None-Match` or `If-Match`.
        header: &'static str,
    },
    /// The bucket could not be reached or refused.
    #[error(transparent)]
    Bucket(#[from] BucketError),
}

/// A lease this process holds.
#[derive(Debug, Clone)]
pub struct Lease {
    body: LeaseBody,
    etag: Option<String>,
}

impl Lease {
    /// Until when this writer may publish (Unix seconds).
    pub fn expires_at(&self) -> u64 {
        self.body.expires_at
    }

    /// The holder, as written in the lease.
    pub fn holder(&self) -> &Holder {
        &self.body.holder
    }
}

fn held(bucket: &Bucket, body: LeaseBody) -> LeaseError {
    LeaseError::Held {
        bucket: bucket.name().to_owned(),
        until: crate::manifest::rfc3339(body.expires_at),
        holder: Box::new(body.holder),
    }
}

fn encode(body: &LeaseBody) -> Bytes {
    Bytes::from(serde_json::to_vec(body).unwrap_or_else(|_| unreachable!("a lease serialises")))
}

/// Takes the lease for `me` for `ttl` seconds: creates it, or replaces one
/// that lapsed (or that `me` itself holds). Another holder's live lease is
/// [`LeaseError::Held`].
pub async fn acquire(
    bucket: &Bucket,
    me: &Holder,
    lock: &NodeLock,
    ttl: u64,
    now: u64,
) -> Result<Lease, LeaseError> {
    let body = LeaseBody {
        holder: me.clone(),
        taken_at: now,
        expires_at: now + ttl,
    };
    // A lease that vanishes between our create and our read is taken again;
    // a few rounds settle any honest race.
    for _ in 0..4 {
        if let Put::Written(etag) = bucket.put(LEASE, encode(&body), PutMode::Create).await? {
            return Ok(Lease { body, etag });
        }
        let Some(object) = bucket.get(LEASE, super::SMALL_OBJECT).await? else {
            continue;
        };
        let theirs: LeaseBody = bucket.parse(LEASE, &object.bytes)?;
        if theirs.expires_at > now
            && theirs.holder.instance != me.instance
            && !died_here(&theirs.holder, me, lock)
        {
            return Err(held(bucket, theirs));
        }
        let version = UpdateVersion {
            e_tag: object.etag,
            version: None,
        };
        match bucket
            .put(LEASE, encode(&body), PutMode::Update(version))
            .await?
        {
            Put::Written(etag) => return Ok(Lease { body, etag }),
            // Someone else replaced the lapsed lease first: read who.
            Put::Exists | Put::Precondition => continue,
        }
    }
    match bucket.get(LEASE, super::SMALL_OBJECT).await? {
        Some(object) => Err(held(bucket, bucket.parse(LEASE, &object.bytes)?)),
        None => Err(LeaseError::Lost {
            bucket: bucket.name().to_owned(),
            holder: "unknown".into(),
        }),
    }
}

/// Extends `lease` to `now + ttl`, if it is still ours.
pub async fn renew(
    bucket: &Bucket,
    lease: &mut Lease,
    ttl: u64,
    now: u64,
) -> Result<(), LeaseError> {
    let body = LeaseBody {
        expires_at: now + ttl,
        ..lease.body.clone()
    };
    let version = UpdateVersion {
        e_tag: lease.etag.clone(),
        version: None,
    };
    match bucket
        .put(LEASE, encode(&body), PutMode::Update(version))
        .await?
    {
        Put::Written(etag) => {
            *lease = Lease { body, etag };
            Ok(())
        }
        Put::Exists | Put::Precondition => {
            let holder = match bucket.get(LEASE, super::SMALL_OBJECT).await? {
                Some(object) => bucket
                    .parse::<LeaseBody>(LEASE, &object.bytes)
                    .map(|b| b.holder.to_string())
                    .unwrap_or_else(|_| "an unreadable lease".into()),
                None => "unknown".into(),
            };
            Err(LeaseError::Lost {
                bucket: bucket.name().to_owned(),
                holder,
            })
        }
    }
}

/// Ends `lease` at once (expiry 0), so the next writer need not wait; a
/// lease someone else took meanwhile is left alone.
pub async fn release(bucket: &Bucket, lease: Lease) -> Result<(), LeaseError> {
    let body = LeaseBody {
        expires_at: 0,
        ..lease.body
    };
    let version = UpdateVersion {
        e_tag: lease.etag,
        version: None,
    };
    bucket
        .put(LEASE, encode(&body), PutMode::Update(version))
        .await?;
    Ok(())
}

/// [`LeaseError::Held`] when another node's writer holds a live lease; a
/// lease of `me`'s own node (its `serve`) is fine: `sync` checks this before
/// any work.
pub async fn refuse_other_node(bucket: &Bucket, me: &Holder, now: u64) -> Result<(), LeaseError> {
    let Some(object) = bucket.get(LEASE, super::SMALL_OBJECT).await? else {
        return Ok(());
    };
    let theirs: LeaseBody = bucket.parse(LEASE, &object.bytes)?;
    if theirs.expires_at > now && theirs.holder.node != me.node {
        return Err(held(bucket, theirs));
    }
    Ok(())
}

/// Shows the store honours `If-None-Match: *` and `If-Match` on PUT: creates
/// a probe object twice (the second must fail), replaces it with a wrong
/// ETag (must fail), then removes it.
pub async fn probe(bucket: &Bucket) -> Result<(), LeaseError> {
    let key = format!("probe/{}", random_id());
    let bytes = Bytes::from_static(b"hexmirror probe\n");
    let unconditional = |header| LeaseError::Unconditional {
        bucket: bucket.name().to_owned(),
        header,
    };
    let outcome = async {
        bucket.put(&key, bytes.clone(), PutMode::Create).await?;
        if bucket.put(&key, bytes.clone(), PutMode::Create).await? != Put::Exists {
            return Err(unconditional("If-None-Match"));
        }
        let wrong = UpdateVersion {
            e_tag: Some("\"hexmirror-probe-wrong-etag\"".into()),
            version: None,
        };
        if bucket
            .put(&key, bytes.clone(), PutMode::Update(wrong))
            .await?
            != Put::Precondition
        {
            return Err(unconditional("If-Match"));
        }
        Ok(())
    }
    .await;
    bucket.delete(&key).await?;
    outcome
}

/// Whether `holder` was a process of this same data directory on this host
/// that is gone (killed, crashed): its lease is ours to take at once, with
/// no other writer to fence off. Proven by the [`NodeLock`] the caller
/// holds, which every bucket writer of this data directory holds for as
/// long as it lives: no process id is trusted, so a reused one cannot fool
/// it.
fn died_here(holder: &Holder, me: &Holder, _proof: &NodeLock) -> bool {
    holder.node == me.node && holder.host == me.host
}

/// `DATA_DIR/bucket.lock`, held by the one process of a data directory that
/// writes into the bucket (`serve`'s writer, or a one-off `sync` or `gc`),
/// for as long as it may write. Released when dropped (or the process dies).
#[derive(Debug)]
pub struct NodeLock {
    _file: std::fs::File,
}

impl NodeLock {
    /// Takes the lock for `role` (`serve`, or the command's name), or
    /// returns who holds it (their role and pid) when another live process
    /// of this data directory does.
    pub fn try_take(data_dir: &Path, role: &str) -> Result<Result<Self, String>, std::io::Error> {
        use std::io::{Read, Seek, Write};
        std::fs::create_dir_all(data_dir)?;
        // Not truncated before it is held: the file names its holder.
        let mut file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(data_dir.join("bucket.lock"))?;
        match file.try_lock() {
            Ok(()) => {
                file.set_len(0)?;
                file.rewind()?;
                // One write, so a reader never sees half of it.
                file.write_all(format!("{role} pid {}", std::process::id()).as_bytes())?;
                Ok(Ok(Self { _file: file }))
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                file.read_to_string(&mut holder)?;
                Ok(Err(holder.trim().to_owned()))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

/// What long bucket work (an upload, a collection) asks before each step
/// only the lease holder may take, so that it stops as soon as the lease
/// cannot be kept rather than after it lapsed.
pub trait Fence: Sync {
    /// Renews the lease when it is due; its expiry (Unix seconds; `None`
    /// under `lease = "none"`), or why this process no longer holds it.
    fn hold(&self) -> futures::future::BoxFuture<'_, Result<Option<u64>, LeaseError>>;
}

/// No lease (`lease = "none"`, and tests of what runs under one).
#[derive(Debug, Clone, Copy)]
pub struct Unfenced;

impl Fence for Unfenced {
    fn hold(&self) -> futures::future::BoxFuture<'_, Result<Option<u64>, LeaseError>> {
        Box::pin(async { Ok(None) })
    }
}

/// 128 random bits as hex.
fn random_id() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// `DATA_DIR/node-id`, created once.
fn node_id(data_dir: &Path) -> Result<String, std::io::Error> {
    // The first command on a new data directory may be the one asking.
    let path = data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if id.trim().len() == 32 => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let id = random_id();
    std::fs::create_dir_all(data_dir)?;
    let tmp = data_dir.join(format!("node-id.{}", std::process::id()));
    std::fs::write(&tmp, format!("{id}\n"))?;
    // Two processes starting at once: the first link wins, both read it.
    match std::fs::hard_link(&tmp, &path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    }
    let _ = std::fs::remove_file(&tmp);
    Ok(std::fs::read_to_string(&path)?.trim().to_owned())
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn memory() -> Bucket {
        Bucket::with_store(Arc::new(object_store::memory::InMemory::new()), "b", "")
    }

    /// A node lock of a throwaway data directory.
    fn node_lock() -> (tempfile::TempDir, NodeLock) {
        let dir = tempfile::tempdir().unwrap();
        let lock = NodeLock::try_take(dir.path(), "test").unwrap().unwrap();
        (dir, lock)
    }

    fn holder(name: &str) -> Holder {
        Holder {
            instance: format!("{name}-instance"),
            node: format!("{name}-node"),
            host: "host".into(),
            pid: 1,
            data_dir: format!("/data/{name}"),
        }
    }

    #[tokio::test]
    async fn a_second_writer_is_refused_until_the_lease_lapses_and_then_takes_it() {
        let bucket = memory();
        let (a, b) = (holder("a"), holder("b"));
        let (_dir, lock) = node_lock();
        let mut lease_a = acquire(&bucket, &a, &lock, 10, 100).await.unwrap();
        match acquire(&bucket, &b, &lock, 10, 105).await {
            Err(LeaseError::Held { holder, .. }) => assert_eq!(*holder, a),
            other => panic!("expected Held, got {other:?}"),
        }
        renew(&bucket, &mut lease_a, 10, 108).await.unwrap();
        assert!(matches!(
            acquire(&bucket, &b, &lock, 10, 115).await,
            Err(LeaseError::Held { .. })
        ));
        let lease_b = acquire(&bucket, &b, &lock, 10, 118).await.unwrap();
        assert_eq!(lease_b.holder(), &b);
        // The first writer, back from a pause, finds it lost.
        assert!(matches!(
            renew(&bucket, &mut lease_a, 10, 119).await,
            Err(LeaseError::Lost { .. })
        ));
        release(&bucket, lease_b).await.unwrap();
        acquire(&bucket, &a, &lock, 10, 120).await.unwrap();
    }

    #[tokio::test]
    async fn of_sixteen_writers_racing_for_the_lease_exactly_one_wins() {
        for round in 0..20 {
            let bucket = memory();
            let (_dir, lock) = node_lock();
            let lock = Arc::new(lock);
            let tasks: Vec<_> = (0..16)
                .map(|i| {
                    let bucket = bucket.clone();
                    let (me, lock) = (holder(&format!("w{i}")), Arc::clone(&lock));
                    tokio::spawn(async move { acquire(&bucket, &me, &lock, 30, 1000).await })
                })
                .collect();
            let mut winners = 0;
            for task in tasks {
                match task.await.unwrap() {
                    Ok(_) => winners += 1,
                    Err(LeaseError::Held { .. }) => {}
                    Err(e) => panic!("round {round}: {e}"),
                }
            }
            assert_eq!(winners, 1, "round {round}");
        }
    }

    #[tokio::test]
    async fn a_crashed_process_of_this_data_directory_gives_its_lease_up_at_once() {
        let bucket = memory();
        let dir = tempfile::tempdir().unwrap();
        let crashed = holder("a");
        let first = NodeLock::try_take(dir.path(), "serve").unwrap().unwrap();
        acquire(&bucket, &crashed, &first, 60, 100).await.unwrap();
        // While the first process lives, the lock keeps a second one out.
        let busy = NodeLock::try_take(dir.path(), "sync").unwrap().unwrap_err();
        assert_eq!(busy, format!("serve pid {}", std::process::id()));
        drop(first);
        let lock = NodeLock::try_take(dir.path(), "sync").unwrap().unwrap();
        let again = Holder {
            instance: "a-next-instance".into(),
            ..holder("a")
        };
        let lease = acquire(&bucket, &again, &lock, 60, 110).await.unwrap();
        assert_eq!(lease.holder(), &again);
        // Another node's live lease is not given up that way.
        assert!(matches!(
            acquire(&bucket, &holder("b"), &lock, 60, 120).await,
            Err(LeaseError::Held { .. })
        ));
    }

    #[tokio::test]
    async fn the_probe_passes_on_a_store_that_honours_conditional_puts() {
        let bucket = memory();
        probe(&bucket).await.unwrap();
        assert!(bucket.list("probe").await.unwrap().is_empty());
    }

    #[test]
    fn a_data_directory_keeps_its_node_id() {
        let dir = tempfile::tempdir().unwrap();
        let first = node_id(dir.path()).unwrap();
        assert_eq!(first.len(), 32);
        assert_eq!(node_id(dir.path()).unwrap(), first);
    }
}
