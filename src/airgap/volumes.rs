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
        if found > volume.size {
            return Err(AirgapError::TrailingData {
                path,
                expected: volume.size,
            });
        }
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
    let found = file.metadata().map(|m| m.len()).ok();
    let r = BufReader::with_capacity(1 << 20, file);
    check_stream(r, &path, found, bundle, index, volume)
}

/// [`check_volume`] on the volume's bytes `r` (`found`: its length, if
/// known). Reads at most the size the manifest lists plus one byte, so a
/// volume with gigabytes appended costs no more than the genuine one.
fn check_stream(
    mut r: impl Read,
    path: &Path,
    found: Option<u64>,
    bundle: &BundleManifest,
    index: usize,
    volume: &Volume,
) -> Vec<AirgapError> {
    let mut problems = Vec::new();
    let mut whole = Sha256::new();
    let mut pos = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    // Feeds `n` bytes to the volume's hash (and `blob`'s); false at EOF.
    let mut feed =
        |r: &mut dyn Read, n: u64, mut blob: Option<&mut Sha256>| -> std::io::Result<bool> {
            let mut left = n;
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                let got = read_some(r, &mut buf[..want])?;
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
                problems.push(io("read", path)(e));
                return problems;
            }
        }
        // No overflow: the manifest's consistency check keeps every blob
        // inside its volume.
        pos = place.offset.saturating_add(place.size);
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
    // The rest: padding and trailer, up to the size the manifest lists and
    // no further; then one byte more tells whether anything was appended.
    let tail = if short {
        Ok(false)
    } else {
        feed(&mut r, volume.size.saturating_sub(pos), None)
    };
    let trailing = match tail {
        Ok(true) => read_some(&mut r, &mut [0u8; 1]).map(|n| n > 0),
        Ok(false) => {
            short = true;
            Ok(false)
        }
        Err(e) => Err(e),
    };
    match trailing {
        Ok(true) => problems.push(AirgapError::TrailingData {
            path: path.to_owned(),
            expected: volume.size,
        }),
        Ok(false) if short => problems.push(AirgapError::VolumeSize {
            volume: volume.name.clone(),
            expected: volume.size,
            found: found.unwrap_or(pos),
        }),
        Ok(false) => {}
        Err(e) => {
            problems.push(io("read", path)(e));
            return problems;
        }
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

/// One `read`, retried when a signal interrupted it.
fn read_some(r: &mut (impl Read + ?Sized), buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::BundleKind;
    use crate::manifest::{FileEntry, UpstreamState};

    /// A bundle of two small blobs in one volume, written into a temp dir.
    fn written() -> (tempfile::TempDir, BundleManifest) {
        let dir = tempfile::tempdir().unwrap();
        let mut sizes = std::collections::BTreeMap::new();
        let mut tree = std::collections::BTreeMap::new();
        for (name, bytes) in [("a", vec![1u8; 700]), ("b", vec![2u8; 1500])] {
            let sha = hex::encode(Sha256::digest(&bytes));
            std::fs::write(dir.path().join(&sha), &bytes).unwrap();
            sizes.insert(sha.clone(), bytes.len() as u64);
            let entry = FileEntry {
                sha256: sha,
                size: bytes.len() as u64,
            };
            tree.insert(format!("tarballs/{name}-1.0.0.tar"), Some(entry));
        }
        let layout = bundle::layout(&sizes, None).unwrap();
        let blobs = dir.path().to_owned();
        let volumes = write_volumes(
            dir.path(),
            &layout,
            |sha| Some(blobs.join(sha)),
            |sha| panic!("blob {sha} missing"),
        )
        .unwrap();
        let manifest = BundleManifest {
            blobs: layout.places,
            created_at: 0,
            expires_at: 0,
            generation: "g1".into(),
            kind: BundleKind::Full,
            manifest_version: 1,
            previous: None,
            sequence: 1,
            tree,
            upstream: UpstreamState {
                names_etag: None,
                synced_at: 0,
                url: "http://upstream".into(),
                versions_etag: None,
            },
            volumes,
        };
        (dir, manifest)
    }

    /// Counts the bytes read through it.
    struct Counting<R> {
        inner: R,
        read: u64,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read += n as u64;
            Ok(n)
        }
    }

    #[test]
    fn a_whole_volume_has_no_problem() {
        let (dir, bundle) = written();
        let problems = check_volume(dir.path(), &bundle, 0, &bundle.volumes[0]);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn data_appended_to_a_volume_is_named_with_its_path_and_not_read() {
        let (dir, bundle) = written();
        let volume = &bundle.volumes[0];
        let path = dir.path().join(&volume.name);
        let genuine = std::fs::read(&path).unwrap();
        // Endless data after the genuine bytes: reading it to the end (as a
        // `read_to_end` of the rest would) never finishes and fills memory.
        let mut r = Counting {
            inner: genuine.as_slice().chain(std::io::repeat(0x41)),
            read: 0,
        };
        let problems = check_stream(&mut r, &path, None, &bundle, 0, volume);
        assert!(
            r.read <= volume.size + 1,
            "read {} bytes of a {}-byte volume",
            r.read,
            volume.size
        );
        assert!(
            matches!(
                problems.as_slice(),
                [AirgapError::TrailingData { path: p, expected }]
                    if *p == path && *expected == volume.size
            ),
            "{problems:?}"
        );
        let message = problems[0].to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");

        // The same through the file, and the import's presence check too.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(&[0u8; 4096]))
            .unwrap();
        let problems = check_volume(dir.path(), &bundle, 0, volume);
        assert!(
            matches!(problems.as_slice(), [AirgapError::TrailingData { path: p, .. }] if *p == path),
            "{problems:?}"
        );
        assert!(matches!(
            check_present(dir.path(), &bundle),
            Err(AirgapError::TrailingData { path: p, .. }) if p == path
        ));
    }

    /// The problems [`check_volume`] finds once the volume's length is
    /// set to `len(listed size)`, and the listed size.
    fn checked_at_length(len: impl Fn(u64) -> u64) -> (Vec<AirgapError>, u64) {
        let (dir, bundle) = written();
        let volume = &bundle.volumes[0];
        File::options()
            .write(true)
            .open(dir.path().join(&volume.name))
            .and_then(|f| f.set_len(len(volume.size)))
            .unwrap();
        (check_volume(dir.path(), &bundle, 0, volume), volume.size)
    }

    #[test]
    fn a_huge_sparse_tail_is_refused_without_reading_it() {
        // 64 GiB more, as a hole: no disk used, but more than memory holds.
        let (problems, _) = checked_at_length(|size| size + (64 << 30));
        assert!(
            matches!(problems.as_slice(), [AirgapError::TrailingData { .. }]),
            "{problems:?}"
        );
    }

    #[test]
    fn a_truncated_volume_is_short_not_trailing() {
        let (problems, size) = checked_at_length(|size| size - 100);
        assert!(
            problems.iter().any(
                |p| matches!(p, AirgapError::VolumeSize { found, .. } if *found == size - 100)
            ),
            "{problems:?}"
        );
        assert!(
            !problems
                .iter()
                .any(|p| matches!(p, AirgapError::TrailingData { .. })),
            "{problems:?}"
        );
    }
}
