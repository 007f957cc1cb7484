//! `hexmirror bundle export`: the next bundle of this exporter's chain,
//! holding what the far side lacks to reproduce the current generation.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    AirgapError, UpstreamCheck, bundles_dir, check_space, checks, io, kept_name, paths_text,
    sha_bytes, volumes, write_atomic,
};
use crate::bundle::{self, BUNDLE_MANIFEST_FILE, BundleKind, BundleManifest, Layout, Tree};
use crate::config::{Config, UpstreamConfig};
use crate::registry::proto::package::Package;
use crate::store::{FileMap, FileRef, Store};

/// What `bundle export` was asked for.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// The directory the bundle is written to (created; must hold no bundle).
    pub out: PathBuf,
    /// Everything, whatever the far side holds (the first bundle, or a
    /// re-base).
    pub full: bool,
    /// Re-sign the current manifest first, so that a bundle with no
    /// changes carries a new expiry.
    pub heartbeat: bool,
    /// Largest volume in bytes (`None`: one volume).
    pub max_volume: Option<u64>,
    /// Write bundle N of the chain again instead of a new one.
    pub sequence: Option<u64>,
    /// The exporter's Ed25519 bundle key (private).
    pub key: PathBuf,
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportReport {
    /// The bundle's sequence.
    pub sequence: u64,
    /// Its kind.
    pub kind: BundleKind,
    /// Files of the tree it changes.
    pub changes: usize,
    /// Blobs it carries.
    pub blobs: usize,
    /// Bytes of its volumes.
    pub bytes: u64,
    /// How many volumes.
    pub volumes: usize,
    /// True when it is an earlier bundle written again (same content).
    pub again: bool,
    /// Files of the proxy's cache left out because the importer would
    /// refuse them (each logged with the reason); a later bundle carries
    /// them once the served record lists them.
    pub left_out: Vec<String>,
}

/// What the exporter remembers after each bundle: its place in the chain
/// and the tree the far side holds once the bundle is imported.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportState {
    sequence: u64,
    hash: String,
    manifest_version: u64,
    tree: Tree,
    /// The bundle is recorded but its manifest may not have reached the
    /// output (the export was interrupted): the next export writes it
    /// again. Absent when false, so a finished state reads as before.
    #[serde(default, skip_serializing_if = "is_false")]
    pending: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

const STATE_FILE: &str = "state.json";

fn state_dir(data_dir: &Path) -> PathBuf {
    bundles_dir(data_dir).join("export")
}

fn read_state(dir: &Path) -> Result<Option<ExportState>, AirgapError> {
    let path = dir.join(STATE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| AirgapError::State { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", &path)(e)),
    }
}

/// Replaces the state file whole (fsynced, renamed, directory fsynced).
fn write_state(dir: &Path, state: &ExportState) -> Result<(), AirgapError> {
    let bytes = serde_json::to_vec(state).unwrap_or_else(|_| unreachable!("state serialises"));
    write_atomic(&dir.join(STATE_FILE), &bytes)
}

/// `HEXMIRROR_FAULT_EXPORT_KILL=POINT` kills the export at POINT (`kept`,
/// `record`, `output`).
fn fault_point(point: &str) {
    crate::fault::kill_at("HEXMIRROR_FAULT_EXPORT_KILL", point);
}

/// Whether the files at `a` and `b` both read and hold the same bytes.
fn same_bytes(a: &Path, b: &Path) -> bool {
    match (std::fs::read(a), std::fs::read(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Writes the next bundle of the chain (or bundle `sequence` again) into
/// `opts.out`. Blocking.
pub fn export(config: &Config, opts: &ExportOptions) -> Result<ExportReport, AirgapError> {
    let store = Store::open(&config.data_dir)?;
    let dir = state_dir(&config.data_dir);
    std::fs::create_dir_all(&dir).map_err(io("create directory", &dir))?;
    // One export at a time: the chain is linear.
    let lock_path = dir.join("export.lock");
    let lock = File::create(&lock_path).map_err(io("create", &lock_path))?;
    if lock.try_lock().is_err() {
        return Err(AirgapError::Locked(lock_path));
    }
    let key = crate::keyfiles::bundle_key(&opts.key)?;
    std::fs::create_dir_all(&opts.out).map_err(io("create directory", &opts.out))?;
    let out_manifest = opts.out.join(BUNDLE_MANIFEST_FILE);
    let state = read_state(&dir)?;
    let pending = state.as_ref().filter(|s| s.pending).map(|s| s.sequence);
    // A bundle is never overwritten, but for the one an interrupted export
    // was writing here: its manifest there is the kept one, byte for byte,
    // and writing it again finishes that export.
    if out_manifest.exists() {
        let finishing = pending.filter(|n| opts.sequence.is_none_or(|s| s == *n));
        if !finishing.is_some_and(|n| same_bytes(&out_manifest, &dir.join(kept_name(n)))) {
            return Err(AirgapError::Exists(out_manifest));
        }
    }
    if let Some(sequence) = opts.sequence {
        return write_again(&store, &dir, &opts.out, sequence, &key, state.as_ref());
    }
    if let Some(sequence) = pending {
        // The medium may lack bundle N (see the order below), and the
        // importer takes nothing after N before N, a full bundle included:
        // so N first, whatever was asked.
        tracing::warn!(
            sequence,
            "the export of bundle {sequence} was interrupted: writing it again (the far side needs it before any later bundle); export again for what changed since"
        );
        return write_again(&store, &dir, &opts.out, sequence, &key, state.as_ref());
    }
    let mut source = exported_tree(config, &store, opts.heartbeat)?;
    let empty = Tree::new();
    let base = match (&state, opts.full) {
        (Some(s), false) => &s.tree,
        _ => &empty,
    };
    let left_out = leave_out_refused(
        &config.upstream,
        &store,
        &mut source.files,
        &source.proxied,
        base,
    )?;
    let tree: Tree = source
        .files
        .iter()
        .map(|(p, f)| (p.clone(), f.entry()))
        .collect();
    let (kind, sequence, previous) = match (&state, opts.full) {
        (Some(s), false) => {
            let kind = if bundle::changes(&s.tree, &tree).is_empty() {
                if source.version <= s.manifest_version && !opts.heartbeat {
                    // Nothing new: the last bundle is what the far side needs.
                    return write_again(&store, &dir, &opts.out, s.sequence, &key, state.as_ref());
                }
                BundleKind::Heartbeat
            } else {
                BundleKind::Incremental
            };
            (kind, s.sequence + 1, Some(s.hash.clone()))
        }
        (s, _) => (
            BundleKind::Full,
            s.as_ref().map_or(1, |s| s.sequence + 1),
            s.as_ref().map(|s| s.hash.clone()),
        ),
    };
    let changes = bundle::changes(base, &tree);
    let needed = bundle::needed_blobs(base, &changes);
    let layout = bundle::layout(&needed, opts.max_volume)?;
    let total: u64 = layout.volume_sizes.iter().sum();
    check_space(&opts.out, total + (1 << 20))?;
    let gone = |sha: &str| AirgapError::BlobGone {
        sequence,
        blob: sha.to_owned(),
        paths: changes
            .iter()
            .filter(|(_, e)| e.as_ref().is_some_and(|e| e.sha256 == sha))
            .map(|(p, _)| p.as_str())
            .take(3)
            .collect::<Vec<_>>()
            .join(", "),
    };
    let blob_path = |sha: &str| sha_bytes(sha).map(|b| store.blob_path(&b));
    let volumes = volumes::write_volumes(&opts.out, &layout, blob_path, gone)?;
    let manifest = BundleManifest {
        blobs: layout.places,
        created_at: crate::clock::unix_now(),
        expires_at: source.expires_at,
        generation: source.generation,
        kind,
        manifest_version: source.version,
        previous,
        sequence,
        tree: changes,
        upstream: source.upstream,
        volumes,
    };
    let file = bundle::sign_bundle(&manifest, &key);
    // The exporter's record first, the output's manifest last, so that
    // running the export again after a crash at any point gives the far
    // side a bundle it accepts. The other order left a bundle on the medium
    // that the state did not know: the next export wrote another bundle N,
    // and the far side refused it, and everything chained after it, as a
    // fork of the N it had imported.
    // - Killed before the state names N (volumes or the kept copy written):
    //   the chain is still at N-1, and the output, without a manifest, is
    //   no bundle; the rerun makes N afresh over the same names.
    // - Killed after the state names N, pending, and before N's manifest is
    //   in the output: the medium holds no N; the rerun writes N again from
    //   the kept copy (same bytes, same hash) whatever changed since, and
    //   the next export chains from it.
    // - Killed after N's manifest is in the output, before `pending` is
    //   cleared: the medium holds N; the rerun writes it again, byte for
    //   byte (into the same directory too), so either copy is the same step.
    // The kept copy precedes the state because the state's rename is the
    // one commit point: a kept copy no state names is never written again
    // (`write_again` refuses a sequence past the state's).
    write_atomic(&dir.join(kept_name(sequence)), &file)?;
    fault_point("kept");
    let mut next = ExportState {
        sequence,
        hash: bundle::bundle_hash(&file),
        manifest_version: source.version,
        tree,
        pending: true,
    };
    write_state(&dir, &next)?;
    fault_point("record");
    write_atomic(&out_manifest, &file)?;
    fault_point("output");
    next.pending = false;
    write_state(&dir, &next)?;
    Ok(ExportReport {
        sequence,
        kind,
        changes: manifest.tree.len(),
        blobs: manifest.blobs.len(),
        bytes: total,
        volumes: manifest.volumes.len(),
        again: false,
        left_out,
    })
}

/// What an export reproduces: the served tree and what vouches for it.
struct Source {
    files: FileMap,
    /// The paths of `files` that come from the proxy's cache.
    proxied: BTreeSet<String>,
    version: u64,
    expires_at: u64,
    generation: String,
    upstream: crate::manifest::UpstreamState,
}

/// The current generation (re-signed first for a heartbeat) plus the
/// proxy's verified files; or the proxy's files alone when no sync ever
/// ran (a caching proxy feeds an air gap too).
fn exported_tree(config: &Config, store: &Store, heartbeat: bool) -> Result<Source, AirgapError> {
    let nothing = || AirgapError::NothingPublished(config.data_dir.clone());
    let proxy = config.data_dir.join("proxy");
    let proxied = if proxy.is_dir() {
        store.proven_files(&proxy)?
    } else {
        Default::default()
    };
    let Some((_, generation_dir)) = store.current()? else {
        if proxied.is_empty() {
            return Err(nothing());
        }
        let now = crate::clock::unix_now();
        return Ok(Source {
            proxied: proxied.keys().cloned().collect(),
            files: proxied,
            version: 0,
            expires_at: now + config.signing.manifest_expiry.as_secs(),
            generation: "proxy".into(),
            upstream: crate::manifest::UpstreamState {
                url: config.upstream.url.clone(),
                names_etag: None,
                versions_etag: None,
                synced_at: now,
            },
        });
    };
    if heartbeat {
        let db = crate::store::Db::open(&config.data_dir)?;
        let resigned = store.resign_now(
            &db,
            &config.signing.manifest_key,
            config.signing.manifest_expiry,
        )?;
        if resigned.is_none() {
            return Err(AirgapError::Locked(config.data_dir.join("writer.lock")));
        }
    }
    let manifest_key = crate::keyfiles::manifest_key(&config.signing.manifest_key)?;
    let current = store.load_current(&manifest_key.public())?;
    let upstream = current.upstream.clone().ok_or_else(nothing)?;
    if !current.signed_by_key {
        return Err(AirgapError::NotSignedByKey);
    }
    let mut files = current.files.clone();
    let mut from_proxy = BTreeSet::new();
    // The generation wins where both have a path.
    for (path, file) in proxied {
        if let std::collections::btree_map::Entry::Vacant(e) = files.entry(path) {
            from_proxy.insert(e.key().clone());
            e.insert(file);
        }
    }
    Ok(Source {
        files,
        proxied: from_proxy,
        version: current.version,
        expires_at: current.expires_at,
        generation: generation_dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
        upstream,
    })
}

/// Takes out of `files` each file of the proxy's cache (`proxied`) that
/// the importer's upstream checks would refuse, and returns their paths,
/// each logged with the reason. A proxied tarball outlives the record it
/// was checked against (a later sync serves the package's record, which may
/// not list that release), and the importer refuses a whole bundle for one
/// such tarball, then every bundle chained after it: so the tree exported is
/// only what passes. The generation's own files need no check here: a sync
/// published them after the same checks, each tarball with its record.
/// Like the importer, a tarball is read and verified whole only when it is
/// new to the far side (not in `base`); one the far side holds must still
/// be listed, with its checksum, by the record the tree serves.
fn leave_out_refused(
    upstream: &UpstreamConfig,
    store: &Store,
    files: &mut FileMap,
    proxied: &BTreeSet<String>,
    base: &Tree,
) -> Result<Vec<String>, AirgapError> {
    let is_new = |path: &str, file: &FileRef| base.get(path) != Some(&file.entry());
    let mut refused: Vec<(String, UpstreamCheck)> = Vec::new();
    // Index files and records first: a tarball is judged by the record
    // the exported tree keeps.
    for path in proxied {
        let Some(file) = files.get(path).filter(|f| is_new(path, f)) else {
            continue;
        };
        let checked = if let Some(name) = path.strip_prefix("packages/") {
            checks::verify_record(upstream, name, &store.read_blob(&file.sha256)?).map(drop)
        } else if checks::is_index(path) {
            checks::verify_index(upstream, path, &store.read_blob(&file.sha256)?)
        } else {
            continue;
        };
        if let Err(reason) = checked {
            refused.push((path.clone(), reason));
        }
    }
    for (path, _) in &refused {
        files.remove(path);
    }
    let mut records: HashMap<&str, Option<Package>> = HashMap::new();
    // Tarballs new to the far side, to verify whole: (path, name, version,
    // sums, content).
    let mut whole = Vec::new();
    for path in proxied.iter().filter(|p| p.starts_with("tarballs/")) {
        let Some(file) = files.get(path).copied() else {
            continue;
        };
        let Some((name, version)) = checks::tarball_release(path) else {
            refused.push((path.clone(), UpstreamCheck::NoRecord(path.clone())));
            continue;
        };
        let record_path = format!("packages/{name}");
        if !records.contains_key(name) {
            let record = match files.get(&record_path) {
                Some(r) => checks::verify_record(upstream, name, &store.read_blob(&r.sha256)?)
                    .inspect_err(|e| tracing::warn!(path = record_path, "does not verify: {e}"))
                    .ok(),
                None => None,
            };
            records.insert(name, record);
        }
        let Some(record) = records.get(name).and_then(Option::as_ref) else {
            refused.push((path.clone(), UpstreamCheck::NoRecord(record_path)));
            continue;
        };
        match checks::listed_sums(record, version, &hex::encode(file.sha256)) {
            Err(reason) => refused.push((path.clone(), reason)),
            Ok(sums) if is_new(path, &file) => whole.push((path, name, version, sums, file)),
            Ok(_) => {}
        }
    }
    let verdicts = crate::parallel::map(&whole, |(_, name, version, sums, file)| {
        let bytes = store.read_blob(&file.sha256)?;
        Ok::<_, AirgapError>(checks::verify_tarball(name, version, sums, &bytes).err())
    });
    for ((path, ..), verdict) in whole.iter().zip(verdicts) {
        if let Some(reason) = verdict? {
            refused.push(((*path).clone(), reason));
        }
    }
    let mut left_out = Vec::with_capacity(refused.len());
    for (path, reason) in refused {
        files.remove(&path);
        tracing::warn!(
            path,
            "left out of the bundle: {reason}; the importer would refuse the bundle with it (a later bundle carries it once the served record lists it)"
        );
        left_out.push(path);
    }
    Ok(left_out)
}

/// Writes bundle `sequence` again from its kept manifest: the same
/// manifest bytes, and volumes rebuilt from the blob store that must hash
/// as before.
fn write_again(
    store: &Store,
    dir: &Path,
    out: &Path,
    sequence: u64,
    key: &crate::manifest::ManifestKey,
    state: Option<&ExportState>,
) -> Result<ExportReport, AirgapError> {
    let last = state.map_or(0, |s| s.sequence);
    if sequence > last {
        return Err(AirgapError::NoSuchBundle { sequence, last });
    }
    let path = dir.join(kept_name(sequence));
    let file = match std::fs::read(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(AirgapError::NoSuchBundle { sequence, last });
        }
        Err(e) => return Err(io("read", &path)(e)),
    };
    let bundle =
        bundle::verify_bundle(&file, &[key.public()]).map_err(|source| AirgapError::Bundle {
            dir: dir.to_owned(),
            source,
        })?;
    let layout = Layout {
        places: bundle.blobs.clone(),
        volume_sizes: bundle.volumes.iter().map(|v| v.size).collect(),
    };
    let gone = |sha: &str| AirgapError::BlobGone {
        sequence,
        blob: sha.to_owned(),
        paths: paths_text(&bundle, sha),
    };
    let blob_path = |sha: &str| sha_bytes(sha).map(|b| store.blob_path(&b));
    let volumes = volumes::write_volumes(out, &layout, blob_path, gone)?;
    for (written, listed) in volumes.iter().zip(&bundle.volumes) {
        if written != listed {
            return Err(AirgapError::VolumeHash {
                volume: written.name.clone(),
                found: written.sha256.clone(),
            });
        }
    }
    write_atomic(&out.join(BUNDLE_MANIFEST_FILE), &file)?;
    if let Some(s) = state.filter(|s| s.pending && s.sequence == sequence) {
        write_state(
            dir,
            &ExportState {
                pending: false,
                ..s.clone()
            },
        )?;
    }
    Ok(ExportReport {
        sequence,
        kind: bundle.kind,
        changes: bundle.tree.len(),
        blobs: bundle.blobs.len(),
        bytes: bundle.volumes.iter().map(|v| v.size).sum(),
        volumes: bundle.volumes.len(),
        again: true,
        left_out: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_state_is_written_and_read_as_before_pending_existed() {
        let old = br#"{"sequence":3,"hash":"ab","manifest_version":7,"tree":{}}"#;
        let state: ExportState = serde_json::from_slice(old).unwrap();
        assert!(!state.pending);
        assert_eq!(serde_json::to_vec(&state).unwrap(), old);
        let pending = ExportState {
            pending: true,
            ..state
        };
        let bytes = serde_json::to_vec(&pending).unwrap();
        let read: ExportState = serde_json::from_slice(&bytes).unwrap();
        assert!(read.pending, "{}", String::from_utf8_lossy(&bytes));
    }
}
