//! `hexmirror verify`: checks a served tree against its signed manifest,
//! locally (the data directory) or remotely (over HTTP, like a client).
//! Fails on a bad signature, an expired manifest (a frozen mirror) and a
//! version lower than the last one accepted (a rollback).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use crate::clock::unix_now;
use crate::manifest::{self, FileEntry, Manifest, ManifestError, ManifestPublicKey, Report};
use crate::store::{MANIFEST_DELTA_FILE, MANIFEST_FILE};
use crate::upstream::{Fetched, Upstream, Validators};

/// Why verification could not even compare files.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The manifest could not be read.
    #[error("cannot read the manifest {where_}: {reason}")]
    Read {
        /// File or URL.
        where_: String,
        /// Why.
        reason: String,
    },
    /// The manifest was refused (signature, expiry, rollback).
    #[error("manifest {where_}: {source}")]
    Manifest {
        /// File or URL.
        where_: String,
        /// Why.
        source: ManifestError,
    },
    /// The state database could not be read.
    #[error("cannot read what the database records as published: {0}")]
    Database(#[from] crate::store::DbError),
    /// The rollback state file could not be read or written.
    #[error("verify state {}: {reason}", path.display())]
    State {
        /// The state file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The outcome of a verification that got as far as comparing files.
#[derive(Debug)]
pub struct Verification {
    /// The verified manifest.
    pub manifest: Manifest,
    /// File by file comparison.
    pub report: Report,
    /// False for remote checks, which cannot list files the manifest omits.
    pub extra_checked: bool,
    /// Files of releases the database records as published that the
    /// generation does not hold (local checks only; sorted).
    pub lost: Vec<String>,
}

impl Verification {
    /// True when every file matches and nothing recorded is lost.
    pub fn is_clean(&self) -> bool {
        self.report.is_clean() && self.lost.is_empty()
    }
}

/// The record and tarballs of every release the database records as
/// published: mirrored packages, and hosted releases of `repositories`.
fn recorded_paths(data_dir: &Path, repositories: &[String]) -> Result<Vec<String>, VerifyError> {
    let Some(db) = crate::store::Db::open_read_only(data_dir)? else {
        return Ok(Vec::new());
    };
    let (mirrored, hosted) = db.call_blocking(|c| {
        Ok((
            crate::store::db::packages(c)?,
            crate::hosted::db::all_releases(c)?,
        ))
    })?;
    let mut paths = Vec::new();
    for (name, state) in mirrored {
        for version in &state.versions {
            paths.push(format!("tarballs/{name}-{version}.tar"));
        }
        paths.push(format!("packages/{name}"));
    }
    for row in hosted
        .iter()
        .filter(|r| repositories.contains(&r.repository))
    {
        let (repo, name) = (&row.repository, &row.package);
        paths.push(format!("repos/{repo}/tarballs/{name}-{}.tar", row.version));
        paths.push(format!("repos/{repo}/packages/{name}"));
    }
    paths.sort();
    paths.dedup();
    Ok(paths)
}

/// The last manifest version accepted, kept in a small text file.
fn read_state(path: &Path) -> Result<Option<u64>, VerifyError> {
    match std::fs::read_to_string(path) {
        Ok(s) => s.trim().parse().map(Some).map_err(|_| VerifyError::State {
            path: path.to_owned(),
            reason: format!(
                "{:?} is not a version number; delete the file to start over",
                s.trim()
            ),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(VerifyError::State {
            path: path.to_owned(),
            reason: e.to_string(),
        }),
    }
}

fn write_state(path: &Path, version: u64) -> Result<(), VerifyError> {
    let fail = |e: std::io::Error| VerifyError::State {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{version}\n")).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

fn check_manifest(
    bytes: &[u8],
    delta: Option<&[u8]>,
    key: &ManifestPublicKey,
    state: &Path,
    where_: &str,
) -> Result<Manifest, VerifyError> {
    let last = read_state(state)?;
    manifest::verify_with_delta(bytes, delta, key, unix_now(), last).map_err(|source| {
        VerifyError::Manifest {
            where_: where_.to_owned(),
            source,
        }
    })
}

/// Hashes every file under `root` except the manifest and its delta.
fn scan(root: &Path) -> Result<BTreeMap<String, FileEntry>, crate::store::StoreError> {
    let mut out = BTreeMap::new();
    for rel in crate::store::list_files(root)? {
        let path = root.join(&rel);
        let bytes = std::fs::read(&path).map_err(|source| crate::store::StoreError {
            action: "read",
            path,
            source,
        })?;
        out.insert(
            rel,
            FileEntry {
                sha256: hex::encode(Sha256::digest(&bytes)),
                size: bytes.len() as u64,
            },
        );
    }
    Ok(out)
}

/// Verifies the generation `current` points to in `data_dir`, and that it
/// holds every release the database records as published (of the mirror and
/// of `repositories`).
pub async fn local(
    data_dir: &Path,
    key: &ManifestPublicKey,
    state: &Path,
    repositories: &[String],
) -> Result<Verification, VerifyError> {
    let root = data_dir.join("current");
    let manifest_path = root.join(MANIFEST_FILE);
    let where_ = manifest_path.display().to_string();
    // Resolve `current` once, so the whole check sees one generation.
    let root = std::fs::canonicalize(&root).map_err(|e| VerifyError::Read {
        where_: where_.clone(),
        reason: format!("{e} (has a sync published anything yet?)"),
    })?;
    let (bytes, delta) = crate::store::read_manifest(&root).map_err(|e| VerifyError::Read {
        where_: where_.clone(),
        reason: e.to_string(),
    })?;
    let manifest = check_manifest(&bytes, delta.as_deref(), key, state, &where_)?;
    let scan_root = root.clone();
    let actual = tokio::task::spawn_blocking(move || scan(&scan_root))
        .await
        .map_err(|e| VerifyError::Read {
            where_: root.display().to_string(),
            reason: e.to_string(),
        })?
        .map_err(|e| VerifyError::Read {
            where_: root.display().to_string(),
            reason: e.to_string(),
        })?;
    let (dir, repos) = (data_dir.to_owned(), repositories.to_vec());
    let recorded = tokio::task::spawn_blocking(move || recorded_paths(&dir, &repos))
        .await
        .map_err(|e| VerifyError::Read {
            where_: data_dir.display().to_string(),
            reason: e.to_string(),
        })??;
    let lost = recorded
        .into_iter()
        .filter(|p| !manifest.files.contains_key(p))
        .collect();
    conclude(manifest, &actual, state, true, lost)
}

/// Verifies a mirror over HTTP: the manifest, then every file it lists.
pub async fn remote(
    upstream: Upstream,
    key: &ManifestPublicKey,
    state: &Path,
) -> Result<Verification, VerifyError> {
    let where_ = upstream.url(MANIFEST_FILE);
    let read_err = |reason: String| VerifyError::Read {
        where_: where_.clone(),
        reason,
    };
    let bytes = match upstream
        .get(MANIFEST_FILE, &Validators::default(), 1 << 30)
        .await
    {
        Ok(Fetched::Body { body, .. }) => body,
        Ok(_) => return Err(read_err("not found".into())),
        Err(e) => return Err(read_err(e.to_string())),
    };
    // The delta is there once a hosted change patched the generation.
    let delta = match upstream
        .get(MANIFEST_DELTA_FILE, &Validators::default(), 1 << 30)
        .await
    {
        Ok(Fetched::Body { body, .. }) => Some(body),
        Ok(_) => None,
        Err(e) => return Err(read_err(format!("{MANIFEST_DELTA_FILE}: {e}"))),
    };
    let manifest = check_manifest(&bytes, delta.as_deref(), key, state, &where_)?;
    let mut actual = BTreeMap::new();
    let mut tasks = JoinSet::new();
    for path in manifest.files.keys().cloned() {
        let upstream = upstream.clone();
        tasks.spawn(async move {
            let got = upstream.get(&path, &Validators::default(), 64 << 20).await;
            (path, got)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let Ok((path, got)) = joined else { continue };
        if let Ok(Fetched::Body { body, .. }) = got {
            actual.insert(
                path,
                FileEntry {
                    sha256: hex::encode(Sha256::digest(&body)),
                    size: body.len() as u64,
                },
            );
        }
    }
    conclude(manifest, &actual, state, false, Vec::new())
}

/// Compares, and remembers the version as accepted only when all matched.
fn conclude(
    manifest: Manifest,
    actual: &BTreeMap<String, FileEntry>,
    state: &Path,
    extra_checked: bool,
    lost: Vec<String>,
) -> Result<Verification, VerifyError> {
    let verification = Verification {
        report: manifest::diff(&manifest, actual),
        manifest,
        extra_checked,
        lost,
    };
    if verification.is_clean() {
        write_state(state, verification.manifest.version)?;
    }
    Ok(verification)
}

/// Default rollback-state file for a remote mirror, one per URL.
pub fn default_remote_state(url: &str) -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    let id = hex::encode(&Sha256::digest(url.trim_end_matches('/').as_bytes())[..8]);
    base.join("hexmirror").join(format!("verify-{id}"))
}

/// Timeout for remote verification requests.
pub const REMOTE_TIMEOUT: Duration = Duration::from_secs(60);
