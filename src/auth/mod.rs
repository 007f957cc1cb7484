//! PURE. API tokens: secrets, hashes, scopes, rate limiting.
//!
//! - [`token`]: `hxm_{id}_{secret}` tokens; the id finds the stored row, the
//!   secret is checked against its SHA-256 in constant time.
//! - [`scope`]: what a token may do (repository, package pattern, access,
//!   version limit), the checks the API makes, and Hex `permissions`.
//! - [`ratelimit`]: blocks clients after repeated failed authentication.
//!
//! No I/O here: time comes in as Unix seconds, randomness as an RNG argument,
//! and clients as any hashable key, so every rule is testable in isolation.

pub mod ratelimit;
pub mod scope;
pub mod token;

pub use ratelimit::FailureLimiter;
pub use scope::{
    Access, HexPermission, Scope, ScopeError, admin_scopes, allows, covers, is_version_limited,
    may_read_release, permissions_from_scopes, scopes_from_permissions, within,
};
pub use token::TokenSecret;
