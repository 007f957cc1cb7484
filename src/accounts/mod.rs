//! Users and organizations.
//!
//! An organization is a repository of ours held in the state database, not
//! in the config file: it is created at runtime (by an admin, from the CLI
//! or the API), private, and serves only what is published to it, at
//! `/repos/ORG`, signed with `repository = "ORG"`. [`with_orgs`] turns the
//! rows into [`RepositoryConfig`]s beside the configured ones, so every
//! writer and reader (sync, hosted writer, gate, API) treats both alike.
//!
//! Members have a role (read, write, admin, each implying the ones below,
//! [`crate::auth::Access`]). A token acts in an organization through a
//! [`crate::auth::MEMBER`] scope, expanded from the live membership rows at
//! each authentication: removing a member takes effect on the next request.

pub mod db;
pub mod oauth;
pub mod password;

use crate::config::{Config, RepositoryConfig};

pub use db::{AccountError, Member, Org, User};

/// `config` with each organization in `orgs` as a private repository of
/// ours that serves only its own packages.
pub fn with_orgs(mut config: Config, orgs: &[Org]) -> Config {
    for org in orgs {
        add_org(&mut config, &org.name);
    }
    config
}

/// Adds organization `name` to `config`'s repositories, unless a
/// repository has that name already.
pub fn add_org(config: &mut Config, name: &str) {
    if !config.repositories.iter().any(|r| r.name == name) {
        config.repositories.push(org_repository(name));
    }
}

/// Takes organization `name` out of `config`'s repositories.
pub fn drop_org(config: &mut Config, name: &str) {
    config.repositories.retain(|r| !(r.org && r.name == name));
}

/// The repository of organization `name`: private, nothing mirrored, every
/// name its own.
pub fn org_repository(name: &str) -> RepositoryConfig {
    RepositoryConfig {
        name: name.to_owned(),
        packages: Some(Default::default()),
        deny: Vec::new(),
        private: true,
        reserved: vec!["*".to_owned()],
        org: true,
    }
}

/// Names an organization may not take: the configured repositories' and
/// the upstream's.
pub fn taken_names(config: &Config) -> Vec<String> {
    config
        .repositories
        .iter()
        .filter(|r| !r.org)
        .map(|r| r.name.clone())
        .chain(std::iter::once(config.upstream.repository.clone()))
        .collect()
}

/// The configuration with the organizations of its data directory, read
/// without creating or migrating the database (blocking).
pub fn load_with_orgs(config: Config) -> Result<Config, AccountError> {
    let orgs = match crate::store::Db::open_read_only(&config.data_dir)? {
        None => Vec::new(),
        Some(db) => db.call_blocking(|c| {
            // A database from before organizations has no table yet.
            let exists: bool = c.query_row(
                "SELECT count(*) > 0 FROM sqlite_master WHERE name = 'orgs'",
                [],
                |r| r.get(0),
            )?;
            if exists { db::orgs(c) } else { Ok(Vec::new()) }
        })?,
    };
    Ok(with_orgs(config, &orgs))
}
