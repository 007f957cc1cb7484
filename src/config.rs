//! The configuration file: TOML, parsed once into validated values.
//!
//! Relative paths in a config file are resolved against the file's own
//! directory, so a config works the same from any working directory. Without
//! a config file, the embedded default applies: hex.pm, `./hexmirror-data`,
//! `127.0.0.1:4000`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::registry::{PackageName, PublicKey};

mod storage;
pub use storage::{LeaseMode, S3Config, StorageConfig, StorageRole};

/// hex.pm's repository CDN, the default upstream.
pub const HEXPM_URL: &str = "https://repo.hex.pm";

/// Why a configuration was refused. Each message names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key or a wrong type.
    #[error("config file {path}{location}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// `, line L, column C` when known.
        location: String,
        /// The parser's message, on one line.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("config file {path}: `{key}`: {message}")]
    Invalid {
        /// The config file (or `<embedded default>`).
        path: PathBuf,
        /// The offending key, e.g. `upstream.public_key`.
        key: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    mirror: RawMirror,
    #[serde(default)]
    signing: RawSigning,
    #[serde(default)]
    repository: Vec<RawRepository>,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    proxy: RawProxy,
    import: Option<RawImport>,
    #[serde(default)]
    schedule: RawSchedule,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    storage: storage::RawStorage,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    max_connections: Option<usize>,
    header_timeout_secs: Option<u64>,
    workers: Option<usize>,
    count_downloads: Option<bool>,
    cache_mb: Option<u64>,
    ui: Option<bool>,
    ui_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    sync: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImport {
    dir: Option<PathBuf>,
    bundle_keys: Option<Vec<PathBuf>>,
    repository: Option<String>,
    settle_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    enabled: Option<bool>,
    record_ttl_secs: Option<u64>,
    negative_ttl_secs: Option<u64>,
    prefetch: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    revert_window_secs: Option<u64>,
    default_repository: Option<String>,
    max_tarball_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSigning {
    key: Option<PathBuf>,
    manifest_key: Option<PathBuf>,
    manifest_expiry_days: Option<u64>,
    generation_grace_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRepository {
    name: Option<String>,
    packages: Option<Vec<String>>,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    private: bool,
    #[serde(default)]
    reserved: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    url: Option<String>,
    public_key: Option<PathBuf>,
    repository: Option<String>,
    timeout_secs: Option<u64>,
    retries: Option<u32>,
    header_timeout_secs: Option<u64>,
    min_bytes_per_sec: Option<u64>,
    rate_window_secs: Option<u64>,
    redirect_hosts: Option<Vec<String>>,
    max_registry_mb: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMirror {
    packages: Option<Vec<String>>,
    concurrency: Option<usize>,
    skip: Option<Vec<String>>,
    rollback_max_backwards: Option<usize>,
    rollback_max_vanished_percent: Option<u32>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the config came from, for messages (`None`: embedded default).
    pub source: Option<PathBuf>,
    /// The data directory: state database, blobs and the served tree.
    pub data_dir: PathBuf,
    /// Address `serve` listens on.
    pub listen: SocketAddr,
    /// The repository being mirrored.
    pub upstream: UpstreamConfig,
    /// What to mirror and how hard to pull.
    pub mirror: MirrorConfig,
    /// Keys and the lifetime of what is signed with them.
    pub signing: SigningConfig,
    /// The write API.
    pub api: ApiConfig,
    /// The pull-through cache.
    pub proxy: ProxyConfig,
    /// The import folder of `serve` (`[import]`), if configured.
    pub import: Option<ImportConfig>,
    /// The air-gap exporters' public keys (`[import] bundle_keys`): a
    /// bundle signed by none of them is refused.
    pub bundle_keys: Vec<crate::manifest::ManifestPublicKey>,
    /// When `serve` runs a sync: a six-field cron expression (seconds first).
    pub sync_schedule: Option<cron::Schedule>,
    /// Log format.
    pub log_format: LogFormat,
    /// Repositories of our own, re-signed with our key.
    pub repositories: Vec<RepositoryConfig>,
    /// Connection limits of `serve`.
    pub server: ServerConfig,
    /// Where the served tree lives (`[storage]`).
    pub storage: StorageConfig,
}

/// Connection limits of `serve` (`[server]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// How long a connection may take to send a complete request header,
    /// counted from when it opens or from the end of the previous response:
    /// it ends slow or silent clients and idle keep-alive connections. No
    /// limit applies to a request's body (uploads reach 16 MiB) or response.
    pub header_timeout: Duration,
    /// Connection worker threads; 0: one per core the process may run on.
    pub workers: usize,
    /// Count tarball downloads (in memory, written to the catalog in batches).
    pub count_downloads: bool,
    /// Bytes of small files kept in memory per served generation (0: none).
    pub cache_bytes: u64,
    /// Where the web UI is served (`/ui` by default); `None`: no UI.
    pub ui_prefix: Option<String>,
}

impl ServerConfig {
    /// The connection workers to start: `workers`, or with 0 one per core
    /// this process may run on.
    pub fn workers_or_cores(&self) -> usize {
        match self.workers {
            0 => crate::parallel::cores(),
            n => n,
        }
    }
}

/// The served tree's top-level names: every file path starts with one of
/// them. `serve` answers them without its router, and no UI prefix may
/// take one.
pub const TREE_TOP: &[&str] = &[
    "names",
    "versions",
    "packages",
    "tarballs",
    "repos",
    "public_key",
    "installs",
    "docs",
    crate::manifest::MANIFEST_FILE,
    crate::manifest::MANIFEST_DELTA_FILE,
];

/// Top-level names the daemon answers beside the tree's own: a UI prefix
/// may take none of them either.
const DAEMON_PREFIXES: &[&str] = &["api", "health", "metrics", "v1"];

/// Checks `[server] ui_prefix`: one path segment (`/ui`), lower-case
/// letters, digits, `-` and `_`, and not a name the Hex tree uses.
pub(crate) fn ui_prefix(raw: &str) -> Result<String, String> {
    let segment = raw.trim_end_matches('/');
    let Some(segment) = segment.strip_prefix('/') else {
        return Err(format!("{raw:?} must start with /, as in \"/ui\""));
    };
    if segment.is_empty()
        || !segment
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "{raw:?} must be one path segment of lower-case letters, digits, - and _"
        ));
    }
    if DAEMON_PREFIXES.contains(&segment) || TREE_TOP.contains(&segment) {
        return Err(format!(
            "{raw:?} collides with /{segment} of the Hex tree or the daemon; pick another, such as /ui"
        ));
    }
    Ok(format!("/{segment}"))
}

/// Keys and signing policy.
#[derive(Debug, Clone)]
pub struct SigningConfig {
    /// The RSA key that signs our repositories (`hexmirror keygen`), read
    /// and parsed once, when the configuration is loaded.
    pub key: Option<crate::registry::SigningKey>,
    /// PEM file of the Ed25519 manifest key; created on first use if absent.
    pub manifest_key: PathBuf,
    /// How long a signed manifest is valid.
    pub manifest_expiry: Duration,
    /// How long a replaced generation stays on disk for readers still on it.
    pub generation_grace: Duration,
}

/// A repository of our own: the mirrored packages, curated, re-signed.
#[derive(Debug, Clone)]
pub struct RepositoryConfig {
    /// Name in every payload; clients configure the same name.
    pub name: String,
    /// `None`: every mirrored package; otherwise these plus their closure.
    pub packages: Option<BTreeSet<String>>,
    /// Releases kept out of this repository.
    pub deny: Vec<crate::index::DenyRule>,
    /// Every read (index, tarballs, docs, API) needs a token with read scope.
    pub private: bool,
    /// Names (or `prefix*` patterns) reserved for packages published here:
    /// the upstream package of such a name is never served in this
    /// repository, and publishing any other upstream name is refused.
    pub reserved: Vec<String>,
    /// An organization (held in the state database, see `accounts`), not a
    /// `[[repository]]` of the config file.
    pub org: bool,
}

impl RepositoryConfig {
    /// Whether `name` is reserved for private packages in this repository.
    pub fn reserves(&self, name: &str) -> bool {
        self.reserved.iter().any(|r| match r.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => r == name,
        })
    }
}

/// The write API (`/api`) for packages published to our repositories.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// How long after publishing a release may be replaced or reverted.
    pub revert_window: Duration,
    /// The repository `POST /api/publish` and `/api/packages/...` (paths
    /// without `/repos/NAME`) publish to; `None` when it is ambiguous.
    pub default_repository: Option<String>,
    /// Largest accepted package tarball (and docs tarball), in bytes.
    pub max_tarball_bytes: u64,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

/// The import folder of `serve` (see [`crate::import`]): package tarballs
/// dropped into `dir` are published into `repository`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportConfig {
    /// The watched directory; `processing/`, `done/` and `failed/` are made in it.
    pub dir: PathBuf,
    /// The [[repository]] imported tarballs are published into.
    pub repository: String,
    /// How long a file's size and times must stay unchanged before it is
    /// taken (so a file still being copied is not).
    pub settle: Duration,
}

/// The pull-through cache of `serve`: files not mirrored yet are fetched
/// from the upstream on request, verified like a sync, stored and served.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// On for the embedded default; off unless set in a config file.
    pub enabled: bool,
    /// How long a fetched `/names`, `/versions` or package record is served
    /// before the upstream is asked again (conditionally).
    pub record_ttl: Duration,
    /// How long an upstream 404 is remembered.
    pub negative_ttl: Duration,
    /// Fetch the records of a fetched package's dependencies in the background.
    pub prefetch: bool,
}

/// The upstream repository.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Base URL, without a trailing slash.
    pub url: String,
    /// Key that must have signed every registry file.
    pub public_key: PublicKey,
    /// Repository name every payload must carry (origin check).
    pub repository: String,
    /// Limit for one whole request, body included.
    pub timeout: Duration,
    /// Retries after the first attempt on connection errors, 5xx and 429.
    pub retries: u32,
    /// How slow it may be before a request is given up (and retried).
    pub pacing: Pacing,
    /// Largest registry file accepted once gunzipped, in bytes.
    pub max_registry_bytes: u64,
}

/// How slow or roundabout an upstream may be before a request is given up
/// and retried: a liar that trickles must not hold a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pacing {
    /// Time allowed from sending a request to its response headers.
    pub header_timeout: Duration,
    /// Slowest body accepted, in bytes per second over `rate_window`.
    pub min_bytes_per_sec: u64,
    /// The window the transfer rate is measured over.
    pub rate_window: Duration,
    /// Hosts besides the upstream's own that a redirect may lead to.
    pub redirect_hosts: Vec<String>,
}

impl Default for Pacing {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(30),
            min_bytes_per_sec: 1024,
            rate_window: Duration::from_secs(30),
            redirect_hosts: Vec::new(),
        }
    }
}

/// What to mirror.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// `None`: every package upstream; otherwise these plus their dependencies.
    pub packages: Option<BTreeSet<PackageName>>,
    /// Upstream requests in flight at once.
    pub concurrency: usize,
    /// Packages never fetched nor counted as failures (known to be broken
    /// upstream); a skipped package leaves the mirror.
    pub skip: BTreeSet<PackageName>,
    /// How far the upstream index may go back in one sync.
    pub rollback: crate::plan::RollbackLimits,
    /// Accept an index beyond those limits (`hexmirror sync --accept-rollback`;
    /// never read from the file).
    pub accept_rollback: bool,
}

impl Config {
    /// Loads `path`, or the embedded default when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            None => Self::from_raw(RawConfig::default(), None),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Self::parse(&text, path)
            }
        }
    }

    /// Parses config text that was read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let location = e
                .span()
                .map(|span| {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!(", line {line}, column {column}")
                })
                .unwrap_or_default();
            ConfigError::Parse {
                path: path.to_owned(),
                location,
                message: e.message().replace('\n', " ").trim().to_owned(),
            }
        })?;
        Self::from_raw(raw, Some(path))
    }

    fn from_raw(raw: RawConfig, source: Option<&Path>) -> Result<Self, ConfigError> {
        let shown = source
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("<embedded default>"));
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: shown.clone(),
            key,
            message,
        };
        let base = source
            .and_then(Path::parent)
            .map(Path::to_owned)
            .unwrap_or_default();
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };

        let data_dir = resolve(raw.data_dir.unwrap_or_else(|| "hexmirror-data".into()));
        let listen_text = raw.listen.unwrap_or_else(|| "127.0.0.1:4000".into());
        let listen = listen_text.parse().map_err(|_| {
            invalid(
                "listen",
                format!("{listen_text:?} is not an address like \"127.0.0.1:4000\""),
            )
        })?;

        let url = raw.upstream.url.unwrap_or_else(|| HEXPM_URL.into());
        let url = url.trim_end_matches('/').to_owned();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(invalid(
                "upstream.url",
                format!("{url:?} must start with http:// or https://"),
            ));
        }
        let public_key = match raw.upstream.public_key {
            None => PublicKey::hexpm(),
            Some(p) => {
                let p = resolve(p);
                let pem = std::fs::read_to_string(&p).map_err(|e| {
                    invalid(
                        "upstream.public_key",
                        format!("cannot read key file {}: {e}", p.display()),
                    )
                })?;
                PublicKey::from_pem(&pem)
                    .map_err(|e| invalid("upstream.public_key", format!("{}: {e}", p.display())))?
            }
        };
        let repository = raw.upstream.repository.unwrap_or_else(|| "hexpm".into());
        if repository.is_empty()
            || !repository
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        {
            return Err(invalid(
                "upstream.repository",
                format!("{repository:?} is not a repository name (letters, digits, `_`, `-`)"),
            ));
        }
        let timeout_secs = raw.upstream.timeout_secs.unwrap_or(120);
        if timeout_secs == 0 {
            return Err(invalid(
                "upstream.timeout_secs",
                "must be at least 1".into(),
            ));
        }

        let defaults = Pacing::default();
        let header_timeout_secs = raw
            .upstream
            .header_timeout_secs
            .unwrap_or(defaults.header_timeout.as_secs());
        if !(1..=3600).contains(&header_timeout_secs) {
            return Err(invalid(
                "upstream.header_timeout_secs",
                format!("{header_timeout_secs} is outside 1..=3600 (seconds)"),
            ));
        }
        let rate_window_secs = raw
            .upstream
            .rate_window_secs
            .unwrap_or(defaults.rate_window.as_secs());
        if !(1..=3600).contains(&rate_window_secs) {
            return Err(invalid(
                "upstream.rate_window_secs",
                format!("{rate_window_secs} is outside 1..=3600 (seconds)"),
            ));
        }
        let max_registry_mb = raw
            .upstream
            .max_registry_mb
            .unwrap_or(crate::registry::MAX_DECODED_SIZE >> 20);
        if !(1..=4096).contains(&max_registry_mb) {
            return Err(invalid(
                "upstream.max_registry_mb",
                format!("{max_registry_mb} is outside 1..=4096 (MiB)"),
            ));
        }
        let pacing = Pacing {
            header_timeout: Duration::from_secs(header_timeout_secs),
            min_bytes_per_sec: raw
                .upstream
                .min_bytes_per_sec
                .unwrap_or(defaults.min_bytes_per_sec),
            rate_window: Duration::from_secs(rate_window_secs),
            redirect_hosts: raw.upstream.redirect_hosts.unwrap_or_default(),
        };

        let packages = match raw.mirror.packages {
            None => None,
            Some(list) => {
                let mut set = BTreeSet::new();
                for name in list {
                    set.insert(
                        PackageName::parse(&name)
                            .map_err(|e| invalid("mirror.packages", e.to_string()))?,
                    );
                }
                Some(set)
            }
        };
        let mut skip = BTreeSet::new();
        for name in raw.mirror.skip.unwrap_or_default() {
            skip.insert(
                PackageName::parse(&name).map_err(|e| invalid("mirror.skip", e.to_string()))?,
            );
        }
        let limits = crate::plan::RollbackLimits::default();
        let rollback = crate::plan::RollbackLimits {
            max_backwards: raw
                .mirror
                .rollback_max_backwards
                .unwrap_or(limits.max_backwards),
            max_vanished_percent: raw
                .mirror
                .rollback_max_vanished_percent
                .unwrap_or(limits.max_vanished_percent),
        };
        if rollback.max_vanished_percent > 100 {
            return Err(invalid(
                "mirror.rollback_max_vanished_percent",
                format!("{} is over 100", rollback.max_vanished_percent),
            ));
        }
        let max_connections = raw.server.max_connections.unwrap_or(16_384);
        if !(1..=1_000_000).contains(&max_connections) {
            return Err(invalid(
                "server.max_connections",
                format!("{max_connections} is outside 1..=1000000"),
            ));
        }
        let header_timeout_secs = raw.server.header_timeout_secs.unwrap_or(30);
        if !(1..=3600).contains(&header_timeout_secs) {
            return Err(invalid(
                "server.header_timeout_secs",
                format!("{header_timeout_secs} is outside 1..=3600 (seconds)"),
            ));
        }
        let workers = raw.server.workers.unwrap_or(0);
        if workers > 1024 {
            return Err(invalid(
                "server.workers",
                format!("{workers} is above 1024; 0 (the default) starts one per core"),
            ));
        }
        let cache_mb = raw.server.cache_mb.unwrap_or(256);
        if cache_mb > 1 << 20 {
            return Err(invalid(
                "server.cache_mb",
                format!("{cache_mb} is above 1048576 (MiB); 0 turns the cache off"),
            ));
        }
        let server = ServerConfig {
            max_connections,
            cache_bytes: cache_mb << 20,
            header_timeout: Duration::from_secs(header_timeout_secs),
            workers,
            count_downloads: raw.server.count_downloads.unwrap_or(true),
            ui_prefix: match raw.server.ui {
                Some(false) => None,
                _ => Some(
                    ui_prefix(raw.server.ui_prefix.as_deref().unwrap_or("/ui"))
                        .map_err(|why| invalid("server.ui_prefix", why))?,
                ),
            },
        };
        let concurrency = raw.mirror.concurrency.unwrap_or(8);
        if !(1..=256).contains(&concurrency) {
            return Err(invalid(
                "mirror.concurrency",
                format!("{concurrency} is outside 1..=256"),
            ));
        }

        let key = match raw.signing.key.map(resolve) {
            None => None,
            Some(path) => {
                let pem = std::fs::read_to_string(&path).map_err(|e| {
                    invalid(
                        "signing.key",
                        format!("cannot read key file {}: {e}", path.display()),
                    )
                })?;
                Some(
                    crate::registry::SigningKey::from_pem(&pem)
                        .map_err(|e| invalid("signing.key", format!("{}: {e}", path.display())))?,
                )
            }
        };
        let signing = SigningConfig {
            key,
            manifest_key: resolve(
                raw.signing
                    .manifest_key
                    .unwrap_or_else(|| data_dir.join("keys").join("manifest.pem")),
            ),
            manifest_expiry: Duration::from_secs(
                raw.signing.manifest_expiry_days.unwrap_or(7).max(1) * 86_400,
            ),
            generation_grace: Duration::from_secs(
                raw.signing.generation_grace_secs.unwrap_or(3600),
            ),
        };
        let mut repositories: Vec<RepositoryConfig> = Vec::new();
        for raw_repo in raw.repository {
            let name = raw_repo.name.unwrap_or_else(|| "hexpm".into());
            if PackageName::parse(&name).is_err() {
                return Err(invalid(
                    "repository.name",
                    format!("{name:?} is not a repository name (lowercase letters, digits, `_`)"),
                ));
            }
            if repositories.iter().any(|r| r.name == name) {
                return Err(invalid(
                    "repository.name",
                    format!("{name:?} is configured twice"),
                ));
            }
            let packages = match raw_repo.packages {
                None => None,
                Some(list) => {
                    let mut set = BTreeSet::new();
                    for p in list {
                        PackageName::parse(&p)
                            .map_err(|e| invalid("repository.packages", e.to_string()))?;
                        set.insert(p);
                    }
                    Some(set)
                }
            };
            let deny = raw_repo
                .deny
                .iter()
                .map(|d| crate::index::DenyRule::parse(d))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid("repository.deny", e.to_string()))?;
            for r in &raw_repo.reserved {
                let stem = r.strip_suffix('*').unwrap_or(r);
                if stem.is_empty() && r != "*"
                    || (!stem.is_empty() && PackageName::parse(stem).is_err())
                {
                    return Err(invalid(
                        "repository.reserved",
                        format!("{r:?} is neither a package name nor a `prefix*` pattern"),
                    ));
                }
            }
            repositories.push(RepositoryConfig {
                name,
                packages,
                deny,
                private: raw_repo.private,
                reserved: raw_repo.reserved,
                org: false,
            });
        }
        let storage = storage::parse(raw.storage, &invalid, &resolve)?;
        // A read-only node names our public repositories (to serve them) but
        // never signs: it needs no key.
        let reader = matches!(&storage, StorageConfig::S3(s3) if s3.role == StorageRole::Reader);
        if !repositories.is_empty() && signing.key.is_none() && !reader {
            return Err(invalid(
                "signing.key",
                "a [[repository]] is configured, so hexmirror needs its RSA signing key: \
                 run `hexmirror keygen --out DIR` and set signing.key"
                    .into(),
            ));
        }

        let default_repository = match raw.api.default_repository {
            Some(name) => {
                if !repositories.iter().any(|r| r.name == name) {
                    return Err(invalid(
                        "api.default_repository",
                        format!("{name:?} is not the name of a configured [[repository]]"),
                    ));
                }
                Some(name)
            }
            None if repositories.len() == 1 => Some(repositories[0].name.clone()),
            None => None,
        };
        let api = ApiConfig {
            revert_window: Duration::from_secs(raw.api.revert_window_secs.unwrap_or(3600)),
            default_repository,
            max_tarball_bytes: raw.api.max_tarball_bytes.unwrap_or(16 * 1024 * 1024),
        };
        let proxy = ProxyConfig {
            // The embedded default is a caching proxy for hex.pm; a config
            // file opts in, so a syncing mirror never starts proxying.
            enabled: raw.proxy.enabled.unwrap_or(source.is_none()),
            record_ttl: Duration::from_secs(raw.proxy.record_ttl_secs.unwrap_or(300)),
            negative_ttl: Duration::from_secs(raw.proxy.negative_ttl_secs.unwrap_or(60)),
            prefetch: raw.proxy.prefetch.unwrap_or(false),
        };
        let sync_schedule = match raw.schedule.sync {
            None => None,
            Some(expr) => Some(expr.parse::<cron::Schedule>().map_err(|e| {
                invalid(
                    "schedule.sync",
                    format!(
                        "{expr:?} is not a cron expression ({e}); six fields, seconds first: \
                         \"0 */15 * * * *\" is every 15 minutes"
                    ),
                )
            })?),
        };
        let mut bundle_keys = Vec::new();
        let import = match raw.import {
            None => None,
            Some(raw_import) => {
                for path in raw_import
                    .bundle_keys
                    .clone()
                    .into_iter()
                    .flatten()
                    .map(resolve)
                {
                    let key = std::fs::read_to_string(&path)
                        .map_err(|e| e.to_string())
                        .and_then(|pem| {
                            crate::manifest::ManifestPublicKey::from_pem(&pem)
                                .map_err(|e| e.to_string())
                        })
                        .map_err(|e| {
                            invalid(
                                "import.bundle_keys",
                                format!(
                                    "{}: {e} (the exporter's bundle.pub.pem from `hexmirror keygen --bundle`)",
                                    path.display()
                                ),
                            )
                        })?;
                    bundle_keys.push(key);
                }
                let folder_keys = raw_import.repository.is_some() || raw_import.settle_ms.is_some();
                if raw_import.dir.is_none() && !bundle_keys.is_empty() && !folder_keys {
                    None
                } else {
                    let dir = raw_import.dir.map(resolve).ok_or_else(|| {
                        invalid(
                            "import.dir",
                            "missing: the directory to watch for package tarballs (or give only \
                         bundle_keys, to import air-gap bundles with `hexmirror bundle import`)"
                                .into(),
                        )
                    })?;
                    let repository = match raw_import.repository {
                    Some(name) => name,
                    None => api.default_repository.clone().ok_or_else(|| {
                        invalid(
                            "import.repository",
                            if repositories.is_empty() {
                                "imported packages are published into a [[repository]] of                                  ours, and none is configured"
                                    .into()
                            } else {
                                "several [[repository]] tables and no api.default_repository:                                  name the one imported packages are published into"
                                    .into()
                            },
                        )
                    })?,
                };
                    if !repositories.iter().any(|r| r.name == repository) {
                        return Err(invalid(
                            "import.repository",
                            format!(
                                "{repository:?} is not the name of a configured [[repository]]"
                            ),
                        ));
                    }
                    let settle_ms = raw_import.settle_ms.unwrap_or(2000);
                    if !(100..=3_600_000).contains(&settle_ms) {
                        return Err(invalid(
                            "import.settle_ms",
                            format!("{settle_ms} is outside 100..=3600000 (milliseconds)"),
                        ));
                    }
                    Some(ImportConfig {
                        dir,
                        repository,
                        settle: Duration::from_millis(settle_ms),
                    })
                }
            }
        };
        let log_format = match raw.log.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(invalid(
                    "log.format",
                    format!("{other:?}: use \"text\" or \"json\""),
                ));
            }
        };
        Ok(Self {
            storage,
            signing,
            api,
            proxy,
            sync_schedule,
            log_format,
            import,
            bundle_keys,
            repositories,
            server,
            source: source.map(Path::to_owned),
            data_dir,
            listen,
            upstream: UpstreamConfig {
                url,
                public_key,
                repository,
                timeout: Duration::from_secs(timeout_secs),
                retries: raw.upstream.retries.unwrap_or(4),
                pacing,
                max_registry_bytes: max_registry_mb << 20,
            },
            mirror: MirrorConfig {
                packages,
                concurrency,
                skip,
                rollback,
                accept_rollback: false,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/hexmirror/test.toml"))
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzz::config())]

        #[test]
        fn fuzz_config(m in crate::fuzz::mutations()) {
            let valid = b"data_dir = \"data\"\nlisten = \"127.0.0.1:4000\"\n[upstream]\nurl = \"http://x\"\ntimeout_secs = 5\n[mirror]\npackages = [\"a\"]\nskip = [\"b\"]\n[server]\nmax_connections = 10\n";
            let text = String::from_utf8_lossy(&crate::fuzz::apply(valid, &m)).into_owned();
            let _ = parse(&text);
        }
    }

    #[test]
    fn embedded_default() {
        let c = Config::load(None).unwrap();
        assert_eq!(c.upstream.url, HEXPM_URL);
        assert_eq!(c.upstream.repository, "hexpm");
        assert_eq!(c.listen.to_string(), "127.0.0.1:4000");
        assert_eq!(c.data_dir, PathBuf::from("hexmirror-data"));
        assert!(c.mirror.packages.is_none());
    }

    #[test]
    fn shipped_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/hexmirror.toml");
        let c = Config::load(Some(&path)).unwrap();
        assert_eq!(c.upstream.repository, "hexpm");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = parse("data_dir = \"/x\"\n[mirror]\npackage = [\"a\"]\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/etc/hexmirror/test.toml, line 3"), "{msg}");
        assert!(msg.contains("unknown field `package`"), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }

    #[test]
    fn relative_paths_resolve_against_the_config_file() {
        let c = parse("data_dir = \"data\"").unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/etc/hexmirror/data"));
    }

    #[test]
    fn bad_values_are_refused_with_the_key() {
        for (text, key) in [
            ("listen = \"nope\"", "`listen`"),
            ("[upstream]\nurl = \"ftp://x\"", "`upstream.url`"),
            (
                "[upstream]\npublic_key = \"/nonexistent.pem\"",
                "`upstream.public_key`",
            ),
            ("[upstream]\nrepository = \"a/b\"", "`upstream.repository`"),
            ("[mirror]\npackages = [\"Bad\"]", "`mirror.packages`"),
            ("[mirror]\nconcurrency = 0", "`mirror.concurrency`"),
            ("[server]\nmax_connections = 0", "`server.max_connections`"),
            ("[server]\nworkers = 5000", "`server.workers`"),
            (
                "[upstream]\nmax_registry_mb = 0",
                "`upstream.max_registry_mb`",
            ),
            (
                "[server]\nheader_timeout_secs = 0",
                "`server.header_timeout_secs`",
            ),
            ("[server]\nui_prefix = \"/api\"", "`server.ui_prefix`"),
            ("[server]\nui_prefix = \"ui\"", "`server.ui_prefix`"),
            ("[server]\nui_prefix = \"/a/b\"", "`server.ui_prefix`"),
            ("[server]\nui_prefix = \"/<x>\"", "`server.ui_prefix`"),
        ] {
            let msg = parse(text).unwrap_err().to_string();
            assert!(msg.contains(key), "{text}: {msg}");
        }
    }

    #[test]
    fn the_ui_is_on_at_ui_unless_turned_off() {
        assert_eq!(parse("").unwrap().server.ui_prefix.as_deref(), Some("/ui"));
        let c = parse("[server]\nui_prefix = \"/registry/\"").unwrap();
        assert_eq!(c.server.ui_prefix.as_deref(), Some("/registry"));
        assert_eq!(
            parse("[server]\nui = false").unwrap().server.ui_prefix,
            None
        );
    }

    #[test]
    fn trailing_slash_is_trimmed() {
        let c = parse("[upstream]\nurl = \"http://127.0.0.1:9/\"").unwrap();
        assert_eq!(c.upstream.url, "http://127.0.0.1:9");
    }

    /// `[signing]` with the test key and one `[[repository]]` per name.
    fn with_repos(names: &[&str], rest: &str) -> String {
        let key = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys/other.pem");
        let mut text = format!("[signing]\nkey = {:?}\n", key.display().to_string());
        for name in names {
            text.push_str(&format!("[[repository]]\nname = \"{name}\"\n"));
        }
        text.push_str(rest);
        text
    }

    #[test]
    fn import_section_defaults_and_resolution() {
        assert!(parse("").unwrap().import.is_none());
        let c = parse(&with_repos(&["acme"], "[import]\ndir = \"drop\"\n")).unwrap();
        let import = c.import.unwrap();
        assert_eq!(import.dir, PathBuf::from("/etc/hexmirror/drop"));
        assert_eq!(import.repository, "acme");
        assert_eq!(import.settle, Duration::from_secs(2));
        let c = parse(&with_repos(
            &["acme", "beta"],
            "[api]\ndefault_repository = \"beta\"\n\
             [import]\ndir = \"/srv/drop\"\nsettle_ms = 250\n",
        ))
        .unwrap();
        let import = c.import.unwrap();
        assert_eq!(import.dir, PathBuf::from("/srv/drop"));
        assert_eq!(import.repository, "beta");
        assert_eq!(import.settle, Duration::from_millis(250));
        let c = parse(&with_repos(
            &["acme", "beta"],
            "[import]\ndir = \"d\"\nrepository = \"acme\"\n",
        ))
        .unwrap();
        assert_eq!(c.import.unwrap().repository, "acme");
    }

    #[test]
    fn bundle_keys_alone_need_no_import_folder() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::manifest::ManifestKey::generate();
        std::fs::write(dir.path().join("bundle.pub.pem"), key.public().to_pem()).unwrap();
        std::fs::write(dir.path().join("bad.pem"), "not a key").unwrap();
        let at = dir.path().join("c.toml");
        let c = Config::parse("[import]\nbundle_keys = [\"bundle.pub.pem\"]\n", &at).unwrap();
        assert!(c.import.is_none(), "no folder");
        assert_eq!(c.bundle_keys, vec![key.public()]);
        for bad in ["bad.pem", "missing.pem"] {
            let text = format!("[import]\nbundle_keys = [{bad:?}]\n");
            let e = Config::parse(&text, &at).unwrap_err().to_string();
            assert!(e.contains("import.bundle_keys") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn bad_import_sections_are_refused_with_the_key() {
        for (text, key) in [
            (with_repos(&["acme"], "[import]\n"), "`import.dir`"),
            (
                with_repos(&["acme"], "[import]\ndir = \"d\"\nrepository = \"nope\"\n"),
                "`import.repository`",
            ),
            (
                with_repos(&["acme", "beta"], "[import]\ndir = \"d\"\n"),
                "`import.repository`",
            ),
            ("[import]\ndir = \"d\"\n".to_owned(), "`import.repository`"),
            (
                with_repos(&["acme"], "[import]\ndir = \"d\"\nsettle_ms = 0\n"),
                "`import.settle_ms`",
            ),
            (
                with_repos(&["acme"], "[import]\ndir = \"d\"\nsettle = 5\n"),
                "unknown field `settle`",
            ),
        ] {
            let msg = parse(&text).unwrap_err().to_string();
            assert!(msg.contains(key), "{text}: {msg}");
        }
    }
}
