//! The Hex registry v2 format: protobuf messages, the gzipped `Signed`
//! envelope, RSA PKCS#1 v1.5 SHA-512 signatures and the repository-origin
//! check. PURE: bytes in, values out; no I/O.

pub mod keys;
pub mod names;

use std::io::Read;

use flate2::read::GzDecoder;
use prost::Message;

pub use keys::{HEXPM_PUBLIC_KEY, KeyError, PublicKey, SigningKey};
pub use names::{NameError, PackageName, is_valid_version};

/// Generated protobuf types, one module per schema file in `proto/`.
pub mod proto {
    /// `Signed` envelope.
    pub mod signed {
        include!(concat!(env!("OUT_DIR"), "/signed.rs"));
    }
    /// `/names` payload.
    pub mod names {
        include!(concat!(env!("OUT_DIR"), "/names.rs"));
    }
    /// `/versions` payload.
    pub mod versions {
        include!(concat!(env!("OUT_DIR"), "/versions.rs"));
    }
    /// `/packages/NAME` payload.
    pub mod package {
        include!(concat!(env!("OUT_DIR"), "/package.rs"));
    }
}

/// Largest registry file accepted once gunzipped, unless configured
/// otherwise (`[upstream] max_registry_mb`). hex.pm's `/versions`, the
/// largest, is a few MB (its 21,000 packages take about 3 MB); the cap stops
/// a gzip bomb long before memory does, with room for ten times hex.pm.
pub const MAX_DECODED_SIZE: u64 = 32 * 1024 * 1024;

/// Why a registry file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The body is not gzip, or is truncated.
    #[error("not a valid gzip body: {0}")]
    Gzip(std::io::Error),
    /// The gunzipped body is larger than the cap.
    #[error("gunzipped body is larger than {limit} bytes ([upstream] max_registry_mb)")]
    TooLarge {
        /// The cap, in bytes.
        limit: u64,
    },
    /// The envelope or the payload is not valid protobuf for its schema.
    #[error("{what} does not decode as protobuf: {source}")]
    Protobuf {
        /// Which message failed to decode.
        what: &'static str,
        /// The decoder's reason.
        source: prost::DecodeError,
    },
    /// The envelope carries no signature.
    #[error("the signed envelope has no signature")]
    MissingSignature,
    /// The signature does not verify with the configured key.
    #[error("signature does not verify with the configured public key")]
    BadSignature,
    /// The payload names another repository (origin check).
    #[error("payload says repository {found:?}, expected {expected:?}")]
    WrongRepository {
        /// The repository name we asked for.
        expected: String,
        /// The repository name in the payload.
        found: String,
    },
    /// A package payload names another package.
    #[error("payload is for package {found:?}, expected {expected:?}")]
    WrongPackage {
        /// The package we asked for.
        expected: String,
        /// The package in the payload.
        found: String,
    },
}

/// A payload whose signature and origin were checked. Only this module
/// builds one, so holding a `Verified<T>` is proof of verification.
#[derive(Debug, Clone)]
pub struct Verified<T>(T);

impl<T> Verified<T> {
    /// The verified value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Verified<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Gunzips a registry file, with the [`MAX_DECODED_SIZE`] cap.
pub fn gunzip(file: &[u8]) -> Result<Vec<u8>, RegistryError> {
    gunzip_within(file, MAX_DECODED_SIZE)
}

/// Gunzips `file` into at most `limit` bytes. The buffer never grows past
/// `limit + 1` (`read_to_end` would double it, so a bomb would take twice
/// the cap before it is refused).
fn gunzip_within(file: &[u8], limit: u64) -> Result<Vec<u8>, RegistryError> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut decoder = GzDecoder::new(file);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut out: Vec<u8> = Vec::new();
    loop {
        let n = match decoder.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(RegistryError::Gzip(e)),
        };
        if out.len() + n > limit {
            return Err(RegistryError::TooLarge {
                limit: limit as u64,
            });
        }
        if out.capacity() - out.len() < n {
            // Double as a Vec would, but never past the limit.
            let grow = out.capacity().max(n).min(limit - out.len());
            out.reserve_exact(grow.max(n));
        }
        out.extend_from_slice(&chunk[..n]);
    }
    Ok(out)
}

/// Gzips bytes the way registry files are stored.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    gzip_with(bytes, flate2::Compression::default())
}

thread_local! {
    /// One deflate state per thread and level, reset between files. A fresh
    /// state is ~380 KB, just under the mmap threshold `main.rs` sets, so
    /// allocating one per signed record (21,000 in a full-scale curated sync)
    /// left glibc with ~390 MB of freed-but-unreturned holes at the peak.
    static DEFLATERS: std::cell::RefCell<Vec<(u32, flate2::Compress)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

fn gzip_with(bytes: &[u8], level: flate2::Compression) -> Vec<u8> {
    // RFC 1952 header as flate2's `GzEncoder` writes it: no name, mtime 0
    // (reproducible files), XFL from the level, OS "unknown".
    let xfl = match level.level() {
        l if l >= flate2::Compression::best().level() => 2,
        l if l <= flate2::Compression::fast().level() => 4,
        _ => 0,
    };
    let mut out = Vec::with_capacity(bytes.len() / 3 + 64);
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255]);
    let deflated = DEFLATERS.with_borrow_mut(|states| {
        let at = match states.iter().position(|(l, _)| *l == level.level()) {
            Some(at) => at,
            None => {
                states.push((level.level(), flate2::Compress::new(level, false)));
                states.len() - 1
            }
        };
        let z = &mut states[at].1;
        z.reset();
        let done = deflate_all(z, bytes, &mut out);
        if !done {
            // A state that failed is not trusted again.
            states.swap_remove(at);
        }
        done
    });
    if !deflated {
        return gzip_fresh(bytes, level);
    }
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    // ISIZE is the length modulo 2^32 (RFC 1952).
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out
}

/// Deflates all of `bytes` onto `out` with a reset state; false if zlib
/// reports an error (it does not on a reset state and in-memory buffers).
fn deflate_all(z: &mut flate2::Compress, bytes: &[u8], out: &mut Vec<u8>) -> bool {
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.len().max(4096));
        }
        let read = usize::try_from(z.total_in()).unwrap_or(usize::MAX);
        let rest = bytes.get(read..).unwrap_or_default();
        let before = (z.total_in(), z.total_out());
        match z.compress_vec(rest, out, flate2::FlushCompress::Finish) {
            Ok(flate2::Status::StreamEnd) => return true,
            // Room was made above: a call that moves nothing never will.
            Ok(_) if (z.total_in(), z.total_out()) == before => return false,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

/// The plain path, with a state of its own: the fallback if a kept state fails.
fn gzip_fresh(bytes: &[u8], level: flate2::Compression) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), level);
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(bytes);
    enc.finish().unwrap_or_default()
}

/// Gunzips, decodes the envelope and checks the signature; returns the payload.
pub fn open_signed(file: &[u8], key: &PublicKey) -> Result<Vec<u8>, RegistryError> {
    open_signed_within(file, key, MAX_DECODED_SIZE)
}

/// [`open_signed`] with a cap of `max_decoded` gunzipped bytes.
pub fn open_signed_within(
    file: &[u8],
    key: &PublicKey,
    max_decoded: u64,
) -> Result<Vec<u8>, RegistryError> {
    let raw = gunzip_within(file, max_decoded)?;
    let signed = proto::signed::Signed::decode(raw.as_slice()).map_err(|source| {
        RegistryError::Protobuf {
            what: "Signed envelope",
            source,
        }
    })?;
    let signature = signed.signature.ok_or(RegistryError::MissingSignature)?;
    if !key.verify(&signed.payload, &signature) {
        return Err(RegistryError::BadSignature);
    }
    Ok(signed.payload)
}

/// Signs a payload and wraps it as a gzipped `Signed` registry file.
pub fn seal_signed(payload: Vec<u8>, key: &SigningKey) -> Vec<u8> {
    seal_signed_with(payload, key, flate2::Compression::default())
}

/// [`seal_signed`] at gzip level 1: for files signed while a client waits
/// (a publish, a filtered index), where deflate at the default level is most
/// of the time spent on a large `/versions`. About a fifth bigger.
pub fn seal_signed_fast(payload: Vec<u8>, key: &SigningKey) -> Vec<u8> {
    seal_signed_with(payload, key, flate2::Compression::fast())
}

fn seal_signed_with(payload: Vec<u8>, key: &SigningKey, level: flate2::Compression) -> Vec<u8> {
    let signature = key.sign(&payload);
    let signed = proto::signed::Signed {
        payload,
        signature: Some(signature),
    };
    gzip_with(&signed.encode_to_vec(), level)
}

fn decode<T: Message + Default>(payload: &[u8], what: &'static str) -> Result<T, RegistryError> {
    T::decode(payload).map_err(|source| RegistryError::Protobuf { what, source })
}

fn check_repository(found: &str, expected: &str) -> Result<(), RegistryError> {
    if found != expected {
        return Err(RegistryError::WrongRepository {
            expected: expected.to_owned(),
            found: found.to_owned(),
        });
    }
    Ok(())
}

/// Verifies a `/names` file: signature, then repository.
pub fn verify_names(
    file: &[u8],
    key: &PublicKey,
    repository: &str,
) -> Result<Verified<proto::names::Names>, RegistryError> {
    verify_names_within(file, key, repository, MAX_DECODED_SIZE)
}

/// [`verify_names`] with a cap of `max_decoded` gunzipped bytes.
pub fn verify_names_within(
    file: &[u8],
    key: &PublicKey,
    repository: &str,
    max_decoded: u64,
) -> Result<Verified<proto::names::Names>, RegistryError> {
    let payload = open_signed_within(file, key, max_decoded)?;
    let names: proto::names::Names = decode(&payload, "Names payload")?;
    check_repository(&names.repository, repository)?;
    Ok(Verified(names))
}

/// Verifies a `/versions` file: signature, then repository.
pub fn verify_versions(
    file: &[u8],
    key: &PublicKey,
    repository: &str,
) -> Result<Verified<proto::versions::Versions>, RegistryError> {
    verify_versions_within(file, key, repository, MAX_DECODED_SIZE)
}

/// [`verify_versions`] with a cap of `max_decoded` gunzipped bytes.
pub fn verify_versions_within(
    file: &[u8],
    key: &PublicKey,
    repository: &str,
    max_decoded: u64,
) -> Result<Verified<proto::versions::Versions>, RegistryError> {
    let payload = open_signed_within(file, key, max_decoded)?;
    let versions: proto::versions::Versions = decode(&payload, "Versions payload")?;
    check_repository(&versions.repository, repository)?;
    Ok(Verified(versions))
}

/// Verifies a `/packages/NAME` file: signature, repository and package name.
pub fn verify_package(
    file: &[u8],
    key: &PublicKey,
    repository: &str,
    name: &str,
) -> Result<Verified<proto::package::Package>, RegistryError> {
    verify_package_within(file, key, repository, name, MAX_DECODED_SIZE)
}

/// [`verify_package`] with a cap of `max_decoded` gunzipped bytes.
pub fn verify_package_within(
    file: &[u8],
    key: &PublicKey,
    repository: &str,
    name: &str,
    max_decoded: u64,
) -> Result<Verified<proto::package::Package>, RegistryError> {
    let payload = open_signed_within(file, key, max_decoded)?;
    let package: proto::package::Package = decode(&payload, "Package payload")?;
    check_repository(&package.repository, repository)?;
    if package.name != name {
        return Err(RegistryError::WrongPackage {
            expected: name.to_owned(),
            found: package.name,
        });
    }
    Ok(Verified(package))
}

#[cfg(test)]
mod tests {
    use super::proto::package::{Package, Release};
    use super::*;

    const PRIVATE: &str = include_str!("../../tests/fixtures/keys/upstream.pem");
    const PUBLIC: &str = include_str!("../../tests/fixtures/keys/upstream.pub.pem");
    const PUBLIC_PKCS1: &str = include_str!("../../tests/fixtures/keys/upstream.pkcs1.pub.pem");
    const OTHER_PUBLIC: &str = include_str!("../../tests/fixtures/keys/other.pub.pem");

    fn package(name: &str, repository: &str) -> Package {
        Package {
            name: name.into(),
            repository: repository.into(),
            releases: vec![Release {
                version: "1.0.0".into(),
                inner_checksum: vec![1; 32],
                outer_checksum: Some(vec![2; 32]),
                ..Default::default()
            }],
            advisories: vec![],
        }
    }

    fn sealed(p: &Package) -> Vec<u8> {
        seal_signed(p.encode_to_vec(), &SigningKey::from_pem(PRIVATE).unwrap())
    }

    fn key(pem: &str) -> PublicKey {
        PublicKey::from_pem(pem).unwrap()
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzz::config())]

        /// The signature covers the payload: whatever is accepted is the
        /// original, and nothing panics on the way.
        #[test]
        fn fuzz_registry_files(m in crate::fuzz::mutations(), raw in crate::fuzz::bytes(512)) {
            let original = package("foo", "hexpm");
            let mutated = crate::fuzz::apply(&sealed(&original), &m);
            let k = key(PUBLIC);
            if let Ok(p) = verify_package(&mutated, &k, "hexpm", "foo") {
                proptest::prop_assert_eq!(p.into_inner(), original);
            }
            let _ = verify_names(&mutated, &k, "hexpm");
            let _ = verify_versions(&raw, &k, "hexpm");
            let _ = gunzip(&raw);
        }
    }

    #[test]
    fn round_trip_verifies_with_spki_and_pkcs1_keys() {
        let file = sealed(&package("foo", "hexpm"));
        for pem in [PUBLIC, PUBLIC_PKCS1] {
            let got = verify_package(&file, &key(pem), "hexpm", "foo").unwrap();
            assert_eq!(got.releases[0].version, "1.0.0");
        }
    }

    #[test]
    fn wrong_key_is_bad_signature() {
        let file = sealed(&package("foo", "hexpm"));
        let err = verify_package(&file, &key(OTHER_PUBLIC), "hexpm", "foo").unwrap_err();
        assert!(matches!(err, RegistryError::BadSignature), "{err}");
    }

    #[test]
    fn tampered_payload_is_bad_signature() {
        let file = sealed(&package("foo", "hexpm"));
        let mut signed = proto::signed::Signed::decode(gunzip(&file).unwrap().as_slice()).unwrap();
        let last = signed.payload.len() - 1;
        signed.payload[last] ^= 1;
        let err = verify_package(&gzip(&signed.encode_to_vec()), &key(PUBLIC), "hexpm", "foo")
            .unwrap_err();
        assert!(matches!(
            err,
            RegistryError::BadSignature | RegistryError::Protobuf { .. }
        ));
    }

    #[test]
    fn missing_signature_is_rejected() {
        let signed = proto::signed::Signed {
            payload: package("foo", "hexpm").encode_to_vec(),
            signature: None,
        };
        let err = verify_package(&gzip(&signed.encode_to_vec()), &key(PUBLIC), "hexpm", "foo")
            .unwrap_err();
        assert!(matches!(err, RegistryError::MissingSignature));
    }

    #[test]
    fn origin_check_names_repository_and_package() {
        let file = sealed(&package("foo", "other"));
        let err = verify_package(&file, &key(PUBLIC), "hexpm", "foo").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"payload says repository "other", expected "hexpm""#
        );
        let file = sealed(&package("bar", "hexpm"));
        let err = verify_package(&file, &key(PUBLIC), "hexpm", "foo").unwrap_err();
        assert!(matches!(err, RegistryError::WrongPackage { .. }));
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        let file = sealed(&package("foo", "hexpm"));
        for cut in [0, 1, 10, file.len() / 2, file.len() - 1] {
            assert!(verify_package(&file[..cut], &key(PUBLIC), "hexpm", "foo").is_err());
        }
        assert!(verify_names(b"not gzip", &key(PUBLIC), "hexpm").is_err());
        assert!(verify_versions(&gzip(b"\xff\xff\xff"), &key(PUBLIC), "hexpm").is_err());
    }

    #[test]
    fn kept_deflate_state_writes_what_a_fresh_state_writes() {
        // Noise, text and long runs, each size twice and the levels
        // interleaved, so a reset state that kept anything would show.
        let mut noise = Vec::new();
        let mut x = 0x2545_f491_u32;
        for _ in 0..300_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            noise.push(x as u8);
        }
        let text = "defp deps, do: [{:plug, \"~> 1.14\"}]\n".repeat(90_000);
        let inputs: [&[u8]; 5] = [b"", b"x", &noise, text.as_bytes(), &[0u8; 70_000]];
        for round in 0..2 {
            for bytes in inputs {
                for level in [flate2::Compression::default(), flate2::Compression::fast()] {
                    let kept = gzip_with(bytes, level);
                    let mut fresh = kept[..10].to_vec();
                    let z = &mut flate2::Compress::new(level, false);
                    assert!(deflate_all(z, bytes, &mut fresh));
                    let what = format!("round {round}, {} bytes", bytes.len());
                    assert_eq!(kept[..kept.len() - 8], fresh[..], "{what}");
                    // The decoder checks the CRC-32 and length trailer.
                    assert_eq!(gunzip_within(&kept, 1 << 30).unwrap(), bytes, "{what}");
                    let plain = gzip_fresh(bytes, level);
                    assert_eq!(gunzip_within(&plain, 1 << 30).unwrap(), bytes, "{what}");
                }
            }
        }
    }

    #[test]
    fn gzip_bomb_is_capped() {
        // 300 MiB of zeros compresses to ~300 KiB; the cap stops it.
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..300 {
            std::io::Write::write_all(&mut enc, &zeros).unwrap();
        }
        let bomb = enc.finish().unwrap();
        assert!(matches!(gunzip(&bomb), Err(RegistryError::TooLarge { .. })));
        // At the edge: exactly the limit passes, one byte more does not.
        let exact = gzip(&vec![7u8; 100_000]);
        assert_eq!(gunzip_within(&exact, 100_000).unwrap().len(), 100_000);
        assert!(matches!(
            gunzip_within(&exact, 99_999),
            Err(RegistryError::TooLarge { limit: 99_999 })
        ));
        assert_eq!(gunzip_within(&gzip(b""), 10).unwrap(), b"");
    }

    #[test]
    fn current_schema_fields_survive_a_round_trip() {
        use super::proto::package as p;
        let mut pkg = package("foo", "hexpm");
        pkg.advisories.push(p::SecurityAdvisory {
            id: "GHSA-1".into(),
            summary: "bad".into(),
            html_url: "https://example/1".into(),
            api_url: "https://example/api/1".into(),
            severity: Some(p::AdvisorySeverity::SeverityHigh as i32),
            cvss_score: Some(7.5),
            aliases: vec!["CVE-1".into()],
        });
        pkg.releases[0].advisory_indexes = vec![0];
        pkg.releases[0].published_at = Some(p::Timestamp {
            seconds: 1_700_000_000,
            nanos: 5,
        });
        let got = verify_package(&sealed(&pkg), &key(PUBLIC), "hexpm", "foo").unwrap();
        assert_eq!(*got, pkg);
    }
}
