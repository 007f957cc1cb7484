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
//! - [`plan`]: PURE. What a sync fetches, keeps and removes, from the index and the state.
//! - [`sync`]: runs a mirror sync, publishing one new generation.
//! - [`hosted`]: private packages published through the API: state, records, the writer.
//! - [`accounts`]: users, organizations (repositories held in the database) and members.
//! - [`index`]: PURE. Builds the curated, re-signed files of our own repositories.
//! - [`repo_files`]: signs and stores a repository of ours (`repos/NAME/`), for
//!   the sync and for the hosted writer's organization rename.
//! - [`keyfiles`]: key files on disk (mode 0600, never overwritten).
//! - [`server`]: the read-only HTTP server over the served tree.
//! - [`manifest`]: PURE. The Ed25519-signed snapshot manifest of a generation.
//! - [`version`]: PURE. Hex versions and requirements (Elixir semantics).
//! - [`verify`]: checks a served tree, local or remote, against its manifest.
//! - [`proxy`]: the pull-through cache of `serve`: fetch, verify, store on request.
//! - [`import`]: the import folder of `serve`: dropped package tarballs are published.
//! - [`notify`]: readiness notifications for systemd (`Type=notify`).
//! - [`clock`]: wall-clock time as Unix seconds.
//! - [`api`]: the Hex-compatible write API (publish, retire, keys, owners).
//! - [`auth`]: PURE. API tokens: secrets, hashes, scopes, rate limiting.
//! - [`bundle`]: PURE. The signed, chained air-gap bundle manifest.
//! - [`ui`]: the web UI: server-rendered pages over the read API.
//! - [`cli`]: the command line, the only place that uses `anyhow`.

pub mod accounts;
pub mod airgap;
pub mod api;
pub mod auth;
pub mod bundle;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod fault;
#[cfg(test)]
mod fuzz;
pub mod heap;
pub mod hosted;
pub mod import;
pub mod index;
pub mod keyfiles;
pub mod manifest;
pub mod notify;
pub mod parallel;
pub mod plan;
pub mod proxy;
#[cfg(test)]
mod purity;
pub mod registry;
pub mod repo_files;
pub mod server;
pub mod store;
pub mod sync;
pub mod tarball;
pub mod ui;
pub mod upstream;
pub mod verify;
pub mod version;
