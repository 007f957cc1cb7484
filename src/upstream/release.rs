//! One release tarball from the upstream, verified against the checksums
//! its signed record gives and stored as a blob: what a sync and the
//! pull-through cache both do, written once. Nothing is stored unless it
//! verified (invariant 1), and the verification runs on the blocking pool.

use std::sync::Arc;

use super::{Fetched, Upstream, UpstreamError, Validators};
use crate::registry::PackageName;
use crate::store::{self, FileRef, Store, StoreError};
use crate::tarball::{self, Expected, Limits, TarballError};

/// The checksums of one release, from its verified package record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sums {
    /// SHA-256 of the whole tarball (also its blob name).
    pub outer: [u8; 32],
    /// SHA-256 of its contents, as the tarball's CHECKSUM file gives it.
    pub inner: Vec<u8>,
}

impl Sums {
    /// The sums of `release`; `None` when the record has no 32-byte outer
    /// checksum, which no tarball can then be checked against.
    pub fn of(release: &crate::registry::proto::package::Release) -> Option<Self> {
        let outer = <[u8; 32]>::try_from(release.outer_checksum.as_deref()?).ok()?;
        Some(Self {
            outer,
            inner: release.inner_checksum.clone(),
        })
    }
}

/// Why a release tarball was not stored. Nothing was stored in any case.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// The upstream could not be reached or refused.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The upstream has no such tarball.
    #[error("{url}: not found (404) upstream")]
    NotFound {
        /// Where it was asked for.
        url: String,
    },
    /// The upstream answered 304 to an unconditional request.
    #[error("{url}: unexpected 304 to an unconditional request")]
    NotModified {
        /// Where it was asked for.
        url: String,
    },
    /// The tarball does not match its signed record, or is unsafe.
    #[error("{url}: {source}; not stored")]
    Refused {
        /// Where it came from.
        url: String,
        /// What failed.
        source: TarballError,
    },
    /// The blob could not be written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The verification task died (a bug).
    #[error("{url}: the verification task failed: {source}")]
    Task {
        /// Where it came from.
        url: String,
        /// The task's error.
        source: tokio::task::JoinError,
    },
}

impl ReleaseError {
    /// Which check failed, for the quarantine.
    pub fn kind(&self) -> crate::plan::FailureKind {
        use crate::plan::{FailureKind, tarball_failure};
        match self {
            Self::Upstream(e) => e.kind(),
            Self::NotFound { .. } | Self::NotModified { .. } => FailureKind::Transport,
            Self::Refused { source, .. } => tarball_failure(source),
            // Local trouble is not the package's fault; it is retried anyway.
            Self::Store(_) | Self::Task { .. } => FailureKind::Transport,
        }
    }
}

/// Fetches `name`-`version`.tar, checks it against `sums` (outer and inner
/// checksum, structure, `limits`) and stores it as a blob; returns the blob
/// and the tarball's metadata (for the catalog).
pub async fn fetch_tarball(
    upstream: &Upstream,
    store: &Arc<Store>,
    name: &PackageName,
    version: &str,
    sums: Sums,
    limits: Arc<Limits>,
) -> Result<(FileRef, tarball::Metadata), ReleaseError> {
    let path = store::tarball_path(name, version);
    let url = upstream.url(&path);
    let body = match upstream
        .get(&path, &Validators::default(), limits.max_tarball)
        .await?
    {
        Fetched::Body { body, .. } => body,
        Fetched::NotFound => return Err(ReleaseError::NotFound { url }),
        Fetched::NotModified => return Err(ReleaseError::NotModified { url }),
    };
    let (store, name, version, task_url) = (
        Arc::clone(store),
        name.clone(),
        version.to_owned(),
        url.clone(),
    );
    tokio::task::spawn_blocking(move || {
        let expected = Expected {
            name: name.as_str(),
            version: &version,
            outer_checksum: &sums.outer,
            inner_checksum: Some(&sums.inner),
        };
        let verified = tarball::verify(&body, &expected, &limits)
            .map_err(|source| ReleaseError::Refused { url, source })?;
        store.put_blob(&sums.outer, &body)?;
        let file = FileRef {
            sha256: sums.outer,
            size: body.len() as u64,
        };
        Ok((file, verified.metadata))
    })
    .await
    .map_err(|source| ReleaseError::Task {
        url: task_url,
        source,
    })?
}
