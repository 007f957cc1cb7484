//! Publication: turns the outcome of a sync into the next generation of the
//! served tree — the byte-identical upstream tree, each repository of our
//! own (curated and re-signed), and the signed manifest — and switches it in.
//! Runs on the blocking pool: it links files and signs.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use sha2::{Digest, Sha256};

use super::fetch::PackageUpdate;
use crate::config::{Config, RepositoryConfig};
use crate::hosted::db::ReleaseRow;
use crate::index;
use crate::manifest::UpstreamState;
use crate::registry::{self, PublicKey, SigningKey, proto};
use crate::store::{FileMap, FileRef, GenerationError, Store, StoreError, db};

/// Why a generation could not be published. The previous one stays served.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Disk trouble.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The current generation cannot be carried forward, or the next one
    /// would lose files.
    #[error(transparent)]
    Generation(#[from] GenerationError),
    /// A key could not be read or made.
    #[error(transparent)]
    Key(#[from] crate::keyfiles::KeyFileError),
    /// A repository of ours is configured without `[signing] key` (config
    /// loading refuses this; kept so the writer never signs with nothing).
    #[error("[[repository]] needs [signing] key; add it to the configuration")]
    NoSigningKey,
    /// A stored record no longer verifies (disk corruption or a key change).
    #[error("stored record for {package} does not verify: {reason}; run `hexmirror verify`")]
    Record {
        /// The package.
        package: String,
        /// Why.
        reason: String,
    },
}

/// Everything publication needs from the sync.
pub(super) struct Inputs {
    pub prev: FileMap,
    pub prev_version: u64,
    pub updates: BTreeMap<String, PackageUpdate>,
    /// `Some` when `/names` and `/versions` are published with this sync.
    pub index: Option<IndexFiles>,
    pub upstream_names: proto::names::Names,
    pub upstream_state: UpstreamState,
    /// The signed-record cache of each repository, read from the database.
    pub signed_cache: Vec<db::SignedCacheRow>,
    /// Every hosted release, merged into the repositories.
    pub hosted: Vec<ReleaseRow>,
}

/// The upstream's `/names` and `/versions`, stored as blobs.
pub(super) struct IndexFiles {
    pub names: FileRef,
    pub versions: FileRef,
    /// Packages of the mirror; any other package leaves the tree.
    pub wanted: BTreeSet<String>,
}

/// What was published.
pub(super) struct Published {
    pub version: u64,
    /// Rows to write back to the signed-record cache.
    pub signed_cache: Vec<db::SignedCacheRow>,
}

fn sha_hex(r: &FileRef) -> String {
    hex::encode(r.sha256)
}

/// Applies the sync's results to the upstream part of the previous tree.
fn upstream_files(store: &Store, inputs: &Inputs, key: &PublicKey) -> Result<FileMap, StoreError> {
    let mut files: FileMap = inputs
        .prev
        .iter()
        .filter(|(path, _)| !path.starts_with("repos/"))
        .map(|(p, f)| (p.clone(), *f))
        .collect();
    // One pass drops the tarballs of every updated package; their current
    // releases are added back below. (Per-package passes would be quadratic.)
    files.retain(|path, _| {
        !(path.starts_with("tarballs/")
            && package_of(path).is_some_and(|name| inputs.updates.contains_key(name)))
    });
    for (name, update) in &inputs.updates {
        files.insert(format!("packages/{name}"), update.record);
        for (version, blob) in &update.releases {
            files.insert(format!("tarballs/{name}-{version}.tar"), *blob);
        }
    }
    if let Some(index) = &inputs.index {
        files.insert("names".into(), index.names);
        files.insert("versions".into(), index.versions);
        files.insert(
            "public_key".into(),
            store.put_bytes(key.spki_pem().as_bytes())?,
        );
        files.retain(|path, _| match package_of(path) {
            Some(name) => index.wanted.contains(name),
            None => true,
        });
    }
    Ok(files)
}

/// Whether this sync removes `path` of the previous tree on purpose: the
/// tarballs of a package it updated (its current ones are added back), a
/// package that left the mirror, and, when the index is published, any file
/// of our repositories, which are rebuilt whole from verified records and
/// the hosted releases. Mirrors what [`upstream_files`] and [`publish`] do,
/// so a generation built from a wrong previous tree is refused.
fn removed_by_sync(inputs: &Inputs, path: &str) -> bool {
    if path.starts_with("repos/") {
        return inputs.index.is_some();
    }
    let Some(name) = package_of(path) else {
        return false;
    };
    (path.starts_with("tarballs/") && inputs.updates.contains_key(name))
        || inputs
            .index
            .as_ref()
            .is_some_and(|index| !index.wanted.contains(name))
}

/// The package a `packages/` or `tarballs/` path belongs to. Package names
/// have no `-`, so the first `-` of a tarball name ends the package name.
fn package_of(path: &str) -> Option<&str> {
    if let Some(name) = path.strip_prefix("packages/") {
        return Some(name);
    }
    let file = path.strip_prefix("tarballs/")?;
    file.split_once('-').map(|(name, _)| name)
}

/// Identifies everything that shapes a repository's signed records, so a
/// change of key, name or denylist re-signs them.
fn repo_fingerprint(repo: &RepositoryConfig, key: &SigningKey) -> String {
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
struct Sources<'a> {
    store: &'a Store,
    key: &'a SigningKey,
    /// The new upstream tree.
    upstream: &'a FileMap,
    /// Its package records, decoded.
    records: &'a BTreeMap<String, proto::package::Package>,
    upstream_names: &'a proto::names::Names,
    upstream_repository: &'a str,
    cache: &'a [db::SignedCacheRow],
    /// Every hosted release of every repository.
    hosted: &'a [ReleaseRow],
}

/// One package of a repository: its record, what identifies its source for
/// the signing cache, and its tarballs and docs (paths under the repository).
type Entry = (proto::package::Package, String, Vec<(String, FileRef)>);

/// Builds repository `repo`'s files under `repos/NAME/` from the upstream
/// records in `upstream`, re-signing only records whose source, key or
/// curation changed since they were cached.
fn repository_files(
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

/// Builds the next generation and switches it in, unless it would equal the
/// current one and the current manifest is not due for re-signing.
pub(super) fn publish(
    store: &Store,
    config: &Config,
    inputs: Inputs,
    manifest_due: bool,
) -> Result<Published, PublishError> {
    let upstream = upstream_files(store, &inputs, &config.upstream.public_key)?;
    // Our repositories' files, built beside the upstream's rather than into a
    // copy of them: the map holds every file of the tree.
    let mut files = FileMap::new();
    let mut new_cache = Vec::new();
    if inputs.index.is_none() {
        // Some packages failed: our repositories keep the views of the last
        // complete sync, as the upstream's /names and /versions do, so no
        // re-signed index ever names a package this sync could not finish.
        files.extend(
            inputs
                .prev
                .iter()
                .filter(|(path, _)| path.starts_with("repos/"))
                .map(|(p, f)| (p.clone(), *f)),
        );
    } else if !config.repositories.is_empty() {
        // Config loading refuses a [[repository]] without a key.
        let key = config
            .signing
            .key
            .clone()
            .ok_or(PublishError::NoSigningKey)?;
        let records = decode_records(store, &upstream, config)?;
        let sources = Sources {
            store,
            key: &key,
            upstream: &upstream,
            records: &records,
            upstream_names: &inputs.upstream_names,
            upstream_repository: &config.upstream.repository,
            cache: &inputs.signed_cache,
            hosted: &inputs.hosted,
        };
        for repo in &config.repositories {
            files.extend(repository_files(&sources, repo, &mut new_cache)?);
        }
    }
    files.extend(upstream);
    let changed = files != inputs.prev;
    if !changed && !manifest_due {
        return Ok(Published {
            version: inputs.prev_version,
            signed_cache: new_cache,
        });
    }
    let version = inputs.prev_version + 1;
    let key = crate::keyfiles::manifest_key(&config.signing.manifest_key)?;
    store.publish_signed(
        version,
        &files,
        &|path| removed_by_sync(&inputs, path),
        inputs.upstream_state.clone(),
        config.signing.manifest_expiry,
        &key,
    )?;
    Ok(Published {
        version,
        signed_cache: new_cache,
    })
}

/// Every upstream record in the new tree, decoded and verified again (they
/// came from the blob store, which only holds verified bytes, but a record
/// is cheap to check and the repositories we sign must rest on verified
/// input only).
fn decode_records(
    store: &Store,
    upstream: &FileMap,
    config: &Config,
) -> Result<BTreeMap<String, proto::package::Package>, PublishError> {
    let mut records = BTreeMap::new();
    for (path, file) in upstream {
        let Some(name) = path.strip_prefix("packages/") else {
            continue;
        };
        let bytes = store.read_blob(&file.sha256)?;
        let record = registry::verify_package(
            &bytes,
            &config.upstream.public_key,
            &config.upstream.repository,
            name,
        )
        .map_err(|e| PublishError::Record {
            package: name.to_owned(),
            reason: e.to_string(),
        })?;
        records.insert(name.to_owned(), record.into_inner());
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_of_paths() {
        assert_eq!(package_of("packages/plug_crypto"), Some("plug_crypto"));
        assert_eq!(
            package_of("tarballs/plug_crypto-1.0.0+b.tar"),
            Some("plug_crypto")
        );
        assert_eq!(package_of("names"), None);
        assert_eq!(package_of("tarballs/plug-1.0.0.tar"), Some("plug"));
    }
}
