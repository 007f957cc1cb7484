//! `hexmirror bundle import`: verifies a bundle completely, then publishes
//! the generation it reproduces with one switch, as a sync does.
//!
//! Order: manifest (signature, consistency, chain, expiry) → volumes present
//! → each carried blob read, hashed and staged (skipped when already stored
//! or staged: the resume) → the whole target tree's content present → the
//! upstream's signatures and checksums of every upstream file it changes →
//! staged blobs adopted into the store → generation published → chain
//! position recorded. A refusal at any step leaves the served tree and the
//! database as they were.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{
    AirgapError, UpstreamCheck, bundles_dir, check_space, checks, io, kept_name, sha_bytes,
    sync_tree, volumes, write_atomic, write_file,
};
use crate::bundle::{self, BundleKind, BundleManifest, ChainPosition, Tree};
use crate::config::Config;
use crate::registry;
use crate::store::{self, Db, FileMap, FileRef, Store, db};

/// What an import did.
#[derive(Debug, Clone)]
pub struct ImportReport {
    /// The bundle's sequence.
    pub sequence: u64,
    /// Its kind.
    pub kind: BundleKind,
    /// Blobs read from the volumes in this run.
    pub read: usize,
    /// Blobs already here (stored, or staged by an interrupted run).
    pub already: usize,
    /// Files of the far side's tree it changed.
    pub changes: usize,
    /// The manifest version published here.
    pub version: u64,
}

fn staging_dir(data_dir: &Path) -> PathBuf {
    bundles_dir(data_dir).join("staging")
}

/// Imports the bundle in `dir`. With `rebase`, a full bundle starts the
/// chain again from itself. Blocking.
pub fn import(config: &Config, dir: &Path, rebase: bool) -> Result<ImportReport, AirgapError> {
    if config.bundle_keys.is_empty() {
        return Err(AirgapError::NoBundleKeys);
    }
    let refused = |source| AirgapError::Bundle {
        dir: dir.to_owned(),
        source,
    };
    let file = volumes::read_manifest(dir)?;
    let bundle = bundle::verify_bundle(&file, &config.bundle_keys).map_err(refused)?;
    let store = Store::open(&config.data_dir)?;
    let Some(_lock) = store.try_lock()? else {
        return Err(AirgapError::Locked(config.data_dir.join("writer.lock")));
    };
    let db = Db::open(&config.data_dir)?;
    let (sequence, hash, recorded_version) = db.call_blocking(|c| {
        Ok((
            db::meta(c, db::BUNDLE_SEQUENCE)?,
            db::meta(c, db::BUNDLE_HASH)?,
            db::meta(c, "manifest_version")?,
        ))
    })?;
    let last = match (sequence.and_then(|s| s.parse().ok()), hash) {
        (Some(sequence), Some(hash)) => Some(ChainPosition { sequence, hash }),
        _ => None,
    };
    bundle::check_chain(last.as_ref(), &bundle, rebase).map_err(|e| refused(e.into()))?;
    let now = crate::clock::unix_now();
    if bundle.expires_at <= now {
        return Err(AirgapError::Expired {
            sequence: bundle.sequence,
            expires_at: bundle.expires_at,
        });
    }
    volumes::check_present(dir, &bundle)?;

    // This side's tree: the exporter's files, and this side's own
    // repositories, which the bundle must not touch.
    let manifest_key = crate::keyfiles::manifest_key(&config.signing.manifest_key)?;
    let current = store.load_current(&manifest_key.public())?;
    let own: Vec<String> = config
        .repositories
        .iter()
        .map(|r| format!("repos/{}/", r.name))
        .collect();
    let is_own = |path: &str| own.iter().any(|prefix| path.starts_with(prefix.as_str()));
    let near: Tree = current
        .files
        .iter()
        .filter(|(p, _)| !is_own(p))
        .map(|(p, f)| (p.clone(), f.entry()))
        .collect();
    if let Some(path) = bundle.tree.keys().find(|p| is_own(p)) {
        let repository = path.split('/').nth(1).unwrap_or_default().to_owned();
        return Err(AirgapError::Collision {
            path: path.clone(),
            repository,
        });
    }
    let target = bundle.apply(&near);

    // Every file of the target tree is here already or carried: refused
    // before anything is read otherwise.
    for (path, entry) in &target {
        let held = bundle.blobs.contains_key(&entry.sha256)
            || sha_bytes(&entry.sha256).is_some_and(|b| store.has_blob(&b));
        if !held {
            return Err(AirgapError::Lacking {
                path: path.clone(),
                sha256: entry.sha256.clone(),
                sequence: bundle.sequence,
            });
        }
    }

    // Carried blobs: read, hashed and staged; a rerun skips what an
    // interrupted run already stored or staged.
    let staging = staging_dir(&config.data_dir);
    std::fs::create_dir_all(&staging).map_err(io("create directory", &staging))?;
    let staged = |sha: &str| staging.join(sha);
    let mut already = 0usize;
    let missing: Vec<&String> = bundle
        .blobs
        .keys()
        .filter(|sha| {
            let held = sha_bytes(sha).is_some_and(|b| store.has_blob(&b))
                || staged_intact(&staged(sha), sha);
            already += usize::from(held);
            !held
        })
        .collect();
    let needed: u64 = missing.iter().map(|s| bundle.blobs[*s].size).sum();
    check_space(&staging, needed + (1 << 20))?;
    let wanted: std::collections::HashSet<&str> = missing.iter().map(|s| s.as_str()).collect();
    let mut read = 0usize;
    // Fault injection for the crash tests (kill -9 mid-import): a pause
    // after each staged blob. Unset in production.
    let fault_delay = std::env::var("HEXMIRROR_FAULT_STAGE_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    volumes::read_blobs(
        dir,
        &bundle,
        |sha| wanted.contains(sha),
        |sha, _, bytes| {
            // Whole under its name, so a kill loses at most this file; not
            // fsynced one by one: one flush of the staging area follows, and
            // a resumed import hashes what an earlier run staged.
            write_file(&staged(sha), &bytes, false)?;
            if let Some(pause) = fault_delay {
                std::thread::sleep(pause);
            }
            read += 1;
            Ok(())
        },
    )?;

    let content = |sha: &str| -> Option<PathBuf> {
        let staged = staged(sha);
        if staged.is_file() {
            return Some(staged);
        }
        sha_bytes(sha)
            .map(|b| store.blob_path(&b))
            .filter(|p| p.is_file())
    };
    // Derived data: an import goes on without it.
    let catalog = crate::catalog::Catalog::open(&config.data_dir)
        .inspect_err(|e| {
            tracing::warn!("catalog unavailable ({e}); `hexmirror catalog rebuild` catches up")
        })
        .ok();
    check_upstream(config, &bundle, &target, &content, catalog.as_ref())?;

    // Verified: on disk, into the store, then one switch.
    sync_tree(&staging)?;
    let adopted: Vec<[u8; 32]> = bundle
        .blobs
        .keys()
        .filter_map(|sha| Some((sha_bytes(sha)?, staged(sha))))
        .filter(|(_, path)| path.is_file())
        .map(|(b, path)| store.adopt_blob(&b, &path).map(|()| b))
        .collect::<Result<_, _>>()?;
    store.sync_blob_dirs(&adopted)?;
    let mut files: FileMap = current
        .files
        .iter()
        .filter(|(p, _)| is_own(p))
        .map(|(p, f)| (p.clone(), *f))
        .collect();
    for (path, entry) in &target {
        let Some(file) = FileRef::from_entry(entry) else {
            return Err(AirgapError::Lacking {
                path: path.clone(),
                sha256: entry.sha256.clone(),
                sequence: bundle.sequence,
            });
        };
        files.insert(path.clone(), file);
    }
    let version = current
        .version
        .max(recorded_version.and_then(|v| v.parse().ok()).unwrap_or(0))
        + 1;
    let lifetime = config
        .signing
        .manifest_expiry
        .min(Duration::from_secs(bundle.expires_at.saturating_sub(now)));
    let removed = |path: &str| near.contains_key(path) && !target.contains_key(path);
    store.publish_signed(
        version,
        &files,
        &removed,
        bundle.upstream.clone(),
        lifetime,
        &manifest_key,
    )?;
    // Live: keep the exporter's manifest for audit, then move the chain on.
    let kept = bundles_dir(&config.data_dir)
        .join("import")
        .join(kept_name(bundle.sequence));
    write_atomic(&kept, &file)?;
    let hash = bundle::bundle_hash(&file);
    let (seq, expires, synced) = (
        bundle.sequence.to_string(),
        bundle.expires_at.to_string(),
        bundle.upstream.synced_at.to_string(),
    );
    db.call_blocking(move |c| {
        db::set_meta(c, "manifest_version", &version.to_string())?;
        db::set_meta(c, db::BUNDLE_SEQUENCE, &seq)?;
        db::set_meta(c, db::BUNDLE_HASH, &hash)?;
        db::set_meta(c, db::BUNDLE_EXPIRES_AT, &expires)?;
        db::set_meta(c, db::BUNDLE_UPSTREAM_SYNCED_AT, &synced)?;
        db::set_meta(c, db::BUNDLE_IMPORTED_AT, &now.to_string())
    })?;
    let _ = std::fs::remove_dir_all(&staging);
    if let Some(catalog) = &catalog {
        follow_catalog(catalog, &store, config, &bundle, &near, &target);
    }
    let pruned =
        store.prune_generations(store::KEEP_GENERATIONS, config.signing.generation_grace)?;
    if pruned > 0 {
        tracing::info!(pruned, "removed generations past their grace period");
    }
    Ok(ImportReport {
        sequence: bundle.sequence,
        kind: bundle.kind,
        read,
        already,
        changes: bundle.tree.len(),
        version,
    })
}

/// A staged file from an earlier run counts only if it still hashes to
/// its name (it was written without waiting for the disk).
fn staged_intact(path: &Path, sha: &str) -> bool {
    std::fs::read(path).is_ok_and(|bytes| hex::encode(Sha256::digest(&bytes)) == sha)
}

/// The upstream's own checks, again, on every upstream file the bundle
/// changes: `/names` and `/versions` and each record by signature and
/// origin with the `[upstream]` key (one pass), then each tarball against
/// its record's checksums (outer and inner) and structure, on all cores.
fn check_upstream(
    config: &Config,
    bundle: &BundleManifest,
    target: &Tree,
    content: &(dyn Fn(&str) -> Option<PathBuf> + Sync),
    catalog: Option<&crate::catalog::Catalog>,
) -> Result<(), AirgapError> {
    let upstream = &config.upstream;
    let volume_of = |sha: &str| {
        bundle
            .blobs
            .get(sha)
            .and_then(|p| bundle.volumes.get(p.volume as usize))
            .map(|v| v.name.clone())
    };
    let read = |path: &str, sha: &str| -> Result<Vec<u8>, AirgapError> {
        let file = content(sha).ok_or_else(|| AirgapError::Lacking {
            path: path.to_owned(),
            sha256: sha.to_owned(),
            sequence: bundle.sequence,
        })?;
        std::fs::read(&file).map_err(io("read", &file))
    };
    let refuse = |path: &str, sha: &str, reason: UpstreamCheck| AirgapError::Upstream {
        path: path.to_owned(),
        volume: volume_of(sha),
        reason: Box::new(reason),
    };
    let changed: Vec<(&str, &crate::manifest::FileEntry)> = bundle
        .tree
        .iter()
        .filter_map(|(p, e)| Some((p.as_str(), e.as_ref()?)))
        .collect();
    // Tarballs to check: (path, sha, name, version).
    let mut tarballs: Vec<(&str, &str, &str, &str)> = Vec::new();
    for (path, entry) in &changed {
        let sha = entry.sha256.as_str();
        if path.starts_with("tarballs/") {
            let Some((name, version)) = checks::tarball_release(path) else {
                return Err(refuse(path, sha, UpstreamCheck::NoRecord(path.to_string())));
            };
            tarballs.push((path, sha, name, version));
        }
    }
    // Records: every changed one, and the (unchanged) records of changed
    // tarballs; checked by signature and origin, then kept for the tarballs.
    let mut wanted: std::collections::BTreeSet<&str> = changed
        .iter()
        .filter_map(|(p, _)| p.strip_prefix("packages/"))
        .collect();
    wanted.extend(tarballs.iter().map(|t| t.2));
    let mut records: HashMap<&str, registry::proto::package::Package> = HashMap::new();
    for name in wanted {
        let path = format!("packages/{name}");
        let Some(entry) = target.get(&path) else {
            continue;
        };
        let bytes = read(&path, &entry.sha256)?;
        let package = checks::verify_record(upstream, name, &bytes)
            .map_err(|e| refuse(&path, &entry.sha256, e))?;
        // A record must agree with every tarball the tree serves for it.
        for release in &package.releases {
            let tarball = format!("tarballs/{name}-{}.tar", release.version);
            if let Some(t) = target.get(&tarball) {
                let sums = crate::upstream::release::Sums::of(release);
                if sums.is_none_or(|s| hex::encode(s.outer) != t.sha256) {
                    return Err(refuse(&tarball, &t.sha256, UpstreamCheck::Checksum));
                }
            }
        }
        records.insert(name, package);
    }
    // Our repositories (`repos/*`, re-signed by the exporter) and docs rest
    // on the bundle's signature; records were checked above.
    for (path, entry) in changed.iter().filter(|(p, _)| checks::is_index(p)) {
        let sha = entry.sha256.as_str();
        checks::verify_index(upstream, path, &read(path, sha)?)
            .map_err(|e| refuse(path, sha, e))?;
    }
    let check =
        |&(path, sha, name, version): &(&str, &str, &str, &str)| -> Result<(), AirgapError> {
            let record_path = format!("packages/{name}");
            let package = records
                .get(name)
                .ok_or_else(|| refuse(path, sha, UpstreamCheck::NoRecord(record_path)))?;
            let sums =
                checks::listed_sums(package, version, sha).map_err(|e| refuse(path, sha, e))?;
            let verified = checks::verify_tarball(name, version, &sums, &read(path, sha)?)
                .map_err(|e| refuse(path, sha, e))?;
            if let Some(catalog) = catalog
                && let Err(e) = catalog
                    .call_blocking(|c| crate::catalog::put_tarball_meta(c, sha, &verified.metadata))
            {
                tracing::warn!(path, "catalog: {e}");
            }
            Ok(())
        };
    // The first refusal in path order, whichever core found it.
    crate::parallel::map(&tarballs, check).into_iter().collect()
}

/// Puts the upstream packages an import changed into the catalog, and
/// takes out those it removed (a warning if it cannot: the tree stands).
fn follow_catalog(
    catalog: &crate::catalog::Catalog,
    store: &Store,
    config: &Config,
    bundle: &BundleManifest,
    near: &Tree,
    target: &Tree,
) {
    let package = |path: &str| path.strip_prefix("packages/").map(str::to_owned);
    let changed: Vec<&String> = if bundle.kind == BundleKind::Full {
        target.keys().collect()
    } else {
        bundle.tree.keys().collect()
    };
    let records: Vec<(String, FileRef)> = changed
        .into_iter()
        .filter_map(|p| Some((package(p)?, FileRef::from_entry(target.get(p)?)?)))
        .collect();
    let gone: Vec<String> = near
        .keys()
        .filter(|p| !target.contains_key(*p))
        .filter_map(|p| package(p))
        .collect();
    let updated_at = target
        .get("names")
        .and_then(FileRef::from_entry)
        .and_then(|f| store.read_blob(&f.sha256).ok())
        .and_then(|bytes| {
            registry::verify_names_within(
                &bytes,
                &config.upstream.public_key,
                &config.upstream.repository,
                config.upstream.max_registry_bytes,
            )
            .ok()
        })
        .map(|names| {
            names
                .into_inner()
                .packages
                .into_iter()
                .filter_map(|p| Some((p.name, p.updated_at?.seconds.max(0) as u64)))
                .collect()
        })
        .unwrap_or_default();
    if let Err(e) = crate::catalog::follow(catalog, store, config, &records, &gone, &updated_at) {
        tracing::warn!(
            "catalog not updated ({e}); the tree is; `hexmirror catalog rebuild` catches up"
        );
    }
}
