//! `hexmirror catalog rebuild`: the catalog of the upstream's packages made
//! again from what is served (the current generation, then the proxy's
//! cache), every record and tarball verified again on the way in.

use std::collections::HashMap;
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
    rebuild_in_rounds(config, catalog, RECORDS_PER_ROUND)
}

/// [`rebuild`], `round` records at a time.
fn rebuild_in_rounds(
    config: &Config,
    catalog: &Catalog,
    round: usize,
) -> Result<RebuildReport, RebuildError> {
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
    // Digests, not hex text: a third of the memory at hex.pm's 268,000.
    let known: Known = catalog.call_blocking(|c| {
        let hexes = c
            .prepare("SELECT sha256 FROM tarball_meta")?
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(hexes
            .iter()
            .filter_map(|h| <[u8; 32]>::try_from(hex::decode(h).ok()?).ok())
            .collect())
    })?;
    // Records: the generation's win over the proxy's.
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
    // Sorted, so packages go in by name whatever order the directory gave.
    found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let verify = |part: &[(String, PathBuf)]| {
        crate::parallel::map(part, |(name, path)| {
            let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
            registry::verify_package_within(&bytes, key, repo, name, max)
                .map(registry::Verified::into_inner)
                .map_err(|e| e.to_string())
        })
    };
    // Two passes, a round of records at a time, so memory holds one round of
    // decoded records rather than every one (at hex.pm's size, all of them
    // were the peak of a first sync). The first reads the tarballs the
    // catalog has no metadata for, each committed on its own, outside the
    // transaction (minutes for a lost catalog, while serve's writes go on);
    // an interrupted rebuild leaves only facts about tarballs, and the
    // package rows are still absent, so the next one starts again. The
    // second puts the records in one transaction. Verifying a record twice
    // costs ~2 CPU-s at hex.pm's size.
    for part in found.chunks(round) {
        for ((name, path), record) in part.iter().zip(verify(part)) {
            match record {
                Ok(record) => {
                    report.tarballs +=
                        read_tarballs(catalog, &roots, &known, name, &record, &mut report.refused)?;
                }
                Err(why) => report.refused.push((path.display().to_string(), why)),
            }
        }
    }
    let now = crate::clock::unix_now();
    let mut conn = catalog.lock();
    let sql = |source| RebuildError::Catalog(catalog.sqlite_error(source));
    let tx = conn.transaction().map_err(sql)?;
    let stale: Vec<String> = tx
        .prepare("SELECT name FROM package WHERE repository = ?1 AND hosted = 0")
        .and_then(|mut q| q.query_map([repo], |r| r.get(0))?.collect())
        .map_err(sql)?;
    // Filling an empty mirror (the first sync, a lost catalog): every row is
    // new, so the indexes are built once after the rows rather than kept
    // sorted row by row. Inside the transaction, so a failure rolls them
    // back in place.
    let bulk = stale.is_empty() && found.len() > 1;
    if bulk {
        tx.execute_batch(super::DROP_PACKAGE_INDEXES).map_err(sql)?;
    }
    let mut put_in: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for part in found.chunks(round) {
        for ((name, path), record) in part.iter().zip(verify(part)) {
            let record = match record {
                Ok(record) => record,
                // Refused in the first pass already, or changed since.
                Err(why) => {
                    if !report.refused.iter().any(|(p, _)| Path::new(p) == path) {
                        report.refused.push((path.display().to_string(), why));
                    }
                    continue;
                }
            };
            let entry = Entry {
                origin: super::Origin::Mirrored,
                repository: repo,
                record: &record,
                updated_at: updated.get(name).copied(),
            };
            put(&tx, &entry, now).map_err(sql)?;
            put_in.insert(name);
        }
    }
    for name in stale.iter().filter(|n| !put_in.contains(n.as_str())) {
        super::remove(&tx, super::Origin::Mirrored, repo, name).map_err(sql)?;
    }
    if bulk {
        tx.execute_batch(super::PACKAGE_INDEXES).map_err(sql)?;
    }
    tx.commit().map_err(sql)?;
    report.packages = put_in.len();
    Ok(report)
}

/// The outer checksums of the tarballs whose metadata the catalog holds.
type Known = std::collections::HashSet<[u8; 32]>;

/// Records verified and held at once by [`rebuild`]: enough to keep every
/// core busy, few enough that memory does not grow with the mirror.
const RECORDS_PER_ROUND: usize = 512;

/// Reads and verifies the tarballs of `record` whose metadata the catalog
/// lacks, and records their metadata; returns how many were read.
fn read_tarballs(
    catalog: &Catalog,
    roots: &[PathBuf],
    known: &Known,
    name: &str,
    record: &registry::proto::package::Package,
    refused: &mut Vec<(String, String)>,
) -> Result<usize, RebuildError> {
    let limits = crate::tarball::Limits::default();
    let mut read_count = 0;
    for release in &record.releases {
        let Some(sums) = crate::upstream::release::Sums::of(release) else {
            continue;
        };
        if known.contains(&sums.outer) {
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
            name,
            version: &release.version,
            outer_checksum: &sums.outer,
            inner_checksum: Some(&sums.inner),
        };
        match crate::tarball::verify(&tarball, &expected, &limits) {
            Ok(v) => {
                let sha = hex::encode(sums.outer);
                catalog.call_blocking(|c| put_tarball_meta(c, &sha, &v.metadata))?;
                read_count += 1;
            }
            Err(e) => refused.push((file, e.to_string())),
        }
    }
    Ok(read_count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::proto::package::{Package, Release};
    use prost::Message;

    fn count(catalog: &Catalog, sql: &str) -> i64 {
        catalog
            .call_blocking(|c| c.query_row(sql, [], |r| r.get(0)))
            .unwrap()
    }

    #[test]
    fn a_rebuild_in_rounds_puts_every_record_refuses_a_bad_one_and_drops_a_gone_one() {
        let tmp = tempfile::tempdir().unwrap();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys");
        let text = format!(
            "data_dir = \"{}\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\npublic_key = \"{}\"\n",
            tmp.path().join("data").display(),
            fixtures.join("upstream.pub.pem").display()
        );
        let config = Config::parse(&text, &tmp.path().join("hexmirror.toml")).unwrap();
        let key =
            registry::SigningKey::from_pem(include_str!("../../tests/fixtures/keys/upstream.pem"))
                .unwrap();
        let packages = config.data_dir.join("current/packages");
        std::fs::create_dir_all(&packages).unwrap();
        // Seven good records over rounds of three (three rounds, the last
        // short), and one that does not verify in the middle.
        for i in 0..7u8 {
            let name = format!("p{i}");
            let record = Package {
                name: name.clone(),
                repository: "hexpm".into(),
                releases: vec![Release {
                    version: "1.0.0".into(),
                    inner_checksum: vec![i; 32],
                    outer_checksum: Some(vec![i; 32]),
                    ..Release::default()
                }],
                ..Package::default()
            };
            let file = registry::seal_signed(record.encode_to_vec(), &key);
            std::fs::write(packages.join(&name), file).unwrap();
        }
        std::fs::write(packages.join("p3a"), b"not a record").unwrap();
        let catalog = Catalog::open(&config.data_dir).unwrap();

        let report = rebuild_in_rounds(&config, &catalog, 3).unwrap();
        assert_eq!(report.packages, 7, "{report:?}");
        assert_eq!(report.refused.len(), 1, "{report:?}");
        assert!(report.refused[0].0.ends_with("p3a"), "{report:?}");
        assert_eq!(count(&catalog, "SELECT count(*) FROM package"), 7);
        assert_eq!(count(&catalog, "SELECT count(*) FROM release"), 7);

        // Again with one record gone: not bulk (rows exist), and it goes.
        std::fs::remove_file(packages.join("p5")).unwrap();
        let report = rebuild_in_rounds(&config, &catalog, 3).unwrap();
        assert_eq!(report.packages, 6, "{report:?}");
        assert_eq!(
            count(&catalog, "SELECT count(*) FROM package WHERE name = 'p5'"),
            0
        );
        assert_eq!(count(&catalog, "SELECT count(*) FROM release"), 6);
    }
}
