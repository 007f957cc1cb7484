//! The snapshot manifest: a signed list of every file in one published
//! generation of the served tree, with the upstream state it came from.
//! PURE: bytes in, values out; no I/O.
//!
//! # File format
//!
//! TUF style, JSON:
//!
//! ```text
//! {
//!   "signed": { "expires_at": …, "files": { PATH: {"sha256": HEX, "size": N}, … },
//!               "generation": …, "signed_at": …, "upstream": {…}, "version": N },
//!   "signatures": [ { "keyid": HEX, "sig": BASE64 } ]
//! }
//! ```
//!
//! - `keyid` is the lowercase hex SHA-256 of the raw 32-byte Ed25519 public key.
//! - `sig` is standard base64 (padded) of the Ed25519 signature over the
//!   **canonical bytes** of `signed`: compact JSON (no whitespace), object keys
//!   sorted by code point at every level, strings escaped as `serde_json` does
//!   (only `"`, `\` and control characters; other text as UTF-8), integers in
//!   plain decimal. `serde_json::to_vec(&Manifest)` produces exactly that,
//!   because every struct below declares its fields in sorted order and every map
//!   is a `BTreeMap`; a golden test pins the bytes. Python reproduces it with
//!   `json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`.
//! - Times are Unix seconds (UTC).
//!
//! # Why `signed` is a JSON object that is re-canonicalised on verify
//!
//! The alternative, `signed` as a base64 string of the signed bytes, makes the
//! file unreadable to an operator checking a mirror with `jq`. Re-canonicalising
//! is sound here because the signature is checked over the bytes re-serialised
//! *from the value `verify` returns*: whatever a parser quirk makes of the file,
//! the result is accepted only if the key signed exactly that value's canonical
//! form, and the canonical form is injective (one value, one byte string). On
//! top of that, parsing is strict so the file means one thing to every reader:
//! unknown fields are refused at every level (`deny_unknown_fields`; a new field
//! is a new format, not something old verifiers silently drop), duplicate keys
//! are refused (serde does so for struct fields, [`unique_files`] for `files`),
//! and trailing bytes are refused.

use std::collections::BTreeMap;
use std::fmt;

/// Name of the manifest file at the root of every generation.
pub const MANIFEST_FILE: &str = "hexmirror-manifest.json";

/// Name of the signed delta beside it, once a hosted change patched the
/// generation (see [`Delta`]).
pub const MANIFEST_DELTA_FILE: &str = "hexmirror-manifest-delta.json";

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand::rngs::OsRng;
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

/// The signed content: one generation of the served tree.
///
/// Fields are declared in sorted order on purpose: that order is the canonical
/// byte order of the signature (see the module doc). Do not reorder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Unix time after which verifiers refuse this manifest.
    pub expires_at: u64,
    /// Every file of the generation by its path relative to the tree root
    /// (`/`-separated, no `.` or `..` segments).
    #[serde(deserialize_with = "unique_files")]
    pub files: BTreeMap<String, FileEntry>,
    /// The generation's name in the store.
    pub generation: String,
    /// Unix time of signing.
    pub signed_at: u64,
    /// The upstream state this generation was built from.
    pub upstream: UpstreamState,
    /// Sequence number for rollback protection: must increase with every
    /// signing, including a re-signing of an unchanged tree to extend expiry.
    pub version: u64,
}

/// The upstream state a generation came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamState {
    /// The upstream's `/names` ETag at sync time, if it sent one.
    pub names_etag: Option<String>,
    /// Unix time of the sync.
    pub synced_at: u64,
    /// The upstream repository URL.
    pub url: String,
    /// The upstream's `/versions` ETag at sync time, if it sent one.
    pub versions_etag: Option<String>,
}

/// What a file's content must be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// SHA-256 of the content, 64 lowercase hex digits.
    pub sha256: String,
    /// Length in bytes.
    pub size: u64,
}

/// Changes to a base manifest, signed on their own. A hosted change edits a
/// handful of files of the served generation in place and re-signs only this
/// (cumulative) list, so its cost grows with the changes since the base, not
/// with the tree. The pair means: the base's files with these applied.
///
/// Served as `hexmirror-manifest-delta.json` beside the base. Fields are in
/// sorted order, as for [`Manifest`]. Our key signs exactly one base per
/// version (versions strictly increase), so `base_version` with `generation`
/// names the base unambiguously.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delta {
    /// The base manifest's `version`.
    pub base_version: u64,
    /// Unix time after which verifiers refuse the pair.
    pub expires_at: u64,
    /// Path → new content, or `null` for a file removed from the base.
    #[serde(deserialize_with = "unique_files")]
    pub files: BTreeMap<String, Option<FileEntry>>,
    /// The base manifest's `generation`.
    pub generation: String,
    /// Unix time of signing.
    pub signed_at: u64,
    /// The version of the pair; greater than `base_version`.
    pub version: u64,
}

/// The file as read: `signed` then `signatures` (`sign_envelope` writes it
/// around the canonical bytes; only `signed` is canonicalised).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<M> {
    signed: M,
    signatures: Vec<SignatureEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureEntry {
    keyid: String,
    sig: String,
}

/// Deserialises `files` refusing duplicate paths, which a plain `BTreeMap`
/// would resolve silently (last wins) while a person reading the file sees the
/// first.
fn unique_files<'de, D, V>(deserializer: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Visitor<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<V> {
        type Value = BTreeMap<String, V>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map from file path to {sha256, size}")
        }

        fn visit_map<A>(self, mut map: A) -> Result<Self::Value, A::Error>
        where
            A: serde::de::MapAccess<'de>,
        {
            let mut files = BTreeMap::new();
            while let Some((path, entry)) = map.next_entry::<String, V>()? {
                if files.contains_key(&path) {
                    return Err(serde::de::Error::custom(format_args!(
                        "duplicate file path {path:?}"
                    )));
                }
                files.insert(path, entry);
            }
            Ok(files)
        }
    }
    deserializer.deserialize_map(Visitor(std::marker::PhantomData))
}

/// The bytes the signature covers (see the module doc).
fn canonical_bytes<T: Serialize>(signed: &T) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(&mut out, signed);
    out
}

/// Appends [`canonical_bytes`] of `signed` to `out`.
fn write_canonical<T: Serialize>(out: &mut Vec<u8>, signed: &T) {
    // Serialising strings, integers and string-keyed maps cannot fail.
    serde_json::to_writer(out, signed).unwrap_or_else(|_| unreachable!("a manifest serialises"))
}

/// Why a manifest key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ManifestKeyError {
    /// The text is not an Ed25519 private key in PKCS#8 PEM.
    #[error(
        "not an Ed25519 private key in PKCS#8 PEM form (expected `BEGIN PRIVATE KEY`, as written by `openssl genpkey -algorithm ed25519`)"
    )]
    NotPrivateKey,
    /// The text is not an Ed25519 public key in SPKI PEM.
    #[error("not an Ed25519 public key in SPKI PEM form (expected `BEGIN PUBLIC KEY`)")]
    NotPublicKey,
    /// The public key is a small-order point, for which forged signatures exist.
    #[error("the Ed25519 public key is a weak (small-order) point and cannot be trusted")]
    WeakPublicKey,
}

/// The Ed25519 key that signs manifests.
#[derive(Clone)]
pub struct ManifestKey(SigningKey);

impl fmt::Debug for ManifestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material; the key id is public.
        write!(f, "ManifestKey(keyid {})", self.public().keyid())
    }
}

impl ManifestKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Self {
        Self(SigningKey::generate(&mut OsRng))
    }

    /// Parses PKCS#8 PEM (`BEGIN PRIVATE KEY`), v1 or v2.
    pub fn from_pem(pem: &str) -> Result<Self, ManifestKeyError> {
        SigningKey::from_pkcs8_pem(pem.trim())
            .map(Self)
            .map_err(|_| ManifestKeyError::NotPrivateKey)
    }

    /// The key as PKCS#8 PEM (`BEGIN PRIVATE KEY`), LF line endings. The caller
    /// owns the secret from here: write it with mode 0600.
    pub fn to_pkcs8_pem(&self) -> String {
        // PKCS#8 v1 (no embedded public key), the form `openssl genpkey` writes,
        // so every OpenSSL version and other tools read it back.
        let bytes = KeypairBytes {
            secret_key: self.0.to_bytes(),
            public_key: None,
        };
        let pem = bytes
            .to_pkcs8_pem(LineEnding::LF)
            .unwrap_or_else(|_| unreachable!("a 32-byte Ed25519 seed encodes as PKCS#8"));
        pem.as_str().to_owned()
    }

    /// The matching public key.
    pub fn public(&self) -> ManifestPublicKey {
        ManifestPublicKey(self.0.verifying_key())
    }
}

/// The Ed25519 public key that verifies manifests.
#[derive(Clone, PartialEq, Eq)]
pub struct ManifestPublicKey(VerifyingKey);

impl fmt::Debug for ManifestPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ManifestPublicKey(keyid {})", self.keyid())
    }
}

impl ManifestPublicKey {
    /// Parses SPKI PEM (`BEGIN PUBLIC KEY`), refusing weak keys.
    pub fn from_pem(pem: &str) -> Result<Self, ManifestKeyError> {
        let key = VerifyingKey::from_public_key_pem(pem.trim())
            .map_err(|_| ManifestKeyError::NotPublicKey)?;
        if key.is_weak() {
            return Err(ManifestKeyError::WeakPublicKey);
        }
        Ok(Self(key))
    }

    /// The key as SPKI PEM (`BEGIN PUBLIC KEY`), LF line endings.
    pub fn to_pem(&self) -> String {
        self.0
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_else(|_| unreachable!("a 32-byte Ed25519 key encodes as SPKI"))
    }

    /// Lowercase hex SHA-256 of the raw 32-byte key, the manifest's `keyid`.
    pub fn keyid(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }
}

/// Why a manifest file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON of the manifest format: truncated, garbage, unknown or
    /// duplicate fields, wrong types.
    #[error("not a valid manifest file: {source}; refusing it")]
    Malformed {
        /// The parser's reason.
        source: serde_json::Error,
    },
    /// No signature is by the configured key.
    #[error(
        "manifest is not signed by the configured key {expected} (signed by: {}); check that the mirror's manifest public key is the one configured",
        if .found.is_empty() { "nobody".to_owned() } else { .found.join(", ") }
    )]
    NotSignedByKey {
        /// The configured key's id.
        expected: String,
        /// The key ids the file names.
        found: Vec<String>,
    },
    /// A signature claims the configured key but does not verify.
    #[error(
        "manifest signature by key {keyid} does not verify: the file was altered or corrupted after signing; refusing it"
    )]
    BadSignature {
        /// The configured key's id.
        keyid: String,
    },
    /// A signed entry is unusable (bad path or digest): a publisher bug.
    #[error(
        "manifest entry {path:?} is invalid: {reason}; the publisher signed a broken manifest, refusing it"
    )]
    InvalidEntry {
        /// The entry's path as written.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The delta beside a manifest belongs to another base.
    #[error(
        "manifest delta does not belong to this manifest: {reason}; a write was interrupted or the files were mixed up, run `hexmirror sync` to publish a complete generation"
    )]
    DeltaMismatch {
        /// How they disagree.
        reason: String,
    },
    /// A signed file list in the place of the proxy's is something else.
    #[error(
        "signed file list is not the pull-through proxy's (generation {generation:?}, base version \
         {base_version}, or an entry removes a file): another manifest was put in its place"
    )]
    NotProxySet {
        /// The generation it names.
        generation: String,
        /// The base version it names.
        base_version: u64,
    },
    /// The version went backwards: an old manifest is being replayed.
    #[error("manifest version {found} is lower than the last accepted {last}: rollback refused")]
    Rollback {
        /// The version in the file.
        found: u64,
        /// The highest version accepted before.
        last: u64,
    },
    /// The manifest is past its expiry: the mirror stopped re-signing.
    #[error(
        "manifest expired at {} ({} after signing; the local clock says {}); the mirror has not re-signed it — it may be frozen",
        rfc3339(*.expired_at),
        human_duration(.expired_at.saturating_sub(*.signed_at)),
        rfc3339(*.now)
    )]
    Expired {
        /// The manifest's `expires_at`.
        expired_at: u64,
        /// The manifest's `signed_at`.
        signed_at: u64,
        /// The `now` verification ran with.
        now: u64,
    },
}

/// Signs `manifest` and returns the bytes of the manifest file (compact JSON
/// with a final newline). `verify` refuses entries whose path is not a clean
/// relative path or whose `sha256` is not 64 lowercase hex digits, so a
/// publisher should verify what it just signed before publishing it.
pub fn sign(manifest: &Manifest, key: &ManifestKey) -> Vec<u8> {
    sign_envelope(manifest, key)
}

/// A manifest to sign whose file list is borrowed from the publisher's own
/// map instead of copied into a [`Manifest`] (at hex.pm's size, with a
/// curated repository, the copy was over 100 MB). Serialises to exactly the
/// bytes of the equivalent [`Manifest`]: same fields, same order.
#[derive(Serialize)]
pub struct ManifestRef<'a, F> {
    /// As [`Manifest::expires_at`].
    pub expires_at: u64,
    /// A [`FileList`]: `(path, sha256, size)` in path order, as [`Manifest::files`].
    pub files: F,
    /// As [`Manifest::generation`].
    pub generation: &'a str,
    /// As [`Manifest::signed_at`].
    pub signed_at: u64,
    /// As [`Manifest::upstream`].
    pub upstream: &'a UpstreamState,
    /// As [`Manifest::version`].
    pub version: u64,
}

/// A file list serialised straight from `(path, sha256, size)` triples,
/// which must come in ascending path order without repeats.
pub struct FileList<I>(pub I);

impl<'a, I> Serialize for FileList<I>
where
    I: Iterator<Item = (&'a str, &'a [u8; 32], u64)> + Clone,
{
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.clone().map(|(path, sha256, size)| {
            (
                path,
                EntryRef {
                    sha256: HexDigest(sha256),
                    size,
                },
            )
        }))
    }
}

/// [`FileEntry`] without the allocated hex string.
#[derive(Serialize)]
struct EntryRef<'a> {
    sha256: HexDigest<'a>,
    size: u64,
}

struct HexDigest<'a>(&'a [u8; 32]);

impl Serialize for HexDigest<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 64];
        hex::encode_to_slice(self.0, &mut buf)
            .unwrap_or_else(|_| unreachable!("32 bytes fill 64 hex digits"));
        serializer.serialize_str(std::str::from_utf8(&buf).unwrap_or_default())
    }
}

/// Writes the signed file for a borrowed manifest to `out` as it is made,
/// never holding it whole: the same bytes [`sign`] returns for the
/// equivalent [`Manifest`]. At hex.pm's size the file is ~85 MB, the largest
/// buffer of a sync; the file list is serialised three times instead (once
/// to `out`, once for each of Ed25519's two hashing passes).
pub fn write_signed_ref<'a, I, W>(
    manifest: &ManifestRef<'_, FileList<I>>,
    key: &ManifestKey,
    mut out: W,
) -> std::io::Result<()>
where
    I: Iterator<Item = (&'a str, &'a [u8; 32], u64)> + Clone,
    W: std::io::Write,
{
    out.write_all(ENVELOPE_HEAD)?;
    let mut tee = Hashing {
        inner: &mut out,
        check: Sha256::new(),
    };
    serde_json::to_writer(&mut tee, manifest)?;
    let written = tee.check.finalize();
    // Ed25519 hashes the message twice (once for the nonce, once for the
    // challenge). A message that differed between the passes would yield a
    // nonce reused over two messages, which leaks the key; so each pass is
    // checked against the bytes written and any difference signs nothing.
    let secret = ed25519_dalek::hazmat::ExpandedSecretKey::from(key.0.as_bytes());
    let signature = ed25519_dalek::hazmat::raw_sign_byupdate::<sha2::Sha512, _>(
        &secret,
        |digest| {
            let mut pass = Hashing {
                inner: DigestWriter(digest),
                check: Sha256::new(),
            };
            serde_json::to_writer(&mut pass, manifest)
                .map_err(|_| ed25519_dalek::SignatureError::new())?;
            if pass.check.finalize() != written {
                return Err(ed25519_dalek::SignatureError::new());
            }
            Ok(())
        },
        &key.0.verifying_key(),
    )
    .map_err(|_| std::io::Error::other(UnstableSerialisation))?;
    out.write_all(&envelope_tail(key, &signature))?;
    out.flush()
}

/// A manifest serialised to different bytes on two passes; nothing was signed.
#[derive(Debug, thiserror::Error)]
#[error(
    "the manifest serialised differently on two passes, so it was not signed; report this as a bug"
)]
pub struct UnstableSerialisation;

/// A writer that also hashes what passes through it.
struct Hashing<W> {
    inner: W,
    check: Sha256,
}

impl<W: std::io::Write> std::io::Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.check.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A digest as a writer (serde_json writes to `io::Write`).
struct DigestWriter<'a, D>(&'a mut D);

impl<D: Digest> std::io::Write for DigestWriter<'_, D> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Signs a delta and returns the bytes of the delta file.
pub fn sign_delta(delta: &Delta, key: &ManifestKey) -> Vec<u8> {
    sign_envelope(delta, key)
}

/// What a signed file starts with; the canonical bytes follow.
const ENVELOPE_HEAD: &[u8] = b"{\"signed\":";

pub(crate) fn sign_envelope<T: Serialize>(signed: &T, key: &ManifestKey) -> Vec<u8> {
    // The file is built around the very bytes that are signed, in one buffer,
    // for the small files (deltas, bundles); [`write_signed_ref`] streams
    // the large one.
    let mut out = ENVELOPE_HEAD.to_vec();
    write_canonical(&mut out, signed);
    let signature = key.0.sign(&out[ENVELOPE_HEAD.len()..]);
    out.extend_from_slice(&envelope_tail(key, &signature));
    out
}

/// What follows the canonical bytes: the signature list and the end.
fn envelope_tail(key: &ManifestKey, signature: &Signature) -> Vec<u8> {
    let signatures = [SignatureEntry {
        keyid: key.public().keyid(),
        sig: STANDARD.encode(signature.to_bytes()),
    }];
    let mut out = b",\"signatures\":".to_vec();
    serde_json::to_writer(&mut out, &signatures)
        .unwrap_or_else(|_| unreachable!("a signature list serialises"));
    out.extend_from_slice(b"}\n");
    out
}

/// A manifest file's `expires_at` and `version` read from its first and
/// last bytes, as [`sign_envelope`] lays it out (`{"signed":{"expires_at":N,`
/// ... `"version":N},"signatures":[...]}`), without reading the file list
/// between them (90 MB at hex.pm's size). `None` when the ends are not laid
/// out so; the caller then parses the whole file. Never a basis for trust.
pub fn peek_ends(head: &[u8], tail: &[u8]) -> Option<(u64, u64)> {
    fn number(digits: &[u8]) -> Option<u64> {
        if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    }
    const OPEN: &[u8] = b"{\"signed\":{\"expires_at\":";
    let rest = head.strip_prefix(OPEN)?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    if rest[end] != b',' {
        return None;
    }
    let expires_at = number(&rest[..end])?;
    const CLOSE: &[u8] = b"},\"signatures\":[";
    let close = tail.windows(CLOSE.len()).rposition(|w| w == CLOSE)?;
    let before = &tail[..close];
    let start = before.iter().rposition(|b| !b.is_ascii_digit())? + 1;
    let version = number(&before[start..])?;
    before[..start]
        .ends_with(b"\"version\":")
        .then_some((expires_at, version))
}

/// Verifies a manifest file and returns its content.
///
/// Checks, in order: the format (strict), a signature by `key` over the
/// canonical bytes, every entry, rollback, expiry. Rollback refuses a version
/// *lower* than `last_accepted_version`; an equal one is accepted so that
/// fetching the same manifest again works. The cost is that a replay of the
/// last accepted manifest is accepted until it expires, which is why a mirror
/// that stops re-signing (frozen, or an attacker replaying it) is caught by
/// expiry: `now >= expires_at` is refused.
pub fn verify(
    file: &[u8],
    key: &ManifestPublicKey,
    now: u64,
    last_accepted_version: Option<u64>,
) -> Result<Manifest, ManifestError> {
    let manifest = open_base(file, key)?;
    check_fresh(&manifest, now, last_accepted_version)?;
    Ok(manifest)
}

/// Verifies a base manifest and, when there is one, the delta beside it, and
/// returns the manifest they describe together: the base's files with the
/// delta applied, the delta's version, signing time and the earlier of the
/// two expiries. Rollback and expiry are checked on that result, as
/// [`verify`] checks them on a base alone.
pub fn verify_with_delta(
    base: &[u8],
    delta: Option<&[u8]>,
    key: &ManifestPublicKey,
    now: u64,
    last_accepted_version: Option<u64>,
) -> Result<Manifest, ManifestError> {
    let mut manifest = open_base(base, key)?;
    if let Some(delta) = delta {
        manifest = with_delta(manifest, delta, key)?;
    }
    check_fresh(&manifest, now, last_accepted_version)?;
    Ok(manifest)
}

/// A base manifest already verified by `key` (by [`verify_base`]), with a
/// delta file verified and applied: the pair's files, version, signing time
/// and earlier expiry. Freshness is the caller's [`check_fresh`].
pub fn with_delta(
    mut manifest: Manifest,
    delta: &[u8],
    key: &ManifestPublicKey,
) -> Result<Manifest, ManifestError> {
    let delta = verify_delta(delta, key)?;
    check_binding(&delta, manifest.version, &manifest.generation)?;
    apply_delta(&mut manifest, delta);
    Ok(manifest)
}

/// That `delta` applies to the base of `version` and `generation`, and
/// moves the version forward.
pub fn check_binding(delta: &Delta, version: u64, generation: &str) -> Result<(), ManifestError> {
    let mismatch = |reason: String| Err(ManifestError::DeltaMismatch { reason });
    if delta.base_version != version || delta.generation != generation {
        return mismatch(format!(
            "it applies to version {} of {}, the base is version {version} of {generation}",
            delta.base_version, delta.generation
        ));
    }
    if delta.version <= version {
        return mismatch(format!(
            "its version {} is not above the base's {version}",
            delta.version
        ));
    }
    Ok(())
}

/// The `generation` of the signed list of the pull-through proxy's files (a
/// [`Delta`] over base version 0). Generations are named `gNNN`, so a proxy
/// list never passes for a generation's delta ([`check_binding`]) nor a
/// delta for a proxy list ([`check_proxy_set`]).
pub const PROXY_SET: &str = "proxy";

/// Checks that a verified delta is a proxy file list: [`PROXY_SET`], base
/// version 0, nothing removed.
pub fn check_proxy_set(delta: &Delta) -> Result<(), ManifestError> {
    if delta.generation != PROXY_SET
        || delta.base_version != 0
        || delta.files.values().any(Option::is_none)
    {
        return Err(ManifestError::NotProxySet {
            generation: delta.generation.clone(),
            base_version: delta.base_version,
        });
    }
    Ok(())
}

/// A base manifest's format, signature and entries, without freshness: for
/// a reader that keeps the base and checks each pair it serves with
/// [`check_fresh`].
pub fn verify_base(file: &[u8], key: &ManifestPublicKey) -> Result<Manifest, ManifestError> {
    open_base(file, key)
}

/// Verifies a delta file's format, signature and entries (not freshness:
/// that is a property of the pair, see [`verify_with_delta`]).
pub fn verify_delta(file: &[u8], key: &ManifestPublicKey) -> Result<Delta, ManifestError> {
    let delta: Delta = open_envelope(file, key)?;
    for (path, entry) in &delta.files {
        match entry {
            Some(entry) => check_entry(path, entry)?,
            None => check_path(path)?,
        }
    }
    Ok(delta)
}

/// Applies a delta to its base in memory.
pub fn apply_delta(manifest: &mut Manifest, delta: Delta) {
    for (path, entry) in delta.files {
        match entry {
            Some(entry) => manifest.files.insert(path, entry),
            None => manifest.files.remove(&path),
        };
    }
    manifest.version = delta.version;
    manifest.signed_at = delta.signed_at;
    manifest.expires_at = manifest.expires_at.min(delta.expires_at);
}

/// Reads a manifest and its delta **without checking any signature**: a
/// hint of which blob each file of a generation is, for rebuilding the file
/// list of a generation whose manifest the configured key cannot verify (a
/// rotated key). Every path is still checked, and nothing read here is
/// trusted as content: the caller proves each file against the blob store.
pub fn read_unverified(base: &[u8], delta: Option<&[u8]>) -> Result<Manifest, ManifestError> {
    let mut manifest: Manifest = serde_json::from_slice::<Envelope<Manifest>>(base)
        .map_err(|source| ManifestError::Malformed { source })?
        .signed;
    for (path, entry) in &manifest.files {
        check_entry(path, entry)?;
    }
    if let Some(delta) = delta {
        let delta: Delta = serde_json::from_slice::<Envelope<Delta>>(delta)
            .map_err(|source| ManifestError::Malformed { source })?
            .signed;
        for (path, entry) in &delta.files {
            match entry {
                Some(entry) => check_entry(path, entry)?,
                None => check_path(path)?,
            }
        }
        apply_delta(&mut manifest, delta);
    }
    Ok(manifest)
}

/// The key ids a signed file names, read from its last bytes alone (the
/// signature list closes every file this module writes). Unverified: it
/// tells whether a file *claims* to be signed by a key, cheaply, even for a
/// 90 MB manifest; `None` when the tail holds no signature list.
pub fn tail_keyids(tail: &[u8]) -> Option<Vec<String>> {
    const MARK: &[u8] = b"\"signatures\":";
    let at = tail.windows(MARK.len()).rposition(|w| w == MARK)? + MARK.len();
    let rest = std::str::from_utf8(&tail[at..]).ok()?.trim_end();
    let list = rest.strip_suffix('}')?;
    let entries: Vec<SignatureEntry> = serde_json::from_str(list).ok()?;
    Some(entries.into_iter().map(|e| e.keyid).collect())
}

/// A base manifest whose format, signature and entries are good.
fn open_base(file: &[u8], key: &ManifestPublicKey) -> Result<Manifest, ManifestError> {
    let manifest: Manifest = open_envelope(file, key)?;
    for (path, entry) in &manifest.files {
        check_entry(path, entry)?;
    }
    Ok(manifest)
}

/// Rollback, then expiry.
/// Rollback and expiry of a verified manifest (see [`verify`]).
pub fn check_fresh(
    manifest: &Manifest,
    now: u64,
    last_accepted_version: Option<u64>,
) -> Result<(), ManifestError> {
    check_freshness(
        manifest.version,
        manifest.signed_at,
        manifest.expires_at,
        now,
        last_accepted_version,
    )
}

/// [`check_fresh`] on the values alone: for a reader that keeps a base and
/// its delta apart instead of one merged manifest.
pub fn check_freshness(
    version: u64,
    signed_at: u64,
    expires_at: u64,
    now: u64,
    last_accepted_version: Option<u64>,
) -> Result<(), ManifestError> {
    if let Some(last) = last_accepted_version
        && version < last
    {
        return Err(ManifestError::Rollback {
            found: version,
            last,
        });
    }
    if now >= expires_at {
        return Err(ManifestError::Expired {
            expired_at: expires_at,
            signed_at,
            now,
        });
    }
    Ok(())
}

/// Parses a signed file strictly and checks a signature by `key` over the
/// canonical bytes of what it parsed.
pub(crate) fn open_envelope<T>(file: &[u8], key: &ManifestPublicKey) -> Result<T, ManifestError>
where
    T: Serialize + serde::de::DeserializeOwned,
{
    let envelope: Envelope<T> =
        serde_json::from_slice(file).map_err(|source| ManifestError::Malformed { source })?;
    let keyid = key.keyid();
    let mine: Vec<&SignatureEntry> = envelope
        .signatures
        .iter()
        .filter(|s| s.keyid == keyid)
        .collect();
    if mine.is_empty() {
        return Err(ManifestError::NotSignedByKey {
            expected: keyid,
            found: envelope.signatures.into_iter().map(|s| s.keyid).collect(),
        });
    }
    let canonical = signed_bytes(file, &envelope.signed);
    // Other keys may co-sign (TUF allows several); ours must have one good signature.
    let verified = mine.iter().any(|entry| {
        let Ok(raw) = STANDARD.decode(&entry.sig) else {
            return false;
        };
        let Ok(signature) = Signature::from_slice(&raw) else {
            return false;
        };
        // Strict: refuses non-canonical signatures and small-order keys.
        key.0.verify_strict(&canonical, &signature).is_ok()
    });
    if !verified {
        return Err(ManifestError::BadSignature { keyid });
    }
    Ok(envelope.signed)
}

/// The bytes a signature over `signed` must cover: its canonical form. That
/// is the file's own `signed` bytes whenever they are exactly that form
/// (every file [`sign_envelope`] and [`write_signed_ref`] write), which is
/// checked without a copy; otherwise a canonical copy. The copy was 75 MB
/// at hex.pm's size, beside the file and the parsed manifest.
fn signed_bytes<'f, T: Serialize>(file: &'f [u8], signed: &T) -> std::borrow::Cow<'f, [u8]> {
    if let Some(raw) = raw_signed(file) {
        let mut same = SameAs {
            rest: raw,
            equal: true,
        };
        if serde_json::to_writer(&mut same, signed).is_ok() && same.equal && same.rest.is_empty() {
            return std::borrow::Cow::Borrowed(raw);
        }
    }
    std::borrow::Cow::Owned(canonical_bytes(signed))
}

/// The `signed` value's bytes where [`sign_envelope`] puts them, if the
/// file is laid out so. Never trusted as such: [`signed_bytes`] compares
/// them with the canonical form first.
fn raw_signed(file: &[u8]) -> Option<&[u8]> {
    const CLOSE: &[u8] = b",\"signatures\":[";
    let rest = file.strip_prefix(ENVELOPE_HEAD)?;
    let end = rest.windows(CLOSE.len()).rposition(|w| w == CLOSE)?;
    Some(&rest[..end])
}

/// A writer that checks what is written against `rest`, byte for byte.
struct SameAs<'a> {
    rest: &'a [u8],
    equal: bool,
}

impl std::io::Write for SameAs<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.rest.strip_prefix(buf) {
            Some(rest) if self.equal => self.rest = rest,
            _ => self.equal = false,
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Refuses paths that could leave the tree or alias another entry, and
/// digests `diff` could never match.
pub(crate) fn check_entry(path: &str, entry: &FileEntry) -> Result<(), ManifestError> {
    check_path(path)?;
    let digest = entry.sha256.as_bytes();
    if digest.len() != 64
        || !digest
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(ManifestError::InvalidEntry {
            path: path.to_owned(),
            reason: "sha256 is not 64 lowercase hex digits",
        });
    }
    Ok(())
}

pub(crate) fn check_path(path: &str) -> Result<(), ManifestError> {
    let invalid = |reason| {
        Err(ManifestError::InvalidEntry {
            path: path.to_owned(),
            reason,
        })
    };
    if path.is_empty() {
        return invalid("empty path");
    }
    if path.contains(['\\', '\0']) {
        return invalid("path contains a backslash or NUL");
    }
    if path
        .split('/')
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return invalid("path is absolute or has an empty, `.` or `..` segment");
    }
    Ok(())
}

/// How the files on disk compare with a manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// In the manifest, not on disk (sorted).
    pub missing: Vec<String>,
    /// On disk, not in the manifest (sorted).
    pub extra: Vec<String>,
    /// On both, with different content: path, expected, actual (sorted).
    pub corrupt: Vec<(String, FileEntry, FileEntry)>,
    /// How many files match.
    pub ok: usize,
}

impl Report {
    /// True when every file matches and nothing is missing or extra.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.corrupt.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ok, {} missing, {} extra, {} corrupt",
            self.ok,
            self.missing.len(),
            self.extra.len(),
            self.corrupt.len()
        )
    }
}

/// Compares the files actually present (path → digest and size, as the
/// caller measured them) with what the manifest says.
pub fn diff(manifest: &Manifest, actual: &BTreeMap<String, FileEntry>) -> Report {
    let mut report = Report::default();
    for (path, expected) in &manifest.files {
        match actual.get(path) {
            None => report.missing.push(path.clone()),
            Some(found) if found == expected => report.ok += 1,
            Some(found) => report
                .corrupt
                .push((path.clone(), expected.clone(), found.clone())),
        }
    }
    report.extra = actual
        .keys()
        .filter(|path| !manifest.files.contains_key(*path))
        .cloned()
        .collect();
    report
}

/// Formats Unix seconds as RFC 3339 UTC, e.g. `2026-11-29T10:00:00Z`
/// (times past chrono's range, which no real expiry reaches, print its end).
pub fn rfc3339(secs: u64) -> String {
    let at = i64::try_from(secs)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
    at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// "7 days", "36 hours", "90 seconds": the largest unit that divides exactly.
fn human_duration(secs: u64) -> String {
    let (n, unit) = if secs != 0 && secs.is_multiple_of(86_400) {
        (secs / 86_400, "day")
    } else if secs != 0 && secs.is_multiple_of(3600) {
        (secs / 3600, "hour")
    } else if secs != 0 && secs.is_multiple_of(60) {
        (secs / 60, "minute")
    } else {
        (secs, "second")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGNED_AT: u64 = 1_795_341_600; // 2026-11-22T10:00:00Z
    const EXPIRES_AT: u64 = SIGNED_AT + 7 * 86_400; // 2026-11-29T10:00:00Z

    fn entry(sha: char, size: u64) -> FileEntry {
        FileEntry {
            sha256: sha.to_string().repeat(64),
            size,
        }
    }

    fn sample() -> Manifest {
        let files = [
            ("names", entry('a', 120)),
            ("packages/jason", entry('b', 2048)),
            ("public_key", entry('c', 451)),
            ("tarballs/jason-1.4.4.tar", entry('d', 52_224)),
            ("versions", entry('e', 300)),
        ]
        .into_iter()
        .map(|(p, e)| (p.to_owned(), e))
        .collect();
        Manifest {
            version: 42,
            generation: "g-000042".to_owned(),
            signed_at: SIGNED_AT,
            expires_at: EXPIRES_AT,
            upstream: UpstreamState {
                url: "https://repo.hex.pm".to_owned(),
                names_etag: Some("\"abc\"".to_owned()),
                versions_etag: None,
                synced_at: SIGNED_AT - 60,
            },
            files,
        }
    }

    /// A fixed key so that signed files are reproducible.
    fn fixed_key() -> ManifestKey {
        ManifestKey(SigningKey::from_bytes(&[7; 32]))
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzz::config())]

        /// A changed manifest or delta is never accepted as something else.
        #[test]
        fn fuzz_manifests(m in crate::fuzz::mutations()) {
            let key = fixed_key();
            let base = sample();
            let file = sign(&base, &key);
            let mutated = crate::fuzz::apply(&file, &m);
            if let Ok(got) = verify(&mutated, &key.public(), 0, None) {
                proptest::prop_assert_eq!(got, base.clone());
            }
            let delta = sign_delta(&sample_delta(&base), &key);
            let mutated = crate::fuzz::apply(&delta, &m);
            if let Ok(got) = verify_delta(&mutated, &key.public()) {
                proptest::prop_assert_eq!(got, sample_delta(&base));
            }
            let _ = read_unverified(&mutated, None);
            let _ = tail_keyids(&mutated);
        }
    }

    fn check(
        file: &[u8],
        key: &ManifestPublicKey,
        now: u64,
        last: Option<u64>,
    ) -> Result<Manifest, ManifestError> {
        verify(file, key, now, last)
    }

    /// Parses a signed file as JSON, lets `edit` change it, serialises it back.
    fn edit_json(file: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut value: serde_json::Value = serde_json::from_slice(file).unwrap();
        edit(&mut value);
        serde_json::to_vec(&value).unwrap()
    }

    fn sample_delta(base: &Manifest) -> Delta {
        Delta {
            base_version: base.version,
            generation: base.generation.clone(),
            version: base.version + 2,
            signed_at: SIGNED_AT + 100,
            expires_at: EXPIRES_AT + 100,
            files: [
                ("packages/jason".to_owned(), Some(entry('f', 2100))),
                ("tarballs/jason-1.4.4.tar".to_owned(), None),
                (
                    "tarballs/jason-1.5.0.tar".to_owned(),
                    Some(entry('1', 9000)),
                ),
            ]
            .into(),
        }
    }

    #[test]
    fn an_unverified_read_gives_the_files_and_the_tail_names_the_signer() {
        let (key, other) = (fixed_key(), ManifestKey(SigningKey::from_bytes(&[9; 32])));
        let base = sample();
        let delta = sample_delta(&base);
        let (b, d) = (sign(&base, &other), sign_delta(&delta, &other));
        assert!(verify_with_delta(&b, Some(&d), &key.public(), 0, None).is_err());
        let read = read_unverified(&b, Some(&d)).unwrap();
        assert_eq!(
            read,
            verify_with_delta(&b, Some(&d), &other.public(), 0, None).unwrap()
        );
        // The tail alone names the signer, however long the file.
        assert_eq!(
            tail_keyids(&b[b.len() - 300..]),
            Some(vec![other.public().keyid()])
        );
        assert_eq!(tail_keyids(&b[..b.len() / 2]), None);
        assert_eq!(tail_keyids(b"garbage"), None);
        // An escaping path is refused even unverified.
        let bad = edit_json(&b, |v| {
            v["signed"]["files"]["../etc/passwd"] = serde_json::json!(entry('a', 1));
        });
        assert!(read_unverified(&bad, None).is_err());
    }

    #[test]
    fn a_delta_applies_on_its_base() {
        let key = fixed_key();
        let base = sample();
        let delta = sample_delta(&base);
        let (b, d) = (sign(&base, &key), sign_delta(&delta, &key));
        let m = verify_with_delta(&b, Some(&d), &key.public(), SIGNED_AT, Some(43)).unwrap();
        assert_eq!(m.version, 44);
        assert_eq!(m.signed_at, SIGNED_AT + 100);
        assert_eq!(m.expires_at, EXPIRES_AT, "the earlier expiry wins");
        assert_eq!(m.files["packages/jason"], entry('f', 2100));
        assert_eq!(m.files["tarballs/jason-1.5.0.tar"], entry('1', 9000));
        assert!(!m.files.contains_key("tarballs/jason-1.4.4.tar"));
        assert_eq!(m.files.len(), base.files.len());
        // No delta: the base alone, as `verify` reads it.
        assert_eq!(
            verify_with_delta(&b, None, &key.public(), SIGNED_AT, None).unwrap(),
            verify(&b, &key.public(), SIGNED_AT, None).unwrap()
        );
        // Rollback is judged on the pair's version.
        assert!(matches!(
            verify_with_delta(&b, Some(&d), &key.public(), SIGNED_AT, Some(45)),
            Err(ManifestError::Rollback {
                found: 44,
                last: 45
            })
        ));
        // A delta that expires first makes the pair expire.
        let mut short = delta.clone();
        short.expires_at = SIGNED_AT + 200;
        let short = sign_delta(&short, &key);
        assert!(matches!(
            verify_with_delta(&b, Some(&short), &key.public(), SIGNED_AT + 200, None),
            Err(ManifestError::Expired { .. })
        ));
    }

    #[test]
    fn a_delta_for_another_base_or_key_is_refused() {
        let key = fixed_key();
        let base = sample();
        let b = sign(&base, &key);
        let verify = |d: &[u8]| verify_with_delta(&b, Some(d), &key.public(), SIGNED_AT, None);
        for edit in [
            |d: &mut Delta| d.base_version -= 1,
            |d: &mut Delta| d.generation = "g-000041".into(),
            |d: &mut Delta| d.version = d.base_version,
        ] {
            let mut delta = sample_delta(&base);
            edit(&mut delta);
            let err = verify(&sign_delta(&delta, &key)).unwrap_err();
            assert!(matches!(err, ManifestError::DeltaMismatch { .. }), "{err}");
            assert!(err.to_string().contains("hexmirror sync"), "{err}");
        }
        let other = ManifestKey(SigningKey::from_bytes(&[9; 32]));
        let foreign = sign_delta(&sample_delta(&base), &other);
        assert!(matches!(
            verify(&foreign),
            Err(ManifestError::NotSignedByKey { .. })
        ));
        let good = sign_delta(&sample_delta(&base), &key);
        let tampered = edit_json(&good, |v| {
            v["signed"]["files"]["packages/jason"]["size"] = 1.into();
        });
        assert!(matches!(
            verify(&tampered),
            Err(ManifestError::BadSignature { .. })
        ));
        // A base manifest is not a delta, nor the other way round.
        assert!(matches!(verify(&b), Err(ManifestError::Malformed { .. })));
        assert!(matches!(
            verify_with_delta(&good, None, &key.public(), SIGNED_AT, None),
            Err(ManifestError::Malformed { .. })
        ));
        let mut escaping = sample_delta(&base);
        escaping.files.insert("../etc/passwd".into(), None);
        assert!(matches!(
            verify(&sign_delta(&escaping, &key)),
            Err(ManifestError::InvalidEntry { .. })
        ));
    }

    #[test]
    fn canonical_bytes_are_sorted_compact_json() {
        let mut m = sample();
        m.files.retain(|p, _| p == "names");
        let expected = concat!(
            r#"{"expires_at":1795946400,"#,
            r#""files":{"names":{"sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","size":120}},"#,
            r#""generation":"g-000042","signed_at":1795341600,"#,
            r#""upstream":{"names_etag":"\"abc\"","synced_at":1795341540,"url":"https://repo.hex.pm","versions_etag":null},"#,
            r#""version":42}"#
        );
        assert_eq!(String::from_utf8(canonical_bytes(&m)).unwrap(), expected);
    }

    #[test]
    fn signed_file_is_reproducible_and_verifies_over_canonical_bytes() {
        let key = fixed_key();
        let m = sample();
        let file = sign(&m, &key);
        assert_eq!(file, sign(&m, &key), "Ed25519 is deterministic");
        let value: serde_json::Value = serde_json::from_slice(&file).unwrap();
        let sigs = value["signatures"].as_array().unwrap();
        assert_eq!(sigs.len(), 1);
        assert_eq!(sigs[0]["keyid"], key.public().keyid());
        // Independently of `verify`: the signature covers the canonical bytes.
        let raw = STANDARD.decode(sigs[0]["sig"].as_str().unwrap()).unwrap();
        let signature = Signature::from_slice(&raw).unwrap();
        key.public()
            .0
            .verify_strict(&canonical_bytes(&m), &signature)
            .unwrap();
        assert!(file.ends_with(b"}\n"));
    }

    #[test]
    fn round_trip() {
        let key = ManifestKey::generate();
        let m = sample();
        let file = sign(&m, &key);
        assert_eq!(check(&file, &key.public(), SIGNED_AT, None).unwrap(), m);
        assert_eq!(
            check(&file, &key.public(), EXPIRES_AT - 1, Some(41)).unwrap(),
            m
        );
    }

    #[test]
    fn equal_version_is_accepted() {
        let key = fixed_key();
        let file = sign(&sample(), &key);
        assert_eq!(
            check(&file, &key.public(), SIGNED_AT, Some(42))
                .unwrap()
                .version,
            42
        );
    }

    #[test]
    fn rollback_is_refused() {
        let key = fixed_key();
        let mut m = sample();
        m.version = 41;
        let err = check(&sign(&m, &key), &key.public(), SIGNED_AT, Some(42)).unwrap_err();
        assert!(
            matches!(
                err,
                ManifestError::Rollback {
                    found: 41,
                    last: 42
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "manifest version 41 is lower than the last accepted 42: rollback refused"
        );
    }

    #[test]
    fn expired_is_refused_at_and_after_expiry() {
        let key = fixed_key();
        let file = sign(&sample(), &key);
        for now in [EXPIRES_AT, EXPIRES_AT + 1, u64::MAX] {
            let err = check(&file, &key.public(), now, None).unwrap_err();
            assert!(
                matches!(
                    err,
                    ManifestError::Expired {
                        expired_at: EXPIRES_AT,
                        ..
                    }
                ),
                "{err}"
            );
        }
        let err = check(&file, &key.public(), EXPIRES_AT + 3600, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "manifest expired at 2026-11-29T10:00:00Z (7 days after signing; the local clock says \
             2026-11-29T11:00:00Z); the mirror has not re-signed it — it may be frozen"
        );
    }

    #[test]
    fn rollback_is_reported_before_expiry() {
        // An old replayed manifest is usually both; rollback is the better clue.
        let key = fixed_key();
        let mut m = sample();
        m.version = 1;
        let err = check(&sign(&m, &key), &key.public(), u64::MAX, Some(42)).unwrap_err();
        assert!(matches!(err, ManifestError::Rollback { .. }), "{err}");
    }

    #[test]
    fn tampered_content_fails_the_signature() {
        let key = fixed_key();
        let file = sign(&sample(), &key);
        let text = String::from_utf8(file.clone()).unwrap();
        for (from, to) in [
            ("52224", "52225"),
            ("\"version\":42", "\"version\":43"),
            ("dddd", "dddf"),
            ("g-000042", "g-000043"),
            ("1795946400", "1795946401"),
        ] {
            assert!(text.contains(from), "{from}");
            let tampered = text.replacen(from, to, 1);
            let err = check(tampered.as_bytes(), &key.public(), SIGNED_AT, None).unwrap_err();
            assert!(
                matches!(err, ManifestError::BadSignature { .. }),
                "{from}: {err}"
            );
        }
        // Adding or removing a file is tampering too.
        for edit in [
            (|v: &mut serde_json::Value| {
                v["signed"]["files"]["evil"] =
                    serde_json::json!({"sha256": "f".repeat(64), "size": 1});
            }) as fn(&mut serde_json::Value),
            |v| {
                v["signed"]["files"]
                    .as_object_mut()
                    .unwrap()
                    .remove("names");
            },
            |v| v["signed"]["upstream"]["versions_etag"] = serde_json::json!("\"x\""),
        ] {
            let tampered = edit_json(&file, edit);
            let err = check(&tampered, &key.public(), SIGNED_AT, None).unwrap_err();
            assert!(matches!(err, ManifestError::BadSignature { .. }), "{err}");
        }
    }

    #[test]
    fn reformatting_the_file_keeps_it_valid() {
        // Only the value is signed, so whitespace and key order do not matter.
        let key = fixed_key();
        let file = sign(&sample(), &key);
        let compact = edit_json(&file, |_| {});
        assert_ne!(compact, file);
        assert_eq!(
            check(&compact, &key.public(), SIGNED_AT, None).unwrap(),
            sample()
        );
    }

    #[test]
    fn no_byte_flip_yields_a_different_manifest() {
        // Whatever one flipped byte does, verify either refuses the file or
        // returns exactly what was signed.
        let key = fixed_key();
        let m = sample();
        let file = sign(&m, &key);
        for i in 0..file.len() {
            for mask in [0x01, 0x02, 0x04, 0x20, 0x40, 0x80] {
                let mut bad = file.clone();
                bad[i] ^= mask;
                if let Ok(got) = check(&bad, &key.public(), SIGNED_AT, None) {
                    assert_eq!(got, m, "flip {mask:#x} at byte {i}");
                }
            }
        }
    }

    #[test]
    fn another_key_is_refused() {
        let key = fixed_key();
        let other = ManifestKey::generate();
        let file = sign(&sample(), &other);
        let err = check(&file, &key.public(), SIGNED_AT, None).unwrap_err();
        match &err {
            ManifestError::NotSignedByKey { expected, found } => {
                assert_eq!(expected, &key.public().keyid());
                assert_eq!(found, &[other.public().keyid()]);
            }
            _ => panic!("{err}"),
        }
        // Relabelling the other key's signature with our key id does not help.
        let relabelled = edit_json(&file, |v| {
            v["signatures"][0]["keyid"] = serde_json::json!(key.public().keyid());
        });
        let err = check(&relabelled, &key.public(), SIGNED_AT, None).unwrap_err();
        assert!(matches!(err, ManifestError::BadSignature { .. }), "{err}");
        // No signatures at all.
        let bare = edit_json(&file, |v| v["signatures"] = serde_json::json!([]));
        let err = check(&bare, &key.public(), SIGNED_AT, None).unwrap_err();
        assert!(matches!(&err, ManifestError::NotSignedByKey { found, .. } if found.is_empty()));
        assert!(err.to_string().contains("signed by: nobody"), "{err}");
    }

    #[test]
    fn a_co_signature_by_another_key_is_ignored() {
        let key = fixed_key();
        let other = ManifestKey::generate();
        let file = sign(&sample(), &key);
        let other_sig = serde_json::from_slice::<serde_json::Value>(&sign(&sample(), &other))
            .unwrap()["signatures"][0]
            .clone();
        let both = edit_json(&file, |v| {
            v["signatures"].as_array_mut().unwrap().insert(0, other_sig);
        });
        assert_eq!(
            check(&both, &key.public(), SIGNED_AT, None).unwrap(),
            sample()
        );
    }

    #[test]
    fn garbage_signatures_are_bad_signatures() {
        let key = fixed_key();
        let file = sign(&sample(), &key);
        for sig in [
            "",
            "!!!",
            "AAAA",
            &STANDARD.encode([0u8; 64]),
            &STANDARD.encode([1u8; 65]),
        ] {
            let bad = edit_json(&file, |v| {
                v["signatures"][0]["sig"] = serde_json::json!(sig)
            });
            let err = check(&bad, &key.public(), SIGNED_AT, None).unwrap_err();
            assert!(
                matches!(err, ManifestError::BadSignature { .. }),
                "{sig:?}: {err}"
            );
        }
    }

    #[test]
    fn unknown_fields_are_refused_at_every_level() {
        let key = fixed_key();
        let file = sign(&sample(), &key);
        let edits: [fn(&mut serde_json::Value); 5] = [
            |v| v["extra"] = serde_json::json!(1),
            |v| v["signed"]["extra"] = serde_json::json!(1),
            |v| v["signed"]["upstream"]["extra"] = serde_json::json!(1),
            |v| v["signed"]["files"]["names"]["extra"] = serde_json::json!(1),
            |v| v["signatures"][0]["extra"] = serde_json::json!(1),
        ];
        for edit in edits {
            let bad = edit_json(&file, edit);
            let err = check(&bad, &key.public(), SIGNED_AT, None).unwrap_err();
            assert!(matches!(err, ManifestError::Malformed { .. }), "{err}");
        }
    }

    #[test]
    fn a_borrowed_manifest_signs_to_the_same_bytes() {
        let key = fixed_key();
        let m = sample();
        let digests: Vec<(String, [u8; 32], u64)> = m
            .files
            .iter()
            .map(|(p, e)| {
                let sha: [u8; 32] = hex::decode(&e.sha256).unwrap().try_into().unwrap();
                (p.clone(), sha, e.size)
            })
            .collect();
        let borrowed = ManifestRef {
            expires_at: m.expires_at,
            files: FileList(digests.iter().map(|(p, s, n)| (p.as_str(), s, *n))),
            generation: &m.generation,
            signed_at: m.signed_at,
            upstream: &m.upstream,
            version: m.version,
        };
        let mut file = Vec::new();
        write_signed_ref(&borrowed, &key, &mut file).unwrap();
        assert_eq!(file, sign(&m, &key));
        assert_eq!(check(&file, &key.public(), SIGNED_AT, None).unwrap(), m);
    }

    #[test]
    fn a_manifest_that_serialises_differently_per_pass_is_not_signed() {
        // Each pass reads a counter that the previous pass moved: the bytes
        // hashed for the nonce would not be the bytes signed.
        let key = fixed_key();
        let m = sample();
        let sha = [7u8; 32];
        let passes = std::cell::Cell::new(0u64);
        let files = FileList(std::iter::once(()).map(|()| {
            passes.set(passes.get() + 1);
            ("names", &sha, passes.get())
        }));
        let borrowed = ManifestRef {
            expires_at: m.expires_at,
            files,
            generation: &m.generation,
            signed_at: m.signed_at,
            upstream: &m.upstream,
            version: m.version,
        };
        let mut file = Vec::new();
        let err = write_signed_ref(&borrowed, &key, &mut file).unwrap_err();
        assert!(
            err.get_ref()
                .is_some_and(|e| e.is::<UnstableSerialisation>()),
            "{err}"
        );
        assert!(!String::from_utf8_lossy(&file).contains("signatures"));
    }

    #[test]
    fn the_signature_is_checked_over_the_files_own_bytes_only_when_they_are_canonical() {
        let key = fixed_key();
        let m = sample();
        let file = sign(&m, &key);
        // Our own layout: the signed bytes are borrowed from the file.
        assert!(matches!(
            signed_bytes(&file, &m),
            std::borrow::Cow::Borrowed(_)
        ));
        // The same value pretty-printed (an operator's `jq .`): a copy in
        // canonical form, and the signature still holds.
        let pretty =
            serde_json::to_vec_pretty(&serde_json::from_slice::<serde_json::Value>(&file).unwrap())
                .unwrap();
        let raw = raw_signed(&pretty);
        assert!(raw.is_none_or(|r| r != canonical_bytes(&m).as_slice()));
        assert!(matches!(
            signed_bytes(&pretty, &m),
            std::borrow::Cow::Owned(_)
        ));
        assert_eq!(check(&pretty, &key.public(), SIGNED_AT, None).unwrap(), m);
        // Bytes that are canonical for another value never stand in for it.
        let mut other = m.clone();
        other.version += 1;
        assert!(matches!(
            signed_bytes(&file, &other),
            std::borrow::Cow::Owned(_)
        ));
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let key = fixed_key();
        let text = String::from_utf8(sign(&sample(), &key)).unwrap();
        let dup_file = text.replacen(
            "\"names\":{",
            &format!(
                "\"names\":{{\"sha256\":\"{}\",\"size\":1}},\"names\":{{",
                "f".repeat(64)
            ),
            1,
        );
        let dup_field = text.replacen("\"version\":42", "\"version\":1,\"version\":42", 1);
        let dup_top = text.replacen("\"signatures\":[", "\"signatures\":[],\"signatures\":[", 1);
        for bad in [dup_file, dup_field, dup_top] {
            assert_ne!(bad, text);
            let err = check(bad.as_bytes(), &key.public(), SIGNED_AT, None).unwrap_err();
            assert!(matches!(err, ManifestError::Malformed { .. }), "{err}");
        }
    }

    #[test]
    fn truncated_or_garbage_input_is_an_error() {
        let key = fixed_key();
        let file = sign(&sample(), &key);
        // Every prefix short of the closing brace (the final newline is optional).
        let end = file.len() - 2;
        for len in 0..=end {
            let err = check(&file[..len], &key.public(), SIGNED_AT, None).unwrap_err();
            assert!(
                matches!(err, ManifestError::Malformed { .. }),
                "{len}: {err}"
            );
        }
        let mut trailing = file.clone();
        trailing.extend_from_slice(b"{}");
        for bad in [
            &b""[..],
            b"null",
            b"[]",
            b"{}",
            b"\xff\xfe\x00",
            br#"{"signed": 1, "signatures": []}"#,
            &trailing,
        ] {
            let err = check(bad, &key.public(), SIGNED_AT, None).unwrap_err();
            assert!(matches!(err, ManifestError::Malformed { .. }), "{err}");
        }
    }

    #[test]
    fn invalid_entries_are_refused_even_when_signed() {
        let key = fixed_key();
        for path in [
            "", "/names", "a//b", "a/", "./names", "a/./b", "../x", "a/../b", "..", "a\\b", "a\0",
        ] {
            let mut m = sample();
            m.files.insert(path.to_owned(), entry('a', 1));
            let err = check(&sign(&m, &key), &key.public(), SIGNED_AT, None).unwrap_err();
            assert!(
                matches!(&err, ManifestError::InvalidEntry { path: p, .. } if p == path),
                "{path:?}: {err}"
            );
        }
        for sha in [
            "A".repeat(64),
            "a".repeat(63),
            "a".repeat(65),
            "g".repeat(64),
            String::new(),
        ] {
            let mut m = sample();
            m.files.insert(
                "x".to_owned(),
                FileEntry {
                    sha256: sha.clone(),
                    size: 1,
                },
            );
            let err = check(&sign(&m, &key), &key.public(), SIGNED_AT, None).unwrap_err();
            assert!(
                matches!(err, ManifestError::InvalidEntry { .. }),
                "{sha:?}: {err}"
            );
        }
    }

    #[test]
    fn ed25519_keys_round_trip_through_pem() {
        let key = ManifestKey::generate();
        let pem = key.to_pkcs8_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let back = ManifestKey::from_pem(&pem).unwrap();
        assert_eq!(back.public(), key.public());

        let public_pem = key.public().to_pem();
        assert!(public_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let public = ManifestPublicKey::from_pem(&public_pem).unwrap();
        assert_eq!(public, key.public());
        assert_eq!(public.keyid(), key.public().keyid());
        assert_eq!(public.keyid().len(), 64);

        // A file signed with the reloaded key verifies with the reloaded public key.
        let file = sign(&sample(), &back);
        assert!(check(&file, &public, SIGNED_AT, None).is_ok());
    }

    #[test]
    fn openssl_ed25519_pem_is_read() {
        // The PKCS#8 v1 form `openssl genpkey -algorithm ed25519` writes, here
        // for the seed [7; 32]; `openssl pkey -in key.pem -pubout` reads it.
        let private = "-----BEGIN PRIVATE KEY-----\n\
                       MC4CAQAwBQYDK2VwBCIEIAcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcH\n\
                       -----END PRIVATE KEY-----\n";
        let key = ManifestKey::from_pem(private).unwrap();
        assert_eq!(key.public(), fixed_key().public());
        assert_eq!(
            key.to_pkcs8_pem(),
            private,
            "we write the same v1 form back"
        );
        // `openssl pkey -in key.pem -pubout` output for that key.
        let openssl_public = "-----BEGIN PUBLIC KEY-----\n\
                              MCowBQYDK2VwAyEA6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw=\n\
                              -----END PUBLIC KEY-----\n";
        assert_eq!(key.public().to_pem(), openssl_public);
        assert_eq!(
            ManifestPublicKey::from_pem(openssl_public).unwrap(),
            key.public()
        );
    }

    #[test]
    fn key_parsing_refuses_wrong_kinds() {
        let rsa_private = include_str!("../tests/fixtures/keys/upstream.pem");
        let rsa_public = include_str!("../tests/fixtures/keys/upstream.pub.pem");
        assert!(matches!(
            ManifestKey::from_pem(rsa_private),
            Err(ManifestKeyError::NotPrivateKey)
        ));
        assert!(matches!(
            ManifestKey::from_pem(&fixed_key().public().to_pem()),
            Err(ManifestKeyError::NotPrivateKey)
        ));
        assert!(matches!(
            ManifestKey::from_pem("junk"),
            Err(ManifestKeyError::NotPrivateKey)
        ));
        assert!(matches!(
            ManifestPublicKey::from_pem(rsa_public),
            Err(ManifestKeyError::NotPublicKey)
        ));
        assert!(matches!(
            ManifestPublicKey::from_pem(&fixed_key().to_pkcs8_pem()),
            Err(ManifestKeyError::NotPublicKey)
        ));
        // The identity point (small order) as an SPKI key.
        let weak = VerifyingKey::from_bytes(&{
            let mut b = [0u8; 32];
            b[0] = 1;
            b
        })
        .unwrap()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
        assert!(matches!(
            ManifestPublicKey::from_pem(&weak),
            Err(ManifestKeyError::WeakPublicKey)
        ));
    }

    #[test]
    fn debug_never_shows_private_key_material() {
        let key = fixed_key();
        let shown = format!("{key:?}");
        assert_eq!(
            shown,
            format!("ManifestKey(keyid {})", key.public().keyid())
        );
        assert!(!shown.contains(&hex::encode([7u8; 32])));
    }

    #[test]
    fn diff_reports_missing_extra_and_corrupt() {
        let m = sample();
        let mut actual = m.files.clone();
        assert_eq!(
            diff(&m, &actual),
            Report {
                ok: 5,
                ..Report::default()
            }
        );
        assert!(diff(&m, &actual).is_clean());

        actual.remove("versions");
        actual.remove("names");
        actual.insert("stray".to_owned(), entry('f', 1));
        actual.insert("packages/jason".to_owned(), entry('0', 2048)); // other digest
        actual.insert("public_key".to_owned(), entry('c', 450)); // truncated
        let report = diff(&m, &actual);
        assert_eq!(report.missing, ["names", "versions"]);
        assert_eq!(report.extra, ["stray"]);
        assert_eq!(
            report.corrupt,
            [
                (
                    "packages/jason".to_owned(),
                    entry('b', 2048),
                    entry('0', 2048)
                ),
                ("public_key".to_owned(), entry('c', 451), entry('c', 450)),
            ]
        );
        assert_eq!(report.ok, 1);
        assert!(!report.is_clean());
        assert_eq!(report.to_string(), "1 ok, 2 missing, 1 extra, 2 corrupt");

        let empty = diff(&m, &BTreeMap::new());
        assert_eq!(empty.missing.len(), 5);
        assert_eq!(empty.ok, 0);
    }

    #[test]
    fn rfc3339_formats_utc() {
        // Expected values from `date -u -d @SECS +%Y-%m-%dT%H:%M:%SZ`.
        for (secs, expected) in [
            (0, "1970-01-01T00:00:00Z"),
            (68_169_600, "1972-02-29T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_000_000_000, "2001-09-09T01:46:40Z"),
            (4_102_444_800, "2100-01-01T00:00:00Z"),
            (EXPIRES_AT, "2026-11-29T10:00:00Z"),
            (253_402_300_799, "9999-12-31T23:59:59Z"),
        ] {
            assert_eq!(rfc3339(secs), expected, "{secs}");
        }
        // Far-future values do not overflow or panic.
        assert!(rfc3339(u64::MAX).ends_with('Z'));
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_duration(7 * 86_400), "7 days");
        assert_eq!(human_duration(86_400), "1 day");
        assert_eq!(human_duration(36 * 3600), "36 hours");
        assert_eq!(human_duration(90), "90 seconds");
        assert_eq!(human_duration(120), "2 minutes");
        assert_eq!(human_duration(0), "0 seconds");
    }
    #[test]
    fn the_ends_of_a_signed_manifest_give_its_expiry_and_version() {
        let key = ManifestKey::generate();
        let mut files = BTreeMap::new();
        files.insert(
            "names".to_owned(),
            FileEntry {
                sha256: "a".repeat(64),
                size: 3,
            },
        );
        let manifest = Manifest {
            expires_at: 1_900_000_000,
            files,
            generation: "g".into(),
            signed_at: 1,
            upstream: UpstreamState {
                names_etag: None,
                synced_at: 0,
                url: "http://u".into(),
                versions_etag: Some("\"version\":7},\"signatures\":[".into()),
            },
            version: 42,
        };
        let file = sign_envelope(&manifest, &key);
        let split = file.len() / 2;
        assert_eq!(
            peek_ends(&file[..split], &file[split..]),
            Some((1_900_000_000, 42))
        );
        assert_eq!(peek_ends(&file[..10], &file[split..]), None);
        assert_eq!(
            peek_ends(
                b"{\"signed\":{\"expires_at\":12,",
                b"\"version\":x},\"signatures\":["
            ),
            None
        );
    }
}
