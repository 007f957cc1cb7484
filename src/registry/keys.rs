//! RSA keys as Hex uses them: PEM in, PKCS#1 v1.5 SHA-512 signatures out.

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use rand::rngs::OsRng;
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey, EncodeRsaPublicKey};
use rsa::pkcs1v15;
use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::signature::{SignatureEncoding, Signer, Verifier};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256, Sha512};

/// Key sizes `generate_rsa` accepts. Gleam's client verifies only
/// `RSA_PKCS1_2048_8192_SHA512` (HEX-FORMAT.md 3.2), so a key outside this
/// range would lock some clients out of the mirror.
pub const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

/// hex.pm's repository key (RSA-2048, SPKI), as published on hex.pm and
/// built into Hex, rebar3 and hex_core. The default upstream key.
pub const HEXPM_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEApqREcFDt5vV21JVe2QNB
Edvzk6w36aNFhVGWN5toNJRjRJ6m4hIuG4KaXtDWVLjnvct6MYMfqhC79HAGwyF+
IqR6Q6a5bbFSsImgBJwz1oadoVKD6ZNetAuCIK84cjMrEFRkELtEIPNHblCzUkkM
3rS9+DPlnfG8hBvGi6tvQIuZmXGCxF/73hU0/MyGhbmEjIKRtG6b0sJYKelRLTPW
XgK7s5pESgiwf2YC/2MGDXjAJfpfCd0RpLdvd4eRiXtVlE9qO9bND94E7PgQ/xqZ
J1i2xWFndWa6nfFnRxZmCStCOZWYYPlaxr+FZceFbpMwzTNs4g3d4tLNUcbKAIH4
0wIDAQAB
-----END PUBLIC KEY-----
";

/// Why a key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The text is not a PEM RSA public key of a supported kind.
    #[error(
        "not an RSA public key in PEM form (expected `BEGIN PUBLIC KEY` or `BEGIN RSA PUBLIC KEY`)"
    )]
    NotPublicKey,
    /// The text is not a PEM RSA private key of a supported kind.
    #[error(
        "not an RSA private key in PEM form (expected `BEGIN PRIVATE KEY` or `BEGIN RSA PRIVATE KEY`)"
    )]
    NotPrivateKey,
    /// `generate_rsa` was asked for a size stock Hex clients cannot all verify.
    #[error(
        "cannot generate a {bits}-bit RSA key: Hex clients need 2048 to 8192 bits (4096 is a safe choice)"
    )]
    UnsupportedSize {
        /// The size asked for.
        bits: usize,
    },
    /// The RSA library failed to generate a key (for example, no system randomness).
    #[error("generating a {bits}-bit RSA key failed: {source}")]
    Generate {
        /// The size asked for.
        bits: usize,
        /// The library's reason.
        source: rsa::Error,
    },
}

/// Generates a new RSA signing key of `bits` bits from the operating system's
/// random source. Slow: seconds for 4096 bits, so run it off the async runtime.
pub fn generate_rsa(bits: usize) -> Result<SigningKey, KeyError> {
    if !RSA_BITS.contains(&bits) {
        return Err(KeyError::UnsupportedSize { bits });
    }
    let rsa = RsaPrivateKey::new(&mut OsRng, bits)
        .map_err(|source| KeyError::Generate { bits, source })?;
    Ok(SigningKey::from_rsa(rsa))
}

/// An RSA public key that verifies Hex registry signatures.
#[derive(Clone)]
pub struct PublicKey {
    key: pkcs1v15::VerifyingKey<Sha512>,
    /// The same key for aws-lc-rs (already built in for TLS), which verifies
    /// about 20 times faster than the rsa crate's arithmetic: a sync verifies
    /// every record, and the catalog again. `None` for a key aws-lc-rs
    /// refuses (outside 2048..=8192 bits); the rsa crate verifies those.
    fast: Option<aws_lc_rs::signature::ParsedPublicKey>,
    spki_pem: String,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey")
            .field("spki_pem", &self.spki_pem)
            .field("fast", &self.fast.is_some())
            .finish()
    }
}

impl PublicKey {
    /// Parses SPKI (`BEGIN PUBLIC KEY`) or PKCS#1 (`BEGIN RSA PUBLIC KEY`) PEM.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let pem = pem.trim();
        let rsa = RsaPublicKey::from_public_key_pem(pem)
            .or_else(|_| RsaPublicKey::from_pkcs1_pem(pem))
            .map_err(|_| KeyError::NotPublicKey)?;
        Ok(Self::from_rsa(rsa))
    }

    fn from_rsa(rsa: RsaPublicKey) -> Self {
        let spki_pem = rsa.to_public_key_pem(LineEnding::LF).unwrap_or_default();
        let fast = rsa.to_pkcs1_der().ok().and_then(|der| {
            aws_lc_rs::signature::ParsedPublicKey::new(
                &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA512,
                der.as_bytes(),
            )
            .ok()
        });
        Self {
            key: pkcs1v15::VerifyingKey::new(rsa),
            fast,
            spki_pem,
        }
    }

    /// The built-in hex.pm key.
    pub fn hexpm() -> Self {
        // The constant is a valid key; a test guards it.
        Self::from_pem(HEXPM_PUBLIC_KEY).unwrap_or_else(|_| unreachable!("built-in key parses"))
    }

    /// True when `signature` is a PKCS#1 v1.5 SHA-512 signature of `payload`.
    pub fn verify(&self, payload: &[u8], signature: &[u8]) -> bool {
        if let Some(fast) = &self.fast {
            return fast.verify_sig(payload, signature).is_ok();
        }
        self.verify_slow(payload, signature)
    }

    /// [`Self::verify`] with the rsa crate.
    fn verify_slow(&self, payload: &[u8], signature: &[u8]) -> bool {
        match pkcs1v15::Signature::try_from(signature) {
            Ok(sig) => self.key.verify(payload, &sig).is_ok(),
            Err(_) => false,
        }
    }

    /// The key as SPKI PEM, the form `/public_key` serves.
    pub fn spki_pem(&self) -> &str {
        &self.spki_pem
    }

    /// The fingerprint `mix hex.repo add --fetch-public-key` compares, and
    /// `ssh-keygen -lf` prints: `SHA256:` and unpadded base64 of SHA-256 over
    /// the key's SSH wire encoding (HEX-FORMAT.md 3.2), not over PEM or DER.
    pub fn fingerprint(&self) -> String {
        let rsa: &RsaPublicKey = self.key.as_ref();
        // RFC 4253 6.6 "ssh-rsa": string "ssh-rsa", mpint e, mpint n.
        let mut wire = Vec::with_capacity(rsa.size() + 32);
        put_ssh_string(&mut wire, b"ssh-rsa");
        put_ssh_mpint(&mut wire, &rsa.e().to_bytes_be());
        put_ssh_mpint(&mut wire, &rsa.n().to_bytes_be());
        format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(&wire)))
    }
}

/// RFC 4251 `string`: u32 big-endian length, then the bytes.
fn put_ssh_string(out: &mut Vec<u8>, bytes: &[u8]) {
    // RSA components are at most a few KB, far below u32::MAX.
    let len = u32::try_from(bytes.len()).unwrap_or_else(|_| unreachable!("key component < 4 GiB"));
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// RFC 4251 `mpint` for a non-negative big-endian magnitude: no leading zero
/// bytes, except one 0x00 when the top bit is set (else it would read as
/// negative); zero is the empty string. A different encoding would give a
/// fingerprint that matches no client's.
fn put_ssh_mpint(out: &mut Vec<u8>, magnitude: &[u8]) {
    let first = magnitude
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(magnitude.len());
    let digits = &magnitude[first..];
    if digits.first().is_some_and(|&b| b & 0x80 != 0) {
        let mut padded = Vec::with_capacity(digits.len() + 1);
        padded.push(0);
        padded.extend_from_slice(digits);
        put_ssh_string(out, &padded);
    } else {
        put_ssh_string(out, digits);
    }
}

/// An RSA private key that signs registry payloads.
#[derive(Clone)]
pub struct SigningKey {
    key: pkcs1v15::SigningKey<Sha512>,
    public: PublicKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    /// Parses PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1 (`BEGIN RSA PRIVATE KEY`) PEM.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let pem = pem.trim();
        let rsa = RsaPrivateKey::from_pkcs8_pem(pem)
            .or_else(|_| RsaPrivateKey::from_pkcs1_pem(pem))
            .map_err(|_| KeyError::NotPrivateKey)?;
        Ok(Self::from_rsa(rsa))
    }

    fn from_rsa(rsa: RsaPrivateKey) -> Self {
        let public = PublicKey::from_rsa(rsa.to_public_key());
        Self {
            key: pkcs1v15::SigningKey::new(rsa),
            public,
        }
    }

    /// The key as PKCS#8 PEM (`BEGIN PRIVATE KEY`), LF line endings, for the
    /// key file. The caller owns the secret from here: write it with mode 0600.
    pub fn to_pkcs8_pem(&self) -> String {
        let rsa: &RsaPrivateKey = self.key.as_ref();
        // Encoding a valid in-memory key into DER/PEM cannot fail; a test
        // round-trips generated keys.
        let pem = rsa
            .to_pkcs8_pem(LineEnding::LF)
            .unwrap_or_else(|_| unreachable!("a parsed or generated RSA key encodes as PKCS#8"));
        pem.as_str().to_owned()
    }

    /// PKCS#1 v1.5 SHA-512 signature of `payload`.
    pub fn sign(&self, payload: &[u8]) -> Vec<u8> {
        self.key.sign(payload).to_vec()
    }

    /// The matching public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hexpm_key_parses() {
        let k = PublicKey::hexpm();
        assert!(k.spki_pem().starts_with("-----BEGIN PUBLIC KEY-----"));
    }

    #[test]
    fn signatures_are_deterministic_and_verify() {
        let sk =
            SigningKey::from_pem(include_str!("../../tests/fixtures/keys/upstream.pem")).unwrap();
        let a = sk.sign(b"payload");
        assert_eq!(a, sk.sign(b"payload"), "PKCS#1 v1.5 is deterministic");
        assert!(sk.public_key().verify(b"payload", &a));
        assert!(!sk.public_key().verify(b"payload!", &a));
        assert!(!sk.public_key().verify(b"payload", &a[1..]));
    }

    #[test]
    fn both_verifiers_agree_on_good_and_bad_signatures() {
        let sk =
            SigningKey::from_pem(include_str!("../../tests/fixtures/keys/upstream.pem")).unwrap();
        let other =
            SigningKey::from_pem(include_str!("../../tests/fixtures/keys/other.pem")).unwrap();
        let public = sk.public_key();
        assert!(public.fast.is_some(), "a 2048-bit key takes aws-lc-rs");
        assert!(PublicKey::hexpm().fast.is_some(), "so does hex.pm's");
        let good = sk.sign(b"payload");
        let mut flipped = good.clone();
        flipped[100] ^= 1;
        let mut longer = good.clone();
        longer.push(0);
        let cases: [(&[u8], &[u8], bool); 7] = [
            (b"payload", &good, true),
            (b"payload!", &good, false),
            (b"payload", &flipped, false),
            (b"payload", &good[1..], false),
            (b"payload", &longer, false),
            (b"payload", &other.sign(b"payload"), false),
            (b"payload", &[], false),
        ];
        for (i, (payload, signature, valid)) in cases.into_iter().enumerate() {
            assert_eq!(
                public.verify(payload, signature),
                valid,
                "case {i}, aws-lc-rs"
            );
            assert_eq!(
                public.verify_slow(payload, signature),
                valid,
                "case {i}, rsa"
            );
        }
    }

    #[test]
    fn rejects_non_keys() {
        assert!(PublicKey::from_pem("hello").is_err());
        assert!(
            PublicKey::from_pem(include_str!("../../tests/fixtures/keys/upstream.pem")).is_err()
        );
        assert!(SigningKey::from_pem(HEXPM_PUBLIC_KEY).is_err());
    }

    #[test]
    fn generated_key_round_trips_through_pkcs8_pem() {
        let sk = generate_rsa(2048).unwrap();
        let pem = sk.to_pkcs8_pem();
        assert!(
            pem.starts_with("-----BEGIN PRIVATE KEY-----\n"),
            "PKCS#8, not PKCS#1"
        );
        assert!(pem.ends_with("-----END PRIVATE KEY-----\n"));
        let back = SigningKey::from_pem(&pem).unwrap();
        assert_eq!(back.public_key().spki_pem(), sk.public_key().spki_pem());
        let sig = sk.sign(b"payload");
        assert!(back.public_key().verify(b"payload", &sig));
        assert_eq!(
            back.sign(b"payload"),
            sig,
            "same key, same deterministic signature"
        );
        // Its public half loads the way a client would load `/public_key`.
        let public = PublicKey::from_pem(sk.public_key().spki_pem()).unwrap();
        assert!(public.verify(b"payload", &sig));
        assert!(format!("{sk:?}").len() < 20, "Debug shows no key material");
    }

    #[test]
    fn generated_keys_differ() {
        let a = generate_rsa(2048).unwrap();
        let b = generate_rsa(2048).unwrap();
        assert_ne!(a.public_key().fingerprint(), b.public_key().fingerprint());
    }

    #[test]
    fn refuses_sizes_clients_cannot_verify() {
        for bits in [0, 512, 1024, 2047, 8200, 16384] {
            assert!(
                matches!(generate_rsa(bits), Err(KeyError::UnsupportedSize { bits: b }) if b == bits),
                "{bits}"
            );
        }
    }

    #[test]
    fn pkcs8_export_of_a_pkcs1_fixture_is_the_same_key() {
        let sk =
            SigningKey::from_pem(include_str!("../../tests/fixtures/keys/upstream.pem")).unwrap();
        let back = SigningKey::from_pem(&sk.to_pkcs8_pem()).unwrap();
        assert_eq!(back.sign(b"x"), sk.sign(b"x"));
    }

    #[test]
    fn hexpm_fingerprint_matches_the_published_one() {
        // HEX-FORMAT.md 3.1; also what `ssh-keygen -lf` prints for the key.
        assert_eq!(
            PublicKey::hexpm().fingerprint(),
            "SHA256:O1LOYhHFW4kcrblKAxROaDEzLD8bn1seWbe5tq8TRsk"
        );
    }

    #[test]
    fn fixture_fingerprints_match_ssh_keygen() {
        // Expected values from OpenSSH:
        //   ssh-keygen -i -m PKCS8 -f upstream.pub.pem > /tmp/x.pub; ssh-keygen -lf /tmp/x.pub
        // (and the same for other.pub.pem).
        let cases = [
            (
                include_str!("../../tests/fixtures/keys/upstream.pub.pem"),
                "SHA256:cxgWhb2Pl5QJw1YdgP19OHKXcbDPzs+DRXj+cao7K/M",
            ),
            (
                include_str!("../../tests/fixtures/keys/upstream.pkcs1.pub.pem"),
                "SHA256:cxgWhb2Pl5QJw1YdgP19OHKXcbDPzs+DRXj+cao7K/M",
            ),
            (
                include_str!("../../tests/fixtures/keys/other.pub.pem"),
                "SHA256:iJ6uZUei0wQlpWJi4vmlF6LS5BYphZSD9jKFd4whsi4",
            ),
        ];
        for (pem, expected) in cases {
            assert_eq!(PublicKey::from_pem(pem).unwrap().fingerprint(), expected);
        }
        let sk =
            SigningKey::from_pem(include_str!("../../tests/fixtures/keys/upstream.pem")).unwrap();
        assert_eq!(sk.public_key().fingerprint(), cases[0].1);
    }

    #[test]
    fn mpint_encoding_follows_rfc_4251() {
        // RFC 4251 section 5 examples.
        let enc = |m: &[u8]| {
            let mut out = Vec::new();
            put_ssh_mpint(&mut out, m);
            out
        };
        assert_eq!(enc(&[]), [0, 0, 0, 0]);
        assert_eq!(enc(&[0, 0]), [0, 0, 0, 0], "zero is the empty string");
        assert_eq!(
            enc(&[0x80]),
            [0, 0, 0, 2, 0x00, 0x80],
            "high bit gets a 0x00"
        );
        assert_eq!(
            enc(&[0x00, 0x7f]),
            [0, 0, 0, 1, 0x7f],
            "leading zeros dropped"
        );
        assert_eq!(
            enc(&[0x09, 0xa3, 0x78, 0xf9, 0xb2, 0xe3, 0x32, 0xa7]),
            [0, 0, 0, 8, 0x09, 0xa3, 0x78, 0xf9, 0xb2, 0xe3, 0x32, 0xa7]
        );
        assert_eq!(enc(&[0x01, 0x00, 0x01]), [0, 0, 0, 3, 1, 0, 1], "e = 65537");
    }
}
