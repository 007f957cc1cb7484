//! Test-only helpers for the property tests that feed every parser of
//! outside input arbitrary and mutated bytes: each must return a value or a
//! typed error, never panic, and never accept what it should not. The tests
//! themselves sit beside each parser and are named `fuzz_*`, so
//! `bench/fuzz.sh` can run them all for longer with `PROPTEST_CASES`.

use proptest::prelude::*;

/// One change to a valid input.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// XOR one byte with a non-zero value.
    Flip(usize, u8),
    /// Cut the input at this offset.
    Truncate(usize),
    /// Insert a byte.
    Insert(usize, u8),
    /// Remove a byte.
    Delete(usize),
}

/// One to eight mutations.
pub fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let one = prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(at, x)| Mutation::Flip(at, x)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Insert(at, b)),
        any::<usize>().prop_map(Mutation::Delete),
    ];
    proptest::collection::vec(one, 1..8)
}

/// `input` with `mutations` applied (offsets wrap around its length).
pub fn apply(input: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut out = input.to_vec();
    for m in mutations {
        let len = out.len();
        match *m {
            Mutation::Flip(at, x) if len > 0 => out[at % len] ^= x,
            Mutation::Truncate(at) => out.truncate(at % (len + 1)),
            Mutation::Insert(at, b) => out.insert(at % (len + 1), b),
            Mutation::Delete(at) if len > 0 => {
                out.remove(at % len);
            }
            _ => {}
        }
    }
    out
}

/// Arbitrary bytes, up to `max` long.
pub fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

/// How many cases each property runs: `PROPTEST_CASES` when set (the long
/// run of `bench/fuzz.sh`), else a short run for every test pass.
pub fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    ProptestConfig {
        cases,
        // Failures are reported with their input; no files are written.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}
