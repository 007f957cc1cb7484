//! Fetching and verifying one package: its signed record, then every
//! tarball it names that is not stored yet. Nothing here touches the served
//! tree; the result is a [`PackageUpdate`] that publication applies.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::Failure;
use crate::plan::FailureKind;
use crate::registry::{self, PackageName, PublicKey, RegistryError, is_valid_version, proto};
use crate::store::db::{self, PackageState};
use crate::store::{self, Db, DbError, FileRef, Store, StoreError};
use crate::tarball;
use crate::upstream::release::{self, ReleaseError, Sums};
use crate::upstream::{Fetched, Upstream, UpstreamError, Validators};

/// Largest `/packages/NAME` body accepted from upstream.
const PACKAGE_LIMIT: u64 = 16 << 20;

/// Why a package's record could not be mirrored this time. The last good
/// copy stays served.
#[derive(Debug, thiserror::Error)]
pub(super) enum FetchError {
    /// The upstream could not be reached or refused.
    #[error("{0}; kept the last good copy")]
    Upstream(#[from] UpstreamError),
    /// The upstream has no record for a package its index names.
    #[error("{url}: not found (404) upstream")]
    NotFound {
        /// Where it was asked for.
        url: String,
    },
    /// The upstream answered 304 where nothing could be reused.
    #[error("{url}: unexpected 304")]
    NotModified {
        /// Where it was asked for.
        url: String,
    },
    /// The record does not verify (signature, repository, name).
    #[error("{url}: {source}; not stored, kept the last good copy")]
    Refused {
        /// Where it came from.
        url: String,
        /// What failed.
        source: RegistryError,
    },
    /// The data directory failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The state database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A worker task died (a bug).
    #[error("internal error: worker task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl FetchError {
    /// Which check failed, for the quarantine.
    pub(super) fn kind(&self) -> FailureKind {
        match self {
            Self::Upstream(e) => e.kind(),
            Self::Refused { source, .. } => crate::plan::registry_failure(source),
            _ => FailureKind::Transport,
        }
    }
}

/// What a package task needs; cheap to clone.
#[derive(Clone)]
pub(super) struct Ctx {
    pub store: Arc<Store>,
    pub db: Db,
    pub upstream: Upstream,
    pub key: PublicKey,
    pub repository: Arc<str>,
    pub limits: Arc<tarball::Limits>,
    /// Largest registry file accepted once gunzipped.
    pub max_registry: u64,
    /// Tarball bodies held in memory between download and storage.
    pub tarball_slots: Arc<Semaphore>,
    /// The catalog, unless it could not be opened (the sync goes on).
    pub catalog: Option<crate::catalog::Catalog>,
    /// Tarball metadata for the catalog, written in batches.
    pub notes: Option<Arc<crate::catalog::NoteBatch>>,
}

/// A package whose record and every tarball are verified and stored.
#[derive(Debug, Clone)]
pub(super) struct PackageUpdate {
    pub record: FileRef,
    pub releases: Vec<(String, FileRef)>,
    pub state: PackageState,
    /// `None` when the upstream answered 304 (nothing new to remember).
    pub validators: Option<Validators>,
}

/// Result of working on one package.
pub(super) struct Outcome {
    pub name: String,
    pub deps: Vec<(String, Option<String>)>,
    pub update: Option<PackageUpdate>,
    pub fetched: u64,
    pub reused: u64,
    pub failures: Vec<Failure>,
}

impl Outcome {
    fn failed(
        name: &PackageName,
        version: Option<&str>,
        kind: FailureKind,
        error: impl std::fmt::Display,
    ) -> Self {
        Self {
            name: name.to_string(),
            deps: vec![],
            update: None,
            fetched: 0,
            reused: 0,
            failures: vec![Failure {
                package: name.to_string(),
                version: version.map(str::to_owned),
                kind,
                reason: error.to_string(),
            }],
        }
    }
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    tokio::task::spawn_blocking(f).await
}

/// Fetches (conditionally, when `current` holds the record) and verifies
/// `name`'s record and stores every tarball it names.
pub(super) async fn sync_package(
    ctx: Ctx,
    name: PackageName,
    current: Option<FileRef>,
    updated_at: Option<(i64, i32)>,
) -> Outcome {
    let url = ctx.upstream.url(&store::package_path(&name));
    let validators = match current {
        Some(_) => {
            let p = store::package_path(&name);
            match ctx.db.call(move |c| db::validators(c, &p)).await {
                Ok(v) => v,
                Err(e) => return Outcome::failed(&name, None, FailureKind::Transport, e),
            }
        }
        None => Validators::default(),
    };
    let (package, record, new_validators) =
        match fetch_record(&ctx, &name, current, &validators).await {
            Ok(Some(got)) => got,
            // The stored copy no longer verifies: ask for the record in full.
            Ok(None) => match fetch_record(&ctx, &name, None, &Validators::default()).await {
                Ok(Some(got)) => got,
                Ok(None) => {
                    return Outcome::failed(
                        &name,
                        None,
                        FailureKind::Transport,
                        FetchError::NotModified { url },
                    );
                }
                Err(e) => return Outcome::failed(&name, None, e.kind(), e),
            },
            Err(e) => return Outcome::failed(&name, None, e.kind(), e),
        };

    let deps: Vec<(String, Option<String>)> = package
        .releases
        .iter()
        .flat_map(|r| r.dependencies.iter())
        .map(|d| (d.package.clone(), d.repository.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut outcome = Outcome {
        name: name.to_string(),
        deps,
        update: None,
        fetched: 0,
        reused: 0,
        failures: vec![],
    };
    let mut wanted = Vec::with_capacity(package.releases.len());
    let mut downloads = JoinSet::new();
    for release in &package.releases {
        let version = release.version.clone();
        if !is_valid_version(&version) {
            outcome.failures.push(Failure {
                package: name.to_string(),
                version: Some(version),
                kind: FailureKind::Structure,
                reason: format!("{url}: release has an invalid version string; skipped"),
            });
            continue;
        }
        let sums = match Sums::of(release) {
            Some(sums) => sums,
            None => {
                outcome.failures.push(Failure {
                    package: name.to_string(),
                    version: Some(version),
                    kind: FailureKind::Checksum,
                    reason: format!("{url}: signed record has no 32-byte outer_checksum; skipped"),
                });
                continue;
            }
        };
        wanted.push((version.clone(), sums));
    }
    // Reuse a stored tarball only if it still hashes to its name: a damaged
    // blob is removed and fetched again instead of being linked onwards.
    let store = ctx.store.clone();
    let shas: Vec<[u8; 32]> = wanted.iter().map(|w| w.1.outer).collect();
    let intact = match blocking(move || {
        shas.iter()
            .map(|sha| store.blob_is_intact(sha))
            .collect::<Result<Vec<bool>, _>>()
    })
    .await
    {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Outcome::failed(&name, None, FailureKind::Transport, e),
        Err(e) => return Outcome::failed(&name, None, FailureKind::Transport, e),
    };
    for ((version, sums), intact) in wanted.iter().zip(intact) {
        if intact {
            outcome.reused += 1;
        } else {
            downloads.spawn(fetch_tarball(
                ctx.clone(),
                name.clone(),
                version.clone(),
                sums.clone(),
            ));
        }
    }
    while let Some(done) = downloads.join_next().await {
        match done {
            Ok(Ok(())) => outcome.fetched += 1,
            Ok(Err(f)) => outcome.failures.push(f),
            Err(e) => outcome.failures.push(Failure {
                package: name.to_string(),
                version: None,
                kind: FailureKind::Transport,
                reason: format!("internal error: download task failed: {e}"),
            }),
        }
    }
    if !outcome.failures.is_empty() {
        return outcome;
    }
    let store = ctx.store.clone();
    let sized = blocking(move || {
        wanted
            .into_iter()
            .map(|(v, sums)| store.blob_ref(&sums.outer).map(|r| (v, r)))
            .collect::<Result<Vec<_>, _>>()
    })
    .await;
    let releases = match sized {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Outcome::failed(&name, None, FailureKind::Transport, e),
        Err(e) => return Outcome::failed(&name, None, FailureKind::Transport, e),
    };
    outcome.update = Some(PackageUpdate {
        record,
        state: PackageState {
            updated_at,
            versions: package.releases.iter().map(|r| r.version.clone()).collect(),
            retired: crate::plan::retired_indexes(&package),
            deps: outcome.deps.clone(),
        },
        releases,
        validators: new_validators,
    });
    outcome
}

/// Fetches and verifies `name`'s record, conditionally on `validators` when
/// `current` is the stored copy. `Ok(None)`: the upstream said 304 but the
/// stored copy does not verify any more.
async fn fetch_record(
    ctx: &Ctx,
    name: &PackageName,
    current: Option<FileRef>,
    validators: &Validators,
) -> Result<Option<(proto::package::Package, FileRef, Option<Validators>)>, FetchError> {
    let path = store::package_path(name);
    let url = ctx.upstream.url(&path);
    let (bytes, new_validators) = match ctx.upstream.get(&path, validators, PACKAGE_LIMIT).await? {
        Fetched::NotFound => return Err(FetchError::NotFound { url }),
        Fetched::NotModified => {
            let Some(current) = current else {
                return Err(FetchError::NotModified { url });
            };
            let store = ctx.store.clone();
            (
                blocking(move || store.read_blob(&current.sha256)).await??,
                None,
            )
        }
        Fetched::Body { body, validators } => (body, Some(validators)),
    };
    let from_store = new_validators.is_none();
    let (key, repo, n, store, max) = (
        ctx.key.clone(),
        ctx.repository.clone(),
        name.clone(),
        ctx.store.clone(),
        ctx.max_registry,
    );
    let verified = blocking(move || {
        let package = match registry::verify_package_within(&bytes, &key, &repo, n.as_str(), max) {
            Ok(p) => p.into_inner(),
            Err(e) => return Ok(Err(e)),
        };
        let record = store.put_bytes(&bytes)?;
        Ok::<_, StoreError>(Ok((package, record)))
    })
    .await??;
    match verified {
        Ok((package, record)) => Ok(Some((package, record, new_validators))),
        Err(e) if from_store => {
            tracing::warn!(package = %name, "stored record does not verify ({e}); fetching it again");
            Ok(None)
        }
        Err(source) => Err(FetchError::Refused { url, source }),
    }
}

async fn fetch_tarball(
    ctx: Ctx,
    name: PackageName,
    version: String,
    sums: Sums,
) -> Result<(), Failure> {
    let fail = |kind: FailureKind, e: &dyn std::fmt::Display| Failure {
        package: name.to_string(),
        version: Some(version.clone()),
        kind,
        reason: e.to_string(),
    };
    let _slot = ctx
        .tarball_slots
        .acquire()
        .await
        .map_err(|e| fail(FailureKind::Transport, &format!("internal error: {e}")))?;
    let fetched = release::fetch_tarball(
        &ctx.upstream,
        &ctx.store,
        &name,
        &version,
        sums,
        Arc::clone(&ctx.limits),
    )
    .await;
    let (file, metadata) = fetched.map_err(|e: ReleaseError| fail(e.kind(), &e))?;
    // The catalog learns the tarball's metadata now, keyed by its hash: true
    // of these bytes whether or not this sync publishes them.
    if let Some(notes) = &ctx.notes {
        notes.note(file.sha256, &metadata).await;
    }
    Ok(())
}
