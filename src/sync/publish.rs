//! Publication: turns the outcome of a sync into the next generation of the
//! served tree — the byte-identical upstream tree, each repository of our
//! own (curated and re-signed), and the signed manifest — and switches it in.
//! Runs on the blocking pool: it links files and signs.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::Config;
use crate::hosted::db::ReleaseRow;
use crate::manifest::UpstreamState;
use crate::registry::{self, PublicKey, proto};
use crate::repo_files;
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
    pub updates: BTreeMap<String, PackageFiles>,
    /// `Some` when `/names` and `/versions` are published with this sync.
    pub index: Option<IndexFiles>,
    pub upstream_names: proto::names::Names,
    pub upstream_state: UpstreamState,
    /// The signed-record cache of each repository, read from the database.
    pub signed_cache: Vec<db::SignedCacheRow>,
    /// Every hosted release, merged into the repositories.
    pub hosted: Vec<ReleaseRow>,
}

/// The files one updated package brings to the next generation.
pub(super) struct PackageFiles {
    pub record: FileRef,
    pub releases: Vec<(String, FileRef)>,
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

/// Builds the next generation and switches it in, unless it would equal the
/// current one and the current manifest is not due for re-signing.
pub(super) fn publish(
    store: &Store,
    config: &Config,
    inputs: Inputs,
    manifest_due: bool,
) -> Result<Published, PublishError> {
    // What the fetch phase freed, in as many arenas as it had threads,
    // goes back to the system before the live heap peaks here.
    crate::heap::release_free();
    let mut upstream = upstream_files(store, &inputs, &config.upstream.public_key)?;
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
        let record = |name: &str| read_record(store, &upstream, config, name);
        let sources = repo_files::Sources {
            store,
            key: &key,
            upstream: &upstream,
            record: &record,
            upstream_names: &inputs.upstream_names,
            upstream_repository: &config.upstream.repository,
            cache: &inputs.signed_cache,
            hosted: &inputs.hosted,
        };
        for repo in &config.repositories {
            let mut built = repo_files::repository_files(&sources, repo, &mut new_cache)?;
            files.append(&mut built);
        }
    }
    // Signing freed each record in its worker thread's arena.
    crate::heap::release_free();
    // With both non-empty, `append` merges into a new, packed tree and frees
    // the old ones as it goes; inserting key by key left half-empty nodes
    // (~20 MB at hex.pm's size).
    files.append(&mut upstream);
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

/// An upstream record of the new tree, decoded and verified again (it came
/// from the blob store, which only holds verified bytes, but a record is
/// cheap to check and the repositories we sign must rest on verified input
/// only).
fn read_record(
    store: &Store,
    upstream: &FileMap,
    config: &Config,
    name: &str,
) -> Result<proto::package::Package, PublishError> {
    let path = format!("packages/{name}");
    let file = upstream.get(&path).ok_or_else(|| PublishError::Record {
        package: name.to_owned(),
        reason: "not in the new tree".to_owned(),
    })?;
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
    Ok(record.into_inner())
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
