//! SQLite state: upstream validators, what each mirrored package holds, and
//! the sync history. The served tree never needs this database; it only
//! makes syncs incremental and resumable.
//!
//! One connection behind a mutex, used from `spawn_blocking` through
//! [`Db::call`]: writes are small, one transaction per package.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

pub use crate::plan::PackageState;
use crate::plan::Validators;

/// A database operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite refused.
    #[error("state database {}: {source}", path.display())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The blocking task died (a panic, which is a bug).
    #[error("state database {}: worker task failed: {source}", path.display())]
    Task {
        /// The database file.
        path: PathBuf,
        /// The join error.
        source: tokio::task::JoinError,
    },
}

/// Handle on the state database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
    path: Arc<Path>,
}

/// Outcome counters of one sync, as recorded in the history.
#[derive(Debug, Clone, Default)]
pub struct SyncRecord {
    /// "ok", "failed" or "up-to-date".
    pub status: String,
    /// Packages whose record was fetched and published.
    pub packages: u64,
    /// Tarballs downloaded and verified.
    pub releases: u64,
    /// Body bytes received from upstream.
    pub bytes: u64,
    /// Requests sent upstream.
    pub requests: u64,
    /// Packages left as they were because nothing changed.
    pub skipped: u64,
    /// Failures (package or release).
    pub failed: u64,
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS validators (
    path TEXT PRIMARY KEY, etag TEXT, last_modified TEXT);
CREATE TABLE IF NOT EXISTS packages (
    name TEXT PRIMARY KEY, updated_s INTEGER, updated_n INTEGER,
    versions TEXT NOT NULL, retired TEXT NOT NULL, deps TEXT NOT NULL,
    synced_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS syncs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, started_at INTEGER NOT NULL,
    finished_at INTEGER, status TEXT NOT NULL DEFAULT 'running',
    packages INTEGER, releases INTEGER, bytes INTEGER, requests INTEGER,
    skipped INTEGER, failed INTEGER);
CREATE TABLE IF NOT EXISTS signed_cache (
    repository TEXT NOT NULL, package TEXT NOT NULL, source_sha256 TEXT NOT NULL,
    fingerprint TEXT NOT NULL, signed_sha256 TEXT NOT NULL,
    PRIMARY KEY (repository, package));
CREATE TABLE IF NOT EXISTS failures (
    sync_id INTEGER NOT NULL, package TEXT NOT NULL, version TEXT,
    message TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hosted_releases (
    repository TEXT NOT NULL, package TEXT NOT NULL, version TEXT NOT NULL,
    outer_sha256 TEXT NOT NULL, inner_sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    requirements TEXT NOT NULL, meta TEXT NOT NULL,
    retired_reason TEXT, retired_message TEXT, docs_sha256 TEXT,
    publisher TEXT NOT NULL, inserted_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
    PRIMARY KEY (repository, package, version));
CREATE TABLE IF NOT EXISTS hosted_owners (
    repository TEXT NOT NULL, package TEXT NOT NULL, username TEXT NOT NULL,
    level TEXT NOT NULL, PRIMARY KEY (repository, package, username));
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, username TEXT NOT NULL,
    hash BLOB NOT NULL, scopes TEXT NOT NULL, created_at INTEGER NOT NULL,
    expires_at INTEGER, parent TEXT, revoked_at INTEGER);
CREATE TABLE IF NOT EXISTS quarantine (
    package TEXT PRIMARY KEY, kind TEXT NOT NULL, reason TEXT NOT NULL,
    since INTEGER NOT NULL, last_tried INTEGER NOT NULL, tries INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, actor TEXT NOT NULL,
    token TEXT, action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL,
    client TEXT);
";

/// Columns `orgs` gained after it was first created: a data directory from
/// before them gets them on open.
const ORGS_ADDED: &[(&str, &str)] = &[("billing_email", "TEXT"), ("updated_at", "INTEGER")];

/// Adds each of `columns` (name, declaration) that `table` lacks.
fn add_missing_columns(
    conn: &Connection,
    table: &str,
    columns: &[(&str, &str)],
) -> rusqlite::Result<()> {
    let have: Vec<String> = conn
        .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for (name, decl) in columns {
        if !have.iter().any(|h| h == name) {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {name} {decl}"))?;
        }
    }
    Ok(())
}

fn now() -> i64 {
    crate::clock::unix_now() as i64
}

/// Users, organizations and members (queried by `accounts::db`).
pub const ACCOUNTS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, admin INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL,
    -- argon2id PHC string; NULL: a token-only account.
    password_hash TEXT);
-- `add_missing_columns` gives an older `orgs` its later columns.
CREATE TABLE IF NOT EXISTS orgs (
    name TEXT PRIMARY KEY, created_at INTEGER NOT NULL, billing_email TEXT, updated_at INTEGER);
CREATE TABLE IF NOT EXISTS org_members (
    org TEXT NOT NULL, username TEXT NOT NULL,
    role TEXT NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
    PRIMARY KEY (org, username));
-- Invitations to organizations (JSR's): the user accepts or declines.
CREATE TABLE IF NOT EXISTS org_invites (
    org TEXT NOT NULL, username TEXT NOT NULL, role TEXT NOT NULL, invited_by TEXT NOT NULL,
    created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, PRIMARY KEY (org, username));
-- The OAuth device flow: a code a client polls with (stored hashed), the
-- short code a signed-in user approves, and the key that approved it.
CREATE TABLE IF NOT EXISTS oauth_devices (
    device_hash BLOB PRIMARY KEY, user_code TEXT NOT NULL UNIQUE, client_name TEXT,
    scope TEXT NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
    last_poll INTEGER, approved_by TEXT, denied INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0);
-- Refresh tokens (hashed; not API keys): each makes access tokens as
-- children of the key that approved the device.
CREATE TABLE IF NOT EXISTS oauth_refresh (
    id TEXT PRIMARY KEY, hash BLOB NOT NULL, parent TEXT NOT NULL, scope TEXT NOT NULL,
    created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, revoked_at INTEGER);
-- Users from before accounts: every token's user and every owner of a
-- hosted package becomes a user (idempotent; an organization's keys are
-- tokens of the organization, not of a user).
INSERT OR IGNORE INTO users (name, created_at)
    SELECT username, min(created_at) FROM tokens WHERE username NOT IN (SELECT name FROM orgs)
    GROUP BY username;
INSERT OR IGNORE INTO users (name, created_at)
    SELECT DISTINCT username, 0 FROM hosted_owners WHERE username NOT IN (SELECT name FROM orgs);
";

impl Db {
    /// Opens or creates `DATA_DIR/hexmirror.db`.
    pub fn open(data_dir: &Path) -> Result<Self, DbError> {
        let path: Arc<Path> = data_dir.join("hexmirror.db").into();
        let wrap = |source| DbError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(&path).map_err(wrap)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(wrap)?;
        conn.execute_batch(SCHEMA).map_err(wrap)?;
        conn.execute_batch(ACCOUNTS_SCHEMA).map_err(wrap)?;
        add_missing_columns(&conn, "orgs", ORGS_ADDED).map_err(wrap)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path,
        })
    }

    /// Opens `DATA_DIR/hexmirror.db` read-only, for readers that must not
    /// create or migrate it. `Ok(None)`: there is no database yet.
    pub fn open_read_only(data_dir: &Path) -> Result<Option<Self>, DbError> {
        let path: Arc<Path> = data_dir.join("hexmirror.db").into();
        if !path.exists() {
            return Ok(None);
        }
        let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| {
                c.busy_timeout(std::time::Duration::from_secs(10))?;
                Ok(c)
            })
            .map_err(|source| DbError::Sqlite {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Some(Self {
            conn: Arc::new(Mutex::new(conn)),
            path,
        }))
    }

    /// Runs `f` on the connection from code already on a blocking thread.
    pub fn call_blocking<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, DbError> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard).map_err(|source| DbError::Sqlite {
            path: self.path.to_path_buf(),
            source,
        })
    }

    /// Runs `f` on the connection in the blocking pool.
    pub async fn call<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            // A poisoned lock means a panic mid-call; SQLite rolled back the
            // open transaction, so the connection itself is still sound.
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|source| DbError::Task {
            path: self.path.to_path_buf(),
            source,
        })?
        .map_err(|source| DbError::Sqlite {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Validators stored for an upstream path.
pub fn validators(conn: &Connection, path: &str) -> rusqlite::Result<Validators> {
    Ok(conn
        .query_row(
            "SELECT etag, last_modified FROM validators WHERE path = ?1",
            [path],
            |r| {
                Ok(Validators {
                    etag: r.get(0)?,
                    last_modified: r.get(1)?,
                })
            },
        )
        .optional()?
        .unwrap_or_default())
}

/// Remembers validators for an upstream path.
pub fn set_validators(conn: &Connection, path: &str, v: &Validators) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO validators (path, etag, last_modified) VALUES (?1, ?2, ?3)
         ON CONFLICT(path) DO UPDATE SET etag = ?2, last_modified = ?3",
        params![path, v.etag, v.last_modified],
    )?;
    Ok(())
}

/// `meta` keys of the far side of an air gap: the last bundle imported
/// (its sequence and manifest hash: the chain position), when, the upstream
/// sync time it carried, and its expiry (which caps this side's manifests).
pub const BUNDLE_SEQUENCE: &str = "bundle_sequence";
/// See [`BUNDLE_SEQUENCE`].
pub const BUNDLE_HASH: &str = "bundle_hash";
/// See [`BUNDLE_SEQUENCE`].
pub const BUNDLE_IMPORTED_AT: &str = "bundle_imported_at";
/// See [`BUNDLE_SEQUENCE`].
pub const BUNDLE_UPSTREAM_SYNCED_AT: &str = "bundle_upstream_synced_at";
/// See [`BUNDLE_SEQUENCE`].
pub const BUNDLE_EXPIRES_AT: &str = "bundle_expires_at";

/// A `meta` value.
pub fn meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

/// Sets a `meta` value.
pub fn set_meta(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = ?2",
        params![key, value],
    )?;
    Ok(())
}

/// Every mirrored package and what it holds.
pub fn packages(
    conn: &Connection,
) -> rusqlite::Result<std::collections::BTreeMap<String, PackageState>> {
    let mut stmt =
        conn.prepare("SELECT name, updated_s, updated_n, versions, retired, deps FROM packages")?;
    let rows = stmt.query_map([], |r| {
        let updated: (Option<i64>, Option<i32>) = (r.get(1)?, r.get(2)?);
        let json = |i: usize| -> rusqlite::Result<String> { r.get(i) };
        Ok((
            r.get::<_, String>(0)?,
            PackageState {
                updated_at: match updated {
                    (Some(s), Some(n)) => Some((s, n)),
                    _ => None,
                },
                versions: serde_json::from_str(&json(3)?).unwrap_or_default(),
                retired: serde_json::from_str(&json(4)?).unwrap_or_default(),
                deps: serde_json::from_str(&json(5)?).unwrap_or_default(),
            },
        ))
    })?;
    rows.collect()
}

/// Records a package as published: its state and validators, in one
/// transaction.
pub fn record_package(
    conn: &mut Connection,
    name: &str,
    state: &PackageState,
    validators: Option<&Validators>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    tx.execute(
        "INSERT INTO packages (name, updated_s, updated_n, versions, retired, deps, synced_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT(name) DO UPDATE SET updated_s = ?2, updated_n = ?3, versions = ?4,
             retired = ?5, deps = ?6, synced_at = ?7",
        params![
            name,
            state.updated_at.map(|u| u.0),
            state.updated_at.map(|u| u.1),
            to_json(&state.versions),
            to_json(&state.retired),
            to_json(&state.deps),
            now()
        ],
    )?;
    if let Some(v) = validators {
        set_validators(&tx, &format!("packages/{name}"), v)?;
    }
    tx.commit()
}

/// Forgets a package that is no longer mirrored.
pub fn forget_package(conn: &mut Connection, name: &str) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    tx.execute("DELETE FROM packages WHERE name = ?1", [name])?;
    tx.execute(
        "DELETE FROM validators WHERE path = ?1",
        [format!("packages/{name}")],
    )?;
    tx.commit()
}

/// A package held back by the quarantine: it failed verification or could
/// not be fetched, and keeps its last good state in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// The package.
    pub package: String,
    /// Which check failed last.
    pub kind: crate::plan::FailureKind,
    /// What failed last, with the URL.
    pub reason: String,
    /// Unix seconds of the first failure in a row.
    pub since: i64,
    /// Unix seconds of the last try.
    pub last_tried: i64,
    /// Syncs that tried it since it entered the quarantine.
    pub tries: i64,
}

/// How many packages the mirror holds.
pub fn package_count(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row("SELECT count(*) FROM packages", [], |r| r.get::<_, i64>(0))
        .map(|n| n.max(0) as u64)
}

/// Every quarantined package, by name.
pub fn quarantine(conn: &Connection) -> rusqlite::Result<Vec<Quarantined>> {
    let mut stmt = conn.prepare(
        "SELECT package, kind, reason, since, last_tried, tries FROM quarantine ORDER BY package",
    )?;
    let rows = stmt.query_map([], |r| {
        let kind: String = r.get(1)?;
        Ok(Quarantined {
            package: r.get(0)?,
            // A kind this version does not know (written by a newer one)
            // still counts as quarantined.
            kind: crate::plan::FailureKind::parse(&kind)
                .unwrap_or(crate::plan::FailureKind::Structure),
            reason: r.get(2)?,
            since: r.get(3)?,
            last_tried: r.get(4)?,
            tries: r.get(5)?,
        })
    })?;
    rows.collect()
}

/// Makes the quarantine exactly `failed` (package, kind, reason) as of
/// `now`: a package that failed again keeps its `since`; every other
/// package leaves. One transaction.
pub fn set_quarantine(
    conn: &mut Connection,
    failed: &[(String, crate::plan::FailureKind, String)],
    now: i64,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    let still: std::collections::BTreeSet<&str> = failed.iter().map(|f| f.0.as_str()).collect();
    for row in quarantine(&tx)? {
        if !still.contains(row.package.as_str()) {
            tx.execute("DELETE FROM quarantine WHERE package = ?1", [&row.package])?;
        }
    }
    for (package, kind, reason) in failed {
        tx.execute(
            "INSERT INTO quarantine (package, kind, reason, since, last_tried, tries)
             VALUES (?1, ?2, ?3, ?4, ?4, 1)
             ON CONFLICT(package) DO UPDATE SET kind = ?2, reason = ?3, last_tried = ?4,
                 tries = tries + 1",
            params![package, kind.as_str(), reason, now],
        )?;
    }
    tx.commit()
}

/// A re-signed record of one of our repositories and what it was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCacheRow {
    /// Our repository.
    pub repository: String,
    /// The package.
    pub package: String,
    /// SHA-256 of the upstream record it was built from.
    pub source_sha256: String,
    /// Key, name and curation it was built with.
    pub fingerprint: String,
    /// SHA-256 of the signed file (a blob).
    pub signed_sha256: String,
}

/// The whole signed-record cache.
pub fn signed_cache(conn: &Connection) -> rusqlite::Result<Vec<SignedCacheRow>> {
    let mut stmt = conn.prepare(
        "SELECT repository, package, source_sha256, fingerprint, signed_sha256 FROM signed_cache",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(SignedCacheRow {
            repository: r.get(0)?,
            package: r.get(1)?,
            source_sha256: r.get(2)?,
            fingerprint: r.get(3)?,
            signed_sha256: r.get(4)?,
        })
    })?;
    rows.collect()
}

/// Replaces the signed-record cache with `rows`, in one transaction.
pub fn set_signed_cache(conn: &mut Connection, rows: &[SignedCacheRow]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    tx.execute("DELETE FROM signed_cache", [])?;
    for r in rows {
        tx.execute(
            "INSERT OR REPLACE INTO signed_cache VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                r.repository,
                r.package,
                r.source_sha256,
                r.fingerprint,
                r.signed_sha256
            ],
        )?;
    }
    tx.commit()
}

/// Starts a sync in the history; returns its id.
pub fn start_sync(conn: &Connection) -> rusqlite::Result<i64> {
    conn.execute("INSERT INTO syncs (started_at) VALUES (?1)", [now()])?;
    Ok(conn.last_insert_rowid())
}

/// Closes a sync in the history with its counters and failures.
pub fn finish_sync(
    conn: &mut Connection,
    id: i64,
    record: &SyncRecord,
    failures: &[(String, Option<String>, String)],
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    tx.execute(
        "UPDATE syncs SET finished_at = ?2, status = ?3, packages = ?4, releases = ?5,
             bytes = ?6, requests = ?7, skipped = ?8, failed = ?9 WHERE id = ?1",
        params![
            id,
            now(),
            record.status,
            record.packages as i64,
            record.releases as i64,
            record.bytes as i64,
            record.requests as i64,
            record.skipped as i64,
            record.failed as i64
        ],
    )?;
    for (package, version, message) in failures {
        tx.execute(
            "INSERT INTO failures (sync_id, package, version, message) VALUES (?1, ?2, ?3, ?4)",
            params![id, package, version, message],
        )?;
    }
    tx.commit()
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Plain vectors of strings and integers always serialise.
    serde_json::to_string(value).unwrap_or_else(|_| "[]".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quarantine_keeps_since_and_releases_what_passed() {
        use crate::plan::FailureKind::{Checksum, Signature};
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let q = |failed: Vec<(String, crate::plan::FailureKind, String)>, now| {
            db.call_blocking(move |c| {
                set_quarantine(c, &failed, now)?;
                quarantine(c)
            })
            .unwrap()
        };
        let rows = q(
            vec![
                ("alpha".into(), Signature, "bad sig".into()),
                ("beta".into(), Checksum, "bad sum".into()),
            ],
            100,
        );
        assert_eq!(rows.len(), 2);
        let rows = q(vec![("beta".into(), Signature, "now this".into())], 200);
        assert_eq!(rows.len(), 1, "alpha passed and left");
        let beta = &rows[0];
        assert_eq!(
            (beta.package.as_str(), beta.kind, beta.reason.as_str()),
            ("beta", Signature, "now this")
        );
        assert_eq!((beta.since, beta.last_tried, beta.tries), (100, 200, 2));
        assert!(q(Vec::new(), 300).is_empty());
    }

    #[tokio::test]
    async fn package_state_round_trips_through_a_real_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let state = PackageState {
            updated_at: Some((1_700_000_000, 12)),
            versions: vec!["1.0.0".into(), "1.1.0".into()],
            retired: vec![0],
            deps: vec![("alpha".into(), None), ("x".into(), Some("acme".into()))],
        };
        let v = Validators {
            etag: Some("\"abc\"".into()),
            last_modified: None,
        };
        let (s, v2) = (state.clone(), v.clone());
        db.call(move |c| record_package(c, "beta", &s, Some(&v2)))
            .await
            .unwrap();
        drop(db);
        let db = Db::open(dir.path()).unwrap();
        let all = db.call(|c| packages(c)).await.unwrap();
        assert_eq!(all["beta"], state);
        let got = db.call(|c| validators(c, "packages/beta")).await.unwrap();
        assert_eq!(got, v);
        db.call(|c| forget_package(c, "beta")).await.unwrap();
        assert!(db.call(|c| packages(c)).await.unwrap().is_empty());
    }
}
