//! The catalog: every package and release the mirror serves, queryable
//! (search, one package, one release, dependents), in its own SQLite file,
//! `DATA_DIR/catalog.db`.
//!
//! It is filled from verified data only: a sync adds the records it
//! published (signature and origin checked again on the way in) with the
//! metadata of the tarballs it fetched; `hexmirror catalog rebuild` refills
//! it from the served tree. It never decides what is served: the tree is the
//! source of truth, the catalog a derived index that can be thrown away.
//!
//! Layout: [`query`] (PURE: hex.pm's search syntax), `write` (what a writer
//! puts in), `read` (what the API reads out), `rebuild`.

pub mod bucket;
pub mod downloads;
mod follow;
pub mod query;
mod read;
mod rebuild;
mod write;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

pub use follow::{FollowError, fill_if_empty, follow, members};
pub use read::{
    Dependent, PackageView, ReleaseView, Requirement, Stats, View, Visible, dependents, package,
    search, stats,
};
pub use rebuild::{RebuildError, RebuildReport, rebuild};
pub use write::{Entry, Origin, put, put_api_meta, put_tarball_meta, remove, rename_repository};

/// The catalog database, one connection behind a mutex: one writer at a
/// time, and reads are short.
#[derive(Debug, Clone)]
pub struct Catalog {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

/// A catalog operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// SQLite refused.
    #[error("catalog {}: {source}; it is derived data: `hexmirror catalog rebuild` makes it again", path.display())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The blocking task died (a bug).
    #[error("catalog task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The file name under the data directory.
pub const CATALOG_FILE: &str = "catalog.db";

/// Schema version this code writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 4;

/// The tables of packages: each held package, its releases and their
/// requirements, and the search text. Derived from verified files only, so
/// a migration may drop them for the next fill to make again.
const PACKAGES: &str = "
CREATE TABLE IF NOT EXISTS package (
    id INTEGER PRIMARY KEY,
    repository TEXT NOT NULL,
    name TEXT NOT NULL,
    -- 1: published to a repository of ours; 0: the upstream's, mirrored.
    -- A repository of ours may share the upstream's name (a re-signed
    -- `hexpm`), so the name alone does not say whose a package is.
    hosted INTEGER NOT NULL DEFAULT 0,
    -- The upstream's /names updated_at (Unix seconds), when it gives one.
    updated_at INTEGER,
    -- Local: when this mirror first saw the package.
    first_seen INTEGER NOT NULL,
    UNIQUE (repository, name, hosted)
);
CREATE TABLE IF NOT EXISTS release (
    package_id INTEGER NOT NULL REFERENCES package(id) ON DELETE CASCADE,
    version TEXT NOT NULL,
    outer_checksum TEXT,
    inner_checksum TEXT NOT NULL,
    retired_reason TEXT,
    retired_message TEXT,
    has_docs INTEGER NOT NULL DEFAULT 0,
    -- The signed record's published_at (Unix seconds), when it has one.
    published_at INTEGER,
    first_seen INTEGER NOT NULL,
    PRIMARY KEY (package_id, version)
);
CREATE TABLE IF NOT EXISTS requirement (
    package_id INTEGER NOT NULL REFERENCES package(id) ON DELETE CASCADE,
    version TEXT NOT NULL,
    name TEXT NOT NULL,
    repository TEXT,
    requirement TEXT NOT NULL,
    optional INTEGER NOT NULL,
    app TEXT
);
-- Full text over name and description; rowid = package.id.
CREATE VIRTUAL TABLE IF NOT EXISTS package_text USING fts5 (
    name, description, tokenize = 'unicode61'
);
";

/// The indexes of [`PACKAGES`]' tables, apart so that a bulk load can drop
/// them and build each once at the end, instead of keeping them sorted
/// row by row.
pub(crate) const PACKAGE_INDEXES: &str = "
CREATE INDEX IF NOT EXISTS release_tarball ON release (outer_checksum);
CREATE INDEX IF NOT EXISTS requirement_of ON requirement (package_id, version);
CREATE INDEX IF NOT EXISTS requirement_on ON requirement (name);
";

/// Tarball metadata a sync noted and has not merged yet: appended without
/// an index (a random-key insert per tarball was most of what the catalog
/// cost a full sync), merged into `tarball_meta` in key order by
/// [`NoteBatch::flush`]. Nothing reads it.
const PENDING: &str = "
CREATE TABLE IF NOT EXISTS tarball_meta_pending (sha256 TEXT NOT NULL, meta TEXT NOT NULL);
";

/// Moves the pending tarball metadata into `tarball_meta`.
const MERGE_PENDING: &str = "
INSERT OR IGNORE INTO tarball_meta (sha256, meta)
    SELECT sha256, meta FROM tarball_meta_pending ORDER BY sha256;
DELETE FROM tarball_meta_pending;
";

/// Drops [`PACKAGE_INDEXES`] (for a bulk load).
pub(crate) const DROP_PACKAGE_INDEXES: &str = "
DROP INDEX IF EXISTS release_tarball;
DROP INDEX IF EXISTS requirement_of;
DROP INDEX IF EXISTS requirement_on;
";

/// Version 1 (with [`PACKAGES`]): tarball metadata.
const SCHEMA: &str = "
-- Metadata of every verified tarball the mirror holds, by its SHA-256: a
-- fact about the bytes, written as tarballs are verified, whatever is
-- published.
CREATE TABLE IF NOT EXISTS tarball_meta (
    sha256 TEXT PRIMARY KEY,
    meta TEXT NOT NULL
);
";

/// Version 2: download counts (and the log lines already imported).
const SCHEMA_2: &str = "
CREATE TABLE IF NOT EXISTS download (
    repository TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    -- Unix day (UTC).
    day INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (repository, name, version, day)
);
CREATE INDEX IF NOT EXISTS download_of ON download (repository, name);
CREATE TABLE IF NOT EXISTS download_log_line (hash BLOB PRIMARY KEY);
";

/// Version 3: which upstream packages each repository of ours serves (its
/// curated `/names`), and the SHA-256 of the file that list came from.
const SCHEMA_3: &str = "
CREATE TABLE IF NOT EXISTS member (
    repository TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (repository, name)
);
CREATE TABLE IF NOT EXISTS member_source (
    repository TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL
);
";

/// Version 4: `package.hosted`. Versions 1 to 3 keyed packages by
/// repository name alone, which mixed a hosted package into the mirror's
/// rows when a repository of ours has the upstream's name; those rows
/// cannot be told apart, so they go, and the next fill makes them again
/// (`serve` at start, the next sync, or `hexmirror catalog rebuild`).
const SCHEMA_4: &str = "
DROP TABLE IF EXISTS package_text;
DROP TABLE IF EXISTS requirement;
DROP TABLE IF EXISTS release;
DROP TABLE IF EXISTS package;
";

impl Catalog {
    /// Opens (creating or migrating) `DATA_DIR/catalog.db`.
    pub fn open(data_dir: &Path) -> Result<Self, CatalogError> {
        let path = data_dir.join(CATALOG_FILE);
        let fail = |source| CatalogError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(fail)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        )
        .map_err(fail)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(fail)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(fail)?;
        // Each step migrates from the version before it; a new file takes
        // them all.
        if version < 1 {
            conn.execute_batch(SCHEMA).map_err(fail)?;
            conn.execute_batch(PACKAGES).map_err(fail)?;
        }
        if version < 2 {
            conn.execute_batch(SCHEMA_2).map_err(fail)?;
        }
        if version < 3 {
            conn.execute_batch(SCHEMA_3).map_err(fail)?;
        }
        if (1..4).contains(&version) {
            // In one transaction: a stop part-way leaves version 3 whole.
            conn.execute_batch(&format!("BEGIN; {SCHEMA_4} {PACKAGES} COMMIT;"))
                .map_err(fail)?;
        }
        // A bulk load drops the indexes inside its transaction, so a
        // rollback brings them back; made here as well, at no cost when
        // present, so that no path can leave a catalog without them.
        conn.execute_batch(PACKAGE_INDEXES).map_err(fail)?;
        conn.execute_batch(PENDING).map_err(fail)?;
        if version < SCHEMA_VERSION {
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(fail)?;
        }
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path,
        })
    }

    /// Runs `f` on the connection (blocking).
    pub fn call_blocking<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, CatalogError> {
        f(&mut self.lock()).map_err(|source| self.sqlite_error(source))
    }

    /// The connection, held until the guard drops (blocking), for work that
    /// mixes its own errors with SQL: a rebuild reads files inside its
    /// transaction.
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A SQLite error of this catalog, with its path.
    pub(crate) fn sqlite_error(&self, source: rusqlite::Error) -> CatalogError {
        CatalogError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Records a verified tarball's metadata on the blocking pool; a
    /// failure is logged (the catalog is derived data, the caller goes on).
    pub async fn note_tarball(&self, sha256: [u8; 32], metadata: crate::tarball::Metadata) {
        let sha = hex::encode(sha256);
        let noted = self
            .call(move |c| put_tarball_meta(c, &sha, &metadata))
            .await;
        if let Err(e) = noted {
            tracing::warn!(tarball = %hex::encode(sha256), "catalog: {e}");
        }
    }

    /// A batch writer of tarball metadata, for a writer that fetches many.
    ///
    /// Until its first [`NoteBatch::flush`], the connection does not
    /// checkpoint its write-ahead log: each checkpoint fsyncs, and on ext4
    /// an fsync while a full sync has gigabytes of tarballs dirty waits for
    /// them too, which at full scale slowed every fetch (a full sync took
    /// twice as long with the catalog as without). The catalog is derived
    /// data: a crash loses at most metadata a rebuild reads again.
    pub fn batch(&self) -> NoteBatch {
        if let Err(e) = self.call_blocking(|c| c.pragma_update(None, "wal_autocheckpoint", 0)) {
            tracing::warn!("catalog: {e}");
        }
        NoteBatch {
            catalog: self.clone(),
            pending: Mutex::new(Vec::new()),
            written: Default::default(),
            micros: Default::default(),
        }
    }

    /// Runs `f` on the connection on the blocking pool.
    pub async fn call<T, F>(&self, f: F) -> Result<T, CatalogError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.call_blocking(f)).await?
    }
}

/// How many tarballs' metadata a [`NoteBatch`] writes per transaction.
const NOTE_BATCH: usize = 1000;

/// Tarball metadata noted as a sync fetches, written [`NOTE_BATCH`] at a
/// time, each batch one transaction on the blocking pool, instead of one
/// commit and one pool hop per tarball. What is pending is written by
/// [`NoteBatch::flush`], which the sync calls before the catalog takes its
/// records, and again when it ends, whatever the outcome.
#[derive(Debug)]
pub struct NoteBatch {
    catalog: Catalog,
    pending: Mutex<Vec<(String, serde_json::Value)>>,
    /// Tarballs written, and the time writing took (the catalog's share of
    /// a sync, reported by [`NoteBatch::log_totals`]).
    written: std::sync::atomic::AtomicU64,
    micros: std::sync::atomic::AtomicU64,
}

impl NoteBatch {
    /// Notes a verified tarball's metadata (by SHA-256), writing a batch
    /// when one is full.
    pub async fn note(&self, sha256: [u8; 32], metadata: &crate::tarball::Metadata) {
        let full = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.push((hex::encode(sha256), metadata.api_meta()));
            (pending.len() >= NOTE_BATCH).then(|| std::mem::take(&mut *pending))
        };
        if let Some(batch) = full {
            self.write(batch).await;
        }
    }

    /// Writes whatever is pending, and merges it into what the catalog
    /// reads.
    pub async fn flush(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if !batch.is_empty() {
            self.write(batch).await;
        }
        let started = std::time::Instant::now();
        let merged = self
            .catalog
            .call(|c| {
                let tx = c.transaction()?;
                tx.execute_batch(MERGE_PENDING)?;
                tx.commit()?;
                // Back to SQLite's default: one checkpoint now, then as usual.
                c.pragma_update(None, "wal_autocheckpoint", 1000)?;
                c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            })
            .await;
        self.micros
            .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
        if let Err(e) = merged {
            tracing::warn!("catalog: tarball metadata not merged ({e}); the next sync merges it");
        }
    }

    /// Logs how many tarballs' metadata went in, and the time it took.
    pub fn log_totals(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let tarballs = self.written.load(Relaxed);
        if tarballs > 0 {
            tracing::info!(
                tarballs,
                ms = self.micros.load(Relaxed) / 1000,
                "catalog: tarball metadata in"
            );
        }
    }

    async fn write(&self, batch: Vec<(String, serde_json::Value)>) {
        use std::sync::atomic::Ordering::Relaxed;
        let n = batch.len();
        let started = std::time::Instant::now();
        let written = self
            .catalog
            .call(move |c| {
                // No search text to refresh: the sync puts its records (and
                // so their text) after its tarballs.
                let tx = c.transaction()?;
                {
                    let mut insert = tx.prepare_cached(
                        "INSERT INTO tarball_meta_pending (sha256, meta) VALUES (?1, ?2)",
                    )?;
                    for (sha, meta) in &batch {
                        insert.execute(rusqlite::params![sha, meta.to_string()])?;
                    }
                }
                tx.commit()
            })
            .await;
        self.micros
            .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
        // Derived data: the sync goes on; a rebuild reads the tarballs again.
        match written {
            Ok(()) => {
                self.written.fetch_add(n as u64, Relaxed);
            }
            Err(e) => tracing::warn!(tarballs = n, "catalog: tarball metadata not written ({e})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::query::{Query, Sort};
    use super::*;
    use crate::registry::proto::package::{Dependency, Package, Release, RetirementStatus};

    fn release(version: &str, outer: u8, deps: &[(&str, &str)]) -> Release {
        Release {
            version: version.into(),
            inner_checksum: vec![outer ^ 0xff; 32],
            outer_checksum: Some(vec![outer; 32]),
            dependencies: deps
                .iter()
                .map(|(n, r)| Dependency {
                    package: (*n).into(),
                    requirement: (*r).into(),
                    optional: None,
                    app: None,
                    repository: None,
                })
                .collect(),
            ..Release::default()
        }
    }

    fn package(name: &str, releases: Vec<Release>) -> Package {
        Package {
            name: name.into(),
            repository: "hexpm".into(),
            releases,
            ..Package::default()
        }
    }

    fn metadata(description: &str, tools: &[&str]) -> crate::tarball::Metadata {
        use crate::tarball::terms::Term;
        let bin = |s: &str| Term::Binary(s.as_bytes().to_vec());
        crate::tarball::Metadata {
            name: "x".into(),
            version: "1.0.0".into(),
            app: None,
            build_tools: tools.iter().map(|t| (*t).to_owned()).collect(),
            requirements: Vec::new(),
            terms: vec![
                ("description".into(), bin(description)),
                (
                    "extra".into(),
                    Term::Map(vec![(
                        bin("team"),
                        Term::Map(vec![(bin("size"), Term::Integer(42))]),
                    )]),
                ),
            ],
        }
    }

    fn put_all(catalog: &Catalog, packages: &[Package], updated: &[(&str, u64)]) {
        catalog
            .call_blocking(|c| {
                let tx = c.transaction()?;
                for p in packages {
                    let updated_at = updated.iter().find(|(n, _)| *n == p.name).map(|u| u.1);
                    let entry = Entry {
                        origin: Origin::Mirrored,
                        repository: "hexpm",
                        record: p,
                        updated_at,
                    };
                    put(&tx, &entry, 1_700_000_000)?;
                }
                tx.commit()
            })
            .unwrap();
    }

    /// Tarball metadata for the releases whose outer checksum is
    /// `[byte; 32]` (see [`release`]): (byte, description, build tools).
    fn put_metas(catalog: &Catalog, metas: &[(u8, &str, &[&str])]) {
        catalog
            .call_blocking(|c| {
                for (byte, description, tools) in metas {
                    put_tarball_meta(c, &hex::encode([*byte; 32]), &metadata(description, tools))?;
                }
                Ok(())
            })
            .unwrap();
    }

    fn names(found: &[PackageView]) -> Vec<&str> {
        found.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn a_limited_reader_finds_and_orders_packages_by_the_releases_it_may_see() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        // Version 2 of `vault` is hidden from the reader: its description,
        // requirement, build tool and metadata are its only ones.
        let vault = package(
            "vault",
            vec![
                release("1.0.0", 7, &[("mime", "~> 2.0")]),
                release("2.0.0", 8, &[("secretdep", "~> 1.0")]),
            ],
        );
        let mime = package("mime", vec![release("2.0.0", 9, &[])]);
        put_all(&catalog, &[vault, mime], &[]);
        put_metas(
            &catalog,
            &[
                (7, "plain words", &["mix"]),
                (8, "classified roadmap", &["rebar3"]),
            ],
        );
        let find = |q: &str, visible: Option<Visible>| {
            let q = Query::parse(q);
            catalog
                .call_blocking(move |c| {
                    search(
                        c,
                        &View::Mirror("hexpm".into()),
                        &q,
                        Sort::Name,
                        1,
                        100,
                        visible,
                    )
                })
                .unwrap()
        };
        let ones: Visible = std::sync::Arc::new(|_: &str, v: &str| v.starts_with("1."));
        let none: Visible = std::sync::Arc::new(|_: &str, _: &str| false);
        let hidden = [
            "classified",
            "description:roadmap",
            "depends:secretdep",
            "build_tool:rebar3",
        ];
        for q in hidden {
            assert_eq!(names(&find(q, None)), ["vault"], "{q}, seeing everything");
            assert_eq!(
                names(&find(q, Some(ones.clone()))),
                Vec::<&str>::new(),
                "{q} matched a hidden release"
            );
        }
        assert_eq!(names(&find("depends:mime", Some(ones.clone()))), ["vault"]);
        assert_eq!(
            names(&find("build_tool:mix", Some(ones.clone()))),
            ["vault"]
        );
        assert_eq!(
            names(&find("vau", Some(ones.clone()))),
            ["vault"],
            "by name"
        );
        // A package with no visible release is not listed at all, so pages
        // are full pages.
        assert_eq!(names(&find("", Some(none))), Vec::<&str>::new());
        // The shared connection keeps no trace of a reader's function.
        let err = catalog
            .call_blocking(|c| c.query_row("SELECT hm_visible('a', '1.0.0')", [], |_| Ok(())))
            .unwrap_err();
        assert!(err.to_string().contains("no such function"), "{err}");
    }

    #[test]
    fn a_real_file_answers_search_package_and_dependents() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        let mut plug = package(
            "plug",
            vec![
                release("1.0.0", 1, &[]),
                release("1.1.0", 2, &[("mime", "~> 2.0")]),
            ],
        );
        plug.releases[0].retired = Some(RetirementStatus {
            reason: 2,
            message: Some("CVE".into()),
        });
        let jason = package("jason", vec![release("1.4.4", 3, &[])]);
        let phoenix = package(
            "phoenix",
            vec![release(
                "1.7.0",
                4,
                &[("plug", "~> 1.1"), ("jason", "~> 1.0")],
            )],
        );
        let mime = package("mime", vec![release("2.0.0", 5, &[])]);
        put_all(
            &catalog,
            &[plug, jason, phoenix, mime],
            &[("jason", 1_710_000_000)],
        );
        put_metas(
            &catalog,
            &[
                (3, "A blazing fast JSON parser", &["mix"]),
                (2, "Composable web middleware", &["mix", "make"]),
            ],
        );
        let find = |q: &str, sort: Sort| {
            let q = Query::parse(q);
            catalog
                .call_blocking(move |c| {
                    search(c, &View::Mirror("hexpm".into()), &q, sort, 1, 100, None)
                })
                .unwrap()
        };
        assert_eq!(
            names(&find("", Sort::Name)),
            ["jason", "mime", "phoenix", "plug"]
        );
        assert_eq!(
            names(&find("json", Sort::Name)),
            ["jason"],
            "description word"
        );
        assert_eq!(
            names(&find("hoe", Sort::Name)),
            ["phoenix"],
            "name substring"
        );
        assert_eq!(
            names(&find("ph", Sort::Name)),
            Vec::<&str>::new(),
            "short text: exact names only"
        );
        assert_eq!(names(&find("name:p*", Sort::Name)), ["phoenix", "plug"]);
        assert_eq!(names(&find("depends:plug", Sort::Name)), ["phoenix"]);
        assert_eq!(names(&find("depends:hexpm:mime", Sort::Name)), ["plug"]);
        assert_eq!(names(&find("build_tool:make", Sort::Name)), ["plug"]);
        assert_eq!(names(&find("description:middleware", Sort::Name)), ["plug"]);
        assert_eq!(
            names(&find("updated_after:2024-01-01T00:00:00Z", Sort::Name)),
            ["jason"]
        );
        assert_eq!(
            names(&find("extra:team,size,42", Sort::Name)),
            ["jason", "plug"]
        );
        assert_eq!(
            names(&find("extra:team,size,7", Sort::Name)),
            Vec::<&str>::new()
        );
        assert_eq!(names(&find("", Sort::UpdatedAt))[0], "jason");

        let plug = catalog
            .call_blocking(|c| package_view(c, "plug"))
            .unwrap()
            .unwrap();
        assert_eq!(
            plug.releases
                .iter()
                .map(|r| r.version.as_str())
                .collect::<Vec<_>>(),
            ["1.1.0", "1.0.0"]
        );
        assert_eq!(
            plug.releases[1].retired,
            Some(("security".into(), Some("CVE".into())))
        );
        assert_eq!(plug.releases[0].requirements[0].name, "mime");
        assert_eq!(
            plug.meta().unwrap()["description"],
            "Composable web middleware"
        );
        assert!(plug.releases[1].meta.is_none(), "no tarball read for 1.0.0");

        let dependents = catalog
            .call_blocking(|c| dependents(c, &View::Mirror("hexpm".into()), "hexpm", "plug"))
            .unwrap();
        assert_eq!(dependents.len(), 1);
        assert_eq!(
            (dependents[0].name.as_str(), dependents[0].versions.clone()),
            ("phoenix", vec!["1.7.0".to_string()])
        );

        // A package that left the mirror leaves the catalog, search included.
        catalog
            .call_blocking(|c| {
                let tx = c.transaction()?;
                remove(&tx, Origin::Mirrored, "hexpm", "jason")?;
                tx.commit()
            })
            .unwrap();
        assert!(find("json", Sort::Name).is_empty());
        // Reopening the file keeps everything (and migrates nothing twice).
        drop(catalog);
        let catalog = Catalog::open(dir.path()).unwrap();
        let n: i64 = catalog
            .call_blocking(|c| c.query_row("SELECT count(*) FROM package", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(n, 3);
    }

    fn package_view(
        c: &mut rusqlite::Connection,
        name: &str,
    ) -> rusqlite::Result<Option<PackageView>> {
        super::package(c, "hexpm", name)
    }

    #[test]
    fn a_put_keeps_when_each_release_was_first_seen() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        put_all(
            &catalog,
            &[package("a", vec![release("1.0.0", 1, &[])])],
            &[],
        );
        catalog
            .call_blocking(|c| {
                let tx = c.transaction()?;
                let p = package(
                    "a",
                    vec![release("1.0.0", 1, &[]), release("1.1.0", 2, &[])],
                );
                let entry = Entry {
                    origin: Origin::Mirrored,
                    repository: "hexpm",
                    record: &p,
                    updated_at: None,
                };
                put(&tx, &entry, 1_800_000_000)?;
                tx.commit()
            })
            .unwrap();
        let a = catalog
            .call_blocking(|c| package_view(c, "a"))
            .unwrap()
            .unwrap();
        assert_eq!(a.releases[0].first_seen, 1_800_000_000);
        assert_eq!(a.releases[1].first_seen, 1_700_000_000);
        assert_eq!(a.first_seen, 1_700_000_000);
    }

    #[test]
    fn version_3_rows_go_and_tarball_metadata_and_downloads_stay() {
        let dir = tempfile::tempdir().unwrap();
        {
            // The shape of versions 1 to 3: packages keyed by repository
            // name alone.
            let c = Connection::open(dir.path().join(CATALOG_FILE)).unwrap();
            c.execute_batch(
                &PACKAGES
                    .replace("hosted INTEGER NOT NULL DEFAULT 0,", "")
                    .replace(
                        "UNIQUE (repository, name, hosted)",
                        "UNIQUE (repository, name)",
                    ),
            )
            .unwrap();
            c.execute_batch(SCHEMA).unwrap();
            c.execute_batch(SCHEMA_2).unwrap();
            c.execute_batch(SCHEMA_3).unwrap();
            c.execute_batch(
                "INSERT INTO package (repository, name, first_seen) VALUES ('hexpm', 'inhouse', 1);
                 INSERT INTO tarball_meta VALUES ('ab', '{}');
                 INSERT INTO download VALUES ('hexpm', 'alpha', '1.0.0', 1, 5);
                 PRAGMA user_version = 3;",
            )
            .unwrap();
        }
        let catalog = Catalog::open(dir.path()).unwrap();
        let (packages, metas, downloads, version): (i64, i64, i64, i64) = catalog
            .call_blocking(|c| {
                c.query_row(
                    "SELECT (SELECT count(*) FROM package WHERE hosted = 0),
                            (SELECT count(*) FROM tarball_meta), (SELECT count(*) FROM download),
                            (SELECT user_version FROM pragma_user_version)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
            })
            .unwrap();
        assert_eq!(
            (packages, metas, downloads, version),
            (0, 1, 1, SCHEMA_VERSION)
        );
        // Opened again: nothing more goes.
        put_all(
            &catalog,
            &[package("alpha", vec![release("1.0.0", 1, &[])])],
            &[],
        );
        drop(catalog);
        let catalog = Catalog::open(dir.path()).unwrap();
        let n: i64 = catalog
            .call_blocking(|c| c.query_row("SELECT count(*) FROM package", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(n, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn noted_metadata_is_read_once_flushed_and_a_full_batch_goes_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        let count = |table: &'static str| {
            catalog
                .call_blocking(move |c| {
                    c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
                        r.get::<_, i64>(0)
                    })
                })
                .unwrap()
        };
        let notes = catalog.batch();
        for i in 0..NOTE_BATCH + 2 {
            let mut sha = [0u8; 32];
            sha[..8].copy_from_slice(&(i as u64).to_le_bytes());
            notes.note(sha, &metadata("d", &["mix"])).await;
        }
        // A full batch was written, unread until the merge; the rest waits.
        assert_eq!(
            (count("tarball_meta"), count("tarball_meta_pending")),
            (0, NOTE_BATCH as i64)
        );
        notes.flush().await;
        assert_eq!(
            (count("tarball_meta"), count("tarball_meta_pending")),
            (NOTE_BATCH as i64 + 2, 0)
        );
    }
}
