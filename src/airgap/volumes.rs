//! Tar volumes: written from the blob store in layout order, read back blob
//! by blob, and checked on their own (`hexmirror bundle verify`), so a
//! damaged volume is named and only it is carried again.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{AirgapError, io, paths_text};
use crate::bundle::{
    self, BUNDLE_MANIFEST_FILE, BlobPlace, BundleManifest, ChainPosition, Layout, TAR_BLOCK,
    TAR_TRAILER, Volume,
};
use crate::manifest::ManifestPublicKey;

/// Counts and hashes what passes through to `inner`.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The blobs of volume `index`, in offset order.
fn in_volume(
    places: &std::collections::BTreeMap<String, BlobPlace>,
    index: usize,
) -> Vec<(&str, BlobPlace)> {
    let mut blobs: Vec<(&str, BlobPlace)> = places
        .iter()
        .filter(|(_, p)| p.volume as usize == index)
        .map(|(s, p)| (s.as_str(), *p))
        .collect();
    blobs.sort_by_key(|(_, p)| p.offset);
    blobs
}

/// Writes the volumes of `layout` into `out`, each blob read from
/// `blob_path`; each volume is written under a private name and renamed
/// when whole. A blob whose file is not `size` bytes fails with
/// `missing(sha)`.
pub(super) fn write_volumes(
    out: &Path,
    layout: &Layout,
    blob_path: impl Fn(&str) -> Option<PathBuf>,
    missing: impl Fn(&str) -> AirgapError,
) -> Result<Vec<Volume>, AirgapError> {
    let mut volumes = Vec::new();
    for (index, size) in layout.volume_sizes.iter().enumerate() {
        let name = bundle::volume_name(index);
        let path = out.join(&name);
        let part = out.join(format!(".{name}.part"));
        let file = File::create(&part).map_err(io("create", &part))?;
        let mut w = Hashing {
            inner: BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            written: 0,
        };
        let zeros = [0u8; TAR_BLOCK as usize];
        for (sha, place) in in_volume(&layout.places, index) {
            let header_at = place.offset - TAR_BLOCK;
            debug_assert_eq!(w.written, header_at);
            w.write_all(&bundle::tar_header(sha, place.size))
                .map_err(io("write", &part))?;
            let source = blob_path(sha).ok_or_else(|| missing(sha))?;
            let f = File::open(&source).map_err(|_| missing(sha))?;
            let copied =
                std::io::copy(&mut f.take(place.size), &mut w).map_err(io("write", &part))?;
            if copied != place.size {
                return Err(missing(sha));
            }
            let pad = bundle::tar_padding(place.size) as usize;
            w.write_all(&zeros[..pad]).map_err(io("write", &part))?;
        }
        w.write_all(&[0u8; TAR_TRAILER as usize])
            .map_err(io("write", &part))?;
        debug_assert_eq!(w.written, *size);
        let Hashing {
            inner,
            hasher,
            written,
        } = w;
        let file = inner
            .into_inner()
            .map_err(|e| io("write", &part)(e.into_error()))?;
        file.sync_all().map_err(io("fsync", &part))?;
        std::fs::rename(&part, &path).map_err(io("rename", &path))?;
        volumes.push(Volume {
            name,
            sha256: hex::encode(hasher.finalize()),
            size: written,
        });
    }
    Ok(volumes)
}

/// Checks that every volume `bundle` lists is in `dir` with its size.
pub(super) fn check_present(dir: &Path, bundle: &BundleManifest) -> Result<(), AirgapError> {
    for volume in &bundle.volumes {
        let path = dir.join(&volume.name);
        let found = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(_) => {
                return Err(AirgapError::MissingVolume {
                    dir: dir.to_owned(),
                    volume: volume.name.clone(),
                });
            }
        };
        if found != volume.size {
            return Err(AirgapError::VolumeSize {
                volume: volume.name.clone(),
                expected: volume.size,
                found,
            });
        }
    }
    Ok(())
}

/// Reads each blob of `bundle` that `wanted` asks for from its volume in
/// `dir`, in volume and offset order, checks its SHA-256, and hands it to
/// `each`. A mismatch names the volume and the files.
pub(super) fn read_blobs(
    dir: &Path,
    bundle: &BundleManifest,
    wanted: impl Fn(&str) -> bool,
    mut each: impl FnMut(&str, [u8; 32], Vec<u8>) -> Result<(), AirgapError>,
) -> Result<(), AirgapError> {
    for (index, volume) in bundle.volumes.iter().enumerate() {
        let blobs: Vec<_> = in_volume(&bundle.blobs, index)
            .into_iter()
            .filter(|(sha, _)| wanted(sha))
            .collect();
        if blobs.is_empty() {
            continue;
        }
        let path = dir.join(&volume.name);
        let mut f = File::open(&path).map_err(io("open", &path))?;
        for (sha, place) in blobs {
            let mut bytes = vec![0u8; usize::try_from(place.size).unwrap_or(usize::MAX)];
            f.seek(SeekFrom::Start(place.offset))
                .and_then(|_| f.read_exact(&mut bytes))
                .map_err(io("read", &path))?;
            let digest: [u8; 32] = Sha256::digest(&bytes).into();
            if hex::encode(digest) != sha {
                return Err(AirgapError::BlobHash {
                    volume: volume.name.clone(),
                    blob: sha.to_owned(),
                    paths: paths_text(bundle, sha),
                    found: hex::encode(digest),
                });
            }
            each(sha, digest, bytes)?;
        }
    }
    Ok(())
}

/// One volume's check.
#[derive(Debug)]
pub struct VolumeCheck {
    /// Its file name.
    pub name: String,
    /// What is wrong with it (empty: good).
    pub problems: Vec<AirgapError>,
}

/// What `bundle verify` found.
#[derive(Debug)]
pub struct VolumeReport {
    /// The verified manifest.
    pub bundle: BundleManifest,
    /// Each volume, in order.
    pub volumes: Vec<VolumeCheck>,
}

impl VolumeReport {
    /// True when every volume is whole.
    pub fn is_clean(&self) -> bool {
        self.volumes.iter().all(|v| v.problems.is_empty())
    }
}

/// Reads a bundle manifest file from `dir`.
pub(super) fn read_manifest(dir: &Path) -> Result<Vec<u8>, AirgapError> {
    let path = dir.join(BUNDLE_MANIFEST_FILE);
    std::fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => AirgapError::NotABundle {
            dir: dir.to_owned(),
        },
        _ => io("read", &path)(e),
    })
}

/// `hexmirror bundle verify`: the manifest's signature (by one of `keys`),
/// its place after the bundle manifest `after` if given, then every volume
/// on its own: present, its size, its hash, every blob's hash.
pub fn verify_dir(
    dir: &Path,
    keys: &[ManifestPublicKey],
    after: Option<&Path>,
) -> Result<VolumeReport, AirgapError> {
    if keys.is_empty() {
        return Err(AirgapError::NoBundleKeys);
    }
    let refused = |dir: &Path| {
        let dir = dir.to_owned();
        move |source| AirgapError::Bundle { dir, source }
    };
    let file = read_manifest(dir)?;
    let bundle = bundle::verify_bundle(&file, keys).map_err(refused(dir))?;
    if let Some(after) = after {
        let previous = std::fs::read(after).map_err(io("read", after))?;
        let last = bundle::verify_bundle(&previous, keys).map_err(refused(after))?;
        let position = ChainPosition {
            sequence: last.sequence,
            hash: bundle::bundle_hash(&previous),
        };
        bundle::check_chain(Some(&position), &bundle, false).map_err(|e| AirgapError::Bundle {
            dir: dir.to_owned(),
            source: e.into(),
        })?;
    }
    let mut volumes = Vec::new();
    for (index, volume) in bundle.volumes.iter().enumerate() {
        volumes.push(VolumeCheck {
            name: volume.name.clone(),
            problems: check_volume(dir, &bundle, index, volume),
        });
    }
    Ok(VolumeReport { bundle, volumes })
}

/// Reads volume `index` once: its hash, and each blob's on the way.
fn check_volume(
    dir: &Path,
    bundle: &BundleManifest,
    index: usize,
    volume: &Volume,
) -> Vec<AirgapError> {
    let path = dir.join(&volume.name);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(_) => {
            return vec![AirgapError::MissingVolume {
                dir: dir.to_owned(),
                volume: volume.name.clone(),
            }];
        }
    };
    let mut problems = Vec::new();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut whole = Sha256::new();
    let mut pos = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    // Feeds `n` bytes to the volume's hash (and `blob`'s); false at EOF.
    let mut feed =
        |r: &mut BufReader<File>, n: u64, mut blob: Option<&mut Sha256>| -> std::io::Result<bool> {
            let mut left = n;
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                let got = r.read(&mut buf[..want])?;
                if got == 0 {
                    return Ok(false);
                }
                whole.update(&buf[..got]);
                if let Some(b) = blob.as_deref_mut() {
                    b.update(&buf[..got]);
                }
                left -= got as u64;
            }
            Ok(true)
        };
    let mut short = false;
    for (sha, place) in in_volume(&bundle.blobs, index) {
        let mut blob = Sha256::new();
        let read = feed(&mut r, place.offset.saturating_sub(pos), None)
            .and_then(|ok| Ok(ok && feed(&mut r, place.size, Some(&mut blob))?));
        match read {
            Ok(true) => {}
            Ok(false) => {
                short = true;
                break;
            }
            Err(e) => {
                problems.push(io("read", &path)(e));
                return problems;
            }
        }
        pos = place.offset + place.size;
        let found = hex::encode(blob.finalize());
        if found != sha {
            problems.push(AirgapError::BlobHash {
                volume: volume.name.clone(),
                blob: sha.to_owned(),
                paths: paths_text(bundle, sha),
                found,
            });
        }
    }
    // The rest: padding and trailer, to the end of the file.
    let mut rest = Vec::new();
    if let Err(e) = r.read_to_end(&mut rest) {
        problems.push(io("read", &path)(e));
        return problems;
    }
    whole.update(&rest);
    let actual = std::fs::metadata(&path)
        .map(|m| m.len())
        .unwrap_or(pos + rest.len() as u64);
    if short || actual != volume.size {
        problems.push(AirgapError::VolumeSize {
            volume: volume.name.clone(),
            expected: volume.size,
            found: actual,
        });
    }
    let found = hex::encode(whole.finalize());
    if found != volume.sha256 {
        problems.push(AirgapError::VolumeHash {
            volume: volume.name.clone(),
            found,
        });
    }
    problems
}
