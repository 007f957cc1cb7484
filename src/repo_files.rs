//! The files of a repository of ours (`repos/NAME/`): its package records
//! re-signed with our key (curated from the upstream's, or built from the
//! hosted releases), `/names`, `/versions`, `public_key`, tarballs and docs.
//! One builder for the sync, which rebuilds every repository, and the hosted
//! writer, which rebuilds an organization it renames, so both write the same
//! bytes.

use std::collections::BTreeMap;

use prost::Message;
use sha2::{Digest, Sha256};

use crate::config::RepositoryConfig;
use crate::index::{self, hosted::ReleaseRow};
use crate::registry::{self, SigningKey, proto};
use crate::store::{FileMap, FileRef, Store, StoreError, db};

pub(crate) fn sha_hex(r: &FileRef) -> String {
    hex::encode(r.sha256)
}

/// Identifies everything that shapes a repository's signed records, so a
/// change of key, name or denylist re-signs them.
pub(crate) fn repo_fingerprint(repo: &RepositoryConfig, key: &SigningKey) -> String {
    let mut h = Sha256::new();
    h.update(repo.name.as_bytes());
    h.update([0]);
    h.update(key.public_key().spki_pem().as_bytes());
    for rule in &repo.deny {
        h.update([0]);
        h.update(rule.to_string().as_bytes());
    }
    hex::encode(h.finalize())
}

/// What every repository of ours is built from. `E` is the caller's error,
/// which the record loader returns.
pub(crate) struct Sources<'a, E> {
    pub(crate) store: &'a Store,
    pub(crate) key: &'a SigningKey,
    /// The new upstream tree.
    pub(crate) upstream: &'a FileMap,
    /// Reads, verifies and decodes the upstream record of a package of
    /// `upstream`. Called per package as it is needed, never all at once:
    /// holding every decoded record (twice, with the curated copies) is
    /// what made a curated sync's memory grow to a gigabyte.
    pub(crate) record: &'a (dyn Fn(&str) -> Result<proto::package::Package, E> + Sync),
    pub(crate) upstream_names: &'a proto::names::Names,
    pub(crate) upstream_repository: &'a str,
    pub(crate) cache: &'a [db::SignedCacheRow],
    /// Every hosted release of every repository.
    pub(crate) hosted: &'a [ReleaseRow],
}

/// One package of a repository, built: its signed record, what identifies
/// its source for the signing cache, its tarballs and docs (paths under the
/// repository), and its `/versions` entry. What stays in memory per
/// package: no decoded record.
struct Built {
    signed: FileRef,
    source: String,
    files: Vec<(String, FileRef)>,
    versions: proto::versions::Package,
}

/// Builds repository `repo`'s files under `repos/NAME/` from the upstream
/// records in `upstream`, re-signing only records whose source, key or
/// curation changed since they were cached. Records are loaded, curated
/// and signed one package at a time on every core, and dropped.
pub(crate) fn repository_files<E>(
    src: &Sources<'_, E>,
    repo: &RepositoryConfig,
    new_cache: &mut Vec<db::SignedCacheRow>,
) -> Result<FileMap, E>
where
    E: From<StoreError> + Send,
{
    let (store, key, upstream) = (src.store, src.key, src.upstream);
    let fp = repo_fingerprint(repo, key);
    let cached: BTreeMap<&str, &db::SignedCacheRow> = src
        .cache
        .iter()
        .filter(|r| r.repository == repo.name && r.fingerprint == fp)
        .map(|r| (r.package.as_str(), r))
        .collect();
    let mut hosted_rows: BTreeMap<&str, Vec<&ReleaseRow>> = BTreeMap::new();
    for row in src.hosted.iter().filter(|r| r.repository == repo.name) {
        hosted_rows
            .entry(row.package.as_str())
            .or_default()
            .push(row);
    }
    // A reserved or hosted name never comes from the upstream here: that is
    // the dependency-confusion guard.
    let candidates: Vec<&str> = upstream
        .keys()
        .filter_map(|path| path.strip_prefix("packages/"))
        .filter(|name| !repo.reserves(name) && !hosted_rows.contains_key(name))
        .collect();
    let curate = |name: &str| -> Result<Option<proto::package::Package>, E> {
        let record = (src.record)(name)?;
        Ok(index::curate_package(&record, &repo.name, &repo.deny))
    };
    let view: Vec<&str> = match &repo.packages {
        None => candidates,
        Some(roots) => {
            // Hosted packages pull in what they depend on in this repository.
            let mut roots = roots.clone();
            roots.extend(
                hosted_rows
                    .values()
                    .flatten()
                    .flat_map(|r| &r.requirements)
                    .filter(|d| d.repository.as_deref().is_none_or(|x| x == repo.name))
                    .map(|d| d.name.clone()),
            );
            // The closure needs only the dependency names: a first pass
            // keeps those, not the records.
            let mut graph = BTreeMap::new();
            for found in crate::parallel::map(&candidates, |name| {
                Ok::<_, E>(curate(name)?.map(|c| {
                    (
                        (*name).to_owned(),
                        index::dependency_names(&c, src.upstream_repository),
                    )
                }))
            }) {
                graph.extend(found?);
            }
            let closure = index::closure(&roots, &graph);
            candidates
                .into_iter()
                .filter(|name| closure.contains(*name))
                .collect()
        }
    };
    // Paths are made once, as the generation names them, and moved into
    // the map (a copy per file was 13 MB at hex.pm's size).
    let base = format!("repos/{}", repo.name);
    // Reuse what the cache vouches for; sign the rest on every core (RSA
    // signing is ~15 ms per record at 4096 bits and was the whole cost of a
    // key change).
    let sign = |name: &str,
                record: &proto::package::Package,
                source: String,
                files: Vec<(String, FileRef)>|
     -> Result<Built, StoreError> {
        let reuse = cached
            .get(name)
            .filter(|row| row.source_sha256 == source)
            .and_then(|row| {
                let sha: [u8; 32] = hex::decode(&row.signed_sha256).ok()?.try_into().ok()?;
                store.blob_ref(&sha).ok()
            });
        let signed = match reuse {
            Some(r) => r,
            None => store.put_bytes(&registry::seal_signed(record.encode_to_vec(), key))?,
        };
        Ok(Built {
            signed,
            source,
            files,
            versions: index::versions_entry(record),
        })
    };
    let mut built: BTreeMap<String, Built> = BTreeMap::new();
    for result in crate::parallel::map(&view, |name| {
        let Some(record) = curate(name)? else {
            return Ok(None);
        };
        let source = upstream
            .get(&format!("packages/{name}"))
            .map(sha_hex)
            .unwrap_or_default();
        let files = record
            .releases
            .iter()
            .filter_map(|release| {
                let tarball = format!("tarballs/{name}-{}.tar", release.version);
                let blob = upstream.get(&tarball)?;
                Some((format!("{base}/{tarball}"), *blob))
            })
            .collect();
        Ok::<_, E>(Some((
            (*name).to_owned(),
            sign(name, &record, source, files)?,
        )))
    }) {
        built.extend(result?);
    }
    for (name, rows) in &hosted_rows {
        let releases: Vec<_> = rows.iter().map(|r| r.release()).collect();
        let record = index::hosted::package_record(&repo.name, name, &releases);
        let source = format!(
            "hosted:{}",
            hex::encode(Sha256::digest(record.encode_to_vec()))
        );
        let mut files = Vec::new();
        for r in rows {
            files.push((
                format!("{base}/tarballs/{name}-{}.tar", r.version),
                FileRef {
                    sha256: r.outer_sha256,
                    size: r.size,
                },
            ));
            if let Some(d) = r.docs_sha256 {
                files.push((
                    format!("{base}/docs/{name}-{}.tar.gz", r.version),
                    store.blob_ref(&d)?,
                ));
            }
        }
        built.insert((*name).to_owned(), sign(name, &record, source, files)?);
    }

    // Collected, then built in one go: a map filled key by key in order
    // leaves its nodes half empty.
    let mut files: Vec<(String, FileRef)> =
        Vec::with_capacity(built.values().map(|b| b.files.len() + 1).sum::<usize>() + 3);
    let mut names = Vec::with_capacity(built.len());
    let mut versions = Vec::with_capacity(built.len());
    for (name, b) in built {
        new_cache.push(db::SignedCacheRow {
            repository: repo.name.clone(),
            package: name.clone(),
            source_sha256: b.source,
            fingerprint: fp.clone(),
            signed_sha256: sha_hex(&b.signed),
        });
        files.push((format!("{base}/packages/{name}"), b.signed));
        files.extend(b.files);
        versions.push(b.versions);
        names.push(name);
    }
    let mut updated_at: BTreeMap<String, proto::names::Timestamp> = src
        .upstream_names
        .packages
        .iter()
        .filter_map(|p| p.updated_at.map(|t| (p.name.clone(), t)))
        .collect();
    for (name, rows) in &hosted_rows {
        if let Some(secs) = rows.iter().map(|r| r.updated_at).max() {
            updated_at.insert(
                (*name).to_owned(),
                proto::names::Timestamp {
                    seconds: secs,
                    nanos: 0,
                },
            );
        }
    }
    let names = index::build_names(&repo.name, names.iter().map(String::as_str), &updated_at);
    let versions = index::build_versions(&repo.name, versions);
    files.push((
        format!("{base}/names"),
        store.put_bytes(&registry::seal_signed(names.encode_to_vec(), key))?,
    ));
    files.push((
        format!("{base}/versions"),
        store.put_bytes(&registry::seal_signed(versions.encode_to_vec(), key))?,
    ));
    files.push((
        format!("{base}/public_key"),
        store.put_bytes(key.public_key().spki_pem().as_bytes())?,
    ));
    Ok(files.into_iter().collect())
}

/// The files of repository `repo` of ours that serves hosted packages only
/// (an organization's), built from `hosted` as a sync builds them. Blocking:
/// it signs every record.
pub fn hosted_repository_files(
    store: &Store,
    key: &SigningKey,
    repo: &RepositoryConfig,
    upstream_repository: &str,
    hosted: &[ReleaseRow],
) -> Result<FileMap, StoreError> {
    // No upstream files: the loader is never asked.
    let no_record = |name: &str| -> Result<proto::package::Package, StoreError> {
        Err(StoreError {
            action: "read upstream record",
            path: format!("packages/{name}").into(),
            source: std::io::ErrorKind::NotFound.into(),
        })
    };
    let sources = Sources {
        store,
        key,
        upstream: &FileMap::new(),
        record: &no_record,
        upstream_names: &proto::names::Names::default(),
        upstream_repository,
        cache: &[],
        hosted,
    };
    repository_files(&sources, repo, &mut Vec::new())
}
