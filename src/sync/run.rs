//! Carries out one sync: index, plan, packages, then one new generation.
//! See the module doc of [`crate::sync`] for why the order keeps clients safe.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::Progress;
use super::fetch::{Ctx, Outcome, PackageUpdate, blocking, sync_package};
use super::publish::{self, IndexFiles, Inputs, PackageFiles, PublishError};
use crate::clock::unix_now;
use crate::config::Config;
use crate::manifest::UpstreamState;
use crate::plan::{self, FailureKind};
use crate::registry::{self, PackageName};
use crate::store::db::{self, SyncRecord};
use crate::store::{self, Db, DbError, FileMap, FileRef, Store, StoreError};
use crate::tarball;
use crate::upstream::{Fetched, Upstream, UpstreamError, Validators};

/// A problem that stops the whole sync. The served tree is left as it was.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Another writer holds the data directory.
    #[error(
        "another hexmirror process is writing to {}; wait for it to finish, then run again",
        .0.display()
    )]
    Locked(PathBuf),
    /// The data directory failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The state database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The HTTP client could not be built.
    #[error("cannot set up the HTTP client: {0}")]
    Client(reqwest::Error),
    /// `/names` or `/versions` could not be fetched.
    #[error("{0}; the served tree was left as it was")]
    IndexFetch(UpstreamError),
    /// `/names` or `/versions` was fetched but refused.
    #[error("{what} from {url}: {source}; the served tree was left as it was")]
    IndexInvalid {
        /// "names" or "versions".
        what: &'static str,
        /// Where it came from.
        url: String,
        /// Why it was refused.
        source: registry::RegistryError,
    },
    /// The index went back further than `[mirror] rollback_*` allow.
    #[error(
        "the upstream index looks rolled back: {0}; the previous index stays served. If the \
         upstream really removed these, run `hexmirror sync --accept-rollback` once, or raise \
         [mirror] rollback_max_backwards / rollback_max_vanished_percent"
    )]
    Rollback(plan::Rollback),
    /// The upstream has no `/names` or `/versions`.
    #[error("{0}: not found (404); is upstream.url the root of a Hex repository?")]
    IndexMissing(String),
    /// The new generation could not be published.
    #[error("{0}; the served tree was left as it was")]
    Publish(#[from] PublishError),
    /// The upstream answered 304 to a request for an index file that has
    /// no stored copy to reuse.
    #[error("{url}: unexpected 304 (no stored copy to reuse); the served tree was left as it was")]
    IndexNotModified {
        /// Where it was asked for.
        url: String,
    },
    /// A worker task died (a bug).
    #[error("internal error: a worker task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// One package or release that could not be mirrored.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The package.
    pub package: String,
    /// The release, when the failure is about one.
    pub version: Option<String>,
    /// Which check failed.
    pub kind: FailureKind,
    /// What went wrong, with the URL, and what was kept.
    pub reason: String,
}

/// A dependency on a repository the mirror does not reach.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Unreachable {
    /// The package that depends on it.
    pub package: String,
    /// The dependency.
    pub dependency: String,
    /// The repository the dependency record names.
    pub repository: String,
}

/// What a sync did.
#[derive(Debug, Default)]
pub struct Summary {
    /// Nothing had changed upstream since the last complete sync.
    pub up_to_date: bool,
    /// The generation served after this sync.
    pub generation: u64,
    /// A new generation was switched in.
    pub generation_published: bool,
    /// Packages in the mirror after this sync.
    pub packages: u64,
    /// Package records fetched and published.
    pub packages_updated: u64,
    /// Packages known to be current without a request, or answered 304.
    pub packages_unchanged: u64,
    /// Tarballs downloaded and verified.
    pub releases_fetched: u64,
    /// Releases whose verified tarball was already stored.
    pub releases_reused: u64,
    /// Packages that left the mirror.
    pub removed: u64,
    /// Body bytes received.
    pub bytes: u64,
    /// Requests sent upstream, retries included.
    pub requests: u64,
    /// Packages or releases that failed.
    pub failures: Vec<Failure>,
    /// Packages held back after this sync (each keeps its last good state).
    pub quarantined: Vec<db::Quarantined>,
    /// Packages that failed in this sync and were not quarantined before it.
    pub newly_failed: usize,
    /// Dependencies on repositories the mirror does not reach.
    pub unreachable: BTreeSet<Unreachable>,
    /// Wall time.
    pub elapsed: Duration,
}

/// Identifies the configuration a complete sync was made with: a change of
/// upstream, selection, repositories or keys forces a full pass.
fn fingerprint(config: &Config) -> String {
    let mut h = Sha256::new();
    h.update(config.upstream.url.as_bytes());
    h.update([0]);
    h.update(config.upstream.repository.as_bytes());
    h.update([0]);
    match &config.mirror.packages {
        None => h.update(b"*"),
        Some(set) => set.iter().for_each(|p| {
            h.update(p.as_str().as_bytes());
            h.update([1]);
        }),
    }
    for p in &config.mirror.skip {
        h.update([6]);
        h.update(p.as_str().as_bytes());
    }
    for repo in &config.repositories {
        h.update([2]);
        h.update(repo.name.as_bytes());
        for p in repo.packages.iter().flatten() {
            h.update([3]);
            h.update(p.as_bytes());
        }
        for d in &repo.deny {
            h.update([4]);
            h.update(d.to_string().as_bytes());
        }
    }
    if let Some(key) = &config.signing.key {
        h.update([5]);
        h.update(key.public_key().spki_pem().as_bytes());
    }
    hex::encode(h.finalize())
}

/// Runs one sync of `config`'s upstream into its data directory.
pub async fn run(config: &Config, progress: &Progress) -> Result<Summary, SyncError> {
    let started = Instant::now();
    let data_dir = config.data_dir.clone();
    let store = blocking(move || Store::open(&data_dir)).await??;
    let _lock = store
        .try_lock()?
        .ok_or_else(|| SyncError::Locked(config.data_dir.clone()))?;
    let db = Db::open(&config.data_dir)?;
    let upstream =
        Upstream::new(&config.upstream, config.mirror.concurrency).map_err(SyncError::Client)?;
    let catalog = open_catalog(&config.data_dir);
    let ctx = Ctx {
        notes: catalog.as_ref().map(|c| Arc::new(c.batch())),
        catalog,
        store: Arc::new(store),
        db,
        upstream,
        key: config.upstream.public_key.clone(),
        repository: config.upstream.repository.as_str().into(),
        limits: Arc::new(tarball::Limits::default()),
        max_registry: config.upstream.max_registry_bytes,
        tarball_slots: Arc::new(Semaphore::new(config.mirror.concurrency * 2)),
    };
    let sync_id = ctx.db.call(|c| db::start_sync(c)).await?;
    let result = sync(&ctx, config, progress).await;
    // Metadata of tarballs fetched by a sync that stopped early: true of
    // their bytes, and a later sync does not fetch them again.
    if let Some(notes) = &ctx.notes {
        notes.flush().await;
        notes.log_totals();
    }
    progress.finish();
    let mut summary = match result {
        Ok(s) => s,
        Err(e) => {
            let record = SyncRecord {
                status: "failed".into(),
                ..SyncRecord::default()
            };
            let failure = vec![("*".to_string(), None, e.to_string())];
            ctx.db
                .call(move |c| db::finish_sync(c, sync_id, &record, &failure))
                .await?;
            return Err(e);
        }
    };
    let traffic = ctx.upstream.traffic();
    summary.bytes = traffic.bytes.load(Ordering::Relaxed);
    summary.requests = traffic.requests.load(Ordering::Relaxed);
    summary.elapsed = started.elapsed();
    let record = SyncRecord {
        status: if summary.up_to_date {
            "up-to-date"
        } else if summary.failures.is_empty() {
            "ok"
        } else {
            "failed"
        }
        .into(),
        packages: summary.packages_updated,
        releases: summary.releases_fetched,
        bytes: summary.bytes,
        requests: summary.requests,
        skipped: summary.packages_unchanged,
        failed: summary.failures.len() as u64,
    };
    let failures: Vec<_> = summary
        .failures
        .iter()
        .map(|f| (f.package.clone(), f.version.clone(), f.reason.clone()))
        .collect();
    ctx.db
        .call(move |c| db::finish_sync(c, sync_id, &record, &failures))
        .await?;
    Ok(summary)
}

/// A verified-to-be-fetched index file and, when it came anew, its validators.
struct IndexFile {
    value: Vec<u8>,
    fresh: Option<Validators>,
}

/// Asks the upstream for index file `what`, conditionally on `validators`
/// when the served tree holds the file (`held`).
async fn ask_index(
    ctx: &Ctx,
    what: &'static str,
    held: bool,
    validators: &Validators,
) -> Result<Fetched, SyncError> {
    let validators = if held {
        validators.clone()
    } else {
        Validators::default()
    };
    ctx.upstream
        // gzip never grows a body much: the gunzipped cap bounds it too.
        .get(what, &validators, ctx.max_registry + (1 << 20))
        .await
        .map_err(SyncError::IndexFetch)
}

/// The index file an answer stands for: its new body, or on a 304 the copy
/// the current generation (`prev`) serves.
async fn index_file(
    ctx: &Ctx,
    what: &'static str,
    prev: Option<FileRef>,
    fetched: Fetched,
) -> Result<IndexFile, SyncError> {
    match fetched {
        Fetched::Body { body, validators } => Ok(IndexFile {
            value: body,
            fresh: Some(validators),
        }),
        Fetched::NotModified => {
            let Some(prev) = prev else {
                return Err(SyncError::IndexNotModified {
                    url: ctx.upstream.url(what),
                });
            };
            let store = ctx.store.clone();
            let value = blocking(move || store.read_blob(&prev.sha256)).await??;
            Ok(IndexFile { value, fresh: None })
        }
        Fetched::NotFound => Err(SyncError::IndexMissing(ctx.upstream.url(what))),
    }
}

async fn sync(ctx: &Ctx, config: &Config, progress: &Progress) -> Result<Summary, SyncError> {
    let mut summary = Summary::default();
    let fp = fingerprint(config);
    let (names_v, versions_v, last_fp, last_version, quarantined_before) = ctx
        .db
        .call(|c| {
            Ok((
                db::validators(c, "names")?,
                db::validators(c, "versions")?,
                db::meta(c, "complete_selection")?,
                db::meta(c, "manifest_version")?,
                db::quarantine(c)?,
            ))
        })
        .await?;
    let last_version = last_version
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    // Ask first, load later: when the upstream answers 304 to both index
    // files, nothing of the current generation is needed but its expiry,
    // read from the manifest's ends (the whole manifest is 90 MB at hex.pm's
    // size and took a no-change sync a second to load and verify).
    let link = ctx.store.current_link();
    let held = blocking(move || {
        (
            link.join("names").is_file(),
            link.join("versions").is_file(),
        )
    })
    .await?;
    let (names_f, versions_f) = tokio::try_join!(
        ask_index(ctx, "names", held.0, &names_v),
        ask_index(ctx, "versions", held.1, &versions_v),
    )?;
    // Quarantined packages are asked again on every sync: a full pass asks
    // only for what changed, which is little more than them.
    let unchanged = matches!(names_f, Fetched::NotModified)
        && matches!(versions_f, Fetched::NotModified)
        && last_fp.as_deref() == Some(&fp)
        && quarantined_before.is_empty();
    let due = |expires_at: u64| {
        expires_at.saturating_sub(unix_now()) < config.signing.manifest_expiry.as_secs() / 2
    };
    if unchanged {
        let link = ctx.store.current_link();
        let peek = blocking(move || store::peek_manifest(&link)).await?;
        if let Ok(peek) = peek
            && !due(peek.expires_at)
        {
            tracing::info!("upstream unchanged since the last complete sync");
            summary.up_to_date = true;
            summary.generation = peek.version.max(last_version);
            summary.packages = ctx.db.call(|c| db::package_count(c)).await?;
            // A catalog new beside an unchanged tree is built from the tree.
            if let Some(catalog) = &ctx.catalog {
                let (store, catalog, cfg) = (ctx.store.clone(), catalog.clone(), config.clone());
                let filled = blocking(move || {
                    crate::catalog::follow(&catalog, &store, &cfg, &[], &[], &HashMap::new())
                })
                .await?;
                if let Err(e) = filled {
                    tracing::warn!("catalog not built ({e}); `hexmirror catalog rebuild` makes it");
                }
            }
            return Ok(summary);
        }
    }

    // Something to do (or only a re-signing): the current file list.
    let cfg = config.clone();
    let manifest_key = blocking(move || crate::keyfiles::manifest_key(&cfg.signing.manifest_key))
        .await?
        .map_err(PublishError::from)?;
    let public = manifest_key.public();
    let store = ctx.store.clone();
    let prev = blocking(move || store.load_current(&public))
        .await?
        .map_err(PublishError::from)?;
    let prev_version = prev.version.max(last_version);
    summary.generation = prev_version;
    let (names, versions) = tokio::try_join!(
        index_file(ctx, "names", prev.files.get("names").copied(), names_f),
        index_file(
            ctx,
            "versions",
            prev.files.get("versions").copied(),
            versions_f
        )
    )?;
    let manifest_due = prev.files.is_empty() || due(prev.expires_at);

    let (key, repo, max) = (ctx.key.clone(), ctx.repository.clone(), ctx.max_registry);
    let (names_bytes, versions_bytes) = (names.value.clone(), versions.value.clone());
    let (names_url, versions_url) = (ctx.upstream.url("names"), ctx.upstream.url("versions"));
    let (names_p, versions_p) = blocking(move || {
        let n =
            registry::verify_names_within(&names_bytes, &key, &repo, max).map_err(|source| {
                SyncError::IndexInvalid {
                    what: "names",
                    url: names_url,
                    source,
                }
            })?;
        let v = registry::verify_versions_within(&versions_bytes, &key, &repo, max).map_err(
            |source| SyncError::IndexInvalid {
                what: "versions",
                url: versions_url,
                source,
            },
        )?;
        Ok::<_, SyncError>((n.into_inner(), v.into_inner()))
    })
    .await??;
    // The newest upstream change seen, against the newest one published
    // (recorded with the index below): their difference is the lag /metrics reports.
    let newest = names_p
        .packages
        .iter()
        .filter_map(|p| p.updated_at.map(|t| t.seconds))
        .max()
        .unwrap_or(0)
        .to_string();
    let seen = newest.clone();
    ctx.db
        .call(move |c| db::set_meta(c, "upstream_newest_seen", &seen))
        .await?;
    let remote = plan::remote_index(&names_p, &versions_p);
    // What the mirror holds: judged for a rollback, then planned against.
    let local = ctx.db.call(|c| db::packages(c)).await?;
    if !config.mirror.accept_rollback
        && let Some(rollback) = plan::rollback(&local, &remote, config.mirror.rollback)
    {
        return Err(SyncError::Rollback(rollback));
    }
    tracing::info!(
        packages = remote.len(),
        releases = remote.values().map(|r| r.versions.len()).sum::<usize>(),
        "upstream index verified"
    );

    let (updates, wanted) = if unchanged {
        // Only the manifest is due: same files, fresh signature.
        let wanted = prev
            .files
            .keys()
            .filter_map(|p| p.strip_prefix("packages/").map(str::to_owned))
            .collect();
        (BTreeMap::new(), wanted)
    } else {
        let sources = Sources {
            prev: &prev.files,
            remote: &remote,
            local: &local,
        };
        sync_packages(ctx, config, progress, sources, &mut summary).await?
    };
    summary.packages = wanted.len() as u64;
    // Planning is over: the decoded upstream index goes before publication
    // peaks (25 MB at hex.pm's size).
    drop(remote);
    drop(versions_p);
    // Publication needs each updated package's files; the database, once
    // the generation is live, its state and validators. Split, not cloned:
    // a clone was 37 MB at hex.pm's size, alive through publication.
    let mut remembered = Vec::with_capacity(updates.len());
    let updates: BTreeMap<String, PackageFiles> = updates
        .into_iter()
        .map(|(name, u)| {
            remembered.push((name.clone(), u.state, u.validators));
            let files = PackageFiles {
                record: u.record,
                releases: u.releases,
            };
            (name, files)
        })
        .collect();
    // What the catalog learns once the generation is live.
    let records: Vec<(String, FileRef)> =
        updates.iter().map(|(n, u)| (n.clone(), u.record)).collect();
    let updated_at: HashMap<String, u64> = names_p
        .packages
        .iter()
        .filter_map(|p| Some((p.name.clone(), p.updated_at?.seconds.max(0) as u64)))
        .collect();

    // The index is published whenever it verifies: a package that failed
    // keeps its last good files (or stays absent) and is quarantined.
    let store = ctx.store.clone();
    let (n, v) = (names.value.clone(), versions.value.clone());
    let (names_ref, versions_ref) =
        blocking(move || Ok::<_, StoreError>((store.put_bytes(&n)?, store.put_bytes(&v)?)))
            .await??;
    let index = Some(IndexFiles {
        names: names_ref,
        versions: versions_ref,
        wanted: wanted.clone(),
    });
    let failed = quarantine_entries(&summary.failures);
    let before: BTreeSet<String> = quarantined_before.into_iter().map(|q| q.package).collect();
    summary.newly_failed = failed.iter().filter(|f| !before.contains(&f.0)).count();
    if !failed.is_empty() {
        tracing::warn!(
            packages = failed.len(),
            new = summary.newly_failed,
            "quarantined: these packages keep their last good state; every other package and the index move on"
        );
    }
    let etag = |fresh: &Option<Validators>, stored: &Validators| {
        fresh
            .as_ref()
            .map_or_else(|| stored.etag.clone(), |v| v.etag.clone())
    };
    let inputs = Inputs {
        prev: prev.files,
        prev_version,
        updates,
        index,
        upstream_names: names_p,
        upstream_state: UpstreamState {
            url: config.upstream.url.clone(),
            names_etag: etag(&names.fresh, &names_v),
            versions_etag: etag(&versions.fresh, &versions_v),
            synced_at: unix_now(),
        },
        signed_cache: ctx.db.call(|c| db::signed_cache(c)).await?,
        hosted: ctx.db.call(|c| crate::hosted::db::all_releases(c)).await?,
    };
    let (store, cfg) = (ctx.store.clone(), config.clone());
    let published =
        blocking(move || publish::publish(&store, &cfg, inputs, manifest_due)).await??;
    summary.generation = published.version;
    summary.generation_published = published.version != prev_version;

    // The new generation is live: only now remember what it holds, so an
    // interrupted sync never believes it published what it did not.
    let fresh = (names.fresh, versions.fresh);
    let removed = ctx
        .db
        .call(move |c| {
            for (name, state, validators) in &remembered {
                db::record_package(c, name, state, validators.as_ref())?;
            }
            db::set_meta(c, "manifest_version", &published.version.to_string())?;
            if !published.signed_cache.is_empty() {
                db::set_signed_cache(c, &published.signed_cache)?;
            }
            db::set_quarantine(c, &failed, unix_now() as i64)?;
            if let Some(v) = &fresh.0 {
                db::set_validators(c, "names", v)?;
            }
            if let Some(v) = &fresh.1 {
                db::set_validators(c, "versions", v)?;
            }
            let local = db::packages(c)?;
            let gone = plan::removed_packages(local.keys(), &wanted);
            for name in &gone {
                db::forget_package(c, name)?;
            }
            db::set_meta(c, "complete_selection", &fp)?;
            db::set_meta(c, "upstream_newest_mirrored", &newest)?;
            Ok(((gone.len() as u64, db::quarantine(c)?), gone))
        })
        .await?;
    (summary.removed, summary.quarantined) = removed.0;
    if let Some(notes) = &ctx.notes {
        notes.flush().await;
    }
    if let Some(catalog) = &ctx.catalog {
        let (store, catalog, cfg, gone) = (
            ctx.store.clone(),
            catalog.clone(),
            config.clone(),
            removed.1,
        );
        let filled = blocking(move || {
            crate::catalog::follow(&catalog, &store, &cfg, &records, &gone, &updated_at)
        })
        .await?;
        if let Err(e) = filled {
            tracing::warn!(
                "catalog not updated ({e}); the tree is; `hexmirror catalog rebuild` catches up"
            );
        }
    }
    let (store, grace) = (ctx.store.clone(), config.signing.generation_grace);
    let pruned =
        blocking(move || store.prune_generations(store::KEEP_GENERATIONS, grace)).await??;
    if pruned > 0 {
        tracing::info!(pruned, "removed generations past their grace period");
    }
    Ok(summary)
}

/// Opens the catalog; a sync goes on without one (it is derived data that
/// `hexmirror catalog rebuild` can make again).
fn open_catalog(data_dir: &std::path::Path) -> Option<crate::catalog::Catalog> {
    crate::catalog::Catalog::open(data_dir)
        .inspect_err(|e| tracing::warn!("catalog unavailable: {e}; the sync goes on without it"))
        .ok()
}

/// One quarantine entry per failed package: the first failure's kind, and
/// every failure's reason (with the release, when it is about one).
fn quarantine_entries(failures: &[Failure]) -> Vec<(String, FailureKind, String)> {
    let mut out: Vec<(String, FailureKind, String)> = Vec::new();
    for f in failures {
        let reason = match &f.version {
            Some(v) => format!("{v}: {}", f.reason),
            None => f.reason.clone(),
        };
        match out.iter_mut().find(|e| e.0 == f.package) {
            Some(entry) => {
                entry.2.push_str("; ");
                entry.2.push_str(&reason);
            }
            None => out.push((f.package.clone(), f.kind, reason)),
        }
    }
    out
}

/// What a sync plans against: the previous tree, the upstream index and
/// what the database says each mirrored package holds.
struct Sources<'a> {
    prev: &'a FileMap,
    remote: &'a BTreeMap<String, plan::Remote>,
    local: &'a BTreeMap<String, db::PackageState>,
}

/// Fetches every package that needs it (and, for a package list, the
/// dependency closure), `concurrency` at a time. Returns the verified
/// updates and the set of packages the mirror holds.
async fn sync_packages(
    ctx: &Ctx,
    config: &Config,
    progress: &Progress,
    sources: Sources<'_>,
    summary: &mut Summary,
) -> Result<(BTreeMap<String, PackageUpdate>, BTreeSet<String>), SyncError> {
    let Sources {
        prev,
        remote,
        local,
    } = sources;
    let closure = config.mirror.packages.is_some();
    let mut queue: VecDeque<String> = match &config.mirror.packages {
        None => remote.keys().cloned().collect(),
        Some(set) => set.iter().map(|p| p.to_string()).collect(),
    };
    let roots = queue.len();
    progress.add_total(roots as u64);
    let mut wanted = BTreeSet::new();
    let mut updates = BTreeMap::new();
    let mut tasks: JoinSet<Outcome> = JoinSet::new();
    let max_tasks = config.mirror.concurrency * 2;
    let enqueue = |deps: &[(String, Option<String>)],
                   from: &str,
                   queue: &mut VecDeque<String>,
                   summary: &mut Summary| {
        for (dep, repository) in deps {
            match repository {
                Some(r) if r.as_str() != &*ctx.repository => {
                    summary.unreachable.insert(Unreachable {
                        package: from.to_owned(),
                        dependency: dep.clone(),
                        repository: r.clone(),
                    });
                }
                _ if closure => queue.push_back(dep.clone()),
                _ => {}
            }
        }
    };

    loop {
        while tasks.len() < max_tasks {
            let Some(name) = queue.pop_front() else { break };
            let skipped = PackageName::parse(&name).is_ok_and(|p| config.mirror.skip.contains(&p));
            if skipped || !wanted.insert(name.clone()) {
                continue;
            }
            if wanted.len() > roots {
                // A dependency discovered on the way.
                progress.add_total(1);
            }
            let pname = match PackageName::parse(&name) {
                Ok(p) => p,
                Err(e) => {
                    summary.failures.push(Failure {
                        package: name,
                        version: None,
                        kind: FailureKind::Structure,
                        reason: format!("upstream lists it, but {e}; skipped"),
                    });
                    progress.inc(0);
                    continue;
                }
            };
            if !remote.contains_key(&name) {
                summary.failures.push(Failure {
                    package: name,
                    version: None,
                    kind: FailureKind::Origin,
                    reason: format!(
                        "not in the upstream index ({}); check the name in mirror.packages",
                        ctx.upstream.url("names")
                    ),
                });
                progress.inc(0);
                continue;
            }
            let current = prev.get(&store::package_path(&pname)).copied();
            let (r, l) = (remote.get(&name), local.get(&name));
            if current.is_some() && !plan::needs_fetch(r, l) {
                summary.packages_unchanged += 1;
                if let Some(l) = l {
                    enqueue(&l.deps, &name, &mut queue, summary);
                }
                progress.inc(0);
                continue;
            }
            let updated_at = r.and_then(|r| r.updated_at);
            tasks.spawn(sync_package(ctx.clone(), pname, current, updated_at));
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let outcome = joined?;
        summary.releases_fetched += outcome.fetched;
        summary.releases_reused += outcome.reused;
        summary.failures.extend(outcome.failures);
        enqueue(&outcome.deps, &outcome.name, &mut queue, summary);
        if let Some(update) = outcome.update {
            // A 304 with everything in place changes nothing worth counting.
            if update.validators.is_some()
                || Some(update.record) != prev.get(&format!("packages/{}", outcome.name)).copied()
            {
                summary.packages_updated += 1;
            } else {
                summary.packages_unchanged += 1;
            }
            updates.insert(outcome.name, update);
        }
        progress.inc(ctx.upstream.traffic().bytes.load(Ordering::Relaxed));
    }
    Ok((updates, wanted))
}
