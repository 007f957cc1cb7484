//! PURE. The air-gap bundle manifest: what one bundle carries across the
//! gap, signed with the exporter's Ed25519 bundle key, and its place in a
//! single linear chain of bundles.
//!
//! The file is the same TUF-style envelope as the snapshot manifest
//! (`{"signed": …, "signatures": […]}`, canonical JSON, see
//! [`crate::manifest`]), so one audited signing path serves both. A bundle
//! names the bundle before it by the SHA-256 of that bundle's manifest file;
//! the importer accepts exactly the next bundle of the chain it holds, and
//! says which one it expected otherwise.
//!
//! A bundle describes the exporter's tree as changes against the tree of
//! the bundle before it (a full bundle: the whole tree), and carries each
//! blob the far side lacks once, by content hash, in tar volumes sized for
//! the media: the same tarball served under `tarballs/` and `repos/*/`
//! crosses the gap once.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::manifest::{
    self, FileEntry, MANIFEST_DELTA_FILE, MANIFEST_FILE, ManifestError, ManifestKey,
    ManifestPublicKey, UpstreamState,
};

/// Name of the bundle manifest file at the root of a bundle directory.
pub const BUNDLE_MANIFEST_FILE: &str = "hexmirror-bundle.json";

/// A tar block: headers and padding come in these.
pub const TAR_BLOCK: u64 = 512;

/// Largest blob a bundle may carry: far above any Hex tarball, docs or
/// registry file, and low enough that reading one into memory is safe.
pub const MAX_BLOB: u64 = 1 << 30;

/// A tree of files: path → content.
pub type Tree = BTreeMap<String, FileEntry>;

/// What a bundle is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BundleKind {
    /// Everything the far side needs, whatever it holds (the first bundle,
    /// or an explicit re-base).
    Full,
    /// What changed since the previous bundle of the chain.
    Incremental,
    /// No files: a new manifest version and expiry over the same tree.
    Heartbeat,
}

/// Where one carried blob lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobPlace {
    /// Offset of its content in its volume.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// Index into [`BundleManifest::volumes`].
    pub volume: u32,
}

/// One volume (an archive file sized for the media), checked on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// File name beside the manifest.
    pub name: String,
    /// Lowercase hex SHA-256 of the whole volume.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// The signed content of a bundle manifest. Fields are in sorted order:
/// that is the canonical byte order of the signature. Do not reorder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    /// Every blob carried, by its SHA-256 (lowercase hex).
    pub blobs: BTreeMap<String, BlobPlace>,
    /// Unix seconds the exporter wrote it.
    pub created_at: u64,
    /// When the exporter's snapshot manifest of this tree expires: the far
    /// side never signs its copy for longer.
    pub expires_at: u64,
    /// The exporter's generation it reproduces.
    pub generation: String,
    /// What it is for.
    pub kind: BundleKind,
    /// The exporter's snapshot manifest version it reproduces.
    pub manifest_version: u64,
    /// SHA-256 (hex) of the previous bundle's manifest file; `None` only
    /// for the first bundle of a chain.
    pub previous: Option<String>,
    /// Its place in the chain, from 1.
    pub sequence: u64,
    /// The tree as changes against the previous bundle's tree (`null`: the
    /// file left); a full bundle lists the whole tree.
    pub tree: BTreeMap<String, Option<FileEntry>>,
    /// The upstream state the exporter had synced.
    pub upstream: UpstreamState,
    /// The volumes, in order.
    pub volumes: Vec<Volume>,
}

impl BundleManifest {
    /// The tree this bundle reproduces, given the tree of the bundle before
    /// it (ignored for a full bundle).
    pub fn apply(&self, previous: &Tree) -> Tree {
        let mut tree = if self.kind == BundleKind::Full {
            Tree::new()
        } else {
            previous.clone()
        };
        for (path, entry) in &self.tree {
            match entry {
                Some(e) => tree.insert(path.clone(), e.clone()),
                None => tree.remove(path),
            };
        }
        tree
    }

    /// The paths each carried blob is served under, for messages.
    pub fn paths_of(&self, sha256: &str) -> Vec<&str> {
        self.tree
            .iter()
            .filter(|(_, e)| e.as_ref().is_some_and(|e| e.sha256 == sha256))
            .map(|(p, _)| p.as_str())
            .collect()
    }
}

/// Why a bundle manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Not signed by a configured bundle key, forged, or malformed.
    #[error("bundle manifest: {0}")]
    Signature(#[source] ManifestError),
    /// Signed, but inconsistent: the exporter wrote a broken bundle.
    #[error("bundle manifest is inconsistent: {0}; the exporter wrote a broken bundle")]
    Invalid(#[from] Inconsistency),
    /// Signed and sound, but not the next bundle of the chain.
    #[error(transparent)]
    Chain(#[from] ChainError),
}

/// How a signed bundle manifest contradicts itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Inconsistency {
    /// Bundles count from 1.
    #[error("sequence 0 (bundles count from 1)")]
    SequenceZero,
    /// Bundle 1 names a previous bundle, or a later one names none.
    #[error("bundle {0} names a previous bundle exactly when it is not the first")]
    Previous(u64),
    /// A heartbeat carries no files and changes nothing.
    #[error("a heartbeat carries files or changes the tree")]
    HeartbeatWithContent,
    /// A full bundle lists the whole tree, so it removes nothing.
    #[error("a full bundle removes {0}")]
    FullWithRemoval(String),
    /// The snapshot manifest is the far side's own; a bundle never carries one.
    #[error("the tree lists the snapshot manifest file {0}")]
    ManifestInTree(String),
    /// A blob name that is not 64 lowercase hex digits.
    #[error("blob name {0:?} is not a SHA-256 in lowercase hex")]
    BlobName(String),
    /// A blob no file of the tree is.
    #[error("blob {0} is carried but no file of the tree is that content")]
    UnusedBlob(String),
    /// A blob larger than [`MAX_BLOB`].
    #[error("blob {0} is larger than 1 GiB")]
    BlobTooLarge(String),
    /// A blob whose size differs from the tree's files of that content.
    #[error("blob {0} has another size than the tree's files of that content")]
    BlobSize(String),
    /// A blob lies in a volume the manifest does not list.
    #[error("blob {blob} lies in volume {volume}, which is not listed")]
    NoSuchVolume {
        /// The blob.
        blob: String,
        /// The volume index it names.
        volume: u32,
    },
    /// A blob lies past the end of its volume.
    #[error("blob {blob} lies past the end of volume {volume}")]
    PastVolumeEnd {
        /// The blob.
        blob: String,
        /// The volume's name.
        volume: String,
    },
    /// A volume name that is not a plain file name.
    #[error("volume name {0:?} is not a plain file name")]
    VolumeName(String),
}

/// Where a bundle stands against the chain the importer holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A side that holds no bundle starts from a full one.
    #[error(
        "this side holds no bundle yet and bundle {got} is not a full one: import a full bundle first (the first of the chain, or a new one from `bundle export --full`)"
    )]
    NotAStart {
        /// The sequence offered.
        got: u64,
    },
    /// An earlier bundle is missing.
    #[error(
        "bundle {got} cannot be imported before bundle {expected}: import the bundles in order"
    )]
    Gap {
        /// The sequence expected.
        expected: u64,
        /// The sequence offered.
        got: u64,
    },
    /// Already imported (or older).
    #[error("bundle {got} was already imported (the last one was {last}): nothing to do")]
    Replay {
        /// The sequence offered.
        got: u64,
        /// The last one imported.
        last: u64,
    },
    /// The right number on another branch: not built on what this side holds.
    #[error(
        "bundle {sequence} does not follow the bundle this side imported last ({expected_previous}); it names {got_previous} — a fork: re-base with a full bundle and `bundle import --rebase`"
    )]
    Fork {
        /// Its sequence.
        sequence: u64,
        /// The hash this side expects as its previous.
        expected_previous: String,
        /// The hash it names.
        got_previous: String,
    },
}

/// The last bundle a side imported: what the next one must follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainPosition {
    /// Its sequence.
    pub sequence: u64,
    /// SHA-256 (hex) of its manifest file.
    pub hash: String,
}

/// SHA-256 (hex) of a bundle manifest file: how the next bundle names it.
pub fn bundle_hash(file: &[u8]) -> String {
    hex::encode(Sha256::digest(file))
}

/// Signs `bundle` with the exporter's key; returns the manifest file.
pub fn sign_bundle(bundle: &BundleManifest, key: &ManifestKey) -> Vec<u8> {
    manifest::sign_envelope(bundle, key)
}

/// Verifies a bundle manifest file against the configured bundle keys (any
/// one may have signed it) and checks it is consistent.
pub fn verify_bundle(
    file: &[u8],
    keys: &[ManifestPublicKey],
) -> Result<BundleManifest, BundleError> {
    let mut last = None;
    for key in keys {
        match manifest::open_envelope::<BundleManifest>(file, key) {
            Ok(bundle) => {
                check_consistent(&bundle)?;
                return Ok(bundle);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(BundleError::Signature(last.unwrap_or(
        ManifestError::NotSignedByKey {
            expected: "(no [import] bundle_keys configured)".into(),
            found: Vec::new(),
        },
    )))
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn check_consistent(bundle: &BundleManifest) -> Result<(), BundleError> {
    if bundle.sequence == 0 {
        return Err(Inconsistency::SequenceZero.into());
    }
    if (bundle.sequence == 1) != bundle.previous.is_none() {
        return Err(Inconsistency::Previous(bundle.sequence).into());
    }
    if bundle.kind == BundleKind::Heartbeat && !(bundle.tree.is_empty() && bundle.blobs.is_empty())
    {
        return Err(Inconsistency::HeartbeatWithContent.into());
    }
    // Sizes of the tree's contents, to check each carried blob against.
    let mut sizes: BTreeMap<&str, u64> = BTreeMap::new();
    for (path, entry) in &bundle.tree {
        if path == MANIFEST_FILE || path == MANIFEST_DELTA_FILE {
            return Err(Inconsistency::ManifestInTree(path.clone()).into());
        }
        let Some(entry) = entry else {
            if bundle.kind == BundleKind::Full {
                return Err(Inconsistency::FullWithRemoval(path.clone()).into());
            }
            manifest::check_path(path).map_err(BundleError::Signature)?;
            continue;
        };
        manifest::check_entry(path, entry).map_err(BundleError::Signature)?;
        if *sizes.entry(&entry.sha256).or_insert(entry.size) != entry.size {
            return Err(Inconsistency::BlobSize(entry.sha256.clone()).into());
        }
    }
    for (blob, place) in &bundle.blobs {
        if !is_sha256_hex(blob) {
            return Err(Inconsistency::BlobName(blob.clone()).into());
        }
        match sizes.get(blob.as_str()) {
            None => return Err(Inconsistency::UnusedBlob(blob.clone()).into()),
            Some(size) if *size != place.size => {
                return Err(Inconsistency::BlobSize(blob.clone()).into());
            }
            Some(_) => {}
        }
        if place.size > MAX_BLOB {
            return Err(Inconsistency::BlobTooLarge(blob.clone()).into());
        }
        let Some(volume) = bundle.volumes.get(place.volume as usize) else {
            return Err(Inconsistency::NoSuchVolume {
                blob: blob.clone(),
                volume: place.volume,
            }
            .into());
        };
        if place
            .offset
            .checked_add(place.size)
            .is_none_or(|end| end > volume.size)
        {
            return Err(Inconsistency::PastVolumeEnd {
                blob: blob.clone(),
                volume: volume.name.clone(),
            }
            .into());
        }
    }
    for volume in &bundle.volumes {
        let plain = !volume.name.is_empty()
            && !volume.name.starts_with('.')
            && volume
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !plain {
            return Err(Inconsistency::VolumeName(volume.name.clone()).into());
        }
    }
    Ok(())
}

/// Whether `bundle` is the next one after `last` (`None`: nothing imported
/// yet, when any full bundle starts the chain). With `rebase`, a full
/// bundle starts the chain again from itself.
pub fn check_chain(
    last: Option<&ChainPosition>,
    bundle: &BundleManifest,
    rebase: bool,
) -> Result<(), ChainError> {
    if rebase && bundle.kind == BundleKind::Full {
        return Ok(());
    }
    // A full bundle needs nothing before it: a side that holds none (new,
    // or joining a chain that started long ago) starts from any.
    let Some(last) = last else {
        return if bundle.kind == BundleKind::Full {
            Ok(())
        } else {
            Err(ChainError::NotAStart {
                got: bundle.sequence,
            })
        };
    };
    let expected = last.sequence + 1;
    if bundle.sequence <= last.sequence {
        return Err(ChainError::Replay {
            got: bundle.sequence,
            last: last.sequence,
        });
    }
    if bundle.sequence > expected {
        return Err(ChainError::Gap {
            expected,
            got: bundle.sequence,
        });
    }
    match &bundle.previous {
        Some(previous) if *previous == last.hash => Ok(()),
        other => Err(ChainError::Fork {
            sequence: bundle.sequence,
            expected_previous: last.hash.clone(),
            got_previous: other.clone().unwrap_or_else(|| "no previous".into()),
        }),
    }
}

/// The changes that turn tree `previous` into `next`.
pub fn changes(previous: &Tree, next: &Tree) -> BTreeMap<String, Option<FileEntry>> {
    let mut out: BTreeMap<String, Option<FileEntry>> = next
        .iter()
        .filter(|(p, e)| previous.get(*p) != Some(*e))
        .map(|(p, e)| (p.clone(), Some(e.clone())))
        .collect();
    out.extend(
        previous
            .keys()
            .filter(|p| !next.contains_key(*p))
            .map(|p| (p.clone(), None)),
    );
    out
}

/// The blobs (SHA-256 → size) the far side lacks after `previous` to
/// apply `changes`: content no file of `previous` already is.
pub fn needed_blobs(
    previous: &Tree,
    changes: &BTreeMap<String, Option<FileEntry>>,
) -> BTreeMap<String, u64> {
    let held: BTreeSet<&str> = previous.values().map(|e| e.sha256.as_str()).collect();
    changes
        .values()
        .flatten()
        .filter(|e| !held.contains(e.sha256.as_str()))
        .map(|e| (e.sha256.clone(), e.size))
        .collect()
}

/// Bytes that end a tar volume: two zero blocks.
pub const TAR_TRAILER: u64 = 2 * TAR_BLOCK;

/// Zero bytes after `size` bytes of content, up to the next tar block.
pub fn tar_padding(size: u64) -> u64 {
    (TAR_BLOCK - size % TAR_BLOCK) % TAR_BLOCK
}

/// The file name of volume `index` (from 0).
pub fn volume_name(index: usize) -> String {
    format!("volume-{:04}.tar", index + 1)
}

/// Where a blob lies inside a volume's tar: `blobs/ab/HEX`, as in a data
/// directory, so `tar -x` of a volume yields a blob store.
pub fn tar_member(sha256: &str) -> String {
    format!("blobs/{}/{sha256}", sha256.get(..2).unwrap_or("xx"))
}

/// The ustar header of a blob's entry: fixed owner, mode and time, so a
/// re-export writes the same bytes.
pub fn tar_header(sha256: &str, size: u64) -> [u8; 512] {
    let mut header = tar::Header::new_ustar();
    // A 72-byte ASCII path fits the 100-byte ustar name field.
    header
        .set_path(tar_member(sha256))
        .unwrap_or_else(|_| unreachable!("a blob member name fits ustar"));
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    *header.as_bytes()
}

/// Where each blob goes: volume and offset, and each volume's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// SHA-256 → place.
    pub places: BTreeMap<String, BlobPlace>,
    /// Size of each volume, in order.
    pub volume_sizes: Vec<u64>,
}

/// A blob that does not fit one volume of the size asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "blob {sha256} ({size} bytes{paths}) does not fit a volume of {max_volume} bytes with its tar header and trailer; choose a larger --max-volume"
)]
pub struct TooLarge {
    /// The blob.
    pub sha256: String,
    /// Its size.
    pub size: u64,
    /// The volume size asked for.
    pub max_volume: u64,
    /// `", served as …"`, for the message.
    pub paths: String,
}

/// Lays `blobs` (SHA-256 → size) out in tar volumes of at most
/// `max_volume` bytes (`None`: one volume), in hash order.
pub fn layout(blobs: &BTreeMap<String, u64>, max_volume: Option<u64>) -> Result<Layout, TooLarge> {
    let limit = max_volume.unwrap_or(u64::MAX);
    let mut places = BTreeMap::new();
    let mut volume_sizes: Vec<u64> = Vec::new();
    // Bytes used in the open volume, trailer excluded.
    let mut used: Option<u64> = None;
    for (sha256, &size) in blobs {
        let entry = TAR_BLOCK
            .saturating_add(size)
            .saturating_add(tar_padding(size));
        if entry.saturating_add(TAR_TRAILER) > limit {
            return Err(TooLarge {
                sha256: sha256.clone(),
                size,
                max_volume: limit,
                paths: String::new(),
            });
        }
        let start = match used {
            Some(u) if u + entry + TAR_TRAILER <= limit => u,
            Some(u) => {
                volume_sizes.push(u + TAR_TRAILER);
                0
            }
            None => 0,
        };
        places.insert(
            sha256.clone(),
            BlobPlace {
                offset: start + TAR_BLOCK,
                size,
                volume: volume_sizes.len() as u32,
            },
        );
        used = Some(start + entry);
    }
    if let Some(u) = used {
        volume_sizes.push(u + TAR_TRAILER);
    }
    Ok(Layout {
        places,
        volume_sizes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> ManifestKey {
        ManifestKey::from_pem(&ed25519_pem(seed)).unwrap()
    }

    /// A PKCS#8 PEM of a fixed Ed25519 key, so bundles are reproducible.
    fn ed25519_pem(seed: u8) -> String {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
            .to_pkcs8_pem(LineEnding::LF)
            .unwrap()
            .to_string()
    }

    fn entry(c: char, size: u64) -> FileEntry {
        FileEntry {
            sha256: c.to_string().repeat(64),
            size,
        }
    }

    fn bundle(sequence: u64, previous: Option<String>) -> BundleManifest {
        let volume = Volume {
            name: "volume-0001.tar".into(),
            sha256: "a".repeat(64),
            size: 10_000,
        };
        BundleManifest {
            blobs: [(
                "b".repeat(64),
                BlobPlace {
                    offset: 512,
                    size: 4096,
                    volume: 0,
                },
            )]
            .into(),
            created_at: 1_795_341_600,
            expires_at: 1_795_941_600,
            generation: format!("g{sequence:012}"),
            kind: if sequence == 1 {
                BundleKind::Full
            } else {
                BundleKind::Incremental
            },
            manifest_version: sequence * 10,
            previous,
            sequence,
            tree: [
                (
                    "tarballs/jason-1.4.4.tar".to_string(),
                    Some(entry('b', 4096)),
                ),
                (
                    "repos/acme/tarballs/jason-1.4.4.tar".to_string(),
                    Some(entry('b', 4096)),
                ),
            ]
            .into(),
            upstream: UpstreamState {
                url: "https://repo.hex.pm".into(),
                names_etag: None,
                versions_etag: None,
                synced_at: 1_795_341_000,
            },
            volumes: vec![volume],
        }
    }

    #[test]
    fn a_signed_bundle_verifies_with_its_key_only() {
        let (exporter, stranger) = (key(1), key(2));
        let file = sign_bundle(&bundle(1, None), &exporter);
        let got = verify_bundle(&file, &[stranger.public(), exporter.public()]).unwrap();
        assert_eq!(got, bundle(1, None));
        assert!(matches!(
            verify_bundle(&file, &[stranger.public()]),
            Err(BundleError::Signature(ManifestError::NotSignedByKey { .. }))
        ));
        assert!(matches!(
            verify_bundle(&file, &[]),
            Err(BundleError::Signature(_))
        ));
        // A forged byte anywhere is refused.
        let mut forged = file.clone();
        let at = forged.iter().position(|b| *b == b'4').unwrap();
        forged[at] = b'5';
        assert!(verify_bundle(&forged, &[exporter.public()]).is_err());
    }

    #[test]
    fn an_inconsistent_bundle_is_refused_even_when_signed() {
        let k = key(1);
        let check = |b: &BundleManifest| verify_bundle(&sign_bundle(b, &k), &[k.public()]);
        let invalid = |b: &BundleManifest, what: &str| {
            assert!(
                matches!(check(b), Err(BundleError::Invalid(_))),
                "{what}: {:?}",
                check(b)
            );
        };
        let mut b = bundle(2, None);
        invalid(&b, "2 without previous");
        b.previous = Some("c".repeat(64));
        check(&b).unwrap();
        b.blobs.values_mut().for_each(|f| f.offset = 9_000);
        invalid(&b, "past the volume");
        let mut b = bundle(1, None);
        b.blobs.values_mut().for_each(|f| f.volume = 3);
        invalid(&b, "unlisted volume");
        let mut b = bundle(1, None);
        b.volumes[0].name = "../etc".into();
        invalid(&b, "volume name");
        let mut b = bundle(1, None);
        let file = b.tree.remove("tarballs/jason-1.4.4.tar").unwrap();
        b.tree.insert("../escape".into(), file);
        assert!(check(&b).is_err(), "escaping path");
        let mut b = bundle(1, None);
        b.tree.insert(MANIFEST_FILE.into(), Some(entry('b', 4096)));
        invalid(&b, "a snapshot manifest in the tree");
        let mut b = bundle(1, None);
        b.tree.insert("packages/gone".into(), None);
        invalid(&b, "a full bundle that removes");
        let mut b = bundle(1, None);
        b.tree.clear();
        invalid(&b, "a blob no file is");
        let mut b = bundle(1, None);
        b.blobs.values_mut().for_each(|f| f.size = 4095);
        invalid(&b, "a blob of another size");
        let mut b = bundle(1, None);
        b.kind = BundleKind::Heartbeat;
        invalid(&b, "heartbeat with files");
        let mut b = bundle(1, None);
        let huge = MAX_BLOB + 1;
        b.blobs.values_mut().for_each(|f| f.size = huge);
        b.tree.values_mut().flatten().for_each(|e| e.size = huge);
        b.volumes[0].size = huge + 1024;
        assert!(
            matches!(
                check(&b),
                Err(BundleError::Invalid(Inconsistency::BlobTooLarge(_)))
            ),
            "a blob too large to read"
        );
    }

    #[test]
    fn changes_carry_only_content_the_far_side_lacks() {
        let prev: Tree = [
            ("names".to_string(), entry('1', 10)),
            ("tarballs/a-1.tar".to_string(), entry('2', 20)),
            ("packages/gone".to_string(), entry('3', 30)),
        ]
        .into();
        let mut next = prev.clone();
        next.remove("packages/gone");
        next.insert("names".into(), entry('4', 11));
        // Same content under a second path: nothing to carry for it.
        next.insert("repos/acme/tarballs/a-1.tar".into(), entry('2', 20));
        next.insert("tarballs/b-1.tar".into(), entry('5', 50));
        let c = changes(&prev, &next);
        assert_eq!(c.len(), 4, "{c:?}");
        assert_eq!(c["packages/gone"], None);
        let needed = needed_blobs(&prev, &c);
        assert_eq!(
            needed,
            [("4".repeat(64), 11), ("5".repeat(64), 50)].into(),
            "only new content"
        );
        let mut b = bundle(2, Some("c".repeat(64)));
        b.tree = c;
        assert_eq!(b.apply(&prev), next);
        b.kind = BundleKind::Full;
        b.tree.remove("packages/gone");
        assert_eq!(
            b.apply(&prev).len(),
            3,
            "a full bundle ignores the previous tree"
        );
    }

    #[test]
    fn volumes_are_tar_files_that_fit_the_limit() {
        let blobs: BTreeMap<String, u64> = [
            ("1".repeat(64), 700),
            ("2".repeat(64), 0),
            ("3".repeat(64), 3000),
            ("4".repeat(64), 100),
        ]
        .into();
        let one = layout(&blobs, None).unwrap();
        assert_eq!(one.volume_sizes.len(), 1);
        let split = layout(&blobs, Some(5120)).unwrap();
        assert!(split.volume_sizes.len() > 1, "{split:?}");
        assert!(split.volume_sizes.iter().all(|s| *s <= 5120));
        assert!(
            layout(&blobs, Some(4096)).is_err(),
            "3000 bytes and tar framing never fit 4096"
        );
        // Build each volume as the exporter does and read it back as tar.
        for (index, size) in split.volume_sizes.iter().enumerate() {
            let mut volume = vec![0u8; *size as usize];
            for (sha, place) in split
                .places
                .iter()
                .filter(|(_, p)| p.volume as usize == index)
            {
                let at = (place.offset - TAR_BLOCK) as usize;
                volume[at..at + 512].copy_from_slice(&tar_header(sha, place.size));
                let byte = sha.as_bytes()[0];
                volume[place.offset as usize..(place.offset + place.size) as usize].fill(byte);
            }
            let mut archive = tar::Archive::new(volume.as_slice());
            for e in archive.entries().unwrap() {
                let mut e = e.unwrap();
                let name = e.path().unwrap().to_string_lossy().into_owned();
                let sha = name.rsplit('/').next().unwrap().to_owned();
                assert_eq!(name, tar_member(&sha));
                let place = split.places[&sha];
                assert_eq!(e.raw_file_position(), place.offset);
                let mut body = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut body).unwrap();
                assert_eq!(body.len() as u64, place.size);
            }
        }
    }

    #[test]
    fn the_chain_takes_the_next_bundle_only() {
        let k = key(1);
        let first = sign_bundle(&bundle(1, None), &k);
        let at_one = ChainPosition {
            sequence: 1,
            hash: bundle_hash(&first),
        };
        check_chain(None, &bundle(1, None), false).unwrap();
        assert_eq!(
            check_chain(None, &bundle(2, Some(at_one.hash.clone())), false),
            Err(ChainError::NotAStart { got: 2 })
        );
        // Regression: a new far side refused a full bundle later in the
        // chain (after `export --full`), as if only bundle 1 could start.
        let mut later_full = bundle(5, Some(at_one.hash.clone()));
        later_full.kind = BundleKind::Full;
        check_chain(None, &later_full, false).unwrap();
        let second = bundle(2, Some(at_one.hash.clone()));
        check_chain(Some(&at_one), &second, false).unwrap();
        assert_eq!(
            check_chain(Some(&at_one), &bundle(1, None), false),
            Err(ChainError::Replay { got: 1, last: 1 })
        );
        assert_eq!(
            check_chain(Some(&at_one), &bundle(3, Some("d".repeat(64))), false),
            Err(ChainError::Gap {
                expected: 2,
                got: 3
            })
        );
        let fork = bundle(2, Some("e".repeat(64)));
        let refused = check_chain(Some(&at_one), &fork, false).unwrap_err();
        assert!(matches!(refused, ChainError::Fork { sequence: 2, .. }));
        assert!(refused.to_string().contains(&at_one.hash), "{refused}");
        // Only an explicit re-base takes a full bundle off the chain.
        let mut full = bundle(7, Some("f".repeat(64)));
        full.kind = BundleKind::Full;
        assert!(check_chain(Some(&at_one), &full, false).is_err());
        check_chain(Some(&at_one), &full, true).unwrap();
        assert!(
            check_chain(Some(&at_one), &fork, true).is_err(),
            "rebase needs a full bundle"
        );
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzz::config())]

        /// A changed bundle manifest is never accepted as something else.
        #[test]
        fn fuzz_bundle_manifests(m in crate::fuzz::mutations()) {
            let k = key(1);
            let original = bundle(2, Some("c".repeat(64)));
            let mutated = crate::fuzz::apply(&sign_bundle(&original, &k), &m);
            if let Ok(got) = verify_bundle(&mutated, &[k.public()]) {
                proptest::prop_assert_eq!(got, original);
            }
        }
    }
}
