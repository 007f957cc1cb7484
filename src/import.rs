//! The import folder of `serve` (`[import]` in the config): package
//! tarballs dropped into a directory are published into one of our
//! repositories, with the same validation as `POST /api/publish`.
//!
//! # Layout
//!
//! ```text
//! DIR/                      the watched directory: drop NAME-VERSION.tar here
//! DIR/processing/           claimed files, being imported
//! DIR/done/X.tar            imported (X.tar.result says what happened)
//! DIR/failed/X.tar          refused; X.tar.reason says what failed and what to do
//! DIR/.hexmirror-import.lock  held while a hexmirror imports from DIR
//! ```
//!
//! Only regular files directly in DIR are imported. Names that start with
//! `.` or end with `.part` or `.tmp` are ignored, and so are directories,
//! symbolic links and other special files. To drop a file safely, write it
//! elsewhere on the same file system and rename it into DIR, or write it in
//! DIR as `X.tar.part` (or `.X.tar`) and rename it to `X.tar` at the end.
//! A file that is not a `.tar` goes to `failed/` with a reason saying that
//! only package tarballs are imported (air-gap bundles, which are
//! directories, are imported with `hexmirror bundle import DIR`).
//!
//! # When a file is taken
//!
//! A plain copy into DIR is also safe as long as the writer never pauses
//! longer than `settle`: a candidate is claimed only once its size, mtime,
//! ctime and inode stayed the same for `settle` (default 2 s), so a slow
//! `cp` is not picked up half-way. File-system events (`notify` crate) only
//! wake a scan of DIR; a periodic rescan every `settle` is the safety net,
//! because watchers can miss events (queue overflow, network file systems,
//! a directory replaced under the watch, a watcher that could not start).
//! Files are taken oldest first (by mtime), so drop a package's dependencies
//! before the package, or all at once in that order.
//!
//! # Never processed twice, never lost
//!
//! A settled file is claimed by an atomic rename `DIR/X.tar` →
//! `DIR/processing/X.tar`; from then on no scan of DIR sees it again. The
//! outcome is written next to its final place first (`failed/X.tar.reason`
//! or `done/X.tar.result`, through a temporary file and a rename), and then
//! the tarball is renamed out of `processing/`. A name already taken in
//! `processing/`, `done/` or `failed/` gets a numeric suffix (`X~1.tar`),
//! so nothing is overwritten. Every scan (and so every start) handles
//! `processing/` before DIR: a file left there because the daemon stopped
//! mid-way is imported again. If the daemon died after publishing but
//! before the move, the release is already stored with the same SHA-256,
//! which is recognised as done ("already published") instead of being
//! refused as a duplicate version: re-running is idempotent.
//!
//! Refusals (the tarball is invalid, the name is not ours to publish, the
//! version exists with other bytes, the repository is gone) move the file
//! to `failed/`. Transient trouble (a sync holds the data directory, disk or
//! database errors) leaves it in `processing/`, retried with a growing delay
//! (up to five minutes) and logged. Stopping the daemon at any point, even
//! in the middle of a publish, is safe: the next start picks up where it
//! stopped. A lock file keeps two processes from importing from one DIR.
//!
//! All file-system work runs on the blocking pool; logs go through `tracing`.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::future::Future;
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::config::{Config, ImportConfig};
use crate::hosted::service::Publisher;
use crate::hosted::writer::{Actor, Change, ErrorKind, HostedError, Upload};

/// Subdirectory of claimed files being imported.
pub const PROCESSING: &str = "processing";
/// Subdirectory of imported files.
pub const DONE: &str = "done";
/// Subdirectory of refused files, each with a `.reason` file.
pub const FAILED: &str = "failed";
/// Suffix of the file next to a refused tarball that says why.
pub const REASON_SUFFIX: &str = ".reason";
/// Suffix of the file next to an imported tarball that says what happened.
pub const RESULT_SUFFIX: &str = ".result";
/// The lock file that keeps a second process out of DIR.
const LOCK_FILE: &str = ".hexmirror-import.lock";
/// The user the audit log records for imported releases.
const USER: &str = "import";
/// Longest delay between retries of a transient failure.
const MAX_RETRY: Duration = Duration::from_secs(300);
/// How long to wait before trying again to lock DIR or set it up.
const SETUP_RETRY: Duration = Duration::from_secs(30);
/// Least time between two scans woken by file-system events, so a burst of
/// events (a large `cp`) makes a few scans, not thousands.
const EVENT_DEBOUNCE: Duration = Duration::from_millis(100);

/// Watches `config.dir` and publishes every package tarball dropped there
/// into `config.repository`, until `shutdown` completes. Never returns
/// early: setup trouble (DIR cannot be created, another process holds it)
/// is logged and retried. Dropping the returned future, or completing
/// `shutdown`, at any point is safe (see the module documentation).
pub async fn run(config: ImportConfig, api: Arc<Publisher>, shutdown: impl Future<Output = ()>) {
    let dir = config.dir.clone();
    tokio::select! {
        biased;
        () = shutdown => tracing::info!(dir = %dir.display(), "import folder stopped"),
        () = watch_and_import(config, api) => {}
    }
}

async fn watch_and_import(config: ImportConfig, api: Arc<Publisher>) {
    let dir = config.dir.clone();
    // Held (open and locked) for as long as this future lives.
    let _lock = loop {
        let d = dir.clone();
        match blocking(move || lock_dir(&d)).await.and_then(|r| r) {
            Ok(Some(file)) => break file,
            Ok(None) => tracing::error!(
                dir = %dir.display(),
                "another process holds {LOCK_FILE} in the import folder; retrying in {}s",
                SETUP_RETRY.as_secs()
            ),
            Err(e) => tracing::error!(
                dir = %dir.display(),
                "cannot set up the import folder ({e}); retrying in {}s",
                SETUP_RETRY.as_secs()
            ),
        }
        tokio::time::sleep(SETUP_RETRY).await;
    };
    let wake = Arc::new(tokio::sync::Notify::new());
    let _watcher = {
        let (d, w) = (dir.clone(), Arc::clone(&wake));
        let made = blocking(move || watcher(&d, w).map_err(io::Error::other)).await;
        match made.and_then(|r| r) {
            Ok(watcher) => Some(watcher),
            Err(e) => {
                tracing::warn!(
                    dir = %dir.display(),
                    "cannot watch the import folder ({e}); scanning it every {} ms instead",
                    config.settle.as_millis()
                );
                None
            }
        }
    };
    tracing::info!(
        dir = %dir.display(),
        repository = %config.repository,
        settle_ms = config.settle.as_millis() as u64,
        "import folder: package tarballs dropped here are published"
    );
    let mut importer = Importer::new(config, api);
    loop {
        let next = importer.pass().await;
        let periodic = Instant::now() + importer.config.settle;
        let deadline = next.map_or(periodic, |n| n.min(periodic));
        tokio::select! {
            () = wake.notified() => tokio::time::sleep(EVENT_DEBOUNCE).await,
            () = tokio::time::sleep_until(deadline.into()) => {}
        }
    }
}

/// Creates DIR and its subdirectories and takes the lock. `Ok(None)`:
/// another process holds it.
fn lock_dir(dir: &Path) -> io::Result<Option<File>> {
    ensure_dirs(dir)?;
    let file = File::create(dir.join(LOCK_FILE))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

fn ensure_dirs(dir: &Path) -> io::Result<()> {
    for sub in [PROCESSING, DONE, FAILED] {
        fs::create_dir_all(dir.join(sub))?;
    }
    Ok(())
}

/// A watcher on DIR (not its subdirectories) whose events wake a scan.
fn watcher(
    dir: &Path,
    wake: Arc<tokio::sync::Notify>,
) -> ::notify::Result<::notify::RecommendedWatcher> {
    use ::notify::{EventKind, RecursiveMode, Watcher};
    let mut watcher = ::notify::recommended_watcher(
        move |event: ::notify::Result<::notify::Event>| match event {
            Ok(e) if matches!(e.kind, EventKind::Access(_)) => {}
            Ok(_) => wake.notify_one(),
            Err(e) => {
                tracing::warn!("import folder watcher: {e}; the periodic scan goes on");
                wake.notify_one();
            }
        },
    )?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("blocking task failed: {e}")))
}

// ---------------------------------------------------------------------------
// Pure decisions
// ---------------------------------------------------------------------------

/// Whether a directory entry named `name` is left alone: hidden, or still
/// being written under a temporary name.
fn is_ignored(name: &OsStr) -> bool {
    let b = name.as_bytes();
    b.is_empty() || b.starts_with(b".") || b.ends_with(b".part") || b.ends_with(b".tmp")
}

/// `name` if `taken` says it is free, else `name` with `~N` before its
/// extension (`x.tar` → `x~1.tar`, `x` → `x~1`), the smallest free `N`.
fn unique_name(name: &OsStr, taken: impl Fn(&OsStr) -> bool) -> OsString {
    if !taken(name) {
        return name.to_owned();
    }
    let bytes = name.as_bytes();
    // The extension starts at the last dot, unless that dot starts the name.
    let split = bytes
        .iter()
        .rposition(|&b| b == b'.')
        .filter(|&i| i > 0)
        .unwrap_or(bytes.len());
    let (stem, ext) = bytes.split_at(split);
    let mut n: u64 = 1;
    loop {
        let mut candidate = stem.to_vec();
        candidate.extend_from_slice(format!("~{n}").as_bytes());
        candidate.extend_from_slice(ext);
        let candidate = OsString::from_vec(candidate);
        if !taken(&candidate) {
            return candidate;
        }
        n = n.saturating_add(1);
    }
}

/// `name` followed by `suffix` (a sidecar's name).
fn with_suffix(name: &OsStr, suffix: &str) -> OsString {
    let mut s = name.to_owned();
    s.push(suffix);
    s
}

/// What identifies one state of a file: any write, truncation or
/// replacement changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Signature {
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
}

impl Signature {
    fn of(m: &fs::Metadata) -> Self {
        Self {
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            ino: m.ino(),
        }
    }
}

/// Decides when a file is fully written: when it was seen with the same
/// signature for at least `period`.
#[derive(Debug)]
struct Settle {
    period: Duration,
    seen: HashMap<OsString, (Signature, Instant)>,
}

impl Settle {
    fn new(period: Duration) -> Self {
        Self {
            period,
            seen: HashMap::new(),
        }
    }

    /// Records that `name` has `sig` at `now`. `None`: settled, take it;
    /// `Some(t)`: look again at `t`.
    fn observe(&mut self, name: &OsStr, sig: Signature, now: Instant) -> Option<Instant> {
        let since = match self.seen.get(name) {
            Some((old, since)) if *old == sig => *since,
            _ => {
                self.seen.insert(name.to_owned(), (sig, now));
                now
            }
        };
        let ready_at = since + self.period;
        if now >= ready_at && since < now {
            None
        } else {
            Some(ready_at.max(now + Duration::from_millis(1)))
        }
    }

    /// Forgets `name` (claimed, or gone).
    fn forget(&mut self, name: &OsStr) {
        self.seen.remove(name);
    }

    /// Forgets every name not in `present`.
    fn retain(&mut self, present: &HashSet<OsString>) {
        self.seen.retain(|name, _| present.contains(name));
    }
}

/// Delays between attempts after transient failures, per name.
#[derive(Debug)]
struct Backoff {
    first: Duration,
    waiting: HashMap<OsString, (Instant, Duration)>,
}

impl Backoff {
    fn new(first: Duration) -> Self {
        Self {
            first,
            waiting: HashMap::new(),
        }
    }

    /// Whether `name` may be tried at `now`.
    fn ready(&self, name: &OsStr, now: Instant) -> bool {
        self.waiting.get(name).is_none_or(|(at, _)| now >= *at)
    }

    /// Records a failure of `name` at `now`; returns the delay until the next try.
    fn failed(&mut self, name: &OsStr, now: Instant) -> Duration {
        let delay = match self.waiting.get(name) {
            None => self.first,
            Some((_, last)) => last.saturating_mul(2).min(MAX_RETRY),
        }
        .min(MAX_RETRY);
        self.waiting.insert(name.to_owned(), (now + delay, delay));
        delay
    }

    /// Forgets `name` (it succeeded, or is gone).
    fn clear(&mut self, name: &OsStr) {
        self.waiting.remove(name);
    }

    fn retain(&mut self, present: &HashSet<OsString>) {
        self.waiting.retain(|name, _| present.contains(name));
    }

    /// When the earliest waiting name may be tried.
    fn next(&self) -> Option<Instant> {
        self.waiting.values().map(|(at, _)| *at).min()
    }
}

/// What happened to one claimed file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Published now, or before with the same bytes: to `done/`.
    Done(String),
    /// Refused: to `failed/` with what failed and what to do.
    Failed { what: String, todo: String },
    /// Transient trouble: stays in `processing/`, tried again later.
    Retry(String),
}

/// What to do after `HostedError` `e`.
fn verdict_of(e: HostedError, dir: &Path) -> Verdict {
    match e.kind() {
        ErrorKind::Invalid | ErrorKind::NotFound | ErrorKind::Forbidden => Verdict::Failed {
            what: e.to_string(),
            todo: format!(
                "fix the problem above and drop the tarball into {} again",
                dir.display()
            ),
        },
        ErrorKind::Busy | ErrorKind::Internal => Verdict::Retry(e.to_string()),
    }
}

/// The text of `failed/X.reason`.
fn reason_text(name: &OsStr, repository: &str, what: &str, todo: &str, at: SystemTime) -> String {
    format!(
        "hexmirror did not import {name:?} into repository {repository}.\n\
         \n\
         What failed: {what}\n\
         \n\
         What to do: {todo}\n\
         \n\
         Refused at {at}.\n",
        name = name.to_string_lossy(),
        at = httpdate::fmt_http_date(at),
    )
}

// ---------------------------------------------------------------------------
// File-system steps (blocking)
// ---------------------------------------------------------------------------

/// What one scan found.
#[derive(Debug, Default)]
struct Listing {
    /// Names in `processing/`, oldest first.
    processing: Vec<OsString>,
    /// Candidates in DIR with their signature, oldest first.
    candidates: Vec<(OsString, Signature)>,
}

/// Lists `processing/` and the candidates in DIR (regular files whose
/// names are not ignored), oldest mtime first.
fn list(dir: &Path) -> io::Result<Listing> {
    ensure_dirs(dir)?;
    let regular = |d: &Path| -> io::Result<Vec<(OsString, fs::Metadata)>> {
        let mut found = Vec::new();
        for entry in fs::read_dir(d)? {
            let entry = entry?;
            let name = entry.file_name();
            if is_ignored(&name) {
                continue;
            }
            // Not following symbolic links: only regular files count.
            match entry.metadata() {
                Ok(m) if m.file_type().is_file() => found.push((name, m)),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        found.sort_by(|(a, am), (b, bm)| {
            (am.mtime(), am.mtime_nsec(), a).cmp(&(bm.mtime(), bm.mtime_nsec(), b))
        });
        Ok(found)
    };
    Ok(Listing {
        processing: regular(&dir.join(PROCESSING))?
            .into_iter()
            .map(|(n, _)| n)
            .collect(),
        candidates: regular(dir)?
            .into_iter()
            .map(|(n, m)| (n, Signature::of(&m)))
            .collect(),
    })
}

/// Moves `DIR/name` into `processing/` if it still has signature `sig`.
/// Returns its name there; `None` when it changed or vanished meanwhile.
fn claim(dir: &Path, name: &OsStr, sig: Signature) -> io::Result<Option<OsString>> {
    let from = dir.join(name);
    match fs::symlink_metadata(&from) {
        Ok(m) if m.file_type().is_file() && Signature::of(&m) == sig => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    let processing = dir.join(PROCESSING);
    let target = unique_name(name, |n| exists(&processing.join(n)));
    match fs::rename(&from, processing.join(&target)) {
        Ok(()) => {
            sync_dir(&processing);
            sync_dir(dir);
            Ok(Some(target))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// Flushes a directory's entries (renames) to disk; best effort.
fn sync_dir(dir: &Path) {
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::debug!(dir = %dir.display(), "cannot sync directory: {e}");
    }
}

/// A claimed file, read and checked on its own.
#[derive(Debug)]
enum Prepared {
    /// Not importable: to `failed/`.
    Refused { what: String, todo: String },
    /// A well-formed package tarball.
    Package(Upload),
    /// The file is no longer there.
    Gone,
}

/// Reads `processing/name` and checks that it is a package tarball within
/// the API's limits.
fn prepare(dir: &Path, name: &OsStr, config: &Config) -> io::Result<Prepared> {
    let max_bytes = config.api.max_tarball_bytes;
    let redo = || {
        format!(
            "build the package again (`mix hex.build` or `rebar3 hex build`) and drop the \
             new tarball into {}",
            dir.display()
        )
    };
    let Some(text) = name.to_str() else {
        return Ok(Prepared::Refused {
            what: format!(
                "the file name {:?} is not valid UTF-8, so it is not a package tarball name",
                name.to_string_lossy()
            ),
            todo: format!(
                "rename it NAME-VERSION.tar and drop it into {} again",
                dir.display()
            ),
        });
    };
    if !text.ends_with(".tar") {
        return Ok(Prepared::Refused {
            what: format!(
                "only package tarballs (NAME-VERSION.tar, as `mix hex.build` and \
                 `rebar3 hex build` write them) are imported; {text:?} is not a .tar file"
            ),
            todo: format!(
                "drop package tarballs into {}; import air-gap bundles with `hexmirror bundle import DIR`",
                dir.display()
            ),
        });
    }
    let path = dir.join(PROCESSING).join(name);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Prepared::Gone),
        Err(e) => return Err(e),
    };
    let too_large = |size: u64| Prepared::Refused {
        what: format!(
            "the file is {size} bytes, over the limit of {max_bytes} bytes \
             ([api] max_tarball_bytes)"
        ),
        todo: "make the package smaller, or raise [api] max_tarball_bytes and drop it again".into(),
    };
    let size = file.metadata()?.len();
    if size > max_bytes {
        return Ok(too_large(size));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    let read = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if read > max_bytes {
        return Ok(too_large(read));
    }
    match Upload::inspect(bytes, config) {
        Ok(upload) => Ok(Prepared::Package(upload)),
        Err(e) => Ok(Prepared::Refused {
            what: e.to_string(),
            todo: redo(),
        }),
    }
}

/// Writes `text` as `sub/target+suffix` (atomically), then moves
/// `processing/name` to `sub/target`, `target` being the first free name.
/// Returns the final path.
fn finish(dir: &Path, name: &OsStr, sub: &str, suffix: &str, text: &str) -> io::Result<PathBuf> {
    let to_dir = dir.join(sub);
    fs::create_dir_all(&to_dir)?;
    // Only the tarball decides the name: a sidecar without its tarball is
    // left over from a stop between the two steps, and is rewritten.
    let target = unique_name(name, |n| exists(&to_dir.join(n)));
    let sidecar = to_dir.join(with_suffix(&target, suffix));
    let mut tmp_name = OsString::from(".");
    tmp_name.push(with_suffix(&target, suffix));
    tmp_name.push(".tmp");
    let tmp = to_dir.join(tmp_name);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    fs::rename(&tmp, &sidecar)?;
    let to = to_dir.join(&target);
    fs::rename(dir.join(PROCESSING).join(name), &to)?;
    sync_dir(&to_dir);
    sync_dir(&dir.join(PROCESSING));
    Ok(to)
}

// ---------------------------------------------------------------------------
// The importer
// ---------------------------------------------------------------------------

/// The state kept between scans.
struct Importer {
    config: ImportConfig,
    api: Arc<Publisher>,
    settle: Settle,
    /// Transient failures in `processing/`.
    retry: Backoff,
    /// Claims that failed (e.g. permissions), so they are not retried in a loop.
    claim_retry: Backoff,
    /// Whether the last scan failed (to log a recovery once).
    scan_failing: bool,
}

impl Importer {
    fn new(config: ImportConfig, api: Arc<Publisher>) -> Self {
        let first = config.settle.max(Duration::from_secs(1));
        Self {
            settle: Settle::new(config.settle),
            retry: Backoff::new(first),
            claim_retry: Backoff::new(first),
            config,
            api,
            scan_failing: false,
        }
    }

    /// One scan: `processing/` first, then DIR. Returns when the next scan
    /// is due for a file waiting to settle or to be retried.
    async fn pass(&mut self) -> Option<Instant> {
        let dir = self.config.dir.clone();
        let listing = match blocking(move || list(&dir)).await.and_then(|r| r) {
            Ok(l) => {
                if std::mem::take(&mut self.scan_failing) {
                    tracing::info!(dir = %self.config.dir.display(), "import folder readable again");
                }
                l
            }
            Err(e) => {
                if !self.scan_failing {
                    tracing::error!(dir = %self.config.dir.display(), "cannot scan the import folder: {e}");
                }
                self.scan_failing = true;
                return None;
            }
        };
        let present: HashSet<OsString> = listing.processing.iter().cloned().collect();
        self.retry.retain(&present);
        for name in listing.processing {
            if self.retry.ready(&name, Instant::now()) {
                self.import(name).await;
            }
        }

        let present: HashSet<OsString> =
            listing.candidates.iter().map(|(n, _)| n.clone()).collect();
        self.settle.retain(&present);
        self.claim_retry.retain(&present);
        let mut next: Option<Instant> = None;
        for (name, sig) in listing.candidates {
            let now = Instant::now();
            if !self.claim_retry.ready(&name, now) {
                continue;
            }
            if let Some(at) = self.settle.observe(&name, sig, now) {
                next = Some(next.map_or(at, |n| n.min(at)));
                continue;
            }
            let (dir, n) = (self.config.dir.clone(), name.clone());
            match blocking(move || claim(&dir, &n, sig)).await.and_then(|r| r) {
                Ok(Some(claimed)) => {
                    self.settle.forget(&name);
                    self.claim_retry.clear(&name);
                    tracing::info!(file = %name.to_string_lossy(), "import: claimed");
                    self.import(claimed).await;
                }
                // Changed or gone since the scan: the next scan looks again.
                Ok(None) => self.settle.forget(&name),
                Err(e) => {
                    let delay = self.claim_retry.failed(&name, Instant::now());
                    tracing::warn!(
                        file = %name.to_string_lossy(),
                        "import: cannot move the file into {PROCESSING}/: {e}; retrying in {}s",
                        delay.as_secs()
                    );
                }
            }
        }
        [next, self.retry.next(), self.claim_retry.next()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Imports `processing/name` and moves it to `done/` or `failed/`, or
    /// leaves it for a retry.
    async fn import(&mut self, name: OsString) {
        let shown = name.to_string_lossy().into_owned();
        let verdict = self.decide(&name).await;
        let repo = &self.config.repository;
        let (sub, suffix, text) = match &verdict {
            None => {
                self.retry.clear(&name);
                return;
            }
            Some(Verdict::Retry(why)) => {
                let delay = self.retry.failed(&name, Instant::now());
                tracing::warn!(
                    file = %shown,
                    repository = %repo,
                    "import: {why}; trying again in {}s",
                    delay.as_secs()
                );
                return;
            }
            Some(Verdict::Done(note)) => (DONE, RESULT_SUFFIX, format!("{note}\n")),
            Some(Verdict::Failed { what, todo }) => (
                FAILED,
                REASON_SUFFIX,
                reason_text(&name, repo, what, todo, SystemTime::now()),
            ),
        };
        let (dir, n) = (self.config.dir.clone(), name.clone());
        match blocking(move || finish(&dir, &n, sub, suffix, &text))
            .await
            .and_then(|r| r)
        {
            Ok(to) => {
                self.retry.clear(&name);
                match verdict {
                    Some(Verdict::Done(note)) => {
                        tracing::info!(file = %shown, to = %to.display(), "import: {note}")
                    }
                    Some(Verdict::Failed { what, .. }) => tracing::warn!(
                        file = %shown,
                        to = %to.display(),
                        "import refused: {what}"
                    ),
                    _ => {}
                }
            }
            Err(e) => {
                let delay = self.retry.failed(&name, Instant::now());
                tracing::error!(
                    file = %shown,
                    "import: cannot move the file out of {PROCESSING}/ into {sub}/: {e}; \
                     trying again in {}s",
                    delay.as_secs()
                );
            }
        }
    }

    /// The verdict on `processing/name`; `None` if the file is gone.
    async fn decide(&self, name: &OsStr) -> Option<Verdict> {
        let config = self.api.config();
        let (dir, n) = (self.config.dir.clone(), name.to_owned());
        let prepared = match blocking(move || prepare(&dir, &n, &config))
            .await
            .and_then(|r| r)
        {
            Ok(p) => p,
            Err(e) => return Some(Verdict::Retry(format!("cannot read the file: {e}"))),
        };
        let upload = match prepared {
            Prepared::Gone => return None,
            Prepared::Refused { what, todo } => return Some(Verdict::Failed { what, todo }),
            Prepared::Package(upload) => upload,
        };
        let (pkg, version, outer) = (
            upload.name().to_owned(),
            upload.version().to_owned(),
            upload.outer_checksum(),
        );
        let repo = &self.config.repository;
        match self.api.release(repo, &pkg, &version).await {
            Ok(Some(row)) if row.outer_sha256 == outer => {
                return Some(Verdict::Done(format!(
                    "already published: {pkg} {version} is in repository {repo} with the same \
                     SHA-256 ({}); nothing changed",
                    hex::encode(outer)
                )));
            }
            // Another tarball of that version: the writer says why not.
            Ok(_) => {}
            Err(e) => return Some(verdict_of(e, &self.config.dir)),
        }
        let change = Change::Publish {
            upload,
            replace: false,
        };
        // Owner checks are bypassed: the operator controls the machine.
        let actor = Actor {
            user: USER.to_owned(),
            token: None,
            client: None,
            admin: true,
        };
        Some(
            match self.api.apply(self.api.config(), repo, change, actor).await {
                Ok(outcome) => Verdict::Done(format!(
                    "published {pkg} {version} to repository {repo} (generation {}, SHA-256 {})",
                    outcome.generation,
                    hex::encode(outer)
                )),
                Err(e) => verdict_of(e, &self.config.dir),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use flate2::Compression;
    use flate2::write::GzEncoder;
    use sha2::{Digest, Sha256};

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn ignore_rules() {
        for name in [".hidden.tar", "x.tar.part", "x.tar.tmp", "x.part", ".", ""] {
            assert!(is_ignored(os(name)), "{name:?} is ignored");
        }
        for name in [
            "x.tar",
            "x.txt",
            "x.partial",
            "tmp.tar",
            "part",
            "x.tar.reason",
        ] {
            assert!(!is_ignored(os(name)), "{name:?} is a candidate");
        }
        assert!(!is_ignored(OsStr::from_bytes(b"bad\xff.tar")));
        assert!(is_ignored(OsStr::from_bytes(b"bad\xff.part")));
    }

    #[test]
    fn unique_names_keep_the_extension() {
        let taken = |set: &'static [&'static str]| move |n: &OsStr| set.iter().any(|s| os(s) == n);
        assert_eq!(unique_name(os("a.tar"), taken(&[])), "a.tar");
        assert_eq!(unique_name(os("a.tar"), taken(&["a.tar"])), "a~1.tar");
        assert_eq!(
            unique_name(os("a-1.0.0.tar"), taken(&["a-1.0.0.tar", "a-1.0.0~1.tar"])),
            "a-1.0.0~2.tar"
        );
        assert_eq!(unique_name(os("notes"), taken(&["notes"])), "notes~1");
        assert_eq!(unique_name(os(".rc"), taken(&[".rc"])), ".rc~1");
        let odd = OsStr::from_bytes(b"\xff.tar");
        assert_eq!(
            unique_name(odd, |n| n == odd).as_bytes(),
            b"\xff~1.tar".as_slice()
        );
    }

    fn sig(len: u64, mtime: i64) -> Signature {
        Signature {
            len,
            mtime: (mtime, 0),
            ctime: (mtime, 0),
            ino: 7,
        }
    }

    #[test]
    fn a_file_is_taken_only_after_it_stayed_unchanged_for_the_period() {
        let period = Duration::from_secs(2);
        let mut s = Settle::new(period);
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // First sight: never taken at once, look again after the period.
        assert_eq!(s.observe(os("a.tar"), sig(10, 1), t0), Some(ms(2000)));
        assert_eq!(s.observe(os("a.tar"), sig(10, 1), ms(1999)), Some(ms(2000)));
        // It grew: the clock starts again.
        assert_eq!(s.observe(os("a.tar"), sig(20, 2), ms(1999)), Some(ms(3999)));
        assert_eq!(s.observe(os("a.tar"), sig(20, 2), ms(3000)), Some(ms(3999)));
        assert_eq!(s.observe(os("a.tar"), sig(20, 2), ms(3999)), None);
        // Same size but touched: not settled.
        let mut s = Settle::new(period);
        s.observe(os("b.tar"), sig(5, 1), t0);
        assert!(s.observe(os("b.tar"), sig(5, 9), ms(5000)).is_some());
        assert_eq!(s.observe(os("b.tar"), sig(5, 9), ms(7000)), None);
        // Replaced by another file of the same size and times.
        let mut s = Settle::new(period);
        s.observe(os("c.tar"), sig(5, 1), t0);
        let other = Signature {
            ino: 8,
            ..sig(5, 1)
        };
        assert!(s.observe(os("c.tar"), other, ms(5000)).is_some());
        // Forgotten names start over.
        s.forget(os("c.tar"));
        assert!(s.observe(os("c.tar"), other, ms(9000)).is_some());
        s.retain(&HashSet::new());
        assert!(s.seen.is_empty());
        // A zero period still needs two looks.
        let mut s = Settle::new(Duration::ZERO);
        assert!(s.observe(os("d.tar"), sig(1, 1), t0).is_some());
        assert_eq!(s.observe(os("d.tar"), sig(1, 1), ms(1)), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_limit() {
        let mut b = Backoff::new(Duration::from_secs(2));
        let t0 = Instant::now();
        assert!(b.ready(os("x"), t0));
        assert_eq!(b.failed(os("x"), t0), Duration::from_secs(2));
        assert!(!b.ready(os("x"), t0 + Duration::from_secs(1)));
        assert!(b.ready(os("x"), t0 + Duration::from_secs(2)));
        assert_eq!(b.next(), Some(t0 + Duration::from_secs(2)));
        assert_eq!(b.failed(os("x"), t0), Duration::from_secs(4));
        for _ in 0..20 {
            b.failed(os("x"), t0);
        }
        assert_eq!(b.failed(os("x"), t0), MAX_RETRY);
        b.clear(os("x"));
        assert!(b.ready(os("x"), t0) && b.next().is_none());
    }

    #[test]
    fn refusals_fail_and_trouble_retries() {
        let dir = Path::new("/srv/import");
        use crate::hosted::rules::Rejection;
        for e in [
            HostedError::from(Rejection::BadName("Bad".into())),
            HostedError::from(Rejection::UnknownRepository("gone".into())),
            HostedError::from(Rejection::NotOwner {
                name: "x".into(),
                owners: "ann".into(),
                user: "bob".into(),
            }),
        ] {
            assert!(matches!(verdict_of(e, dir), Verdict::Failed { .. }));
        }
        let disk = crate::store::StoreError {
            action: "write",
            path: dir.to_owned(),
            source: std::io::Error::other("disk full"),
        };
        for e in [HostedError::Busy, HostedError::from(disk)] {
            assert!(matches!(verdict_of(e, dir), Verdict::Retry(_)));
        }
        let text = reason_text(
            OsStr::from_bytes(b"x\xff.tar"),
            "acme",
            "it broke",
            "fix it",
            SystemTime::UNIX_EPOCH,
        );
        assert!(
            text.contains("x\u{fffd}.tar") && text.contains("acme"),
            "{text}"
        );
        assert!(text.contains("What failed: it broke\n") && text.contains("What to do: fix it\n"));
    }

    // -- in process: a real ApiState over a temp data directory -------------

    /// A minimal valid Hex tarball (format 3) of a rebar3 package.
    fn hex_tarball(name: &str, version: &str) -> Vec<u8> {
        let metadata = format!(
            "{{<<\"name\">>,<<\"{name}\">>}}.\n\
             {{<<\"version\">>,<<\"{version}\">>}}.\n\
             {{<<\"requirements\">>,[]}}.\n\
             {{<<\"app\">>,<<\"{name}\">>}}.\n\
             {{<<\"build_tools\">>,[<<\"rebar3\">>]}}.\n"
        );
        let app_src = format!(
            "{{application, {name}, [{{vsn, \"{version}\"}}, {{applications, [kernel, stdlib]}}]}}.\n"
        );
        let header = |size: usize| {
            let mut h = tar::Header::new_gnu();
            h.set_size(size as u64);
            h.set_mode(0o644);
            h.set_mtime(946_684_800);
            h.set_cksum();
            h
        };
        let mut contents = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
        contents
            .append_data(
                &mut header(app_src.len()),
                format!("src/{name}.app.src"),
                app_src.as_bytes(),
            )
            .unwrap();
        let contents = contents.into_inner().unwrap().finish().unwrap();
        let inner = Sha256::new()
            .chain_update(b"3")
            .chain_update(metadata.as_bytes())
            .chain_update(&contents)
            .finalize();
        let checksum = hex::encode_upper(inner);
        let mut outer = tar::Builder::new(Vec::new());
        for (member, data) in [
            ("VERSION", b"3".as_slice()),
            ("CHECKSUM", checksum.as_bytes()),
            ("metadata.config", metadata.as_bytes()),
            ("contents.tar.gz", &contents),
        ] {
            outer
                .append_data(&mut header(data.len()), member, data)
                .unwrap();
        }
        outer.into_inner().unwrap()
    }

    struct Site {
        tmp: tempfile::TempDir,
        api: Arc<Publisher>,
        import: ImportConfig,
    }

    impl Site {
        fn new(settle_ms: u64) -> Self {
            let tmp = tempfile::tempdir().unwrap();
            let key = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys/other.pem");
            let text = format!(
                "data_dir = \"data\"\n\
                 [signing]\nkey = {key:?}\n\
                 [[repository]]\nname = \"acme\"\nreserved = [\"*\"]\n\
                 [import]\ndir = \"import\"\nsettle_ms = {settle_ms}\n",
                key = key.display().to_string()
            );
            let config =
                crate::config::Config::parse(&text, &tmp.path().join("hexmirror.toml")).unwrap();
            let import = config.import.clone().expect("[import] parsed");
            assert_eq!(import.dir, tmp.path().join("import"));
            assert_eq!(import.repository, "acme");
            let _ = tracing_subscriber::fmt().with_test_writer().try_init();
            fs::create_dir_all(&config.data_dir).unwrap();
            let api = Publisher::open(config).unwrap();
            Self { tmp, api, import }
        }

        fn dir(&self) -> &Path {
            &self.import.dir
        }

        fn start(&self) -> tokio::sync::oneshot::Sender<()> {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(run(self.import.clone(), Arc::clone(&self.api), async {
                let _ = stopped.await;
            }));
            stop
        }

        fn names(&self, sub: &str) -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(self.dir().join(sub))
                .map(|rd| {
                    rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .filter(|n| !n.starts_with('.'))
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            names
        }

        fn tree(&self) -> PathBuf {
            self.tmp.path().join("data/current")
        }

        /// Waits up to 30 s for `cond`; on timeout, fails showing the folders.
        async fn until(&self, what: &str, mut cond: impl FnMut() -> bool) {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !cond() {
                if Instant::now() >= deadline {
                    let mut state = String::new();
                    for sub in ["", PROCESSING, DONE, FAILED] {
                        state.push_str(&format!("{sub}/: {:?}\n", self.names(sub)));
                        for n in self.names(sub) {
                            if n.ends_with(REASON_SUFFIX) || n.ends_with(RESULT_SUFFIX) {
                                let text = fs::read_to_string(self.dir().join(sub).join(&n));
                                state.push_str(&format!("  {n}: {}\n", text.unwrap_or_default()));
                            }
                        }
                    }
                    panic!("timed out waiting until {what}:\n{state}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn imports_refuses_and_recognises_a_second_drop() {
        let site = Site::new(300);
        let good = hex_tarball("acme_x", "1.0.0");
        // Left in processing/ by a daemon that stopped mid-way.
        fs::create_dir_all(site.dir().join(PROCESSING)).unwrap();
        fs::write(
            site.dir().join(PROCESSING).join("acme_left-1.0.0.tar"),
            hex_tarball("acme_left", "1.0.0"),
        )
        .unwrap();
        let stop = site.start();
        site.until("the leftover in processing/ is done", || {
            site.names(DONE).contains(&"acme_left-1.0.0.tar".to_owned())
        })
        .await;
        assert!(site.tree().join("repos/acme/packages/acme_left").is_file());

        fs::write(site.dir().join("acme_x-1.0.0.tar"), &good).unwrap();
        fs::write(site.dir().join("broken.tar"), b"not a tarball").unwrap();
        fs::write(site.dir().join("notes.txt"), b"hello").unwrap();
        fs::write(site.dir().join(OsStr::from_bytes(b"odd\xff.tar")), &good).unwrap();
        for ignored in [".hidden.tar", "late.tar.part", "x.tmp"] {
            fs::write(site.dir().join(ignored), &good).unwrap();
        }
        site.until("all four are sorted", || {
            site.names(DONE).len() == 4 && site.names(FAILED).len() == 6
        })
        .await;
        assert_eq!(
            site.names(DONE),
            [
                "acme_left-1.0.0.tar",
                "acme_left-1.0.0.tar.result",
                "acme_x-1.0.0.tar",
                "acme_x-1.0.0.tar.result",
            ]
        );
        assert_eq!(
            site.names(FAILED),
            [
                "broken.tar",
                "broken.tar.reason",
                "notes.txt",
                "notes.txt.reason",
                "odd\u{fffd}.tar",
                "odd\u{fffd}.tar.reason",
            ]
        );
        let reason = |n: &[u8]| {
            let mut name = n.to_vec();
            name.extend_from_slice(REASON_SUFFIX.as_bytes());
            fs::read_to_string(site.dir().join(FAILED).join(OsStr::from_bytes(&name))).unwrap()
        };
        let r = reason(b"broken.tar");
        assert!(r.contains("What failed: package tarball:"), "{r}");
        assert!(r.contains("What to do:"), "{r}");
        let r = reason(b"notes.txt");
        assert!(r.contains("only package tarballs"), "{r}");
        let r = reason(b"odd\xff.tar");
        assert!(
            r.contains("odd\u{fffd}.tar") && r.contains("not valid UTF-8"),
            "{r}"
        );
        // The original bytes of the odd name are kept.
        assert!(
            site.dir()
                .join(FAILED)
                .join(OsStr::from_bytes(b"odd\xff.tar"))
                .is_file()
        );
        assert!(site.tree().join("repos/acme/packages/acme_x").is_file());
        let result =
            fs::read_to_string(site.dir().join(DONE).join("acme_x-1.0.0.tar.result")).unwrap();
        assert!(result.starts_with("published acme_x 1.0.0"), "{result}");
        // Ignored names stay where they are.
        for ignored in [".hidden.tar", "late.tar.part", "x.tmp"] {
            assert!(site.dir().join(ignored).is_file(), "{ignored} left alone");
        }
        assert!(site.names(PROCESSING).is_empty());

        // The same tarball again: done, "already published", not republished.
        let row = site
            .api
            .release("acme", "acme_x", "1.0.0")
            .await
            .unwrap()
            .unwrap();
        let generation = fs::read_link(site.tree()).unwrap();
        fs::write(site.dir().join("acme_x-1.0.0.tar"), &good).unwrap();
        site.until("the second drop is done", || {
            site.names(DONE).contains(&"acme_x-1.0.0~1.tar".to_owned())
        })
        .await;
        let result =
            fs::read_to_string(site.dir().join(DONE).join("acme_x-1.0.0~1.tar.result")).unwrap();
        assert!(result.starts_with("already published"), "{result}");
        assert_eq!(fs::read_link(site.tree()).unwrap(), generation);
        let again = site
            .api
            .release("acme", "acme_x", "1.0.0")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (again.updated_at, again.outer_sha256),
            (row.updated_at, row.outer_sha256)
        );
        assert_eq!(site.names(FAILED).len(), 6, "not failed");

        // Another tarball of an existing version is refused.
        let mut other = hex_tarball("acme_x", "1.0.0");
        other.extend_from_slice(&[0; 512]);
        fs::write(site.dir().join("acme_x-again.tar"), &other).unwrap();
        site.until("the conflicting tarball fails", || {
            site.names(FAILED)
                .contains(&"acme_x-again.tar.reason".to_owned())
        })
        .await;
        let r = reason(b"acme_x-again.tar");
        assert!(r.contains("already published"), "{r}");
        let _ = stop.send(());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_being_written_is_not_taken_before_it_settles() {
        let site = Site::new(1000);
        let stop = site.start();
        site.until("the folders exist", || site.dir().join(FAILED).is_dir())
            .await;
        let bytes = hex_tarball("acme_slow", "1.0.0");
        let path = site.dir().join("acme_slow-1.0.0.tar");
        let mut file = File::create(&path).unwrap();
        // Written in pieces over about 1.5 settle periods, never pausing long.
        let pieces = bytes.chunks(bytes.len().div_ceil(15));
        for piece in pieces {
            file.write_all(piece).unwrap();
            file.flush().unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(path.is_file(), "taken while still being written");
        }
        drop(file);
        assert!(site.names(PROCESSING).is_empty() && site.names(FAILED).is_empty());
        site.until("the finished file is done", || {
            site.names(DONE).contains(&"acme_slow-1.0.0.tar".to_owned())
        })
        .await;
        assert!(site.names(FAILED).is_empty(), "{:?}", site.names(FAILED));
        assert!(site.tree().join("repos/acme/packages/acme_slow").is_file());
        let _ = stop.send(());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_importer_on_the_same_folder_waits() {
        let site = Site::new(200);
        let first = site.start();
        site.until("the lock is taken", || site.dir().join(LOCK_FILE).is_file())
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let d = site.dir().to_owned();
        let second = tokio::task::spawn_blocking(move || lock_dir(&d))
            .await
            .unwrap();
        assert!(second.unwrap().is_none(), "the folder is locked");
        let _ = first.send(());
    }
}
