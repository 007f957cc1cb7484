//! The writer for hosted packages: validates one change (publish, replace,
//! revert, retire, docs), publishes it as a new generation that differs from
//! the current one only in the package's files, the repository's `/names`
//! and `/versions`, and then records it in the database.
//!
//! Order of work, and why: the generation goes live first and the database
//! row second. If the process dies in between, the client never got its
//! answer, and the next change of that package (or the next sync) rebuilds
//! the record from the database, where the unacknowledged release does not
//! exist. A database failure after the switch publishes the previous file
//! list again, so a failed change never stays visible.
//!
//! Runs on the blocking pool, one change at a time: the API serialises calls
//! and the data directory's writer lock keeps a sync out.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use serde_json::{Value, json};

use super::db::{self as hdb, AuditEntry, ReleaseRow};
use super::rules::{self, Asker, Rejection, Repositories, Source, Window};
use crate::clock::unix_now;
use crate::config::{Config, RepositoryConfig};
use crate::index::encoded::{EncodedNames, EncodedVersions};
use crate::index::hosted::{self as record, Retirement};
use crate::manifest::{ManifestKey, UpstreamState};
use crate::registry::{self, SigningKey};
use crate::store::{Db, FileMap, FileRef, GenerationError, Store, db};
use crate::tarball::{self, Limits};

/// How long a change waits for a running sync to release the data directory.
const LOCK_WAIT: Duration = Duration::from_secs(30);
/// Longest accepted `metadata.config` in a published tarball.
const MAX_METADATA: u64 = 128 * 1024;
/// How a client should read a failed change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input is not acceptable (HTTP 422).
    Invalid,
    /// The package, release or repository does not exist (HTTP 404).
    NotFound,
    /// The caller may not do this (HTTP 403).
    Forbidden,
    /// A sync holds the data directory (HTTP 503); try again.
    Busy,
    /// Disk, database or key trouble (HTTP 500); try again once fixed.
    Internal,
}

/// Why a change was refused or failed. Nothing was changed in either case.
#[derive(Debug, thiserror::Error)]
pub enum HostedError {
    /// A rule refused the change (boxed: the variant is large and rare).
    #[error(transparent)]
    Rejected(Box<Rejection>),
    /// The uploaded package tarball is refused.
    #[error("package tarball: {0}")]
    Tarball(#[from] tarball::TarballError),
    /// A sync holds the data directory.
    #[error("a sync is running and holds the data directory; retry in a minute")]
    Busy,
    /// The data directory failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The served generation could not be read or replaced.
    #[error(transparent)]
    Generation(#[from] GenerationError),
    /// The state database failed.
    #[error(transparent)]
    Db(#[from] crate::store::DbError),
    /// The manifest key could not be read or made.
    #[error(transparent)]
    Key(#[from] crate::keyfiles::KeyFileError),
    /// No key to sign our repositories with (config loading refuses this).
    #[error("[signing] key is not configured; every [[repository]] needs it")]
    NoSigningKey,
    /// A served index file does not verify with the key that should sign it.
    #[error(
        "the served {} does not verify ({source}); if [signing] key or the upstream key changed, run `hexmirror sync` to rebuild it",
        path.display()
    )]
    ServedIndex {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: registry::RegistryError,
    },
    /// A served file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The writer's blocking task stopped before it finished (a bug).
    #[error("the writer task stopped before finishing: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// An account change (an organization's rename) was refused.
    #[error(transparent)]
    Account(#[from] crate::accounts::AccountError),
}

impl From<Rejection> for HostedError {
    fn from(r: Rejection) -> Self {
        Self::Rejected(Box::new(r))
    }
}

impl HostedError {
    /// How a client should read it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Rejected(r) => match r.kind() {
                rules::Kind::Invalid => ErrorKind::Invalid,
                rules::Kind::NotFound => ErrorKind::NotFound,
                rules::Kind::Forbidden => ErrorKind::Forbidden,
            },
            Self::Tarball(_) => ErrorKind::Invalid,
            Self::Busy => ErrorKind::Busy,
            Self::Account(crate::accounts::AccountError::NoOrg(_)) => ErrorKind::NotFound,
            Self::Account(
                crate::accounts::AccountError::Db(_) | crate::accounts::AccountError::Sql(_),
            ) => ErrorKind::Internal,
            Self::Account(_) => ErrorKind::Invalid,
            _ => ErrorKind::Internal,
        }
    }
}

/// The limits an uploaded package or docs tarball must meet.
pub fn upload_limits(config: &Config) -> Limits {
    Limits {
        max_tarball: config.api.max_tarball_bytes,
        max_metadata: MAX_METADATA,
        ..Limits::default()
    }
}

/// An uploaded package tarball, checked once (size, structure, checksums,
/// metadata, contents) by whoever received it, so the writer never inflates
/// it again while every other change waits.
#[derive(Debug, Clone)]
pub struct Upload {
    bytes: Vec<u8>,
    verified: tarball::Verified,
}

impl Upload {
    /// Checks `bytes` against [`upload_limits`]. Blocking (it inflates).
    pub fn inspect(bytes: Vec<u8>, config: &Config) -> Result<Self, HostedError> {
        let verified = tarball::inspect(&bytes, &upload_limits(config))?;
        Ok(Self { bytes, verified })
    }

    /// The package name its metadata gives.
    pub fn name(&self) -> &str {
        &self.verified.metadata.name
    }

    /// The version its metadata gives.
    pub fn version(&self) -> &str {
        &self.verified.metadata.version
    }

    /// SHA-256 of the whole tarball.
    pub fn outer_checksum(&self) -> [u8; 32] {
        self.verified.outer_checksum
    }
}

/// An uploaded docs tarball, checked once (gzip, tar structure, paths,
/// limits) by whoever received it, before the change waits for the writer.
#[derive(Debug, Clone)]
pub struct DocsUpload(Vec<u8>);

impl DocsUpload {
    /// Checks `bytes` against [`upload_limits`]. Blocking (it inflates).
    pub fn inspect(bytes: Vec<u8>, config: &Config) -> Result<Self, HostedError> {
        tarball::check_docs(&bytes, &upload_limits(config)).map_err(Rejection::Docs)?;
        Ok(Self(bytes))
    }
}

/// Who asks for a change, for owners and the audit log.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The user the token acts for.
    pub user: String,
    /// The token's public id (`None` for local tools).
    pub token: Option<String>,
    /// The client address.
    pub client: Option<String>,
    /// Whether the token has admin rights over the package (owners bypass).
    pub admin: bool,
}

/// One change to a hosted package.
#[derive(Debug, Clone)]
pub enum Change {
    /// A tarball to publish, replacing an existing release when allowed.
    Publish {
        /// The package tarball, already inspected.
        upload: Upload,
        /// `?replace=true`.
        replace: bool,
    },
    /// Remove a release (within the revert window).
    Revert {
        /// Package.
        name: String,
        /// Version.
        version: String,
    },
    /// Retire (`Some`) or unretire (`None`) a release.
    Retire {
        /// Package.
        name: String,
        /// Version.
        version: String,
        /// Reason and message.
        retirement: Option<(Retirement, String)>,
    },
    /// Upload (`Some`) or remove (`None`) a release's documentation tarball.
    Docs {
        /// Package.
        name: String,
        /// Version.
        version: String,
        /// The gzipped docs tarball, already checked.
        tarball: Option<DocsUpload>,
    },
}

impl Change {
    /// The package it changes.
    pub fn package(&self) -> &str {
        match self {
            Self::Publish { upload, .. } => upload.name(),
            Self::Revert { name, .. } | Self::Retire { name, .. } | Self::Docs { name, .. } => name,
        }
    }

    fn action(&self) -> &'static str {
        match self {
            Self::Publish { replace: false, .. } => "release.publish",
            Self::Publish { replace: true, .. } => "release.publish_replace",
            Self::Revert { .. } => "release.revert",
            Self::Retire {
                retirement: Some(_),
                ..
            } => "release.retire",
            Self::Retire { .. } => "release.unretire",
            Self::Docs {
                tarball: Some(_), ..
            } => "docs.publish",
            Self::Docs { .. } => "docs.revert",
        }
    }
}

/// What a change produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The release after the change (`None` after a revert).
    pub release: Option<ReleaseRow>,
    /// True when a new release was inserted (HTTP 201 rather than 200).
    pub created: bool,
    /// The generation that shows it.
    pub generation: u64,
}

/// How a change that could not be recorded is taken back.
enum Undo<'a> {
    /// Patch the generation again with the files it had.
    Patch(&'a crate::store::Patchable),
    /// Publish the previous complete file list again.
    Full(FileMap, UpstreamState),
}

/// A served file by (device, inode, size, modification time): a hard link
/// to its blob, so one inode is one content. Size and time guard against an
/// inode number that `gc` freed and a new blob reused.
type FileId = (u64, u64, u64, i64, i64);

/// The value in `a`, copied only if someone else still holds it.
fn owned<T: Clone>(a: Arc<T>) -> T {
    Arc::try_unwrap(a).unwrap_or_else(|a| (*a).clone())
}

/// The identity of a file (`None`: absent).
fn file_id(path: &std::path::Path) -> Result<Option<FileId>, HostedError> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some((
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(HostedError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Index files decoded once, by repository, valid while the served file is
/// the same inode.
#[derive(Debug)]
struct Decoded<T>(Mutex<BTreeMap<String, (FileId, Arc<T>)>>);

impl<T> Default for Decoded<T> {
    fn default() -> Self {
        Self(Mutex::new(BTreeMap::new()))
    }
}

impl<T> Decoded<T> {
    /// The decoded `path` (`None`: absent), from the cache when its inode is
    /// unchanged, else read and `decode`d. With `take`, the entry leaves the
    /// cache so the caller may change it without copying.
    fn get(
        &self,
        repo: &str,
        path: &std::path::Path,
        take: bool,
        decode: impl FnOnce(&[u8]) -> Result<T, HostedError>,
    ) -> Result<Option<Arc<T>>, HostedError> {
        let Some(id) = file_id(path)? else {
            return Ok(None);
        };
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if cache.get(repo).is_some_and(|(seen, _)| *seen == id) {
            return Ok(if take {
                cache.remove(repo).map(|(_, v)| v)
            } else {
                cache.get(repo).map(|(_, v)| Arc::clone(v))
            });
        }
        drop(cache);
        let bytes = std::fs::read(path).map_err(|source| HostedError::Read {
            path: path.to_owned(),
            source,
        })?;
        let value = Arc::new(decode(&bytes)?);
        if !take {
            let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
            cache.insert(repo.to_owned(), (id, Arc::clone(&value)));
        }
        Ok(Some(value))
    }

    /// Remembers `value` as the content of the blob at `blob`.
    fn put(&self, repo: &str, blob: &std::path::Path, value: T) {
        if let Ok(Some(id)) = file_id(blob) {
            let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
            cache.insert(repo.to_owned(), (id, Arc::new(value)));
        }
    }
}

/// Where index file `file` of our repository `repo` is served in `tree`.
fn index_path(tree: &std::path::Path, repo: &str, file: &str) -> std::path::PathBuf {
    tree.join(format!("repos/{repo}/{file}"))
}

/// Package name → its versions, as `/versions` lists them.
type VersionMap = BTreeMap<String, Vec<String>>;

/// The writer; one per serving process.
#[derive(Debug)]
pub struct Writer {
    store: Store,
    db: Db,
    /// The upstream `/versions` last decoded.
    upstream: Decoded<VersionMap>,
    /// Our repositories' `/names` and `/versions` as last read or written,
    /// kept as one encoded entry per package: a change neither decodes them
    /// again nor re-encodes the entries it does not touch (at hex.pm scale
    /// that was most of the work of a publish).
    names: Decoded<EncodedNames>,
    versions: Decoded<EncodedVersions>,
}

impl Writer {
    /// A writer over the data directory's store and database.
    pub fn new(store: Store, db: Db) -> Self {
        Self {
            store,
            db,
            upstream: Decoded::default(),
            names: Decoded::default(),
            versions: Decoded::default(),
        }
    }

    /// Finishes a patch of the served generation that a crash interrupted
    /// (see [`Store::roll_forward`]). Skipped while a sync holds the data
    /// directory: its generation replaces the patched one anyway. Blocking.
    pub fn recover(&self, config: &Config) {
        let patched = self
            .store
            .current_link()
            .join(crate::store::MANIFEST_DELTA_FILE)
            .is_file();
        if !patched {
            return;
        }
        let Ok(Some(_lock)) = self.store.try_lock() else {
            return;
        };
        let Ok(key) = load_manifest_key(config) else {
            return;
        };
        match self.store.roll_forward(&key.public()) {
            Ok(0) => {}
            // The manifest key was rotated: the next change or the re-sign
            // check rebuilds the file list from the generation itself.
            Err(crate::store::GenerationError::NotPatchable(
                crate::store::NotPatchable::OtherKey { .. },
            )) => {}
            Ok(n) => tracing::warn!(
                files = n,
                "finished an interrupted hosted change in the served generation"
            ),
            Err(e) => tracing::error!(
                "the served generation's delta cannot be applied ({e}); `hexmirror verify` will \
                 report the difference until the next sync publishes a complete generation"
            ),
        }
    }

    /// Decodes the index files a change reads (the upstream `/versions`,
    /// each repository's `/names` and `/versions`) ahead of the first
    /// change, so it does not pay for them. Blocking; needs no lock: the
    /// cache is keyed by the served files' inodes.
    pub fn warm(&self, config: &Config) {
        let started = Instant::now();
        let Ok(Some((_, dir))) = self.store.current() else {
            return;
        };
        let _ = self.upstream_versions(config, Some(&dir));
        let Some(key) = config.signing.key.clone() else {
            return;
        };
        for repo in &config.repositories {
            let ctx = Ctx {
                writer: self,
                config,
                repo,
                key: &key,
                tree: Some(&dir),
                now: 0,
            };
            let _ = ctx.own_names(&repo.name, false);
            let _ = ctx.own_versions(&repo.name, false);
        }
        tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            "index decoded for hosted changes"
        );
    }

    /// Validates and applies `change` to repository `repo`. Blocking.
    pub fn apply(
        &self,
        config: &Config,
        repo: &str,
        change: Change,
        actor: &Actor,
    ) -> Result<Outcome, HostedError> {
        let repo_cfg = config
            .repositories
            .iter()
            .find(|r| r.name == repo)
            .ok_or_else(|| Rejection::UnknownRepository(repo.to_owned()))?;
        let key = config
            .signing
            .key
            .clone()
            .ok_or(HostedError::NoSigningKey)?;
        let asked = Instant::now();
        let manifest_key = load_manifest_key(config)?;
        let public = manifest_key.public();
        let _lock = self.lock()?;
        // A configuration older than an organization's rename or deletion
        // (the CLI changed the database) must not write under the old name.
        if repo_cfg.org
            && self
                .db_call(|c| crate::accounts::db::org(c, repo))?
                .is_none()
        {
            return Err(Rejection::UnknownRepository(repo.to_owned()).into());
        }
        let began = Instant::now();
        // The usual case patches the served generation in place and signs a
        // delta; no current generation, a delta grown too large or an
        // unusable one publish a complete generation instead.
        let patchable = match self.store.patchable(&public) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("manifest delta unusable ({e}); publishing a complete generation");
                None
            }
        };
        let tree = match &patchable {
            Some(p) => Some(p.dir.clone()),
            None => self.store.current()?.map(|(_, dir)| dir),
        };
        let last_version = self
            .db_call(|c| db::meta(c, "manifest_version"))?
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let ctx = Ctx {
            writer: self,
            config,
            repo: repo_cfg,
            key: &key,
            tree: tree.as_deref(),
            now: unix_now() as i64,
        };
        let action = change.action();
        let planned = ctx.plan(change, actor)?;
        let before = ctx.rows(&planned.name)?;
        let changes = ctx.package_changes(&planned.name, &before, &planned.rows_after)?;
        let expiry = crate::store::manifest_lifetime(&self.db, config.signing.manifest_expiry)?;
        let started = Instant::now();
        let patch = patchable.filter(|p| {
            p.delta.as_ref().map_or(0, |d| d.files.len()) + changes.len()
                <= crate::store::MAX_DELTA_FILES
        });
        let (version, undo) = match &patch {
            Some(at) => {
                let done = at.delta.as_ref().map_or(at.id, |d| d.version);
                let version = done.max(last_version) + 1;
                self.store
                    .patch_signed(at, version, &changes, expiry, &manifest_key)?;
                (version, Undo::Patch(at))
            }
            None => {
                let current = self.store.load_current(&public)?;
                let mut files = current.files.clone();
                for (path, file) in &changes {
                    match file {
                        Some(f) => files.insert(path.clone(), *f),
                        None => files.remove(path),
                    };
                }
                let version = current.version.max(last_version) + 1;
                let upstream = upstream_state(&current, config);
                let removes = |path: &str| changes.iter().any(|(p, f)| p == path && f.is_none());
                self.store.publish_signed(
                    version,
                    &files,
                    &removes,
                    upstream.clone(),
                    expiry,
                    &manifest_key,
                )?;
                (version, Undo::Full(current.files, upstream))
            }
        };
        let published = Instant::now();
        let audit = AuditEntry {
            at: ctx.now,
            actor: actor.user.clone(),
            token: actor.token.clone(),
            action: action.into(),
            target: format!("{repo}/{} {}", planned.name, planned.version),
            detail: planned.detail.to_string(),
            client: actor.client.clone(),
        };
        let recorded = self.db_call({
            let planned = planned.clone();
            let user = actor.user.clone();
            let repo = repo.to_owned();
            move |c| {
                let tx = c.transaction()?;
                hdb::delete_release(&tx, &repo, &planned.name, &planned.version)?;
                if let Some(row) = &planned.row {
                    hdb::put_release(&tx, row)?;
                }
                if planned.new_package {
                    hdb::put_owner(&tx, &repo, &planned.name, &user, "full")?;
                }
                hdb::audit(&tx, &audit)?;
                db::set_meta(&tx, "manifest_version", &version.to_string())?;
                tx.commit()
            }
        });
        if let Err(e) = recorded {
            // The change is live but not recorded: put the previous files back.
            tracing::error!(repository = repo, package = %planned.name, "recording the change failed, reverting the tree: {e}");
            match undo {
                Undo::Patch(at) => {
                    let before = self.store.patchable_files(at, &public)?;
                    let back: Vec<_> = changes
                        .iter()
                        .map(|(path, _)| (path.clone(), before.get(path).copied()))
                        .collect();
                    let mut at = at.clone();
                    at.delta = self
                        .store
                        .patchable(&public)
                        .map_err(GenerationError::from)?
                        .and_then(|p| p.delta);
                    self.store
                        .patch_signed(&at, version + 1, &back, expiry, &manifest_key)?;
                }
                Undo::Full(files, upstream) => {
                    // Putting the previous files back drops what the change added.
                    let added = |path: &str| changes.iter().any(|(p, _)| p == path);
                    self.store.publish_signed(
                        version + 1,
                        &files,
                        &added,
                        upstream,
                        expiry,
                        &manifest_key,
                    )?;
                }
            }
            return Err(e);
        }
        tracing::info!(
            repository = repo,
            package = %planned.name,
            version = %planned.version,
            action,
            generation = version,
            lock_ms = began.duration_since(asked).as_millis() as u64,
            prepare_ms = started.duration_since(began).as_millis() as u64,
            publish_ms = published.duration_since(started).as_millis() as u64,
            record_ms = published.elapsed().as_millis() as u64,
            "hosted package changed"
        );
        Ok(Outcome {
            release: planned.row,
            created: planned.created,
            generation: version,
        })
    }

    /// Renames organization `old` to `new`. First a complete generation
    /// goes live in which `repos/OLD/` is gone and `repos/NEW/` holds the
    /// same packages, re-signed with `repository = "NEW"` (tarballs and
    /// docs are the same blobs). Then one transaction moves the rows
    /// ([`crate::accounts::db::rename_org`], the hosted releases and owners)
    /// and records `audit`. A refused name changes nothing; a failed
    /// transaction publishes the previous files again. Returns the
    /// generation. Blocking.
    pub fn rename_repository(
        &self,
        config: &Config,
        old: &str,
        new: &str,
        audit: &AuditEntry,
    ) -> Result<u64, HostedError> {
        use crate::accounts::{self, db as adb};
        let key = config
            .signing
            .key
            .clone()
            .ok_or(HostedError::NoSigningKey)?;
        let taken = accounts::taken_names(config);
        let manifest_key = load_manifest_key(config)?;
        let public = manifest_key.public();
        let _lock = self.lock()?;
        self.db_call(|c| Ok(adb::check_rename(c, old, new, &taken)))??;
        let (rows, last_version) = self.db_call(|c| {
            Ok((
                hdb::repository_releases(c, old)?,
                db::meta(c, "manifest_version")?.and_then(|v| v.parse::<u64>().ok()),
            ))
        })?;
        let moved = hdb::moved_rows(&rows, old, new);
        let ours = crate::repo_files::hosted_repository_files(
            &self.store,
            &key,
            &accounts::org_repository(new),
            &config.upstream.repository,
            &moved,
        )?;
        let current = self.store.load_current(&public)?;
        let (was, now_at) = (format!("repos/{old}/"), format!("repos/{new}/"));
        let mut files: FileMap = current
            .files
            .iter()
            .filter(|(path, _)| !path.starts_with(&was))
            .map(|(path, file)| (path.clone(), *file))
            .collect();
        files.extend(ours);
        let version = current.version.max(last_version.unwrap_or(0)) + 1;
        let upstream = upstream_state(&current, config);
        let expiry = crate::store::manifest_lifetime(&self.db, config.signing.manifest_expiry)?;
        let gone = |path: &str| path.starts_with(&was);
        self.store.publish_signed(
            version,
            &files,
            &gone,
            upstream.clone(),
            expiry,
            &manifest_key,
        )?;
        let recorded = self.db_call(|c| {
            let tx = c.transaction()?;
            if let Err(e) = adb::rename_org(&tx, old, new, &taken, audit.at) {
                return Ok(Err(e));
            }
            hdb::move_repository(&tx, old, new, &moved)?;
            hdb::audit(&tx, audit)?;
            db::set_meta(&tx, "manifest_version", &version.to_string())?;
            tx.commit()?;
            Ok(Ok(()))
        });
        let failed: Option<HostedError> = match recorded {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.into()),
            Err(e) => Some(e),
        };
        if let Some(e) = failed {
            tracing::error!(
                from = old,
                to = new,
                "recording the rename failed, reverting the tree: {e}"
            );
            let added = |path: &str| path.starts_with(&now_at);
            self.store.publish_signed(
                version + 1,
                &current.files,
                &added,
                upstream,
                expiry,
                &manifest_key,
            )?;
            return Err(e);
        }
        tracing::info!(
            from = old,
            to = new,
            releases = moved.len(),
            generation = version,
            "organization renamed"
        );
        Ok(version)
    }

    /// Takes the data directory's writer lock, waiting for a running sync.
    fn lock(&self) -> Result<std::fs::File, HostedError> {
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            if let Some(file) = self.store.try_lock()? {
                return Ok(file);
            }
            if Instant::now() >= deadline {
                return Err(HostedError::Busy);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn db_call<T>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> Result<T, HostedError> {
        Ok(self.db.call_blocking(f)?)
    }

    /// Package name → versions of the upstream index in the current tree.
    fn upstream_versions(
        &self,
        config: &Config,
        tree: Option<&std::path::Path>,
    ) -> Result<Option<Arc<VersionMap>>, HostedError> {
        let Some(path) = tree.map(|t| t.join("versions")) else {
            return Ok(None);
        };
        self.upstream.get("", &path, false, |bytes| {
            let versions = registry::verify_versions(
                bytes,
                &config.upstream.public_key,
                &config.upstream.repository,
            )
            .map_err(|source| HostedError::ServedIndex {
                path: path.clone(),
                source,
            })?
            .into_inner();
            Ok(versions
                .packages
                .into_iter()
                .map(|p| (p.name, p.versions))
                .collect())
        })
    }
}

/// The upstream state a generation published by the writer records: the
/// current one's, or none synced yet.
fn upstream_state(current: &crate::store::Current, config: &Config) -> UpstreamState {
    current.upstream.clone().unwrap_or_else(|| UpstreamState {
        url: config.upstream.url.clone(),
        names_etag: None,
        versions_etag: None,
        synced_at: 0,
    })
}

fn load_manifest_key(config: &Config) -> Result<ManifestKey, HostedError> {
    Ok(crate::keyfiles::manifest_key(&config.signing.manifest_key)?)
}

/// A validated change, ready to publish.
#[derive(Debug, Clone)]
struct Planned {
    name: String,
    version: String,
    /// The release row after the change (`None`: removed).
    row: Option<ReleaseRow>,
    /// Every release of the package after the change.
    rows_after: Vec<ReleaseRow>,
    created: bool,
    new_package: bool,
    detail: Value,
}

struct Ctx<'a> {
    writer: &'a Writer,
    config: &'a Config,
    repo: &'a RepositoryConfig,
    key: &'a SigningKey,
    /// The served generation's directory (`None`: nothing published yet).
    tree: Option<&'a std::path::Path>,
    now: i64,
}

impl Ctx<'_> {
    fn window(&self) -> Window {
        Window(self.config.api.revert_window.as_secs())
    }

    /// The caller as the ownership rule sees it. An organization owns
    /// its packages: a member the API let write may change any of them, as
    /// on hex.pm.
    fn asker<'a>(&self, actor: &'a Actor) -> Asker<'a> {
        Asker {
            user: &actor.user,
            admin: actor.admin || self.repo.org,
        }
    }

    fn rows(&self, name: &str) -> Result<Vec<ReleaseRow>, HostedError> {
        let (repo, name) = (self.repo.name.clone(), name.to_owned());
        self.writer.db_call(move |c| hdb::releases(c, &repo, &name))
    }

    fn owners(&self, name: &str) -> Result<Vec<(String, String)>, HostedError> {
        let (repo, pkg) = (self.repo.name.clone(), name.to_owned());
        self.writer.db_call(move |c| hdb::owners(c, &repo, &pkg))
    }

    /// The package's releases and the one named, once the caller may change it.
    fn existing(
        &self,
        name: &str,
        version: &str,
        actor: &Actor,
    ) -> Result<(Vec<ReleaseRow>, ReleaseRow), HostedError> {
        rules::may_change(name, &self.owners(name)?, self.asker(actor))?;
        let rows = self.rows(name)?;
        let row = rules::release(&rows, &self.repo.name, name, version)?.clone();
        Ok((rows, row))
    }

    fn plan(&self, change: Change, actor: &Actor) -> Result<Planned, HostedError> {
        match change {
            Change::Publish { upload, replace } => self.plan_publish(upload, replace, actor),
            Change::Revert { name, version } => {
                let (rows, row) = self.existing(&name, &version, actor)?;
                let others = self.writer.db_call(|c| hdb::all_releases(c))?;
                rules::revert(&row, &others, self.now, self.window())?;
                Ok(Planned {
                    rows_after: rows.into_iter().filter(|r| r.version != version).collect(),
                    name,
                    version,
                    row: None,
                    created: false,
                    new_package: false,
                    detail: json!({"outer_checksum": hex::encode(row.outer_sha256)}),
                })
            }
            Change::Retire {
                name,
                version,
                retirement,
            } => {
                let (rows, mut row) = self.existing(&name, &version, actor)?;
                row.retired = retirement;
                row.updated_at = self.now;
                let detail = match &row.retired {
                    Some((reason, message)) => {
                        json!({"reason": reason.as_str(), "message": message})
                    }
                    None => json!({}),
                };
                Ok(self.replaced(rows, row, detail))
            }
            Change::Docs {
                name,
                version,
                tarball,
            } => {
                let (rows, mut row) = self.existing(&name, &version, actor)?;
                row.docs_sha256 = match tarball {
                    Some(DocsUpload(bytes)) => Some(self.writer.store.put_bytes(&bytes)?.sha256),
                    None => None,
                };
                row.updated_at = self.now;
                let detail = json!({"docs_sha256": row.docs_sha256.map(hex::encode)});
                Ok(self.replaced(rows, row, detail))
            }
        }
    }

    fn replaced(&self, rows: Vec<ReleaseRow>, row: ReleaseRow, detail: Value) -> Planned {
        let rows_after = rows
            .into_iter()
            .map(|r| {
                if r.version == row.version {
                    row.clone()
                } else {
                    r
                }
            })
            .collect();
        Planned {
            name: row.package.clone(),
            version: row.version.clone(),
            row: Some(row),
            rows_after,
            created: false,
            new_package: false,
            detail,
        }
    }

    fn plan_publish(
        &self,
        upload: Upload,
        replace: bool,
        actor: &Actor,
    ) -> Result<Planned, HostedError> {
        let Upload { bytes, verified } = upload;
        let meta = &verified.metadata;
        let (name, version) = (meta.name.clone(), meta.version.clone());
        rules::upload(meta)?;
        let upstream_has = self
            .writer
            .upstream_versions(self.config, self.tree)?
            .map(|m| m.contains_key(&name));
        rules::not_upstream(
            &name,
            &self.repo.name,
            &self.config.upstream.repository,
            self.repo.reserves(&name),
            upstream_has,
        )?;
        let new_package = rules::may_change(&name, &self.owners(&name)?, self.asker(actor))?;
        let rows = self.rows(&name)?;
        let previous = rows.iter().find(|r| r.version == version);
        let inserted_at =
            rules::publish_slot(previous, &name, &version, replace, self.now, self.window())?;
        let ours: Vec<&str> = self
            .config
            .repositories
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        let repos = Repositories {
            own: &self.repo.name,
            upstream: &self.config.upstream.repository,
            ours: &ours,
        };
        rules::requirements(meta, repos, |source, package| match source {
            Source::Own => self.repository_versions(&self.repo.name, package),
            Source::Other(repo) => self.repository_versions(repo, package),
            Source::Upstream => Ok(self
                .writer
                .upstream_versions(self.config, self.tree)?
                .and_then(|m| m.get(package).cloned())),
        })??;
        self.writer.store.put_bytes(&bytes)?;
        let row = ReleaseRow {
            repository: self.repo.name.clone(),
            package: name.clone(),
            version: version.clone(),
            outer_sha256: verified.outer_checksum,
            inner_sha256: verified.inner_checksum,
            size: bytes.len() as u64,
            requirements: meta.requirements.clone(),
            meta: meta.api_meta(),
            retired: None,
            docs_sha256: previous.and_then(|p| p.docs_sha256),
            publisher: actor.user.clone(),
            inserted_at,
            updated_at: self.now,
        };
        let created = previous.is_none();
        let mut rows_after: Vec<ReleaseRow> =
            rows.into_iter().filter(|r| r.version != version).collect();
        rows_after.push(row.clone());
        Ok(Planned {
            name,
            version,
            row: Some(row),
            rows_after,
            created,
            new_package,
            detail: json!({"outer_checksum": hex::encode(verified.outer_checksum)}),
        })
    }

    /// The versions of `package` in one of our repositories, from its
    /// signed `/versions` in the current tree.
    fn repository_versions(
        &self,
        repo: &str,
        package: &str,
    ) -> Result<Option<Vec<String>>, HostedError> {
        let (Some(tree), Some(index)) = (self.tree, self.own_versions(repo, false)?) else {
            return Ok(None);
        };
        // Cannot fail short of a bug: the entry is our own encoding.
        let entry = index
            .get(package)
            .map_err(|source| HostedError::ServedIndex {
                path: index_path(tree, repo, "versions"),
                source: registry::RegistryError::Protobuf {
                    what: "versions entry",
                    source,
                },
            })?;
        Ok(entry.map(|p| p.versions))
    }

    /// The repository's `/versions` (`None`: not published yet).
    fn own_versions(
        &self,
        repo: &str,
        take: bool,
    ) -> Result<Option<Arc<EncodedVersions>>, HostedError> {
        let cache = &self.writer.versions;
        self.own_index(repo, "versions", take, cache, registry::verify_versions)
    }

    /// The repository's `/names` (`None`: not published yet).
    fn own_names(&self, repo: &str, take: bool) -> Result<Option<Arc<EncodedNames>>, HostedError> {
        let cache = &self.writer.names;
        self.own_index(repo, "names", take, cache, registry::verify_names)
    }

    /// One of our repository's signed index files, verified with our key,
    /// kept as `T` (its entries encoded one by one).
    fn own_index<M, T: From<M>>(
        &self,
        repo: &str,
        file: &str,
        take: bool,
        cache: &Decoded<T>,
        verify: impl Fn(
            &[u8],
            &registry::PublicKey,
            &str,
        ) -> Result<registry::Verified<M>, registry::RegistryError>,
    ) -> Result<Option<Arc<T>>, HostedError> {
        let Some(tree) = self.tree else {
            return Ok(None);
        };
        let path = index_path(tree, repo, file);
        cache.get(repo, &path, take, |bytes| {
            verify(bytes, self.key.public_key(), repo)
                .map(|v| T::from(v.into_inner()))
                .map_err(|source| HostedError::ServedIndex {
                    path: path.clone(),
                    source,
                })
        })
    }

    /// The files a change of package `name` from releases `before` to
    /// `after` rewrites: its record, the repository's `/names` and
    /// `/versions`, and the tarballs and docs that differ (`None`: removed).
    fn package_changes(
        &self,
        name: &str,
        before: &[ReleaseRow],
        after: &[ReleaseRow],
    ) -> Result<Vec<(String, Option<FileRef>)>, HostedError> {
        let repo = &self.repo.name;
        let base = format!("repos/{repo}");
        let store = &self.writer.store;
        let put = |payload: Vec<u8>| -> Result<FileRef, HostedError> {
            Ok(store.put_bytes(&registry::seal_signed_fast(payload, self.key))?)
        };
        let mut changes: Vec<(String, Option<FileRef>)> = Vec::new();
        let tarball = |v: &str| format!("{base}/tarballs/{name}-{v}.tar");
        let docs = |v: &str| format!("{base}/docs/{name}-{v}.tar.gz");
        for old in before {
            let new = after.iter().find(|r| r.version == old.version);
            if new.is_none() {
                changes.push((tarball(&old.version), None));
            }
            if old.docs_sha256.is_some() && new.is_none_or(|n| n.docs_sha256.is_none()) {
                changes.push((docs(&old.version), None));
            }
        }
        for r in after {
            let old = before.iter().find(|o| o.version == r.version);
            if old.is_none_or(|o| o.outer_sha256 != r.outer_sha256) {
                let file = FileRef {
                    sha256: r.outer_sha256,
                    size: r.size,
                };
                changes.push((tarball(&r.version), Some(file)));
            }
            if let Some(d) = r.docs_sha256
                && old.is_none_or(|o| o.docs_sha256 != Some(d))
            {
                changes.push((docs(&r.version), Some(store.blob_ref(&d)?)));
            }
        }
        let record = (!after.is_empty()).then(|| {
            let releases: Vec<record::Release> = after.iter().map(ReleaseRow::release).collect();
            record::package_record(repo, name, &releases)
        });
        let mut names = self
            .own_names(repo, true)?
            .map(owned)
            .unwrap_or_else(|| EncodedNames::new(repo));
        let mut versions = self
            .own_versions(repo, true)?
            .map(owned)
            .unwrap_or_else(|| EncodedVersions::new(repo));
        // Only this package's entries are encoded; the rest are copied.
        record::update_names(&mut names, name, after.iter().map(|r| r.updated_at).max());
        record::update_versions(&mut versions, name, record.as_ref());
        // Three RSA signatures are most of a publish; make them at once.
        let payloads = [
            record.as_ref().map(|r| r.encode_to_vec()),
            Some(names.encode()),
            Some(versions.encode()),
        ];
        let signed: Vec<Result<Option<FileRef>, HostedError>> = std::thread::scope(|s| {
            let handles: Vec<_> = payloads
                .into_iter()
                .map(|p| s.spawn(move || p.map(put).transpose()))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        let mut signed = signed.into_iter();
        let mut next = || signed.next().unwrap_or(Ok(None));
        let (record_file, names_file, versions_file) = (next()?, next()?, next()?);
        changes.push((format!("{base}/packages/{name}"), record_file));
        // The served files become links to these blobs: same inodes.
        if let Some(f) = &names_file {
            self.writer
                .names
                .put(repo, &store.blob_path(&f.sha256), names);
        }
        if let Some(f) = &versions_file {
            self.writer
                .versions
                .put(repo, &store.blob_path(&f.sha256), versions);
        }
        changes.push((format!("{base}/names"), names_file));
        changes.push((format!("{base}/versions"), versions_file));
        let public_key = format!("{base}/public_key");
        let served = match self.tree {
            Some(tree) => file_id(&tree.join(&public_key))?.is_some(),
            None => false,
        };
        if !served {
            let pem = self.key.public_key().spki_pem();
            changes.push((public_key, Some(store.put_bytes(pem.as_bytes())?)));
        }
        Ok(changes)
    }
}
