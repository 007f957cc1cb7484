//! API token secrets: `hxm_{id}_{secret}`.
//!
//! The id (16 lowercase hex characters, 8 random bytes) is stored in clear
//! and used to find the token's row; the secret (32 random bytes, base64url
//! without padding, 43 characters) is shown once and only its SHA-256 is
//! stored. The `hxm_` prefix lets secret scanners and people recognise a
//! leaked token.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The text every token starts with.
pub const PREFIX: &str = "hxm_";
/// Length of the id part: 8 random bytes as lowercase hex.
pub const ID_LEN: usize = 16;
/// Length of the secret part: 32 random bytes as unpadded base64url.
pub const SECRET_LEN: usize = 43;
/// Length of a whole token: prefix, id, `_`, secret.
pub const TOKEN_LEN: usize = PREFIX.len() + ID_LEN + 1 + SECRET_LEN;

/// Namespace for the token-secret functions; see the free functions of the
/// same names in this module, which these call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenSecret;

impl TokenSecret {
    /// See [`generate`].
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> (String, String, [u8; 32]) {
        generate(rng)
    }

    /// See [`parse`].
    pub fn parse(raw: &str) -> Option<(&str, &str)> {
        parse(raw)
    }

    /// See [`hash`].
    pub fn hash(secret: &str) -> [u8; 32] {
        hash(secret)
    }

    /// See [`verify`].
    pub fn verify(secret: &str, stored: &[u8; 32]) -> bool {
        verify(secret, stored)
    }
}

/// A new token: `(id, full token to show once, hash of the secret to store)`.
///
/// `CryptoRng` is required so that a seeded, predictable generator cannot be
/// passed by mistake; callers pass `rand::rngs::OsRng`.
pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> (String, String, [u8; 32]) {
    let mut id_bytes = [0u8; ID_LEN / 2];
    rng.fill_bytes(&mut id_bytes);
    let mut secret_bytes = [0u8; 32];
    rng.fill_bytes(&mut secret_bytes);
    let id = hex::encode(id_bytes);
    let secret = URL_SAFE_NO_PAD.encode(secret_bytes);
    let stored = hash(&secret);
    let token = format!("{PREFIX}{id}_{secret}");
    (id, token, stored)
}

/// Splits a token into `(id, secret)` if it has exactly the shape
/// [`generate`] produces; no trimming, no other case, no padding.
pub fn parse(raw: &str) -> Option<(&str, &str)> {
    // Byte-length first: everything valid is ASCII, so after this check the
    // fixed offsets below fall on character boundaries or `get` says no.
    if raw.len() != TOKEN_LEN {
        return None;
    }
    let rest = raw.strip_prefix(PREFIX)?;
    let id = rest.get(..ID_LEN)?;
    let secret = rest.get(ID_LEN..)?.strip_prefix('_')?;
    let id_ok = id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    // Decoding (rather than only checking the alphabet) also refuses a last
    // character with non-zero spare bits, so each secret has one spelling.
    let secret_ok = secret.len() == SECRET_LEN
        && URL_SAFE_NO_PAD
            .decode(secret)
            .is_ok_and(|bytes| bytes.len() == 32);
    (id_ok && secret_ok).then_some((id, secret))
}

/// SHA-256 of the secret text, the value stored for a token.
///
/// A fast hash is right here, unlike for passwords: the secret is 256 random
/// bits, so a stolen hash cannot be brute-forced however cheap each guess is,
/// and slow hashing (bcrypt, argon2) would only cost every API request time.
pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether `secret` hashes to `stored`, compared in constant time so that
/// response timing does not reveal how many leading bytes matched.
pub fn verify(secret: &str, stored: &[u8; 32]) -> bool {
    hash(secret).ct_eq(stored).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn sample() -> (String, String, [u8; 32]) {
        generate(&mut StdRng::seed_from_u64(7))
    }

    #[test]
    fn generate_parse_hash_verify_round_trip() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..200 {
            let (id, token, stored) = generate(&mut rng);
            assert_eq!(token.len(), TOKEN_LEN);
            assert_eq!(id.len(), ID_LEN);
            assert!(token.starts_with("hxm_"));
            let (pid, secret) = parse(&token).expect("generated token parses");
            assert_eq!(pid, id);
            assert_eq!(secret.len(), SECRET_LEN);
            assert_eq!(hash(secret), stored);
            assert!(verify(secret, &stored));
            assert!(TokenSecret::verify(secret, &stored));
            assert_eq!(TokenSecret::parse(&token), Some((pid, secret)));
        }
    }

    #[test]
    fn generated_tokens_differ() {
        let mut rng = StdRng::seed_from_u64(2);
        let (id1, t1, h1) = generate(&mut rng);
        let (id2, t2, h2) = generate(&mut rng);
        assert_ne!(id1, id2);
        assert_ne!(t1, t2);
        assert_ne!(h1, h2);
    }

    #[test]
    fn hash_is_sha256_of_the_text() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            hex::encode(hash("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn verify_refuses_other_secrets() {
        let (_, token, stored) = sample();
        let (_, secret) = parse(&token).expect("parses");
        let mut other = secret.to_owned();
        other.replace_range(..1, if secret.starts_with('A') { "B" } else { "A" });
        assert!(!verify(&other, &stored));
        assert!(!verify("", &stored));
        assert!(!verify(secret, &[0u8; 32]));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let (id, token, _) = sample();
        let secret = &token[PREFIX.len() + ID_LEN + 1..];
        let bad = [
            String::new(),
            "hxm_".to_owned(),
            format!("hxn_{id}_{secret}"),
            format!("HXM_{id}_{secret}"),
            format!("hxm{id}_{secret}"),
            format!("{id}_{secret}"),
            format!("hxm_{}_{secret}", &id[..15]),
            format!("hxm_{}0_{secret}", &id[..14]),
            format!("hxm_{}g_{secret}", &id[..15]),
            format!(
                "hxm_{}_{secret}",
                id.to_uppercase().replace(char::is_numeric, "A")
            ),
            format!("hxm_{id}-{secret}"),
            format!("hxm_{id}__{secret}"),
            format!("hxm__{id}_{secret}"),
            format!("hxm_{id}_{}", &secret[1..]),
            format!("hxm_{id}_{secret}A"),
            format!("hxm_{id}_{secret}="),
            format!("hxm_{id}_{}+", &secret[..42]),
            format!("hxm_{id}_{}/", &secret[..42]),
            format!("hxm_{id}_{}=", &secret[..42]),
            format!("hxm_{id}_{}.", &secret[..42]),
            format!(" {token}"),
            format!("{token} "),
            format!("{token}\n"),
            format!("hxm_{id}_{}é", &secret[..41]),
            format!("hxm_{}é_{secret}", &id[..14]),
            "hxm_ünïcødé_ünïcødé".to_owned(),
            "🔑".repeat(16),
        ];
        for raw in &bad {
            assert_eq!(parse(raw), None, "{raw:?} must be refused");
        }
    }

    #[test]
    fn non_canonical_last_character_is_refused() {
        // 32 bytes leave 2 spare bits in the 43rd character; `B` sets one.
        let secret = format!("{}B", "A".repeat(42));
        assert_eq!(parse(&format!("hxm_{}_{secret}", "0".repeat(16))), None);
        let secret = format!("{}A", "A".repeat(42));
        assert!(parse(&format!("hxm_{}_{secret}", "0".repeat(16))).is_some());
    }

    #[test]
    fn every_truncation_and_extension_is_refused_without_panic() {
        let (_, token, _) = sample();
        for end in 0..token.len() {
            assert_eq!(parse(&token[..end]), None);
            assert_eq!(
                parse(&token[end..]),
                if end == 0 { parse(&token) } else { None }
            );
        }
        // Multi-byte characters at every position: no slicing panic.
        for at in 0..=token.len() {
            let mut s = token.clone();
            s.insert(at, 'é');
            assert_eq!(parse(&s), None);
            let mut s = token.clone();
            s.replace_range(at.saturating_sub(2)..at, "é");
            assert_eq!(parse(&s), None, "{s:?}");
        }
    }
}
