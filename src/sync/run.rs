//! Carries out one sync. See the module doc of [`crate::sync`] for the order
//! of writes that keeps the served tree usable at every instant.

use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::Progress;
use super::plan;
use crate::config::Config;
use crate::registry::{self, PackageName, PublicKey, is_valid_version};
use crate::store::db::{self, PackageState, SyncRecord};
use crate::store::{self, Db, DbError, Store, StoreError};
use crate::tarball;
use crate::upstream::{Fetched, Upstream, UpstreamError, Validators};

/// Largest `/names` or `/versions` body accepted from upstream.
const INDEX_LIMIT: u64 = 64 << 20;
/// Largest `/packages/NAME` body accepted from upstream.
const PACKAGE_LIMIT: u64 = 16 << 20;

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
    /// The upstream has no `/names` or `/versions`.
    #[error("{0}: not found (404); is upstream.url the root of a Hex repository?")]
    IndexMissing(String),
}

/// One package or release that could not be mirrored.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The package.
    pub package: String,
    /// The release, when the failure is about one.
    pub version: Option<String>,
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
    /// `/names` and `/versions` were published (no failures).
    pub index_published: bool,
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
    /// Tree files removed because the upstream dropped them.
    pub removed: u64,
    /// Body bytes received.
    pub bytes: u64,
    /// Requests sent upstream, retries included.
    pub requests: u64,
    /// Packages or releases that failed.
    pub failures: Vec<Failure>,
    /// Dependencies on repositories the mirror does not reach.
    pub unreachable: BTreeSet<Unreachable>,
    /// Wall time.
    pub elapsed: Duration,
}

#[derive(Clone)]
struct Ctx {
    store: Arc<Store>,
    db: Db,
    upstream: Upstream,
    key: PublicKey,
    repository: Arc<str>,
    limits: Arc<tarball::Limits>,
    /// Tarball bodies held in memory between download and storage.
    tarball_slots: Arc<Semaphore>,
}

/// Result of working on one package.
struct Outcome {
    name: String,
    deps: Vec<(String, Option<String>)>,
    published: bool,
    fetched: u64,
    reused: u64,
    failures: Vec<Failure>,
}

impl Outcome {
    fn failed(name: &PackageName, version: Option<&str>, reason: String) -> Self {
        Self {
            name: name.to_string(),
            deps: vec![],
            published: false,
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

fn fingerprint(config: &Config) -> String {
    let selection = match &config.mirror.packages {
        None => "*".to_string(),
        Some(set) => set.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(","),
    };
    format!(
        "{}|{}|{}",
        config.upstream.url, config.upstream.repository, selection
    )
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("internal error: worker task failed: {e}"))
}

/// Runs one sync of `config`'s upstream into its data directory.
pub async fn run(config: &Config, progress: &Progress) -> Result<Summary, SyncError> {
    let started = Instant::now();
    let data_dir = config.data_dir.clone();
    let store = blocking(move || Store::open(&data_dir))
        .await
        .map_err(|e| SyncError::Store(io_panic(&config.data_dir, e)))??;
    let _lock = store
        .try_lock()?
        .ok_or_else(|| SyncError::Locked(config.data_dir.clone()))?;
    let db = Db::open(&config.data_dir)?;
    let upstream =
        Upstream::new(&config.upstream, config.mirror.concurrency).map_err(SyncError::Client)?;
    let ctx = Ctx {
        store: Arc::new(store),
        db,
        upstream,
        key: config.upstream.public_key.clone(),
        repository: config.upstream.repository.as_str().into(),
        limits: Arc::new(tarball::Limits::default()),
        tarball_slots: Arc::new(Semaphore::new(config.mirror.concurrency * 2)),
    };
    let sync_id = ctx.db.call(|c| db::start_sync(c)).await?;
    let result = sync(&ctx, config, progress).await;
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
    summary.bytes = traffic.bytes.load(std::sync::atomic::Ordering::Relaxed);
    summary.requests = traffic.requests.load(std::sync::atomic::Ordering::Relaxed);
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

fn io_panic(path: &std::path::Path, msg: String) -> StoreError {
    StoreError {
        action: "open data directory",
        path: path.to_owned(),
        source: std::io::Error::other(msg),
    }
}

/// A verified index file and, when it was fetched anew, its body and validators.
struct IndexFile<T> {
    value: T,
    fresh: Option<(Vec<u8>, Validators)>,
}

async fn fetch_index(
    ctx: &Ctx,
    what: &'static str,
    validators: &Validators,
) -> Result<IndexFile<Vec<u8>>, SyncError> {
    match ctx
        .upstream
        .get(what, validators, INDEX_LIMIT)
        .await
        .map_err(SyncError::IndexFetch)?
    {
        Fetched::Body { body, validators } => Ok(IndexFile {
            value: body.clone(),
            fresh: Some((body, validators)),
        }),
        Fetched::NotModified => {
            let store = ctx.store.clone();
            let bytes = blocking(move || store.read_tree_file(what))
                .await
                .map_err(|e| SyncError::Store(io_panic(ctx.store.tree(), e)))??;
            match bytes {
                Some(value) => Ok(IndexFile { value, fresh: None }),
                // The tree lost its copy since we asked conditionally; ask again.
                None => Box::pin(fetch_index(ctx, what, &Validators::default())).await,
            }
        }
        Fetched::NotFound => Err(SyncError::IndexMissing(ctx.upstream.url(what))),
    }
}

async fn sync(ctx: &Ctx, config: &Config, progress: &Progress) -> Result<Summary, SyncError> {
    let mut summary = Summary::default();
    let fp = fingerprint(config);
    let (names_v, versions_v, last_fp) = {
        let have_index =
            ctx.store.tree_file_exists("names") && ctx.store.tree_file_exists("versions");
        ctx.db
            .call(move |c| {
                if !have_index {
                    return Ok((Validators::default(), Validators::default(), None));
                }
                Ok((
                    db::validators(c, "names")?,
                    db::validators(c, "versions")?,
                    db::meta(c, "complete_selection")?,
                ))
            })
            .await?
    };
    let (names, versions) = tokio::try_join!(
        fetch_index(ctx, "names", &names_v),
        fetch_index(ctx, "versions", &versions_v)
    )?;
    if names.fresh.is_none() && versions.fresh.is_none() && last_fp.as_deref() == Some(&fp) {
        tracing::info!("upstream unchanged since the last complete sync");
        summary.up_to_date = true;
        summary.index_published = true;
        summary.packages = ctx.db.call(|c| db::packages(c)).await?.len() as u64;
        return Ok(summary);
    }

    let (key, repo) = (ctx.key.clone(), ctx.repository.clone());
    let (names_bytes, versions_bytes) = (names.value, versions.value);
    let (names_url, versions_url) = (ctx.upstream.url("names"), ctx.upstream.url("versions"));
    let (names_p, versions_p) = blocking(move || {
        let n = registry::verify_names(&names_bytes, &key, &repo).map_err(|source| {
            SyncError::IndexInvalid {
                what: "names",
                url: names_url,
                source,
            }
        })?;
        let v = registry::verify_versions(&versions_bytes, &key, &repo).map_err(|source| {
            SyncError::IndexInvalid {
                what: "versions",
                url: versions_url,
                source,
            }
        })?;
        Ok::<_, SyncError>((n.into_inner(), v.into_inner()))
    })
    .await
    .map_err(|e| SyncError::Store(io_panic(ctx.store.tree(), e)))??;
    let remote = plan::remote_index(&names_p, &versions_p);
    tracing::info!(
        packages = remote.len(),
        releases = remote.values().map(|r| r.versions.len()).sum::<usize>(),
        "upstream index verified"
    );

    let local = ctx.db.call(|c| db::packages(c)).await?;
    let closure = config.mirror.packages.is_some();
    let mut queue: VecDeque<String> = match &config.mirror.packages {
        None => remote.keys().cloned().collect(),
        Some(set) => set.iter().map(|p| p.to_string()).collect(),
    };
    let roots = queue.len();
    progress.add_total(roots as u64);
    let mut wanted = BTreeSet::new();
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
            if !wanted.insert(name.clone()) {
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
                    reason: format!(
                        "not in the upstream index ({}); check the name in mirror.packages",
                        ctx.upstream.url("names")
                    ),
                });
                progress.inc(0);
                continue;
            }
            let r = remote.get(&name);
            let l = local.get(&name);
            if !plan::needs_fetch(r, l) && ctx.store.tree_file_exists(&store::package_path(&pname))
            {
                summary.packages_unchanged += 1;
                if let Some(l) = l {
                    enqueue(&l.deps, &name, &mut queue, &mut summary);
                }
                progress.inc(0);
                continue;
            }
            let updated_at = r.and_then(|r| r.updated_at);
            tasks.spawn(sync_package(ctx.clone(), pname, updated_at));
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let outcome = match joined {
            Ok(o) => o,
            Err(e) => {
                summary.failures.push(Failure {
                    package: "?".into(),
                    version: None,
                    reason: format!("internal error: package task failed: {e}"),
                });
                continue;
            }
        };
        if outcome.published {
            summary.packages_updated += 1;
        }
        summary.releases_fetched += outcome.fetched;
        summary.releases_reused += outcome.reused;
        summary.failures.extend(outcome.failures);
        enqueue(&outcome.deps, &outcome.name, &mut queue, &mut summary);
        progress.inc(
            ctx.upstream
                .traffic()
                .bytes
                .load(std::sync::atomic::Ordering::Relaxed),
        );
    }
    summary.packages = wanted.len() as u64;

    if !summary.failures.is_empty() {
        tracing::warn!(
            failures = summary.failures.len(),
            "not publishing /names and /versions: some packages failed; the previous index stays served"
        );
        return Ok(summary);
    }

    // Every package record is in place: publish the index, then sweep.
    let store = ctx.store.clone();
    let key_pem = ctx.key.spki_pem().to_owned();
    let (names_fresh, versions_fresh) = (names.fresh, versions.fresh);
    let to_record = (
        names_fresh.as_ref().map(|f| f.1.clone()),
        versions_fresh.as_ref().map(|f| f.1.clone()),
    );
    blocking(move || -> Result<(), StoreError> {
        if let Some((body, _)) = &versions_fresh {
            store.write_tree_file("versions", body)?;
        }
        if let Some((body, _)) = &names_fresh {
            store.write_tree_file("names", body)?;
        }
        if store.read_tree_file("public_key")?.as_deref() != Some(key_pem.as_bytes()) {
            store.write_tree_file("public_key", key_pem.as_bytes())?;
        }
        Ok(())
    })
    .await
    .map_err(|e| SyncError::Store(io_panic(ctx.store.tree(), e)))??;
    let wanted_for_db = wanted.clone();
    let removed_packages = ctx
        .db
        .call(move |c| {
            if let Some(v) = &to_record.0 {
                db::set_validators(c, "names", v)?;
            }
            if let Some(v) = &to_record.1 {
                db::set_validators(c, "versions", v)?;
            }
            let local = db::packages(c)?;
            let gone = plan::removed_packages(local.keys(), &wanted_for_db);
            for name in &gone {
                db::forget_package(c, name)?;
            }
            db::set_meta(c, "complete_selection", &fp)?;
            Ok(gone)
        })
        .await?;
    summary.index_published = true;
    summary.removed = sweep(ctx, removed_packages).await?;
    Ok(summary)
}

/// Removes tree files that no published record names any more: tarballs of
/// dropped releases and packages that left the mirror. Runs only after the
/// new index is in place.
async fn sweep(ctx: &Ctx, removed_packages: Vec<String>) -> Result<u64, SyncError> {
    let keep: BTreeSet<String> = ctx
        .db
        .call(|c| {
            let mut stmt = c.prepare("SELECT package, version FROM releases")?;
            let rows = stmt.query_map([], |r| {
                Ok(format!(
                    "{}-{}.tar",
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?
                ))
            })?;
            rows.collect()
        })
        .await?;
    let store = ctx.store.clone();
    let removed = blocking(move || -> Result<u64, StoreError> {
        let mut removed = 0;
        for name in &removed_packages {
            store.remove_tree_file(&format!("packages/{name}"))?;
            removed += 1;
        }
        let dir = store.tree().join("tarballs");
        let entries = std::fs::read_dir(&dir).map_err(|source| StoreError {
            action: "list",
            path: dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&file) {
                store.remove_tree_file(&format!("tarballs/{file}"))?;
                removed += 1;
            }
        }
        Ok(removed)
    })
    .await
    .map_err(|e| SyncError::Store(io_panic(ctx.store.tree(), e)))??;
    if removed > 0 {
        tracing::info!(removed, "removed tree files the upstream no longer lists");
    }
    Ok(removed)
}

async fn sync_package(ctx: Ctx, name: PackageName, updated_at: Option<(i64, i32)>) -> Outcome {
    let path = store::package_path(&name);
    let url = ctx.upstream.url(&path);
    let have = ctx.store.tree_file_exists(&path);
    let validators = if have {
        let p = path.clone();
        match ctx.db.call(move |c| db::validators(c, &p)).await {
            Ok(v) => v,
            Err(e) => return Outcome::failed(&name, None, e.to_string()),
        }
    } else {
        Validators::default()
    };
    let (bytes, new_validators) = match ctx.upstream.get(&path, &validators, PACKAGE_LIMIT).await {
        Err(e) => return Outcome::failed(&name, None, format!("{e}; kept the last good copy")),
        Ok(Fetched::NotFound) => {
            return Outcome::failed(&name, None, format!("{url}: not found (404) upstream"));
        }
        Ok(Fetched::NotModified) => match ctx.store.read_tree_file(&path) {
            Ok(Some(b)) => (b, None),
            Ok(None) => return Outcome::failed(&name, None, format!("{path} vanished mid-sync")),
            Err(e) => return Outcome::failed(&name, None, e.to_string()),
        },
        Ok(Fetched::Body { body, validators }) => (body, Some(validators)),
    };
    let (key, repo, n) = (ctx.key.clone(), ctx.repository.clone(), name.clone());
    let verified = blocking(move || {
        registry::verify_package(&bytes, &key, &repo, n.as_str()).map(|p| (p.into_inner(), bytes))
    })
    .await;
    let (package, bytes) = match verified {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            return Outcome::failed(
                &name,
                None,
                format!("{url}: {e}; not stored, kept the last good copy"),
            );
        }
        Err(e) => return Outcome::failed(&name, None, e),
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
        published: false,
        fetched: 0,
        reused: 0,
        failures: vec![],
    };
    let mut releases = Vec::with_capacity(package.releases.len());
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
        releases.push((version.clone(), outer));
        if ctx.store.has_blob(&outer) {
            outcome.reused += 1;
        } else {
            downloads.spawn(fetch_tarball(
                ctx.clone(),
                name.clone(),
                version,
                outer,
                release.inner_checksum.clone(),
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

    // Tarballs first, then the record that names them.
    let store = ctx.store.clone();
    let (n, links, fresh) = (name.clone(), releases.clone(), new_validators.is_some());
    let published = blocking(move || -> Result<(), StoreError> {
        for (version, sha) in &links {
            store.link_blob(&store::tarball_path(&n, version), sha)?;
        }
        if fresh {
            store.write_tree_file(&store::package_path(&n), &bytes)?;
        }
        Ok(())
    })
    .await;
    match published {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Outcome::failed(&name, None, e.to_string()),
        Err(e) => return Outcome::failed(&name, None, e),
    }
    let state = PackageState {
        updated_at,
        versions: package.releases.iter().map(|r| r.version.clone()).collect(),
        retired: plan::retired_indexes(&package),
        deps: outcome.deps.clone(),
    };
    let n = name.to_string();
    if let Err(e) = ctx
        .db
        .call(move |c| db::record_package(c, &n, &state, &releases, new_validators.as_ref()))
        .await
    {
        return Outcome::failed(&name, None, e.to_string());
    }
    outcome.published = true;
    outcome
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
    let size = body.len() as u64;
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
    ctx.db
        .call(move |c| db::record_blob(c, &outer, size))
        .await
        .map_err(|e| fail(e.to_string()))?;
    Ok(())
}
