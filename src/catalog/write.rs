//! What writers put into the catalog: the metadata of each verified
//! tarball (by content), and each published package's verified record.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::index::hosted::{Retirement, cmp_versions};
use crate::registry::proto::package::Package;

/// Whose a package is: a repository of ours may have the upstream's name,
/// so the name alone does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The upstream's, mirrored (by a sync, an import or the proxy).
    Mirrored,
    /// Published to a repository of ours.
    Hosted,
}

impl Origin {
    /// The `package.hosted` column's value.
    pub(super) fn column(self) -> bool {
        self == Self::Hosted
    }
}

/// One package as a writer publishes it.
#[derive(Debug)]
pub struct Entry<'a> {
    /// Mirrored or hosted.
    pub origin: Origin,
    /// The repository it is served in (the upstream's name for mirrored
    /// packages).
    pub repository: &'a str,
    /// Its verified record.
    pub record: &'a Package,
    /// The upstream's `updated_at` for it (from `/names`), if known.
    pub updated_at: Option<u64>,
}

/// Records the metadata of a verified tarball (SHA-256 in hex), and
/// refreshes the search text of packages serving it.
pub fn put_tarball_meta(
    conn: &Connection,
    sha256: &str,
    metadata: &crate::tarball::Metadata,
) -> rusqlite::Result<()> {
    put_api_meta(conn, sha256, &metadata.api_meta())
}

/// Like [`put_tarball_meta`], with the metadata already in the API's shape
/// (`Metadata::api_meta`, as hosted releases keep it).
pub fn put_api_meta(
    conn: &Connection,
    sha256: &str,
    meta: &serde_json::Value,
) -> rusqlite::Result<()> {
    let changed = conn
        .prepare_cached("INSERT OR IGNORE INTO tarball_meta (sha256, meta) VALUES (?1, ?2)")?
        .execute(params![sha256, meta.to_string()])?;
    if changed > 0 {
        let ids: Vec<i64> = conn
            .prepare_cached("SELECT DISTINCT package_id FROM release WHERE outer_checksum = ?1")?
            .query_map([sha256], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for id in ids {
            refresh_text(conn, id)?;
        }
    }
    Ok(())
}

/// The search text of package `id`: its name, and the description of its
/// newest release whose tarball metadata is held.
fn refresh_text(conn: &Connection, id: i64) -> rusqlite::Result<()> {
    let name: String = conn
        .prepare_cached("SELECT name FROM package WHERE id = ?1")?
        .query_row([id], |r| r.get(0))?;
    // SQLite reads the description out of each JSON; only the newest is kept.
    let rows: Vec<(String, String)> = conn
        .prepare_cached(
            "SELECT r.version, json_extract(m.meta, '$.description') AS d
             FROM release r JOIN tarball_meta m ON m.sha256 = r.outer_checksum
             WHERE r.package_id = ?1 AND json_type(m.meta, '$.description') = 'text'",
        )?
        .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let description = rows
        .into_iter()
        .max_by(|a, b| cmp_versions(&a.0, &b.0))
        .map(|(_, d)| d);
    conn.prepare_cached("DELETE FROM package_text WHERE rowid = ?1")?
        .execute([id])?;
    conn.prepare_cached("INSERT INTO package_text (rowid, name, description) VALUES (?1, ?2, ?3)")?
        .execute(params![id, name, description])?;
    Ok(())
}

/// Puts `entry` in, replacing what the catalog had of the package but the
/// local facts (when each release was first seen, whether docs are held).
pub fn put(tx: &Transaction<'_>, entry: &Entry<'_>, now: u64) -> rusqlite::Result<()> {
    let name = entry.record.name.as_str();
    let updated_at = entry.updated_at.map(|u| u as i64);
    let hosted = entry.origin.column();
    let existing: Option<i64> = tx
        .prepare_cached(
            "SELECT id FROM package WHERE repository = ?1 AND name = ?2 AND hosted = ?3",
        )?
        .query_row(params![entry.repository, name, hosted], |r| r.get(0))
        .optional()?;
    // A package new to the catalog has nothing to keep or delete: a bulk
    // load (which runs without the requirement index) skips both.
    let mut kept: std::collections::HashMap<String, (i64, bool)> = Default::default();
    let id = match existing {
        None => {
            tx.prepare_cached(
                "INSERT INTO package (repository, name, hosted, updated_at, first_seen)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                entry.repository,
                name,
                hosted,
                updated_at,
                now as i64
            ])?;
            tx.last_insert_rowid()
        }
        Some(id) => {
            tx.prepare_cached(
                "UPDATE package SET updated_at = coalesce(?2, updated_at) WHERE id = ?1",
            )?
            .execute(params![id, updated_at])?;
            let mut stmt = tx.prepare_cached(
                "SELECT version, first_seen, has_docs FROM release WHERE package_id = ?1",
            )?;
            for row in stmt.query_map([id], |r| {
                Ok((r.get::<_, String>(0)?, (r.get(1)?, r.get(2)?)))
            })? {
                let (version, facts) = row?;
                kept.insert(version, facts);
            }
            tx.prepare_cached("DELETE FROM release WHERE package_id = ?1")?
                .execute([id])?;
            tx.prepare_cached("DELETE FROM requirement WHERE package_id = ?1")?
                .execute([id])?;
            id
        }
    };
    for release in &entry.record.releases {
        let (first_seen, has_docs) = kept.remove(&release.version).unwrap_or((now as i64, false));
        let retired = release
            .retired
            .as_ref()
            .map(|r| (Retirement::from_proto(r.reason).as_str(), r.message.clone()));
        tx.prepare_cached(
            "INSERT INTO release (package_id, version, outer_checksum, inner_checksum,
                 retired_reason, retired_message, has_docs, first_seen, published_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![
            id,
            release.version,
            release.outer_checksum.as_deref().map(hex::encode),
            hex::encode(&release.inner_checksum),
            retired.as_ref().map(|r| r.0),
            retired.as_ref().and_then(|r| r.1.clone()),
            has_docs,
            first_seen,
            release.published_at.as_ref().map(|t| t.seconds),
        ])?;
        for dep in &release.dependencies {
            tx.prepare_cached("INSERT INTO requirement (package_id, version, name, repository, requirement, optional, app)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")?.execute(params![
                    id,
                    release.version,
                    dep.package,
                    dep.repository,
                    dep.requirement,
                    dep.optional.unwrap_or(false),
                    dep.app,
                ],
            )?;
        }
    }
    refresh_text(tx, id)
}

/// Moves repository `old`'s hosted packages, their download counts and
/// the requirements naming it to `new` (an organization renamed).
pub fn rename_repository(tx: &Transaction<'_>, old: &str, new: &str) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE package SET repository = ?2 WHERE repository = ?1 AND hosted = 1",
        params![old, new],
    )?;
    // Counts left by an earlier organization of the new name (deleted
    // while empty) give way.
    tx.execute(
        "UPDATE OR REPLACE download SET repository = ?2 WHERE repository = ?1",
        params![old, new],
    )?;
    tx.execute(
        "UPDATE requirement SET repository = ?2 WHERE repository = ?1",
        params![old, new],
    )?;
    for table in ["member", "member_source"] {
        tx.execute(&format!("DELETE FROM {table} WHERE repository = ?1"), [old])?;
    }
    Ok(())
}

/// Removes a package (it left the mirror, or its repository of ours).
pub fn remove(
    tx: &Transaction<'_>,
    origin: Origin,
    repository: &str,
    name: &str,
) -> rusqlite::Result<()> {
    let id: Option<i64> = tx
        .query_row(
            "SELECT id FROM package WHERE repository = ?1 AND name = ?2 AND hosted = ?3",
            params![repository, name, origin.column()],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(id) = id {
        tx.prepare_cached("DELETE FROM package_text WHERE rowid = ?1")?
            .execute([id])?;
        tx.prepare_cached("DELETE FROM requirement WHERE package_id = ?1")?
            .execute([id])?;
        tx.prepare_cached("DELETE FROM release WHERE package_id = ?1")?
            .execute([id])?;
        tx.prepare_cached("DELETE FROM package WHERE id = ?1")?
            .execute([id])?;
    }
    Ok(())
}
