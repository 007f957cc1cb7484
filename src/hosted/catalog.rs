//! Hosted packages in the catalog: after each change, the package as its
//! rows now say; at start and on `catalog rebuild`, every hosted package.
//! The rows are the source of truth; the catalog follows them.

use std::collections::BTreeMap;

use rusqlite::Transaction;

use super::db::{self as hdb, ReleaseRow};
use super::record;
use crate::catalog::{Catalog, CatalogError, Entry, Origin};
use crate::config::Config;
use crate::store::{Db, DbError};

/// Why the catalog could not follow the hosted rows (the rows stand).
#[derive(Debug, thiserror::Error)]
pub enum HostedCatalogError {
    /// The catalog database.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The state database.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Puts package `name` of `repo` as `rows` say, or takes it out when there
/// are none.
fn put_rows(
    tx: &Transaction<'_>,
    repo: &str,
    name: &str,
    rows: &[ReleaseRow],
    now: u64,
) -> rusqlite::Result<()> {
    if rows.is_empty() {
        return crate::catalog::remove(tx, Origin::Hosted, repo, name);
    }
    for row in rows {
        crate::catalog::put_api_meta(tx, &hex::encode(row.outer_sha256), &row.meta)?;
    }
    let releases: Vec<record::Release> = rows.iter().map(ReleaseRow::release).collect();
    let record = record::package_record(repo, name, &releases);
    let updated_at = rows
        .iter()
        .map(|r| r.updated_at)
        .max()
        .map(|u| u.max(0) as u64);
    crate::catalog::put(
        tx,
        &Entry {
            origin: Origin::Hosted,
            repository: repo,
            record: &record,
            updated_at,
        },
        now,
    )?;
    // Docs are a fact of the rows, not of the record.
    for row in rows {
        tx.execute(
            "UPDATE release SET has_docs = ?1 WHERE version = ?2 AND package_id =
             (SELECT id FROM package WHERE repository = ?3 AND name = ?4 AND hosted = 1)",
            rusqlite::params![row.docs_sha256.is_some(), row.version, repo, name],
        )?;
    }
    Ok(())
}

/// After a change to `repo`/`name`: the catalog takes the package's rows
/// (blocking).
pub fn follow(
    catalog: &Catalog,
    db: &Db,
    repo: &str,
    name: &str,
) -> Result<(), HostedCatalogError> {
    let rows = db.call_blocking(|c| hdb::releases(c, repo, name))?;
    let now = crate::clock::unix_now();
    catalog.call_blocking(|c| {
        let tx = c.transaction()?;
        put_rows(&tx, repo, name, &rows, now)?;
        tx.commit()
    })?;
    Ok(())
}

/// Every hosted package of every repository of ours into the catalog, and
/// out of it what is no longer hosted (blocking). Returns how many.
pub fn refill(catalog: &Catalog, db: &Db, config: &Config) -> Result<usize, HostedCatalogError> {
    let mut hosted: BTreeMap<(String, String), Vec<ReleaseRow>> = BTreeMap::new();
    for row in db.call_blocking(|c| hdb::all_releases(c))? {
        hosted
            .entry((row.repository.clone(), row.package.clone()))
            .or_default()
            .push(row);
    }
    let now = crate::clock::unix_now();
    catalog.call_blocking(|c| {
        let tx = c.transaction()?;
        for repo in &config.repositories {
            let listed: Vec<String> = tx
                .prepare("SELECT name FROM package WHERE repository = ?1 AND hosted = 1")?
                .query_map([&repo.name], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for name in listed {
                if !hosted.contains_key(&(repo.name.clone(), name.clone())) {
                    crate::catalog::remove(&tx, Origin::Hosted, &repo.name, &name)?;
                }
            }
        }
        for ((repo, name), rows) in &hosted {
            put_rows(&tx, repo, name, rows, now)?;
        }
        tx.commit()
    })?;
    Ok(hosted.len())
}
