//! The files of a repository of ours (`repos/NAME/`): its package records
//! re-signed with our key (curated from the upstream's, or built from the
//! hosted releases), `/names`, `/versions`, `public_key`, tarballs and docs.
//! One builder for the sync, which rebuilds every repository, and the hosted
//! writer, which rebuilds an organization it renames, so both write the same
//! bytes.

use std::collections::{BTreeMap, BTreeSet};

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

/// What every repository of ours is built from.
#[derive(Clone, Copy)]
pub(crate) struct Sources<'a> {
    pub(crate) store: &'a Store,
    pub(crate) key: &'a SigningKey,
    /// The new upstream tree.
    pub(crate) upstream: &'a FileMap,
    /// Its package records, decoded.
    pub(crate) records: &'a BTreeMap<String, proto::package::Package>,
    pub(crate) upstream_names: &'a proto::names::Names,
    pub(crate) upstream_repository: &'a str,
    pub(crate) cache: &'a [db::SignedCacheRow],
    /// Every hosted release of every repository.
    pub(crate) hosted: &'a [ReleaseRow],
}

/// One package of a repository: its record, what identifies its source for
/// the signing cache, and its tarballs and docs (paths under the repository).
type Entry = (proto::package::Package, String, Vec<(String, FileRef)>);

/// Builds repository `repo`'s files under `repos/NAME/` from the upstream
/// records in `upstream`, re-signing only records whose source, key or
/// curation changed since they were cached.
pub(crate) fn repository_files(
    src: &Sources<'_>,
    repo: &RepositoryConfig,
    new_cache: &mut Vec<db::SignedCacheRow>,
) -> Result<FileMap, StoreError> {
    let Sources {
        store,
        key,
        upstream,
        records,
        upstream_names,
        upstream_repository,
        cache,
        hosted,
    } = *src;
    let fp = repo_fingerprint(repo, key);
    let cached: BTreeMap<&str, &db::SignedCacheRow> = cache
        .iter()
        .filter(|r| r.repository == repo.name && r.fingerprint == fp)
        .map(|r| (r.package.as_str(), r))
        .collect();
    let mut hosted_rows: BTreeMap<&str, Vec<&ReleaseRow>> = BTreeMap::new();
    for row in hosted.iter().filter(|r| r.repository == repo.name) {
        hosted_rows
            .entry(row.package.as_str())
            .or_default()
            .push(row);
    }
    // A reserved or hosted name never comes from the upstream here: that is
    // the dependency-confusion guard.
    let curated: BTreeMap<String, proto::package::Package> = records
        .iter()
        .filter(|(name, _)| !repo.reserves(name) && !hosted_rows.contains_key(name.as_str()))
        .filter_map(|(name, r)| {
            index::curate_package(r, &repo.name, &repo.deny).map(|c| (name.clone(), c))
        })
        .collect();
    let view: BTreeSet<String> = match &repo.packages {
        None => curated.keys().cloned().collect(),
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
            index::closure(&roots, &curated, upstream_repository)
        }
    };
    // Every package of the repository: its record, what identifies its
    // source for the signing cache, and its tarballs and docs.
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    for (name, record) in curated.into_iter().filter(|(name, _)| view.contains(name)) {
        let source = upstream
            .get(&format!("packages/{name}"))
            .map(sha_hex)
            .unwrap_or_default();
        let files = record
            .releases
            .iter()
            .filter_map(|release| {
                let tarball = format!("tarballs/{name}-{}.tar", release.version);
                upstream.get(&tarball).map(|blob| (tarball, *blob))
            })
            .collect();
        entries.insert(name, (record, source, files));
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
                format!("tarballs/{name}-{}.tar", r.version),
                FileRef {
                    sha256: r.outer_sha256,
                    size: r.size,
                },
            ));
            if let Some(d) = r.docs_sha256 {
                files.push((
                    format!("docs/{name}-{}.tar.gz", r.version),
                    store.blob_ref(&d)?,
                ));
            }
        }
        entries.insert((*name).to_owned(), (record, source, files));
    }

    let base = format!("repos/{}", repo.name);
    let mut files = FileMap::new();
    // Reuse what the cache vouches for; sign the rest on every core (RSA
    // signing is ~15 ms per record at 4096 bits and was the whole cost of a
    // key change).
    let mut signed: BTreeMap<&str, FileRef> = BTreeMap::new();
    let mut misses = Vec::new();
    for (name, (record, source, _)) in &entries {
        let reuse = cached
            .get(name.as_str())
            .filter(|row| row.source_sha256 == *source)
            .and_then(|row| {
                let sha: [u8; 32] = hex::decode(&row.signed_sha256).ok()?.try_into().ok()?;
                store.blob_ref(&sha).ok()
            });
        match reuse {
            Some(r) => {
                signed.insert(name, r);
            }
            None => misses.push((name.as_str(), record)),
        }
    }
    for result in crate::parallel::map(&misses, |(name, record)| {
        store
            .put_bytes(&registry::seal_signed(record.encode_to_vec(), key))
            .map(|r| (*name, r))
    }) {
        let (name, r) = result?;
        signed.insert(name, r);
    }
    for (name, (_, source, extra)) in &entries {
        let Some(&file) = signed.get(name.as_str()) else {
            continue;
        };
        new_cache.push(db::SignedCacheRow {
            repository: repo.name.clone(),
            package: name.clone(),
            source_sha256: source.clone(),
            fingerprint: fp.clone(),
            signed_sha256: sha_hex(&file),
        });
        files.insert(format!("{base}/packages/{name}"), file);
        for (path, blob) in extra {
            files.insert(format!("{base}/{path}"), *blob);
        }
    }
    let mut updated_at: BTreeMap<String, proto::names::Timestamp> = upstream_names
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
    let curated: BTreeMap<String, proto::package::Package> = entries
        .into_iter()
        .map(|(name, (record, _, _))| (name, record))
        .collect();
    let names = index::build_names(&repo.name, &curated, &updated_at);
    let versions = index::build_versions(&repo.name, &curated);
    files.insert(
        format!("{base}/names"),
        store.put_bytes(&registry::seal_signed(names.encode_to_vec(), key))?,
    );
    files.insert(
        format!("{base}/versions"),
        store.put_bytes(&registry::seal_signed(versions.encode_to_vec(), key))?,
    );
    files.insert(
        format!("{base}/public_key"),
        store.put_bytes(key.public_key().spki_pem().as_bytes())?,
    );
    Ok(files)
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
    let sources = Sources {
        store,
        key,
        upstream: &FileMap::new(),
        records: &BTreeMap::new(),
        upstream_names: &proto::names::Names::default(),
        upstream_repository,
        cache: &[],
        hosted,
    };
    repository_files(&sources, repo, &mut Vec::new())
}
