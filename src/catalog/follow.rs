//! The catalog following the writers: what a sync or a bundle import
//! published, put in once the generation is live.

use std::collections::HashMap;

use super::{Catalog, CatalogError};
use crate::clock::unix_now;
use crate::config::Config;
use crate::registry;
use crate::store::{FileRef, Store, StoreError};

/// Puts the records a writer published (verified again) and takes out the
/// packages it removed, in one transaction, once the generation is live.
/// An empty catalog beside a published tree (a data directory from before
/// the catalog) is rebuilt from the tree instead.
pub fn follow(
    catalog: &Catalog,
    store: &Store,
    config: &Config,
    records: &[(String, FileRef)],
    gone: &[String],
    updated_at: &HashMap<String, u64>,
) -> Result<(), FollowError> {
    let started = std::time::Instant::now();
    let repo = config.upstream.repository.as_str();
    members(catalog, config)?;
    if fill_if_empty(catalog, config)?.is_some() {
        return Ok(());
    }
    // Verified again on all cores: RSA is most of the work.
    let decoded = crate::parallel::map(records, |(name, file)| {
        let bytes = store.read_blob(&file.sha256)?;
        registry::verify_package_within(
            &bytes,
            &config.upstream.public_key,
            repo,
            name,
            config.upstream.max_registry_bytes,
        )
        .map(registry::Verified::into_inner)
        .map_err(|source| FollowError::Record {
            name: name.clone(),
            source,
        })
    })
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    let now = unix_now();
    catalog.call_blocking(|c| {
        let tx = c.transaction()?;
        for record in &decoded {
            let entry = super::Entry {
                origin: super::Origin::Mirrored,
                repository: repo,
                record,
                updated_at: updated_at.get(&record.name).copied(),
            };
            super::put(&tx, &entry, now)?;
        }
        for name in gone {
            super::remove(&tx, super::Origin::Mirrored, repo, name)?;
        }
        tx.commit()
    })?;
    tracing::info!(
        packages = decoded.len(),
        removed = gone.len(),
        ms = started.elapsed().as_millis() as u64,
        "catalog updated"
    );
    Ok(())
}

/// Builds the mirror's part of the catalog from the served tree when it
/// has none (a data directory from before the catalog, or a migration
/// that dropped the rows); `None` when there was something already.
pub fn fill_if_empty(
    catalog: &Catalog,
    config: &Config,
) -> Result<Option<super::RebuildReport>, FollowError> {
    let started = std::time::Instant::now();
    let repo = config.upstream.repository.as_str();
    let empty = catalog.call_blocking(|c| {
        c.query_row(
            "SELECT count(*) = 0 FROM package WHERE repository = ?1 AND hosted = 0",
            [repo],
            |r| r.get::<_, bool>(0),
        )
    })?;
    if !empty {
        return Ok(None);
    }
    let report = super::rebuild(config, catalog)?;
    if report.packages > 0 {
        tracing::info!(
            packages = report.packages,
            tarballs = report.tarballs,
            ms = started.elapsed().as_millis() as u64,
            "catalog built from the tree"
        );
    }
    Ok(Some(report))
}

/// Records which upstream packages each repository of ours serves, from
/// its curated `/names` in the live generation (signed with our key,
/// verified again); a file unchanged since the last time is not read again.
pub fn members(catalog: &Catalog, config: &Config) -> Result<(), FollowError> {
    let Some(key) = &config.signing.key else {
        return Ok(());
    };
    for repo in &config.repositories {
        let path = config
            .data_dir
            .join("current/repos")
            .join(&repo.name)
            .join("names");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(FollowError::Read { path, source }),
        };
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        let name = repo.name.as_str();
        let known: Option<String> = catalog.call_blocking(|c| {
            rusqlite::OptionalExtension::optional(c.query_row(
                "SELECT sha256 FROM member_source WHERE repository = ?1",
                [name],
                |r| r.get(0),
            ))
        })?;
        if known.as_deref() == Some(sha.as_str()) {
            continue;
        }
        let names = registry::verify_names_within(
            &bytes,
            key.public_key(),
            name,
            config.upstream.max_registry_bytes,
        )
        .map_err(|source| FollowError::Record {
            name: format!("{name}/names"),
            source,
        })?
        .into_inner();
        catalog.call_blocking(|c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM member WHERE repository = ?1", [name])?;
            {
                let mut insert =
                    tx.prepare("INSERT OR IGNORE INTO member (repository, name) VALUES (?1, ?2)")?;
                for p in &names.packages {
                    insert.execute([name, p.name.as_str()])?;
                }
            }
            tx.execute(
                "INSERT INTO member_source (repository, sha256) VALUES (?1, ?2)
                 ON CONFLICT (repository) DO UPDATE SET sha256 = ?2",
                [name, sha.as_str()],
            )?;
            tx.commit()
        })?;
    }
    Ok(())
}

/// Why the catalog could not follow a change (the change itself stands).
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The catalog database.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// Building it from the tree.
    #[error(transparent)]
    Rebuild(#[from] super::RebuildError),
    /// A stored record could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file of the served tree could not be read.
    #[error("read {}: {source}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A stored record that does not verify (the blob store is damaged).
    #[error("stored record of {name} does not verify again: {source}")]
    Record {
        /// The package.
        name: String,
        /// Why.
        source: registry::RegistryError,
    },
}
