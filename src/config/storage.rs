//! `[storage]`: where the served tree lives. The local data directory
//! (today's layout, the default), or an S3-compatible bucket that one writer
//! publishes into and read-only nodes serve from (see `store::bucket`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The `[storage]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    kind: Option<String>,
    role: Option<String>,
    bucket: Option<String>,
    prefix: Option<String>,
    endpoint: Option<String>,
    region: Option<String>,
    credentials_file: Option<PathBuf>,
    lease: Option<String>,
    lease_ttl_secs: Option<u64>,
    poll_ms: Option<u64>,
    manifest_public_key: Option<PathBuf>,
    // Named only to refuse them with a useful message: secrets never sit in
    // the config file, which is often world-readable and kept in git.
    access_key_id: Option<toml::Value>,
    secret_access_key: Option<toml::Value>,
}

/// Where the served tree lives.
#[derive(Debug, Clone, Default)]
pub enum StorageConfig {
    /// `DATA_DIR/generations` and `DATA_DIR/current` (the default).
    #[default]
    Local,
    /// An S3-compatible bucket.
    S3(Box<S3Config>),
}

/// What this node does with the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageRole {
    /// Builds generations in its data directory and publishes them into the
    /// bucket, holding the lease.
    Writer,
    /// Serves the generation the bucket's pointer names; writes nothing.
    Reader,
}

/// How the writer proves it is the only one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseMode {
    /// A lease object taken and renewed with conditional puts, after a probe
    /// shows the store honours them.
    Conditional,
    /// No lease: one writer by deployment only (for stores that ignore
    /// conditional puts).
    None,
}

/// `[storage] kind = "s3"`.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// The bucket's name.
    pub bucket: String,
    /// Key prefix inside the bucket (no leading or trailing `/`; may be empty).
    pub prefix: String,
    /// The S3 endpoint URL; `None`: AWS for `region`.
    pub endpoint: Option<String>,
    /// The region (signing scope).
    pub region: String,
    /// A file of `KEY=VALUE` lines (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, optionally `AWS_SESSION_TOKEN`); `None`: the
    /// same names from the environment.
    pub credentials_file: Option<PathBuf>,
    /// Writer or read-only node.
    pub role: StorageRole,
    /// The writer's lease.
    pub lease: LeaseMode,
    /// How long a lease lasts unless renewed.
    pub lease_ttl: Duration,
    /// How often a read-only node asks for the pointer (and the writer looks
    /// for a new local generation to publish).
    pub poll: Duration,
    /// The key read-only nodes verify manifests with (the writer's
    /// `manifest.pub.pem`); the writer uses its own signing key.
    pub manifest_public_key: Option<crate::manifest::ManifestPublicKey>,
}

/// Validates `[storage]`. `invalid` builds the error for a key; `resolve`
/// makes a path relative to the config file absolute.
pub(super) fn parse(
    raw: RawStorage,
    invalid: &dyn Fn(&'static str, String) -> super::ConfigError,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<StorageConfig, super::ConfigError> {
    if raw.access_key_id.is_some() || raw.secret_access_key.is_some() {
        let key = if raw.access_key_id.is_some() {
            "storage.access_key_id"
        } else {
            "storage.secret_access_key"
        };
        return Err(invalid(
            key,
            "credentials never go in the config file: set AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY in the environment, or name a file of those lines (mode 0600) \
             in storage.credentials_file"
                .into(),
        ));
    }
    match raw.kind.as_deref().unwrap_or("local") {
        "local" => {
            let set = [
                ("storage.role", raw.role.is_some()),
                ("storage.bucket", raw.bucket.is_some()),
                ("storage.prefix", raw.prefix.is_some()),
                ("storage.endpoint", raw.endpoint.is_some()),
                ("storage.region", raw.region.is_some()),
                ("storage.credentials_file", raw.credentials_file.is_some()),
                ("storage.lease", raw.lease.is_some()),
                ("storage.lease_ttl_secs", raw.lease_ttl_secs.is_some()),
                ("storage.poll_ms", raw.poll_ms.is_some()),
                (
                    "storage.manifest_public_key",
                    raw.manifest_public_key.is_some(),
                ),
            ];
            match set.iter().find(|(_, is_set)| *is_set) {
                Some((key, _)) => Err(invalid(
                    key,
                    "applies to kind = \"s3\" only; set storage.kind = \"s3\" or remove it".into(),
                )),
                None => Ok(StorageConfig::Local),
            }
        }
        "s3" => s3(raw, invalid, resolve).map(|c| StorageConfig::S3(Box::new(c))),
        other => Err(invalid(
            "storage.kind",
            format!("{other:?} is neither \"local\" nor \"s3\""),
        )),
    }
}

fn s3(
    raw: RawStorage,
    invalid: &dyn Fn(&'static str, String) -> super::ConfigError,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<S3Config, super::ConfigError> {
    let bucket = raw.bucket.ok_or_else(|| {
        invalid(
            "storage.bucket",
            "missing: the bucket the served tree lives in".into(),
        )
    })?;
    if !is_bucket_name(&bucket) {
        return Err(invalid(
            "storage.bucket",
            format!("{bucket:?} is not a bucket name (3-63 of a-z, 0-9, `.` and `-`)"),
        ));
    }
    let prefix = raw.prefix.unwrap_or_default();
    let prefix = prefix.trim_matches('/').to_owned();
    if !prefix.is_empty()
        && !prefix.split('/').all(|s| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
    {
        return Err(invalid(
            "storage.prefix",
            format!("{prefix:?} is not a key prefix (`/`-separated names of a-z, 0-9, `-_.`)"),
        ));
    }
    if let Some(endpoint) = &raw.endpoint
        && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
    {
        return Err(invalid(
            "storage.endpoint",
            format!("{endpoint:?} is not an http:// or https:// URL"),
        ));
    }
    let role = match raw.role.as_deref().unwrap_or("writer") {
        "writer" => StorageRole::Writer,
        "reader" => StorageRole::Reader,
        other => {
            return Err(invalid(
                "storage.role",
                format!("{other:?} is neither \"writer\" nor \"reader\""),
            ));
        }
    };
    let lease = match raw.lease.as_deref().unwrap_or("conditional") {
        "conditional" => LeaseMode::Conditional,
        "none" => LeaseMode::None,
        other => {
            return Err(invalid(
                "storage.lease",
                format!(
                    "{other:?} is neither \"conditional\" nor \"none\" (single writer by \
                     deployment only)"
                ),
            ));
        }
    };
    let lease_ttl_secs = raw.lease_ttl_secs.unwrap_or(60);
    if !(5..=3600).contains(&lease_ttl_secs) {
        return Err(invalid(
            "storage.lease_ttl_secs",
            format!(
                "{lease_ttl_secs} is outside 5..=3600 (seconds): the lease is renewed at a third gone and a pointer is not written with less than 2 s left"
            ),
        ));
    }
    let poll_ms = raw.poll_ms.unwrap_or(1000);
    if !(50..=600_000).contains(&poll_ms) {
        return Err(invalid(
            "storage.poll_ms",
            format!("{poll_ms} is outside 50..=600000 (milliseconds)"),
        ));
    }
    let manifest_public_key = match raw.manifest_public_key.map(resolve) {
        None => None,
        Some(path) => Some(
            std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|pem| {
                    crate::manifest::ManifestPublicKey::from_pem(&pem).map_err(|e| e.to_string())
                })
                .map_err(|e| {
                    invalid(
                        "storage.manifest_public_key",
                        format!(
                            "{}: {e} (the writer's manifest.pub.pem from `hexmirror keygen`)",
                            path.display()
                        ),
                    )
                })?,
        ),
    };
    if role == StorageRole::Reader && manifest_public_key.is_none() {
        return Err(invalid(
            "storage.manifest_public_key",
            "missing: a read-only node verifies every manifest it serves with the writer's \
             manifest.pub.pem"
                .into(),
        ));
    }
    Ok(S3Config {
        bucket,
        prefix,
        endpoint: raw.endpoint,
        region: raw.region.unwrap_or_else(|| "us-east-1".into()),
        credentials_file: raw.credentials_file.map(resolve),
        role,
        lease,
        lease_ttl: Duration::from_secs(lease_ttl_secs),
        poll: Duration::from_millis(poll_ms),
        manifest_public_key,
    })
}

/// S3's bucket naming rules, the part that matters for paths and URLs.
fn is_bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    fn load(storage: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hexmirror.toml");
        std::fs::write(&path, format!("[storage]\n{storage}\n")).unwrap();
        Config::load(Some(&path))
    }

    fn refused_key(storage: &str) -> &'static str {
        match load(storage) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{storage}: expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn the_default_is_the_local_data_directory() {
        let config = load("").unwrap();
        assert!(matches!(config.storage, super::StorageConfig::Local));
    }

    #[test]
    fn an_s3_writer_needs_only_a_bucket_and_takes_safe_defaults() {
        let config = load("kind = \"s3\"\nbucket = \"mirror\"\nprefix = \"/a/b/\"").unwrap();
        let super::StorageConfig::S3(s3) = config.storage else {
            panic!("not s3");
        };
        assert_eq!(s3.prefix, "a/b");
        assert_eq!(s3.role, super::StorageRole::Writer);
        assert_eq!(s3.lease, super::LeaseMode::Conditional);
        assert_eq!(s3.lease_ttl.as_secs(), 60);
    }

    #[test]
    fn mistakes_are_refused_by_key() {
        assert_eq!(refused_key("kind = \"s4\""), "storage.kind");
        assert_eq!(refused_key("kind = \"s3\""), "storage.bucket");
        assert_eq!(
            refused_key("kind = \"s3\"\nbucket = \"A_B\""),
            "storage.bucket"
        );
        assert_eq!(
            refused_key("kind = \"s3\"\nbucket = \"mirror\"\nprefix = \"a/../b\""),
            "storage.prefix"
        );
        assert_eq!(
            refused_key("kind = \"s3\"\nbucket = \"mirror\"\nendpoint = \"localhost:9000\""),
            "storage.endpoint"
        );
        assert_eq!(
            refused_key("kind = \"s3\"\nbucket = \"mirror\"\nrole = \"reader\""),
            "storage.manifest_public_key"
        );
        assert_eq!(
            refused_key("kind = \"s3\"\nbucket = \"mirror\"\nlease = \"maybe\""),
            "storage.lease"
        );
        assert_eq!(refused_key("bucket = \"mirror\""), "storage.bucket");
        assert_eq!(
            refused_key("kind = \"s3\"\nbucket = \"mirror\"\nsecret_access_key = \"x\""),
            "storage.secret_access_key"
        );
    }
}
