//! Fetching and verifying one package: its signed record, then every
//! tarball it names that is not stored yet. Nothing here touches the served
//! tree; the result is a [`PackageUpdate`] that publication applies.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::Failure;
use crate::registry::{self, PackageName, PublicKey, is_valid_version, proto};
use crate::store::db::{self, PackageState};
use crate::store::{self, Db, FileRef, Store};
use crate::tarball;
use crate::upstream::{Fetched, Upstream, Validators};

/// Largest `/packages/NAME` body accepted from upstream.
const PACKAGE_LIMIT: u64 = 16 << 20;

/// What a package task needs; cheap to clone.
#[derive(Clone)]
pub(super) struct Ctx {
    pub store: Arc<Store>,
    pub db: Db,
    pub upstream: Upstream,
    pub key: PublicKey,
    pub repository: Arc<str>,
    pub limits: Arc<tarball::Limits>,
    /// Tarball bodies held in memory between download and storage.
    pub tarball_slots: Arc<Semaphore>,
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
    fn failed(name: &PackageName, version: Option<&str>, reason: String) -> Self {
        Self {
            name: name.to_string(),
            deps: vec![],
            update: None,
            fetched: 0,
            reused: 0,
            failures: vec![Failure {
                package: name.to_string(),
                version: version.map(str::to_owned),
                reason,
            }],
        }
    }
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("internal error: worker task failed: {e}"))
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
                Err(e) => return Outcome::failed(&name, None, e.to_string()),
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
                Ok(None) => return Outcome::failed(&name, None, format!("{url}: unexpected 304")),
                Err(reason) => return Outcome::failed(&name, None, reason),
            },
            Err(reason) => return Outcome::failed(&name, None, reason),
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
                reason: format!("{url}: release has an invalid version string; skipped"),
            });
            continue;
        }
        let outer: [u8; 32] = match release.outer_checksum.as_deref().map(<[u8; 32]>::try_from) {
            Some(Ok(sha)) => sha,
            _ => {
                outcome.failures.push(Failure {
                    package: name.to_string(),
                    version: Some(version),
                    reason: format!("{url}: signed record has no 32-byte outer_checksum; skipped"),
                });
                continue;
            }
        };
        wanted.push((version.clone(), outer, release.inner_checksum.clone()));
    }
    // Reuse a stored tarball only if it still hashes to its name: a damaged
    // blob is removed and fetched again instead of being linked onwards.
    let store = ctx.store.clone();
    let shas: Vec<[u8; 32]> = wanted.iter().map(|w| w.1).collect();
    let intact = match blocking(move || {
        shas.iter()
            .map(|sha| store.blob_is_intact(sha))
            .collect::<Result<Vec<bool>, _>>()
    })
    .await
    {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Outcome::failed(&name, None, e.to_string()),
        Err(e) => return Outcome::failed(&name, None, e),
    };
    for ((version, outer, inner), intact) in wanted.iter().zip(intact) {
        if intact {
            outcome.reused += 1;
        } else {
            downloads.spawn(fetch_tarball(
                ctx.clone(),
                name.clone(),
                version.clone(),
                *outer,
                inner.clone(),
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
            .map(|(v, sha, _)| store.blob_ref(&sha).map(|r| (v, r)))
            .collect::<Result<Vec<_>, _>>()
    })
    .await;
    let releases = match sized {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Outcome::failed(&name, None, e.to_string()),
        Err(e) => return Outcome::failed(&name, None, e),
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
) -> Result<Option<(proto::package::Package, FileRef, Option<Validators>)>, String> {
    let path = store::package_path(name);
    let url = ctx.upstream.url(&path);
    let (bytes, new_validators) = match ctx.upstream.get(&path, validators, PACKAGE_LIMIT).await {
        Err(e) => return Err(format!("{e}; kept the last good copy")),
        Ok(Fetched::NotFound) => return Err(format!("{url}: not found (404) upstream")),
        Ok(Fetched::NotModified) => {
            let Some(current) = current else {
                return Err(format!("{url}: unexpected 304"));
            };
            let store = ctx.store.clone();
            (
                blocking(move || store.read_blob(&current.sha256))
                    .await?
                    .map_err(|e| e.to_string())?,
                None,
            )
        }
        Ok(Fetched::Body { body, validators }) => (body, Some(validators)),
    };
    let from_store = new_validators.is_none();
    let (key, repo, n, store) = (
        ctx.key.clone(),
        ctx.repository.clone(),
        name.clone(),
        ctx.store.clone(),
    );
    let verified = blocking(move || {
        let package = registry::verify_package(&bytes, &key, &repo, n.as_str())
            .map_err(|e| e.to_string())?
            .into_inner();
        let record = store.put_bytes(&bytes).map_err(|e| e.to_string())?;
        Ok::<_, String>((package, record))
    })
    .await?;
    match verified {
        Ok((package, record)) => Ok(Some((package, record, new_validators))),
        Err(e) if from_store => {
            tracing::warn!(package = %name, "stored record does not verify ({e}); fetching it again");
            Ok(None)
        }
        Err(e) => Err(format!("{url}: {e}; not stored, kept the last good copy")),
    }
}

async fn fetch_tarball(
    ctx: Ctx,
    name: PackageName,
    version: String,
    outer: [u8; 32],
    inner: Vec<u8>,
) -> Result<(), Failure> {
    let path = store::tarball_path(&name, &version);
    let url = ctx.upstream.url(&path);
    let fail = |reason: String| Failure {
        package: name.to_string(),
        version: Some(version.clone()),
        reason,
    };
    let _slot = ctx
        .tarball_slots
        .acquire()
        .await
        .map_err(|e| fail(format!("internal error: {e}")))?;
    let body = match ctx
        .upstream
        .get(&path, &Validators::default(), ctx.limits.max_tarball)
        .await
    {
        Ok(Fetched::Body { body, .. }) => body,
        Ok(Fetched::NotFound) => return Err(fail(format!("{url}: not found (404) upstream"))),
        Ok(Fetched::NotModified) => return Err(fail(format!("{url}: unexpected 304"))),
        Err(e) => return Err(fail(e.to_string())),
    };
    let (store, limits, n, v) = (
        ctx.store.clone(),
        ctx.limits.clone(),
        name.clone(),
        version.clone(),
    );
    let stored = blocking(move || -> Result<(), String> {
        let expected = tarball::Expected {
            name: n.as_str(),
            version: &v,
            outer_checksum: &outer,
            inner_checksum: Some(&inner),
        };
        tarball::verify(&body, &expected, &limits).map_err(|e| e.to_string())?;
        store.put_blob(&outer, &body).map_err(|e| e.to_string())
    })
    .await
    .map_err(&fail)?;
    if let Err(reason) = stored {
        return Err(fail(format!("{url}: {reason}; not stored")));
    }
    Ok(())
}
