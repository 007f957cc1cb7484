//! RSA keys as Hex uses them: PEM in, PKCS#1 v1.5 SHA-512 signatures out.

use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs1v15;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey, LineEnding};
use rsa::signature::{SignatureEncoding, Signer, Verifier};
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::Sha512;

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
}

/// An RSA public key that verifies Hex registry signatures.
#[derive(Debug, Clone)]
pub struct PublicKey {
    key: pkcs1v15::VerifyingKey<Sha512>,
    spki_pem: String,
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
        Self {
            key: pkcs1v15::VerifyingKey::new(rsa),
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
        match pkcs1v15::Signature::try_from(signature) {
            Ok(sig) => self.key.verify(payload, &sig).is_ok(),
            Err(_) => false,
        }
    }

    /// The key as SPKI PEM, the form `/public_key` serves.
    pub fn spki_pem(&self) -> &str {
        &self.spki_pem
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
        let public = PublicKey::from_rsa(rsa.to_public_key());
        Ok(Self {
            key: pkcs1v15::SigningKey::new(rsa),
            public,
        })
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
    fn rejects_non_keys() {
        assert!(PublicKey::from_pem("hello").is_err());
        assert!(
            PublicKey::from_pem(include_str!("../../tests/fixtures/keys/upstream.pem")).is_err()
        );
        assert!(SigningKey::from_pem(HEXPM_PUBLIC_KEY).is_err());
    }
}
