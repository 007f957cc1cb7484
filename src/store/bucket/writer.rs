//! The writer node's link to the bucket: the probe and the lease at start,
//! then every new local generation published (`upload`), the lease renewed
//! as it goes. `serve` runs [`BucketWriter::run`] in the background; `sync`
//! publishes once at its end.

use std::sync::Arc;
use std::time::Duration;

use super::gc::{self, Collected};
use super::lease::{self, Fence, Holder, Lease, LeaseError, NodeLock};
use super::proxied::{self, Pending, Published};
use super::upload::{self, UploadError, Uploaded};
use super::{Bucket, BucketError};
use crate::config::{LeaseMode, S3Config};
use crate::store::Store;

/// Why the writer could not start on the bucket.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The bucket could not be opened.
    #[error(transparent)]
    Bucket(#[from] BucketError),
    /// The probe failed, or the lease is held.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// Another process of this data directory writes into the bucket.
    #[error(
        "another hexmirror process of data directory {} writes into the bucket ({holder}, holding \
         bucket.lock there)",
        data_dir.display()
    )]
    Busy {
        /// The data directory.
        data_dir: std::path::PathBuf,
        /// Who: `serve pid N`, or a command's name and pid.
        holder: String,
    },
    /// The data directory's node id or bucket lock could not be read or made.
    #[error("cannot read or create {path}: {source}")]
    NodeId {
        /// `DATA_DIR/node-id`.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Why a publish into the bucket did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The lease could not be kept.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// The upload failed; the pointer is unchanged.
    #[error(transparent)]
    Upload(#[from] UploadError),
    /// The manifest key could not be read (no sync has made one yet?).
    #[error(transparent)]
    Key(#[from] crate::keyfiles::KeyFileError),
    /// Garbage collection stopped; nothing live was deleted.
    #[error(transparent)]
    Gc(#[from] gc::GcError),
}

/// One writer's hold on the bucket.
pub struct BucketWriter {
    bucket: Bucket,
    store: Arc<Store>,
    manifest_key: std::path::PathBuf,
    /// How long replaced generations stay readable (`signing.generation_grace_secs`).
    grace: Duration,
    mode: LeaseMode,
    ttl: Duration,
    poll: Duration,
    holder: Holder,
    lease: tokio::sync::Mutex<Option<Lease>>,
    status: std::sync::Mutex<Status>,
    /// Held while this writer lives: one bucket writer per data directory.
    node_lock: NodeLock,
    /// The pull-through proxy's new files, when the proxy is on.
    proxied: Option<Arc<Pending>>,
    /// The proxy file list last published.
    proxy_list: tokio::sync::Mutex<Option<Published>>,
    /// How long a signed list stays valid (`signing.manifest_expiry_secs`).
    expiry: Duration,
}

/// What `/health` says about the writer's bucket.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// The bucket (and prefix).
    pub bucket: String,
    /// The version the pointer names since this process published or found
    /// it there.
    pub published: Option<u64>,
    /// When the lease this process holds lapses.
    pub lease_until: Option<u64>,
    /// The last failure (Unix time, message), until a later success.
    pub error: Option<(u64, String)>,
}

impl std::fmt::Debug for BucketWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketWriter")
            .field("bucket", &self.bucket.name())
            .finish_non_exhaustive()
    }
}

/// The longest wait between tries after repeated failures.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);

/// The proxy list's own back-off, apart from the generation's: a list that
/// keeps failing slows neither hosted publishes nor the collection.
#[derive(Debug, Default)]
struct ProxyRounds {
    failures: u32,
    /// No try before this.
    retry_at: Option<std::time::Instant>,
    /// The last try's failure, until a try succeeds.
    error: Option<String>,
}

impl ProxyRounds {
    fn last(&self) -> Result<(), String> {
        self.error.clone().map_or(Ok(()), Err)
    }
}

/// The shortest time between two proxy file lists.
const PROXY_LIST_EVERY: Duration = Duration::from_secs(10);

/// How often `serve`'s writer collects the bucket's garbage.
const GC_EVERY: Duration = Duration::from_secs(3600);

/// How `serve`'s writer names itself in `bucket.lock`.
pub const SERVE_ROLE: &str = "serve";

/// How `start` treats a lease another process holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnHeld {
    /// Refuse: [`LeaseError::Held`].
    Refuse,
    /// Refuse another node's lease, but start without the lease when this
    /// same data directory's previous process holds it (after a crash):
    /// [`BucketWriter::run`] takes it once it lapses.
    WaitForOwnNode,
}

impl BucketWriter {
    /// Opens the bucket, probes it (unless `lease = "none"`) and takes the
    /// lease for this process.
    pub async fn start(
        store: Arc<Store>,
        config: &crate::config::Config,
        s3: &S3Config,
        on_held: OnHeld,
    ) -> Result<Self, StartError> {
        let bucket = Bucket::open(s3)?;
        Self::start_on(bucket, store, config, s3, on_held).await
    }

    /// [`Self::start`] on a bucket already opened (tests use the memory
    /// store).
    pub async fn start_on(
        bucket: Bucket,
        store: Arc<Store>,
        config: &crate::config::Config,
        s3: &S3Config,
        on_held: OnHeld,
    ) -> Result<Self, StartError> {
        let data_dir = store.data_dir().to_path_buf();
        // `serve` waits out its own crashed predecessor's lease; a one-off
        // command refuses. The lock file says which holds it.
        let role = match on_held {
            OnHeld::WaitForOwnNode => SERVE_ROLE,
            OnHeld::Refuse => "sync or gc",
        };
        // Small file work, on the blocking pool as all file work is.
        let (node_lock, holder) = {
            let dir = data_dir.clone();
            tokio::task::spawn_blocking(move || {
                let lock = NodeLock::try_take(&dir, role)
                    .map_err(|source| StartError::NodeId {
                        path: dir.join("bucket.lock"),
                        source,
                    })?
                    .map_err(|holder| StartError::Busy {
                        data_dir: dir.clone(),
                        holder,
                    })?;
                let holder = Holder::this_process(&dir).map_err(|source| StartError::NodeId {
                    path: dir.join("node-id"),
                    source,
                })?;
                Ok::<_, StartError>((lock, holder))
            })
            .await
            .map_err(|e| StartError::NodeId {
                path: data_dir.join("bucket.lock"),
                source: std::io::Error::other(e),
            })??
        };
        let writer = Self {
            bucket,
            store,
            manifest_key: config.signing.manifest_key.clone(),
            grace: config.signing.generation_grace,
            mode: s3.lease,
            ttl: s3.lease_ttl,
            poll: s3.poll,
            holder,
            lease: tokio::sync::Mutex::new(None),
            status: std::sync::Mutex::new(Status::default()),
            node_lock,
            proxied: config
                .proxy
                .enabled
                .then(|| Arc::new(Pending::new(config.data_dir.join("proxy")))),
            proxy_list: tokio::sync::Mutex::new(None),
            expiry: config.signing.manifest_expiry,
        };
        writer.with_status(|s| s.bucket = writer.bucket.name().to_owned());
        if writer.mode == LeaseMode::Conditional {
            lease::probe(&writer.bucket).await?;
            match lease::acquire(
                &writer.bucket,
                &writer.holder,
                &writer.node_lock,
                writer.ttl.as_secs(),
                crate::clock::unix_now(),
            )
            .await
            {
                Ok(taken) => *writer.lease.lock().await = Some(taken),
                Err(LeaseError::Held { holder, until, .. })
                    if on_held == OnHeld::WaitForOwnNode && holder.node == writer.holder.node =>
                {
                    tracing::warn!(
                        previous = %holder,
                        until,
                        "the bucket lease is this data directory's previous process's; \
                         publishing waits until it lapses"
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(writer)
    }

    fn with_status(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// What the writer last did with the bucket.
    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How often it looks for work (`[storage] poll_ms`).
    pub fn poll(&self) -> Duration {
        self.poll
    }

    /// The bucket.
    pub fn bucket(&self) -> &Bucket {
        &self.bucket
    }

    /// Publishes the local current generation, renewing (or taking) the
    /// lease first.
    pub async fn publish(&self) -> Result<Uploaded, PublishError> {
        Fence::hold(self).await?;
        let key = self.public_key().await?;
        Ok(upload::publish(
            &self.bucket,
            Arc::clone(&self.store),
            &key,
            &self.holder.instance,
            self,
            self.proxied.is_some(),
            crate::clock::unix_now,
        )
        .await?)
    }

    async fn public_key(&self) -> Result<crate::manifest::ManifestPublicKey, PublishError> {
        Ok(self.signing_key().await?.public())
    }

    async fn signing_key(&self) -> Result<crate::manifest::ManifestKey, PublishError> {
        let path = self.manifest_key.clone();
        Ok(
            tokio::task::spawn_blocking(move || crate::keyfiles::manifest_key(&path))
                .await
                .map_err(UploadError::Task)??,
        )
    }

    /// Where the pull-through proxy reports the files it links, so that
    /// they are published too (`None` when the proxy is off).
    pub fn proxy_pending(&self) -> Option<Arc<Pending>> {
        self.proxied.clone()
    }

    /// Publishes the proxy's new files ([`proxied`]); the version of the
    /// list written, if one was.
    pub async fn publish_proxied(&self) -> Result<Option<u64>, PublishError> {
        let Some(pending) = &self.proxied else {
            return Ok(None);
        };
        Fence::hold(self).await?;
        let key = self.signing_key().await?;
        let mut list = self.proxy_list.lock().await;
        Ok(proxied::publish(
            &self.bucket,
            &self.store,
            &key,
            self,
            pending,
            &mut list,
            self.expiry,
            &crate::clock::unix_now,
        )
        .await?)
    }

    /// Deletes what no live generation in the bucket references
    /// ([`super::gc`]), holding the lease.
    pub async fn collect_garbage(&self) -> Result<Collected, PublishError> {
        Fence::hold(self).await?;
        let key = self.public_key().await?;
        Ok(gc::collect(
            &self.bucket,
            &key,
            self,
            crate::store::KEEP_GENERATIONS,
            self.grace,
            std::time::SystemTime::now(),
        )
        .await?)
    }

    /// Renews the lease when a third of it is gone (takes it when this
    /// process has none yet); returns its expiry.
    async fn hold_lease(&self, now: u64) -> Result<u64, LeaseError> {
        let ttl = self.ttl.as_secs();
        let mut held = self.lease.lock().await;
        match held.as_mut() {
            Some(lease) if lease.expires_at() > now + ttl * 2 / 3 => {}
            Some(lease) => lease::renew(&self.bucket, lease, ttl, now)
                .await
                .inspect_err(|_| {
                    *held = None;
                })?,
            None => {
                *held = Some(
                    lease::acquire(&self.bucket, &self.holder, &self.node_lock, ttl, now).await?,
                );
            }
        }
        Ok(held.as_ref().map_or(0, Lease::expires_at))
    }
}

impl Fence for BucketWriter {
    fn hold(&self) -> futures::future::BoxFuture<'_, Result<Option<u64>, LeaseError>> {
        Box::pin(async move {
            match self.mode {
                LeaseMode::None => Ok(None),
                LeaseMode::Conditional => self.hold_lease(crate::clock::unix_now()).await.map(Some),
            }
        })
    }
}

impl BucketWriter {
    /// Until `stop`: keeps the lease and publishes each new local
    /// generation (a sync's, a hosted change's, a re-signing's), looking
    /// every `poll`. Failures are logged and retried; the pointer never
    /// moves backwards.
    pub async fn run(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut published: Option<u64> = None;
        // Whether `/health` shows a failure, until a round without one.
        let mut reported = false;
        let mut failures: u32 = 0;
        let mut collected_at: Option<std::time::Instant> = None;
        let mut proxy_rounds = ProxyRounds::default();
        loop {
            let local = {
                let store = Arc::clone(&self.store);
                tokio::task::spawn_blocking(move || {
                    let (_, dir) = store.current().ok()??;
                    crate::store::peek_manifest(&dir).ok().map(|p| p.version)
                })
                .await
                .ok()
                .flatten()
            };
            // Shutdown does not wait for an upload or a collection: the
            // pointer is written last, so dropping either midway is safe.
            let work = async {
                let outcome = if local.is_some() && local != published {
                    self.publish().await.map(|u| {
                        if let Uploaded::Switched {
                            version,
                            blobs,
                            bytes,
                        } = u
                        {
                            tracing::info!(
                                bucket = self.bucket.name(),
                                version,
                                blobs,
                                bytes,
                                "published a generation into the bucket"
                            );
                        }
                        published = local;
                    })
                } else {
                    Fence::hold(&*self)
                        .await
                        .map(drop)
                        .map_err(PublishError::from)
                };
                // The proxy's files, once the generation is out, on their
                // own back-off.
                let listed = match outcome {
                    Ok(()) => self.proxy_round(&mut proxy_rounds).await,
                    Err(_) => proxy_rounds.last(),
                };
                // Garbage, hourly, between uploads: never while one runs.
                let outcome = match outcome {
                    Ok(()) if collected_at.is_none_or(|t| t.elapsed() >= GC_EVERY) => {
                        collected_at = Some(std::time::Instant::now());
                        self.collect_garbage().await.map(|c| {
                            if c != Collected::default() {
                                tracing::info!(
                                    bucket = self.bucket.name(),
                                    manifests = c.manifests,
                                    blobs = c.blobs,
                                    bytes = c.bytes,
                                    "removed what no live generation in the bucket references"
                                );
                            }
                        })
                    }
                    other => other,
                };
                (outcome, listed)
            };
            let (outcome, listed) = tokio::select! {
                done = work => done,
                () = stop.cancelled() => break,
            };
            let lease_until = self.lease.lock().await.as_ref().map(Lease::expires_at);
            self.with_status(|s| {
                s.lease_until = lease_until;
                s.published = published.or(s.published);
            });
            if let Err(e) = &outcome {
                tracing::error!("bucket: {e}");
            }
            let problem = match (&outcome, &listed) {
                (Err(e), _) => Some(e.to_string()),
                (Ok(()), Err(e)) => Some(format!("the proxy's file list: {e}")),
                (Ok(()), Ok(())) => None,
            };
            match problem {
                None if reported => {
                    reported = false;
                    self.with_status(|s| s.error = None);
                    tracing::info!(bucket = self.bucket.name(), "bucket writes work again");
                }
                None => {}
                Some(problem) => {
                    reported = true;
                    let at = crate::clock::unix_now();
                    self.with_status(|s| s.error = Some((at, problem)));
                }
            }
            // A failure that repeats (a bucket down, a newer writer's
            // version) is retried less and less often, up to a minute:
            // each try may read the whole local manifest.
            let wait = if outcome.is_err() {
                failures = failures.saturating_add(1);
                self.retry_wait(failures)
            } else {
                failures = 0;
                self.poll
            };
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
        self.release().await;
    }

    /// Publishes the proxy's list when `rounds` allows it; the outcome of
    /// the last try otherwise, so a failure stays reported until a try
    /// succeeds.
    async fn proxy_round(&self, rounds: &mut ProxyRounds) -> Result<(), String> {
        if rounds
            .retry_at
            .is_some_and(|t| std::time::Instant::now() < t)
        {
            return rounds.last();
        }
        let listed = self.publish_proxied().await;
        match &listed {
            Ok(v) => {
                rounds.failures = 0;
                // Each list is the whole list, and every reader downloads
                // it: a busy proxy's new files are gathered for a while.
                rounds.retry_at = v.map(|_| std::time::Instant::now() + PROXY_LIST_EVERY);
                if let Some(version) = v {
                    tracing::info!(
                        bucket = self.bucket.name(),
                        version,
                        "published the pull-through proxy's file list into the bucket"
                    );
                }
            }
            Err(e) => {
                tracing::error!("bucket: the proxy's file list: {e}");
                rounds.failures = rounds.failures.saturating_add(1);
                rounds.retry_at =
                    Some(std::time::Instant::now() + self.retry_wait(rounds.failures));
            }
        }
        rounds.error = listed.as_ref().err().map(ToString::to_string);
        rounds.last()
    }

    /// The wait after `failures` failures in a row: `poll`, doubled each
    /// time, up to [`MAX_RETRY_WAIT`].
    fn retry_wait(&self, failures: u32) -> Duration {
        (self.poll * 2u32.saturating_pow(failures.min(10))).min(MAX_RETRY_WAIT)
    }

    /// Gives the lease up, so the next writer need not wait for it to lapse.
    pub async fn release(&self) {
        if let Some(lease) = self.lease.lock().await.take()
            && let Err(e) = lease::release(&self.bucket, lease).await
        {
            tracing::warn!("bucket lease not released ({e}); it lapses on its own");
        }
    }
}
