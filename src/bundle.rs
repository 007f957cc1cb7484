//! PURE. The air-gap bundle manifest (issue 14, first step): what one
//! bundle carries across the gap, signed with the exporter's Ed25519 bundle
//! key, and its place in a single linear chain of bundles.
//!
//! The file is the same TUF-style envelope as the snapshot manifest
//! (`{"signed": …, "signatures": […]}`, canonical JSON, see
//! [`crate::manifest`]), so one audited signing path serves both. A bundle
//! names the bundle before it by the SHA-256 of that bundle's manifest file;
//! the importer accepts exactly the next bundle of the chain it holds, and
//! says which one it expected otherwise.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::manifest::{
    self, FileEntry, ManifestError, ManifestKey, ManifestPublicKey, UpstreamState,
};

/// Name of the bundle manifest file at the root of a bundle directory.
pub const BUNDLE_MANIFEST_FILE: &str = "hexmirror-bundle.json";

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

/// One file the bundle carries: which blob, and where it lies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleFile {
    /// Offset of its content in its volume.
    pub offset: u64,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
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
    /// Unix seconds the exporter wrote it.
    pub created_at: u64,
    /// Every file carried, by its path in the tree it reproduces.
    pub files: BTreeMap<String, BundleFile>,
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
    /// The upstream state the exporter had synced.
    pub upstream: UpstreamState,
    /// The volumes, in order.
    pub volumes: Vec<Volume>,
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
    /// A heartbeat carries no files.
    #[error("a heartbeat carries files")]
    HeartbeatWithFiles,
    /// A file lies in a volume the manifest does not list.
    #[error("{path} lies in volume {volume}, which is not listed")]
    NoSuchVolume {
        /// The file.
        path: String,
        /// The volume index it names.
        volume: u32,
    },
    /// A file lies past the end of its volume.
    #[error("{path} lies past the end of volume {volume}")]
    PastVolumeEnd {
        /// The file.
        path: String,
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
    /// The first bundle must be full, sequence 1, with no previous.
    #[error(
        "this side holds no bundle yet: it expects bundle 1, a full one (got bundle {got}); import the first full bundle first"
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

fn check_consistent(bundle: &BundleManifest) -> Result<(), BundleError> {
    if bundle.sequence == 0 {
        return Err(Inconsistency::SequenceZero.into());
    }
    if (bundle.sequence == 1) != bundle.previous.is_none() {
        return Err(Inconsistency::Previous(bundle.sequence).into());
    }
    if bundle.kind == BundleKind::Heartbeat && !bundle.files.is_empty() {
        return Err(Inconsistency::HeartbeatWithFiles.into());
    }
    for (path, file) in &bundle.files {
        let entry = FileEntry {
            sha256: file.sha256.clone(),
            size: file.size,
        };
        manifest::check_entry(path, &entry).map_err(BundleError::Signature)?;
        let Some(volume) = bundle.volumes.get(file.volume as usize) else {
            return Err(Inconsistency::NoSuchVolume {
                path: path.clone(),
                volume: file.volume,
            }
            .into());
        };
        if file
            .offset
            .checked_add(file.size)
            .is_none_or(|end| end > volume.size)
        {
            return Err(Inconsistency::PastVolumeEnd {
                path: path.clone(),
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
/// yet). With `rebase`, a full bundle starts the chain again from itself.
pub fn check_chain(
    last: Option<&ChainPosition>,
    bundle: &BundleManifest,
    rebase: bool,
) -> Result<(), ChainError> {
    if rebase && bundle.kind == BundleKind::Full {
        return Ok(());
    }
    let Some(last) = last else {
        return if bundle.sequence == 1 && bundle.kind == BundleKind::Full {
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

    fn bundle(sequence: u64, previous: Option<String>) -> BundleManifest {
        let volume = Volume {
            name: "volume-0001.tar".into(),
            sha256: "a".repeat(64),
            size: 10_000,
        };
        BundleManifest {
            created_at: 1_795_341_600,
            files: [(
                "tarballs/jason-1.4.4.tar".to_string(),
                BundleFile {
                    offset: 512,
                    sha256: "b".repeat(64),
                    size: 4096,
                    volume: 0,
                },
            )]
            .into(),
            generation: format!("g{sequence:012}"),
            kind: if sequence == 1 {
                BundleKind::Full
            } else {
                BundleKind::Incremental
            },
            manifest_version: sequence * 10,
            previous,
            sequence,
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
        let mut b = bundle(2, None);
        let check = |b: &BundleManifest| verify_bundle(&sign_bundle(b, &k), &[k.public()]);
        assert!(
            matches!(check(&b), Err(BundleError::Invalid(_))),
            "2 without previous"
        );
        b.previous = Some("c".repeat(64));
        check(&b).unwrap();
        b.files.values_mut().for_each(|f| f.offset = 9_000);
        assert!(
            matches!(check(&b), Err(BundleError::Invalid(_))),
            "past the volume"
        );
        let mut b = bundle(1, None);
        b.files.values_mut().for_each(|f| f.volume = 3);
        assert!(
            matches!(check(&b), Err(BundleError::Invalid(_))),
            "unlisted volume"
        );
        let mut b = bundle(1, None);
        b.volumes[0].name = "../etc".into();
        assert!(
            matches!(check(&b), Err(BundleError::Invalid(_))),
            "volume name"
        );
        let mut b = bundle(1, None);
        let file = b.files.remove("tarballs/jason-1.4.4.tar").unwrap();
        b.files.insert("../escape".into(), file);
        assert!(check(&b).is_err(), "escaping path");
        let mut b = bundle(1, None);
        b.kind = BundleKind::Heartbeat;
        assert!(
            matches!(check(&b), Err(BundleError::Invalid(_))),
            "heartbeat with files"
        );
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
