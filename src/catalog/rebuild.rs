//! `hexmirror catalog rebuild`: the catalog of the upstream's packages made
//! again from what is served (the current generation, then the proxy's
//! cache), every record and tarball verified again on the way in.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::{Catalog, CatalogError, Entry, put, put_tarball_meta};
use crate::config::Config;
use crate::registry::{self, PackageName};

/// What a rebuild did.
#[derive(Debug, Default)]
pub struct RebuildReport {
    /// Packages in the catalog now.
    pub packages: usize,
    /// Tarballs whose metadata was read.
    pub tarballs: usize,
    /// Files that did not verify (path, why): left out.
    pub refused: Vec<(String, String)>,
}

/// Why a rebuild stopped. The catalog keeps what it had.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// The catalog database.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A file of the tree could not be read.
    #[error("read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

fn read(path: &Path) -> Result<Option<Vec<u8>>, RebuildError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(RebuildError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Rebuilds the upstream repository's part of `catalog` from the served
/// tree of `config.data_dir` (blocking).
pub fn rebuild(config: &Config, catalog: &Catalog) -> Result<RebuildReport, RebuildError> {
    let key = &config.upstream.public_key;
    let repo = config.upstream.repository.as_str();
    let max = config.upstream.max_registry_bytes;
    let roots: Vec<PathBuf> = [
        config.data_dir.join("current"),
        config.data_dir.join("proxy"),
    ]
    .into_iter()
    .filter(|r| r.is_dir())
    .collect();
    let mut report = RebuildReport::default();
    // The upstream's update times, from the first /names that verifies.
    let mut updated: HashMap<String, u64> = HashMap::new();
    for root in &roots {
        let Some(bytes) = read(&root.join("names"))? else {
            continue;
        };
        match registry::verify_names_within(&bytes, key, repo, max) {
            Ok(names) => {
                updated = names
                    .into_inner()
                    .packages
                    .into_iter()
                    .filter_map(|p| Some((p.name, p.updated_at?.seconds.max(0) as u64)))
                    .collect();
                break;
            }
            Err(e) => report
                .refused
                .push((root.join("names").display().to_string(), e.to_string())),
        }
    }
    // Records: the generation's win over the proxy's.
    let mut records: BTreeMap<String, registry::proto::package::Package> = BTreeMap::new();
    let limits = crate::tarball::Limits::default();
    let known: std::collections::HashSet<String> = catalog.call_blocking(|c| {
        c.prepare("SELECT sha256 FROM tarball_meta")?
            .query_map([], |r| r.get(0))?
            .collect()
    })?;
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    for root in &roots {
        let dir = root.join("packages");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if PackageName::parse(&name).is_err() || !seen.insert(name.clone()) {
                continue;
            }
            found.push((name, entry.path()));
        }
    }
    // Records read and verified on all cores; then each one's unread
    // tarballs.
    let verified = crate::parallel::map(&found, |(name, path)| {
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        registry::verify_package_within(&bytes, key, repo, name, max)
            .map(registry::Verified::into_inner)
            .map_err(|e| e.to_string())
    });
    for ((name, path), record) in found.into_iter().zip(verified) {
        let record = match record {
            Ok(r) => r,
            Err(why) => {
                report.refused.push((path.display().to_string(), why));
                continue;
            }
        };
        for release in &record.releases {
            let Some(sums) = crate::upstream::release::Sums::of(release) else {
                continue;
            };
            let sha = hex::encode(sums.outer);
            if known.contains(&sha) {
                continue;
            }
            let file = format!("tarballs/{name}-{}.tar", release.version);
            let Some(tarball) = roots
                .iter()
                .find_map(|r| read(&r.join(&file)).transpose())
                .transpose()?
            else {
                continue;
            };
            let expected = crate::tarball::Expected {
                name: &name,
                version: &release.version,
                outer_checksum: &sums.outer,
                inner_checksum: Some(&sums.inner),
            };
            match crate::tarball::verify(&tarball, &expected, &limits) {
                Ok(v) => {
                    catalog.call_blocking(|c| put_tarball_meta(c, &sha, &v.metadata))?;
                    report.tarballs += 1;
                }
                Err(e) => report.refused.push((file, e.to_string())),
            }
        }
        records.insert(name, record);
    }
    report.packages = records.len();
    let now = crate::clock::unix_now();
    catalog.call_blocking(|c| {
        let tx = c.transaction()?;
        let stale: Vec<String> = tx
            .prepare("SELECT name FROM package WHERE repository = ?1 AND hosted = 0")?
            .query_map([repo], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for name in stale.iter().filter(|n| !records.contains_key(*n)) {
            super::remove(&tx, super::Origin::Mirrored, repo, name)?;
        }
        // Filling an empty mirror (the first sync, a lost catalog): every
        // row is new, so the indexes are built once after the rows rather
        // than kept sorted row by row. Inside the transaction, so a
        // failure rolls them back in place.
        let bulk = stale.is_empty() && records.len() > 1;
        if bulk {
            tx.execute_batch(super::DROP_PACKAGE_INDEXES)?;
        }
        for (name, record) in &records {
            let entry = Entry {
                origin: super::Origin::Mirrored,
                repository: repo,
                record,
                updated_at: updated.get(name).copied(),
            };
            put(&tx, &entry, now)?;
        }
        if bulk {
            tx.execute_batch(super::PACKAGE_INDEXES)?;
        }
        tx.commit()
    })?;
    Ok(report)
}
