//! hexmirror: a verified mirror of a Hex package repository.
//!
//! Layout (see ARCHITECTURE.md for the data flow and invariants):
//! - [`config`]: the TOML configuration, parsed once into validated values.
//! - [`registry`]: PURE. Hex registry v2 protobuf, the `Signed` envelope, RSA
//!   signatures and the repository-origin check.
//! - [`tarball`]: PURE. Package tarballs: structure, checksums, `metadata.config`
//!   terms, size limits and unsafe paths.
//! - [`upstream`]: the HTTP client for the upstream repository: conditional GETs,
//!   retries with backoff, bounded concurrency.
//! - [`store`]: the data directory: content-addressed blobs, the served tree
//!   (atomic writes), and the SQLite state database.
//! - [`sync`]: plans and runs a mirror sync from upstream into the store.
//! - [`server`]: the read-only HTTP server over the served tree.
//! - [`cli`]: the command line, the only place that uses `anyhow`.

pub mod cli;
pub mod config;
pub mod registry;
pub mod server;
pub mod store;
pub mod sync;
pub mod tarball;
pub mod upstream;
