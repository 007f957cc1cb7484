//! The command line: `hexmirror sync` and `hexmirror serve`. The only place
//! that turns errors into exit codes and prints for people.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::server;
use crate::sync::{self, Progress, Summary};

/// Verified Hex repository mirror.
#[derive(Debug, Parser)]
#[command(name = "hexmirror", version, about)]
pub struct Cli {
    /// Configuration file (TOML). Without it, the embedded default: hex.pm,
    /// ./hexmirror-data, 127.0.0.1:4000.
    #[arg(long, short, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mirror the upstream into the data directory, then exit.
    Sync {
        /// Accept an upstream index that went back further than the
        /// `[mirror] rollback_*` limits allow (once, after checking why).
        #[arg(long)]
        accept_rollback: bool,
    },
    /// Serve the mirrored tree read-only over HTTP.
    Serve,
    /// Create the RSA key that signs our repositories and the Ed25519
    /// manifest key (never overwrites).
    Keygen {
        /// Directory for the key files (default: DATA_DIR/keys).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// RSA key size.
        #[arg(long, default_value_t = 4096)]
        bits: usize,
        /// Write only the Ed25519 bundle key pair an air-gap exporter signs
        /// its bundles with (`bundle.pem`, `bundle.pub.pem`).
        #[arg(long)]
        bundle: bool,
    },
    /// Check the served tree against its signed manifest: signature, expiry,
    /// rollback, then every file's hash and size.
    Verify {
        /// Verify a remote mirror at this URL instead of the local data directory.
        #[arg(long, value_name = "URL", requires = "key")]
        url: Option<String>,
        /// Manifest public key (PEM) to verify with (default: from the config).
        #[arg(long, value_name = "PEM")]
        key: Option<PathBuf>,
        /// File remembering the last accepted manifest version (rollback check).
        #[arg(long, value_name = "FILE")]
        state: Option<PathBuf>,
    },
    /// Remove generations past their grace period and blobs no generation uses.
    Gc,
    /// List the quarantined packages: what failed, since when, and how often
    /// it was tried.
    Status,
    /// Manage API tokens (stored hashed in the state database).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Users: who owns packages and belongs to organizations.
    #[command(subcommand)]
    User(UserCommand),
    /// Organizations: private repositories of ours, held in the state
    /// database, served at /repos/ORG, with members.
    #[command(subcommand)]
    Org(OrgCommand),
    /// Air-gap bundles: export on the connected side, import on the far
    /// side, verify on either.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// The catalog of every package served (search, the read API).
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Download counts of a tree served by another web server.
    #[command(subcommand)]
    Downloads(DownloadsCommand),
}

/// `hexmirror catalog ...`
#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Make the catalog again from the served tree (records and tarballs
    /// verified again); syncs keep it up to date after that.
    Rebuild,
}

/// `hexmirror downloads ...`
#[derive(Debug, Subcommand)]
pub enum DownloadsCommand {
    /// Count the tarball downloads in an nginx access log (combined
    /// format) of a tree served by nginx; each line counts once, however
    /// often the log is imported.
    Import {
        /// The access log.
        log: PathBuf,
    },
}

/// `hexmirror bundle ...`
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Write the next bundle of this exporter's chain: what the far side
    /// lacks to reproduce the current generation.
    Export {
        /// Directory to write the bundle into (created; must hold no bundle).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Everything, whatever the far side holds: the first bundle, or a
        /// re-base (the far side imports it with `--rebase`).
        #[arg(long, conflicts_with_all = ["heartbeat", "sequence"])]
        full: bool,
        /// Re-sign the current manifest first, so the bundle renews the far
        /// side's expiry even when nothing changed.
        #[arg(long, conflicts_with = "sequence")]
        heartbeat: bool,
        /// Largest volume: bytes, or with K, M, G (powers of 1024), or
        /// `fat32` (4 GiB less one byte).
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        max_volume: Option<u64>,
        /// Write bundle N of the chain again (a lost or damaged copy).
        #[arg(long, value_name = "N")]
        sequence: Option<u64>,
        /// The exporter's bundle key (default: DATA_DIR/keys/bundle.pem).
        #[arg(long, value_name = "PEM")]
        key: Option<PathBuf>,
    },
    /// Verify a bundle completely and publish the generation it reproduces.
    Import {
        /// The bundle directory (its manifest and volumes).
        dir: PathBuf,
        /// Accept a full bundle off the chain, starting it again (after a
        /// lost exporter state or a far side restored from a backup).
        #[arg(long)]
        rebase: bool,
    },
    /// Check a bundle before carrying it: signature, chain position after
    /// `--after`, every volume and every file's hash.
    Verify {
        /// The bundle directory.
        dir: PathBuf,
        /// The exporter's public key (default: `[import] bundle_keys`);
        /// repeatable.
        #[arg(long = "key", value_name = "PEM")]
        keys: Vec<PathBuf>,
        /// The manifest of the bundle this one must follow (the far side
        /// keeps them in DATA_DIR/bundles/import/).
        #[arg(long, value_name = "FILE")]
        after: Option<PathBuf>,
    },
}

/// Parses `--max-volume`: bytes, K/M/G suffixes (powers of 1024), `fat32`.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    if t == "fat32" {
        return Ok((4u64 << 30) - 1);
    }
    let t = t.trim_end_matches("ib").trim_end_matches('b');
    let (digits, unit) = match t.char_indices().last() {
        Some((i, 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'm')) => (&t[..i], 1 << 20),
        Some((i, 'g')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?} is not a size: use bytes, or 700M, 4G, fat32"))
}

/// `hexmirror user ...`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user (token-only: give it tokens with `hexmirror token
    /// create --user NAME`).
    Create {
        /// Lowercase letters, digits and `_`; not an organization's name.
        name: String,
        /// A server administrator.
        #[arg(long)]
        admin: bool,
        /// Read a password (at least 12 characters) from the first line of
        /// standard input, for signing in to the web UI.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a user's password from the first line of standard input (the
    /// admin's reset: hexmirror keeps no email), or remove it.
    Password {
        /// The user.
        name: String,
        /// Make the account token-only again.
        #[arg(long)]
        remove: bool,
    },
}

/// `hexmirror org ...`
#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Create an organization (private; `serve` picks it up at once when
    /// created over the API, at its next start or SIGHUP from here).
    Create {
        /// Lowercase letters, digits and `_`; not a repository's, a user's
        /// or another organization's name.
        name: String,
        /// Its first admin, an existing user.
        #[arg(long, value_name = "USER")]
        admin: Option<String>,
    },
    /// List organizations and their members.
    List,
    /// Delete an organization that has no package.
    Delete {
        /// The organization.
        name: String,
    },
    /// Rename an organization: its files are re-signed with the new name,
    /// its members, keys and packages move with it (a running `serve`
    /// follows on SIGHUP; over the API, at once).
    Rename {
        /// The organization.
        name: String,
        /// Its new name: not a repository's, a user's or another
        /// organization's.
        new_name: String,
    },
    /// Add a member, or change a member's role.
    Member {
        /// The organization.
        org: String,
        /// The user.
        user: String,
        /// admin, write or read.
        #[arg(long, default_value = "read")]
        role: String,
    },
    /// Remove a member.
    RemoveMember {
        /// The organization.
        org: String,
        /// The user.
        user: String,
    },
}

/// `hexmirror token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print its secret (shown once).
    Create {
        /// Key name, unique among live tokens.
        #[arg(long, default_value = "admin")]
        name: String,
        /// The user the token acts for (package owner, audit log).
        #[arg(long, default_value = "admin")]
        user: String,
        /// Full rights on every repository (needed to create other tokens
        /// through the API and to read the audit log).
        #[arg(long)]
        admin: bool,
        /// A scope REPO/PACKAGE:ACCESS[:REQUIREMENT], e.g. `acme/acme_*:write`
        /// or `acme/big:read:~> 5.0`; repeatable.
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// Expire after this many days.
        #[arg(long, value_name = "DAYS")]
        expires_days: Option<u64>,
    },
    /// List live tokens (never their secrets).
    List,
    /// Revoke a token, and every token it created, by name.
    Revoke {
        /// Key name.
        name: String,
    },
}

/// Exit status for a sync that finished with failures, or a failed verify.
const EXIT_SYNC_FAILED: u8 = 1;
/// Exit status for a configuration or start-up problem.
const EXIT_CONFIG: u8 = 2;

/// Runs the parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    // Organizations are repositories held in the state database: every
    // command sees them beside the configured ones.
    let loaded = Config::load(cli.config.as_deref())
        .map_err(|e| e.to_string())
        .and_then(|c| crate::accounts::load_with_orgs(c).map_err(|e| e.to_string()));
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hexmirror: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logging(config.log_format);
    if matches!(cli.command, Command::Sync { .. }) {
        crate::heap::one_arena_per_core();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hexmirror: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Sync { accept_rollback } => {
                let mut config = config.clone();
                config.mirror.accept_rollback = accept_rollback;
                run_sync(&config).await
            }
            Command::Serve => run_serve(&config).await,
            Command::Keygen {
                out, bundle: true, ..
            } => run_keygen_bundle(&config, out),
            Command::Keygen { out, bits, .. } => run_keygen(&config, out, bits),
            Command::Verify { url, key, state } => run_verify(&config, url, key, state).await,
            Command::Gc => run_gc(&config).await,
            Command::Status => run_status(&config).await,
            Command::Token(t) => run_token(&config, t).await,
            Command::User(u) => run_user(&config, u).await,
            Command::Org(o) => run_org(&config, o).await,
            Command::Bundle(b) => run_bundle(&config, b).await,
            Command::Catalog(CatalogCommand::Rebuild) => run_catalog_rebuild(&config).await,
            Command::Downloads(DownloadsCommand::Import { log }) => {
                run_import_downloads(&config, log).await
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hexmirror: {e:#}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Logs to stderr: text, or one JSON object per line (`[log] format`);
/// the level comes from `HEXMIRROR_LOG` (default `info`).
fn init_logging(format: crate::config::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("HEXMIRROR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // `try_init`: a second call (tests driving `run` twice) keeps the first.
    let _ = match format {
        crate::config::LogFormat::Text => builder.try_init(),
        crate::config::LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Exit status of a sync stopped by SIGTERM/SIGINT (128 + SIGTERM).
const EXIT_INTERRUPTED: u8 = 143;

async fn run_sync(config: &Config) -> anyhow::Result<ExitCode> {
    // With a bucket, refuse before any work while another node writes there.
    let s3 = match &config.storage {
        crate::config::StorageConfig::S3(s3) if s3.role == crate::config::StorageRole::Reader => {
            anyhow::bail!(
                "storage.role = \"reader\": a read-only node does not sync; run the sync on the \
                 writer"
            );
        }
        crate::config::StorageConfig::S3(s3) => Some(s3),
        crate::config::StorageConfig::Local => None,
    };
    if let Some(s3) = s3 {
        bucket_lease_check(config, s3).await?;
    }
    tracing::info!(upstream = %config.upstream.url, data_dir = %config.data_dir.display(), "sync starting");
    let progress = Progress::new(std::io::stderr().is_terminal());
    // On SIGTERM the sync future is dropped at its next await: every step
    // before it is durable (blobs, then generation, then database) and a
    // step in progress on the blocking pool finishes before the runtime
    // exits, so the served tree stays whole and the next sync resumes.
    let summary = tokio::select! {
        s = sync::run(config, &progress) => s?,
        () = shutdown_signal() => {
            progress.finish();
            eprintln!("hexmirror: sync interrupted; the served tree is unchanged or complete, and the next sync resumes");
            return Ok(ExitCode::from(EXIT_INTERRUPTED));
        }
    };
    print_summary(&summary);
    if let Some(s3) = s3 {
        publish_to_bucket(config, s3).await?;
    }
    // Only what failed anew makes the run fail: a package that stays in
    // quarantine would otherwise keep a sync unit failed for good.
    Ok(if summary.newly_failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_SYNC_FAILED)
    })
}

async fn run_bundle(config: &Config, command: BundleCommand) -> anyhow::Result<ExitCode> {
    use crate::airgap::{self, AirgapError};
    let config = config.clone();
    let outcome: Result<ExitCode, AirgapError> = tokio::task::spawn_blocking(move || {
        match command {
            BundleCommand::Export {
                out,
                full,
                heartbeat,
                max_volume,
                sequence,
                key,
            } => {
                let opts = airgap::ExportOptions {
                    key: key.unwrap_or_else(|| config.data_dir.join("keys/bundle.pem")),
                    out,
                    full,
                    heartbeat,
                    max_volume,
                    sequence,
                };
                let r = airgap::export(&config, &opts)?;
                let what = if r.again { "written again" } else { "written" };
                println!(
                    "bundle {} ({:?}) {what} to {}: {} files changed, {} blobs in {} volumes, {} bytes",
                    r.sequence,
                    r.kind,
                    opts.out.display(),
                    r.changes,
                    r.blobs,
                    r.volumes,
                    r.bytes
                );
                Ok(ExitCode::SUCCESS)
            }
            BundleCommand::Import { dir, rebase } => {
                let r = airgap::import(&config, &dir, rebase)?;
                println!(
                    "bundle {} ({:?}) imported: {} files changed, {} blobs read from the volumes, {} already here; serving manifest version {}",
                    r.sequence, r.kind, r.changes, r.read, r.already, r.version
                );
                Ok(ExitCode::SUCCESS)
            }
            BundleCommand::Verify { dir, keys, after } => {
                let keys = if keys.is_empty() {
                    config.bundle_keys.clone()
                } else {
                    keys.iter()
                        .map(|p| {
                            let pem = std::fs::read_to_string(p).map_err(|source| {
                                crate::keyfiles::KeyFileError::Read {
                                    path: p.clone(),
                                    source,
                                }
                            })?;
                            crate::manifest::ManifestPublicKey::from_pem(&pem).map_err(|source| {
                                AirgapError::Key(crate::keyfiles::KeyFileError::Invalid {
                                    path: p.clone(),
                                    source,
                                })
                            })
                        })
                        .collect::<Result<_, AirgapError>>()?
                };
                let report = airgap::verify_dir(&dir, &keys, after.as_deref())?;
                let b = &report.bundle;
                println!(
                    "bundle {} ({:?}), signed; {} files changed, {} blobs in {} volumes",
                    b.sequence,
                    b.kind,
                    b.tree.len(),
                    b.blobs.len(),
                    b.volumes.len()
                );
                for v in &report.volumes {
                    if v.problems.is_empty() {
                        println!("ok       {}", v.name);
                    }
                    for p in &v.problems {
                        println!("DAMAGED  {}: {p}", v.name);
                    }
                }
                Ok(if report.is_clean() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(EXIT_SYNC_FAILED)
                })
            }
        }
    })
    .await?;
    match outcome {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("hexmirror: {e}");
            Ok(ExitCode::from(e.exit_code()))
        }
    }
}

async fn run_import_downloads(config: &Config, log: PathBuf) -> anyhow::Result<ExitCode> {
    let config = config.clone();
    let report = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let file = std::fs::File::open(&log)
            .with_context(|| format!("cannot open the access log {}", log.display()))?;
        let catalog = crate::catalog::Catalog::open(&config.data_dir)?;
        let upstream = config.upstream.repository.clone();
        let imported = catalog.call_blocking(|c| {
            Ok(crate::catalog::downloads::import_log(
                c,
                std::io::BufReader::new(file),
                &upstream,
            ))
        })??;
        Ok(imported)
    })
    .await??;
    println!(
        "{} lines: {} tarball downloads counted, {} already counted by an earlier import, {} lines not in the combined log format",
        report.lines, report.counted, report.already, report.unreadable
    );
    Ok(ExitCode::SUCCESS)
}

async fn run_catalog_rebuild(config: &Config) -> anyhow::Result<ExitCode> {
    let config = config.clone();
    let report = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let catalog = crate::catalog::Catalog::open(&config.data_dir)?;
        let report = crate::catalog::rebuild(&config, &catalog)?;
        crate::catalog::members(&catalog, &config)?;
        let hosted = if config.repositories.is_empty() {
            0
        } else {
            let db = crate::store::Db::open(&config.data_dir)?;
            crate::hosted::catalog::refill(&catalog, &db, &config)?
        };
        Ok((report, hosted))
    })
    .await??;
    let (report, hosted) = report;
    println!(
        "catalog rebuilt: {} packages, metadata of {} tarballs read, {hosted} hosted packages",
        report.packages, report.tarballs
    );
    for (path, why) in &report.refused {
        println!("left out (does not verify): {path}: {why}");
    }
    Ok(if report.refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_SYNC_FAILED)
    })
}

async fn run_status(config: &Config) -> anyhow::Result<ExitCode> {
    let data_dir = config.data_dir.clone();
    let rows = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        match crate::store::Db::open_read_only(&data_dir)? {
            Some(db) => Ok(db.call_blocking(|c| crate::store::db::quarantine(c))?),
            None => Ok(Vec::new()),
        }
    })
    .await??;
    if rows.is_empty() {
        println!("no package is quarantined");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} packages quarantined (each keeps its last good state):",
        rows.len()
    );
    for q in &rows {
        println!(
            "  {} [{}] since {}, tried {} times, last {}: {}",
            q.package,
            q.kind.as_str(),
            crate::manifest::rfc3339(q.since.max(0) as u64),
            q.tries,
            crate::manifest::rfc3339(q.last_tried.max(0) as u64),
            q.reason
        );
    }
    Ok(ExitCode::from(EXIT_SYNC_FAILED))
}

fn print_summary(s: &Summary) {
    if s.up_to_date {
        println!(
            "up to date: {} packages, nothing changed upstream ({} requests, {:.1}s)",
            s.packages,
            s.requests,
            s.elapsed.as_secs_f64()
        );
        return;
    }
    println!(
        "sync {}: {} packages ({} updated, {} unchanged), {} releases fetched, {} already stored, \
         {} files removed, {} bytes in {} requests, {} failed, {:.1}s",
        if s.failures.is_empty() {
            "complete"
        } else {
            "incomplete"
        },
        s.packages,
        s.packages_updated,
        s.packages_unchanged,
        s.releases_fetched,
        s.releases_reused,
        s.removed,
        s.bytes,
        s.requests,
        s.failures.len(),
        s.elapsed.as_secs_f64()
    );
    for f in &s.failures {
        match &f.version {
            Some(v) => println!("  failed: {} {}: {}", f.package, v, f.reason),
            None => println!("  failed: {}: {}", f.package, f.reason),
        }
    }
    for u in &s.unreachable {
        println!(
            "  unreachable: {} depends on {} in repository {:?}, which this mirror does not sync",
            u.package, u.dependency, u.repository
        );
    }
    if !s.quarantined.is_empty() {
        println!(
            "  quarantined: {} packages keep their last good state ({} newly failed); \
             `hexmirror status` lists them, and every sync tries them again",
            s.quarantined.len(),
            s.newly_failed
        );
    }
    if s.generation_published {
        println!("  published generation {}", s.generation);
    }
}

/// The repositories `serve` caches publicly: ours, unless private.
fn public_repos(config: &Config) -> std::collections::BTreeSet<String> {
    config
        .repositories
        .iter()
        .filter(|r| !r.private)
        .map(|r| r.name.clone())
        .collect()
}

/// Parses `REPO/PACKAGE:ACCESS[:REQUIREMENT]`.
fn parse_scope(text: &str) -> anyhow::Result<crate::auth::Scope> {
    let usage = || {
        anyhow::anyhow!(
            "--scope {text:?}: write REPO/PACKAGE:ACCESS[:REQUIREMENT], e.g. acme/*:write or acme/big:read:~> 5.0"
        )
    };
    let (target, rest) = text.split_once(':').ok_or_else(usage)?;
    let (repo, package) = target.split_once('/').ok_or_else(usage)?;
    let (access, versions) = match rest.split_once(':') {
        Some((a, v)) => (a, Some(v.trim().to_owned())),
        None => (rest, None),
    };
    let scope = crate::auth::Scope {
        repository: repo.to_owned(),
        package: package.to_owned(),
        access: crate::auth::Access::parse(access).ok_or_else(usage)?,
        versions,
    };
    scope
        .validate()
        .map_err(|e| anyhow::anyhow!("--scope {text:?}: {e}"))?;
    Ok(scope)
}

/// Appends a CLI action to the audit log.
fn cli_audit(
    c: &rusqlite::Connection,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> rusqlite::Result<()> {
    crate::hosted::db::audit(c, &cli_audit_entry(action, target, detail))
}

/// An audit entry for a change made from the command line.
fn cli_audit_entry(
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> crate::hosted::db::AuditEntry {
    crate::hosted::db::AuditEntry {
        at: crate::clock::unix_now() as i64,
        actor: "cli".into(),
        token: None,
        action: action.into(),
        target: target.into(),
        detail: detail.to_string(),
        client: None,
    }
}

fn open_state_db(config: &Config) -> anyhow::Result<crate::store::Db> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    Ok(crate::store::Db::open(&config.data_dir)?)
}

async fn run_user(config: &Config, command: UserCommand) -> anyhow::Result<ExitCode> {
    use crate::accounts::{db as adb, password};
    let db = open_state_db(config)?;
    let now = crate::clock::unix_now() as i64;
    // The password's hash, made off the async threads (argon2 is slow by
    // design); the password itself goes nowhere else.
    let read_password = || async {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        let line = line.trim_end_matches(['\n', '\r']).to_owned();
        let phc = tokio::task::spawn_blocking(move || password::hash(&line)).await??;
        anyhow::Ok(phc)
    };
    match command {
        UserCommand::Create {
            name,
            admin,
            password_stdin,
        } => {
            let phc = if password_stdin {
                Some(read_password().await?)
            } else {
                None
            };
            let created = db
                .call(move |c| {
                    let made = adb::create_user(c, &name, admin, now);
                    if let Ok(u) = &made {
                        if let Some(phc) = &phc {
                            adb::set_password(c, &u.name, Some(phc))?;
                        }
                        cli_audit(
                            c,
                            "user.create",
                            &u.name,
                            serde_json::json!({"admin": admin, "password": phc.is_some()}),
                        )?;
                    }
                    Ok(made)
                })
                .await??;
            eprintln!("created user {:?}", created.name);
        }
        UserCommand::Password { name, remove } => {
            let phc = if remove {
                None
            } else {
                Some(read_password().await?)
            };
            let n = name.clone();
            let set = db
                .call(move |c| {
                    let set = adb::set_password(c, &n, phc.as_deref())?;
                    if set {
                        cli_audit(
                            c,
                            "user.password",
                            &n,
                            serde_json::json!({"removed": remove}),
                        )?;
                    }
                    Ok(set)
                })
                .await?;
            if !set {
                anyhow::bail!("no user {name:?}: create it with `hexmirror user create {name}`");
            }
            eprintln!(
                "password of {name:?} {}",
                if remove { "removed" } else { "set" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_org(config: &Config, command: OrgCommand) -> anyhow::Result<ExitCode> {
    use crate::accounts::db as adb;
    let db = open_state_db(config)?;
    let now = crate::clock::unix_now() as i64;
    match command {
        OrgCommand::Create { name, admin } => {
            if config.signing.key.is_none() {
                anyhow::bail!(
                    "an organization is a repository of ours, signed with our key: run \
                     `hexmirror keygen --out DIR` and set signing.key"
                );
            }
            let taken = crate::accounts::taken_names(config);
            let org = db
                .call(move |c| {
                    let made = adb::create_org(c, &name, admin.as_deref(), &taken, now);
                    if let Ok(o) = &made {
                        cli_audit(
                            c,
                            "org.create",
                            &o.name,
                            serde_json::json!({"admin": admin}),
                        )?;
                    }
                    Ok(made)
                })
                .await??;
            eprintln!(
                "created organization {:?}; a running `serve` picks it up on SIGHUP",
                org.name
            );
        }
        OrgCommand::List => {
            let listed = db
                .call(|c| {
                    adb::orgs(c)?
                        .into_iter()
                        .map(|o| Ok((adb::members(c, &o.name)?, o)))
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .await?;
            for (members, org) in listed {
                let members: Vec<String> = members
                    .iter()
                    .map(|m| format!("{}:{}", m.username, m.role))
                    .collect();
                println!("{}\t{}", org.name, members.join(" "));
            }
        }
        OrgCommand::Delete { name } => {
            db.call(move |c| {
                let done = adb::delete_org(c, &name);
                if done.is_ok() {
                    cli_audit(c, "org.delete", &name, serde_json::json!({}))?;
                }
                Ok(done)
            })
            .await??;
        }
        OrgCommand::Rename { name, new_name } => {
            // The catalog moves the organization's packages and counts with
            // it (derived data: without it, `catalog rebuild` catches up).
            let publisher = tokio::task::spawn_blocking({
                let config = config.clone();
                move || -> anyhow::Result<_> {
                    let publisher = crate::hosted::service::Publisher::open(config.clone())?;
                    match crate::catalog::Catalog::open(&config.data_dir) {
                        Ok(catalog) => publisher.attach_catalog(catalog),
                        Err(e) => tracing::warn!(
                            "catalog unavailable: {e}; run `hexmirror catalog rebuild` later"
                        ),
                    }
                    Ok(publisher)
                }
            })
            .await??;
            let entry = cli_audit_entry("org.rename", &new_name, serde_json::json!({"from": name}));
            let generation = publisher
                .rename_repository(std::sync::Arc::new(config.clone()), &name, &new_name, entry)
                .await?;
            eprintln!(
                "renamed organization {name:?} to {new_name:?} (generation {generation}); a \
                 running `serve` follows on SIGHUP, and clients must use the new name"
            );
        }
        OrgCommand::Member { org, user, role } => {
            let role = crate::auth::Access::parse(&role)
                .ok_or_else(|| crate::accounts::AccountError::BadRole(role.clone()))?;
            db.call(move |c| {
                let done = adb::set_member(c, &org, &user, role, now);
                if done.is_ok() {
                    cli_audit(
                        c,
                        "org.member.set",
                        &format!("{org}/{user}"),
                        serde_json::json!({"role": role}),
                    )?;
                }
                Ok(done)
            })
            .await??;
        }
        OrgCommand::RemoveMember { org, user } => {
            let removed = db
                .call(move |c| {
                    let done = adb::remove_member(c, &org, &user);
                    if let Ok(true) = done {
                        cli_audit(
                            c,
                            "org.member.remove",
                            &format!("{org}/{user}"),
                            serde_json::json!({}),
                        )?;
                    }
                    Ok(done)
                })
                .await??;
            if !removed {
                eprintln!("no such member");
                return Ok(ExitCode::from(EXIT_SYNC_FAILED));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_token(config: &Config, command: TokenCommand) -> anyhow::Result<ExitCode> {
    use crate::hosted::db as hdb;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let db = crate::store::Db::open(&config.data_dir)?;
    let now = crate::clock::unix_now() as i64;
    match command {
        TokenCommand::Create {
            name,
            user,
            admin,
            scopes,
            expires_days,
        } => {
            let mut parsed = if admin {
                crate::auth::admin_scopes()
            } else {
                Vec::new()
            };
            for s in &scopes {
                parsed.push(parse_scope(s)?);
            }
            if parsed.is_empty() {
                anyhow::bail!("give --admin or at least one --scope");
            }
            let expires_at = expires_days.map(|d| now + (d as i64) * 86_400);
            let audit_scopes = serde_json::to_value(&parsed)?;
            let (secret, row) = db
                .call(move |c| {
                    let created =
                        crate::api::create_token(c, &name, &user, parsed, expires_at, None);
                    if let Ok((_, row)) = &created {
                        hdb::audit(
                            c,
                            &hdb::AuditEntry {
                                at: now,
                                actor: "cli".into(),
                                token: None,
                                action: "key.generate".into(),
                                target: row.name.clone(),
                                detail: serde_json::json!({"id": row.id, "scopes": audit_scopes})
                                    .to_string(),
                                client: None,
                            },
                        )?;
                    }
                    Ok(created)
                })
                .await??;
            eprintln!(
                "created token {:?} for user {:?}; the secret is shown only now:",
                row.name, row.username
            );
            println!("{secret}");
        }
        TokenCommand::List => {
            let tokens = db.call(|c| hdb::live_tokens(c)).await?;
            for t in tokens {
                let scopes: Vec<String> = t
                    .scopes
                    .iter()
                    .map(|s| {
                        let v = s
                            .versions
                            .as_deref()
                            .map(|v| format!(":{v}"))
                            .unwrap_or_default();
                        format!("{}/{}:{}{v}", s.repository, s.package, s.access)
                    })
                    .collect();
                let expires = t
                    .expires_at
                    .map_or_else(|| "never".into(), |e| crate::manifest::rfc3339(e as u64));
                println!(
                    "{}\t{}\texpires {}\t{}",
                    t.name,
                    t.username,
                    expires,
                    scopes.join(" ")
                );
            }
        }
        TokenCommand::Revoke { name } => {
            let n = name.clone();
            let revoked = db
                .call(move |c| {
                    let Some(t) = hdb::live_tokens(c)?.into_iter().find(|t| t.name == n) else {
                        return Ok(0);
                    };
                    let count = hdb::revoke_token(c, &t.id, now)?;
                    hdb::audit(
                        c,
                        &hdb::AuditEntry {
                            at: now,
                            actor: "cli".into(),
                            token: None,
                            action: "key.revoke".into(),
                            target: t.name.clone(),
                            detail: serde_json::json!({"id": t.id, "revoked": count}).to_string(),
                            client: None,
                        },
                    )?;
                    Ok(count)
                })
                .await?;
            if revoked == 0 {
                anyhow::bail!("no live token named {name:?} (see `hexmirror token list`)");
            }
            println!("revoked {revoked} token(s)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reloads the configuration on every SIGHUP. A configuration that does not
/// load is refused and the running one stays, with the reason logged; what
/// cannot change without a restart (address, data directory) is reported.
#[cfg(unix)]
async fn reload_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    running: Config,
    public: server::PublicRepos,
    api: Option<std::sync::Arc<crate::api::ApiState>>,
    config_tx: tokio::sync::watch::Sender<Config>,
    stop: CancellationToken,
) {
    while stop
        .run_until_cancelled(hup.recv())
        .await
        .flatten()
        .is_some()
    {
        let Some(path) = running.source.clone() else {
            tracing::info!("SIGHUP: running on the embedded default, nothing to reload");
            continue;
        };
        let loaded = tokio::task::spawn_blocking(move || {
            Config::load(Some(&path))
                .map_err(|e| e.to_string())
                .and_then(|c| crate::accounts::load_with_orgs(c).map_err(|e| e.to_string()))
        })
        .await;
        match loaded {
            Ok(Ok(new)) => {
                if new.listen != running.listen || new.data_dir != running.data_dir {
                    tracing::warn!(
                        "SIGHUP: `listen` and `data_dir` changes take effect only after a restart"
                    );
                }
                public.set(public_repos(&new));
                if let Some(api) = &api {
                    api.set_config(new.clone());
                }
                if new.import != running.import {
                    tracing::warn!("SIGHUP: [import] changes take effect after a restart");
                }
                if new.sync_schedule.is_some() && running.sync_schedule.is_none() {
                    tracing::warn!("SIGHUP: a new [schedule] takes effect after a restart");
                }
                let _ = config_tx.send(new);
                tracing::info!("SIGHUP: configuration reloaded");
            }
            Ok(Err(e)) => {
                tracing::error!("SIGHUP: new configuration refused, keeping the running one: {e}")
            }
            Err(e) => tracing::error!("SIGHUP: reload task failed: {e}"),
        }
    }
}

/// Runs a sync at every time `schedule` names, with the configuration in
/// force at that moment. A sync already running (from `hexmirror sync` or
/// the timer unit) holds the data directory's lock; this one is skipped.
///
/// On shutdown a sync in progress stops where it is, as an interrupted
/// `hexmirror sync` does: the served generation is untouched and the next
/// sync reuses every verified blob.
async fn scheduled_syncs(config: tokio::sync::watch::Receiver<Config>, stop: CancellationToken) {
    loop {
        let schedule = config.borrow().sync_schedule.clone();
        let Some(next) = schedule.and_then(|s| s.upcoming(chrono::Utc).next()) else {
            return;
        };
        let wait = (next - chrono::Utc::now()).to_std().unwrap_or_default();
        tracing::info!(at = %next.to_rfc3339(), "next scheduled sync");
        if stop
            .run_until_cancelled(tokio::time::sleep(wait))
            .await
            .is_none()
        {
            return;
        }
        let cfg = config.borrow().clone();
        let started = std::time::Instant::now();
        let Some(result) = stop
            .run_until_cancelled(sync::run(&cfg, &Progress::new(false)))
            .await
        else {
            tracing::info!("scheduled sync stopped by shutdown");
            return;
        };
        match result {
            Ok(s) => tracing::info!(
                packages = s.packages,
                failures = s.failures.len(),
                generation = s.generation,
                secs = started.elapsed().as_secs(),
                "scheduled sync finished"
            ),
            Err(sync::SyncError::Locked(_)) => {
                tracing::info!("scheduled sync skipped: another sync holds the data directory")
            }
            Err(e) => tracing::error!("scheduled sync failed: {e}"),
        }
    }
}

/// Re-signs the snapshot manifest when less than half its lifetime is left
/// and no sync did it (a proxy-only or hosting-only server never syncs).
async fn resign_manifest_when_due(
    config: tokio::sync::watch::Receiver<Config>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        if stop.run_until_cancelled(tick.tick()).await.is_none() {
            return;
        }
        let cfg = config.borrow().clone();
        let resign = move || -> Result<Option<u64>, crate::store::GenerationError> {
            let store = crate::store::Store::open(&cfg.data_dir)?;
            let db = crate::store::Db::open(&cfg.data_dir)?;
            store.resign_if_due(&db, &cfg.signing.manifest_key, cfg.signing.manifest_expiry)
        };
        match tokio::task::spawn_blocking(resign).await {
            Ok(Ok(Some(version))) => tracing::info!(version, "re-signed the snapshot manifest"),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::warn!("manifest re-signing skipped: {e}"),
            Err(e) => tracing::error!("manifest re-signing task failed: {e}"),
        }
    }
}

async fn run_serve(config: &Config) -> anyhow::Result<ExitCode> {
    let bucket_writer = match &config.storage {
        crate::config::StorageConfig::S3(s3) if s3.role == crate::config::StorageRole::Reader => {
            return run_serve_reader(config, s3).await;
        }
        crate::config::StorageConfig::S3(s3) => {
            Some(start_bucket_writer(config, s3, OnHeld::WaitForOwnNode).await?)
        }
        crate::config::StorageConfig::Local => None,
    };
    let tree = config.data_dir.join("current");
    if !config.proxy.enabled && !tree.join(crate::store::MANIFEST_FILE).is_file() {
        tracing::warn!(tree = %tree.display(), "no mirrored tree yet; run `hexmirror sync` first");
    }
    // The write API needs a repository of ours to publish into. Opened
    // before listening: it finishes a hosted change a crash interrupted, and
    // nothing may be served (or READY sent) until the tree is whole again.
    let publisher = if config.repositories.is_empty() {
        None
    } else {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("cannot create data directory {}", config.data_dir.display())
        })?;
        let cfg = config.clone();
        Some(
            tokio::task::spawn_blocking(move || crate::hosted::service::Publisher::open(cfg))
                .await??,
        )
    };
    // The read API of mirrored packages answers from the catalog.
    let catalog = std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| e.to_string())
        .and_then(|()| crate::catalog::Catalog::open(&config.data_dir).map_err(|e| e.to_string()))
        .inspect_err(|e| {
            tracing::warn!(
                "catalog unavailable ({e}); the read API answers single packages of ours only"
            )
        })
        .ok();
    // Our repositories in the catalog: what each serves of the mirror, and
    // every hosted package; then each hosted change as it lands.
    if let Some(catalog) = &catalog {
        let (catalog, cfg, publisher) = (catalog.clone(), config.clone(), publisher.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = crate::catalog::fill_if_empty(&catalog, &cfg) {
                tracing::warn!("catalog: {e}; `hexmirror catalog rebuild` catches up");
            }
            if let Err(e) = crate::catalog::members(&catalog, &cfg) {
                tracing::warn!("catalog: {e}; `hexmirror catalog rebuild` catches up");
            }
            if let Some(publisher) = publisher {
                match publisher.follow_into(catalog) {
                    Ok(n) => tracing::info!(packages = n, "catalog: hosted packages in"),
                    Err(e) => tracing::warn!("catalog: hosted packages not in ({e})"),
                }
            }
        })
        .await?;
    }
    let api = (publisher.is_some() || catalog.is_some())
        .then(|| crate::api::ApiState::new(config.clone(), publisher.clone(), catalog.clone()));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (config key `listen`)", config.listen))?;
    let addr = listener.local_addr()?;
    // Before READY: SIGHUP's default action ends the process, and a reload
    // may come as soon as the service manager hears that we are up.
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .inspect_err(|e| {
            tracing::warn!("cannot listen for SIGHUP ({e}); configuration reload is off")
        })
        .ok();
    let proxy = if config.proxy.enabled {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("cannot create data directory {}", config.data_dir.display())
        })?;
        let proxy = crate::proxy::Proxy::new(config, catalog.clone())?;
        if let Some(pending) = bucket_writer.as_ref().and_then(|w| w.proxy_pending()) {
            proxy.report_links_to(pending);
        }
        tracing::info!(upstream = %config.upstream.url, "pull-through cache on: files not mirrored yet are fetched on request");
        Some(proxy)
    } else {
        None
    };
    // Tarball downloads are counted in memory and written in batches.
    let counter = catalog
        .as_ref()
        .filter(|_| config.server.count_downloads)
        .map(|_| std::sync::Arc::new(crate::catalog::downloads::Counter::default()));
    // Before the cache reads the limit: it keeps a handle per file it sends
    // with sendfile, and connections need theirs.
    match server::raise_open_file_limit() {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
    // Ready responses of small files, bracketed by each in-place hosted change.
    let cache = std::sync::Arc::new(server::cache::ResponseCache::new(
        tree.clone(),
        config.server.cache_bytes,
    ));
    if let Some(publisher) = &publisher {
        publisher.watch_changes(cache.clone());
    }
    let options = server::Options {
        bucket: None,
        bucket_writer: bucket_writer.clone(),
        cache: Some(cache),
        public_repos: server::PublicRepos::new(public_repos(config)),
        data_dir: Some(config.data_dir.clone()),
        api: api.clone(),
        proxy,
        downloads: counter.clone(),
        ui: config
            .server
            .ui_prefix
            .clone()
            .map(|prefix| crate::ui::Settings {
                prefix,
                mirror: config.upstream.repository.clone(),
            }),
    };
    // Background work shares one shutdown signal and is joined on exit.
    let stop = CancellationToken::new();
    let mut background = tokio::task::JoinSet::new();
    if let (Some(counter), Some(catalog)) = (counter, catalog.clone()) {
        let upstream = config.upstream.repository.clone();
        background.spawn(write_downloads(counter, catalog, upstream, stop.clone()));
    }
    // The import folder (`[import]`): package tarballs dropped there are published.
    if let (Some(import), Some(publisher)) = (&config.import, &publisher) {
        background.spawn(crate::import::run(
            import.clone(),
            std::sync::Arc::clone(publisher),
            stop.clone().cancelled_owned(),
        ));
    }
    let (config_tx, config_rx) = tokio::sync::watch::channel(config.clone());
    if config.sync_schedule.is_some() {
        background.spawn(scheduled_syncs(config_rx.clone(), stop.clone()));
    }
    background.spawn(resign_manifest_when_due(config_rx, stop.clone()));
    if let Some(writer) = &bucket_writer {
        background.spawn(std::sync::Arc::clone(writer).run(stop.clone()));
        // Read-only nodes' download counts reach this catalog through the bucket.
        if let Some(catalog) = catalog.clone() {
            background.spawn(crate::catalog::bucket::pull(
                writer.bucket().clone(),
                catalog,
                config.upstream.repository.clone(),
                writer.poll() * 10,
                stop.clone(),
            ));
        }
    }
    #[cfg(unix)]
    if let Some(hup) = hup {
        background.spawn(reload_on_sighup(
            hup,
            config.clone(),
            options.public_repos.clone(),
            api,
            config_tx,
            stop.clone(),
        ));
    }
    // Only now can every request be answered as configured, and a stop
    // be a clean one.
    let shutdown = shutdown_signal();
    println!("hexmirror serving {} on http://{addr}", tree.display());
    let app = server::app_with(tree, options);
    serve_until_stopped(config, listener, app, shutdown, stop, background).await
}

/// Tells the service manager we are up, serves until `shutdown`, then stops
/// the background tasks and joins them.
async fn serve_until_stopped(
    config: &Config,
    listener: tokio::net::TcpListener,
    app: server::App,
    shutdown: impl Future<Output = ()> + Send + 'static,
    stop: CancellationToken,
    mut background: tokio::task::JoinSet<()>,
) -> anyhow::Result<ExitCode> {
    crate::notify::notify("READY=1");
    let served = server::run(
        listener,
        app,
        server::Limits::from(&config.server),
        shutdown,
    )
    .await;
    stop.cancel();
    while let Some(joined) = background.join_next().await {
        if let Err(e) = joined {
            tracing::error!("a background task failed: {e}");
        }
    }
    served?;
    Ok(ExitCode::SUCCESS)
}

/// How often counted downloads are written to the catalog.
const DOWNLOADS_FLUSH: std::time::Duration = std::time::Duration::from_secs(10);

/// Writes the counted downloads every [`DOWNLOADS_FLUSH`] and once more at
/// shutdown; a failed write keeps its counts for the next one.
async fn write_downloads(
    counter: std::sync::Arc<crate::catalog::downloads::Counter>,
    catalog: crate::catalog::Catalog,
    upstream: String,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(DOWNLOADS_FLUSH);
    loop {
        let stopping = stop.run_until_cancelled(tick.tick()).await.is_none();
        let counts = counter.take();
        if !counts.is_empty() {
            let (c, kept, up) = (
                std::sync::Arc::clone(&counter),
                counts.clone(),
                upstream.clone(),
            );
            let written = catalog
                .call(move |conn| crate::catalog::downloads::write(conn, &counts, &up))
                .await;
            if let Err(e) = written {
                tracing::warn!("download counts not written yet ({e}); kept for the next try");
                c.restore(kept);
            }
        }
        if stopping {
            return;
        }
    }
}

/// Completes on SIGTERM or Ctrl-C. The handlers are installed when this is
/// called, not when it is first polled: `serve` calls it before it tells
/// the service manager it is ready, so a stop that comes at once is a
/// clean shutdown, never the default action (death without STOPPING=1).
fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let handlers = {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::terminate())
            .and_then(|term| Ok((term, signal(SignalKind::interrupt())?)))
            .inspect_err(|e| tracing::warn!("cannot listen for SIGTERM/SIGINT ({e}); Ctrl-C only"))
            .ok()
    };
    async move {
        #[cfg(unix)]
        match handlers {
            Some((mut term, mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutting down");
        crate::notify::notify("STOPPING=1");
    }
}

/// `keygen --bundle`: the exporter's Ed25519 bundle key pair, never over
/// an existing file.
fn run_keygen_bundle(config: &Config, out: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    use crate::keyfiles::{write_new_public, write_new_secret};
    let dir = out.unwrap_or_else(|| config.data_dir.join("keys"));
    let (secret, public) = (dir.join("bundle.pem"), dir.join("bundle.pub.pem"));
    for path in [&secret, &public] {
        if path.exists() {
            anyhow::bail!(
                "{} already exists; refusing to overwrite a key (choose another --out)",
                path.display()
            );
        }
    }
    let key = crate::manifest::ManifestKey::generate();
    write_new_secret(&secret, key.to_pkcs8_pem().as_bytes())?;
    write_new_public(&public, key.public().to_pem().as_bytes())?;
    println!(
        "wrote {} (Ed25519 bundle key, mode 0600; keep it on the exporter)",
        secret.display()
    );
    println!(
        "wrote {} (give this to the importing side)",
        public.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn run_keygen(config: &Config, out: Option<PathBuf>, bits: usize) -> anyhow::Result<ExitCode> {
    use crate::keyfiles::{write_new_public, write_new_secret};
    let dir = out.unwrap_or_else(|| config.data_dir.join("keys"));
    let rsa = dir.join("hexmirror.pem");
    let rsa_pub = dir.join("hexmirror.pub.pem");
    let ed = dir.join("manifest.pem");
    let ed_pub = dir.join("manifest.pub.pem");
    // Check all four first: a half-written key set is worse than none.
    for path in [&rsa, &rsa_pub, &ed, &ed_pub] {
        if path.exists() {
            anyhow::bail!(
                "{} already exists; refusing to overwrite a key (choose another --out)",
                path.display()
            );
        }
    }
    eprintln!("generating a {bits}-bit RSA key (this takes a few seconds)...");
    let key = crate::registry::keys::generate_rsa(bits)?;
    write_new_secret(&rsa, key.to_pkcs8_pem().as_bytes())?;
    write_new_public(&rsa_pub, key.public_key().spki_pem().as_bytes())?;
    let manifest_key = crate::manifest::ManifestKey::generate();
    write_new_secret(&ed, manifest_key.to_pkcs8_pem().as_bytes())?;
    write_new_public(&ed_pub, manifest_key.public().to_pem().as_bytes())?;
    println!("wrote {} (RSA {bits}, PKCS#8, mode 0600)", rsa.display());
    println!("wrote {} (give this to clients)", rsa_pub.display());
    println!("fingerprint {}", key.public_key().fingerprint());
    println!("wrote {} (Ed25519 manifest key, mode 0600)", ed.display());
    println!("wrote {} (for hexmirror verify --key)", ed_pub.display());
    println!();
    println!("[signing]");
    println!("key = {:?}", rsa.display().to_string());
    println!("manifest_key = {:?}", ed.display().to_string());
    Ok(ExitCode::SUCCESS)
}

async fn run_verify(
    config: &Config,
    url: Option<String>,
    key: Option<PathBuf>,
    state: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    use crate::manifest::{ManifestKey, ManifestPublicKey};
    let public = match &key {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --key {}", path.display()))?;
            ManifestPublicKey::from_pem(&pem)
                .or_else(|_| ManifestKey::from_pem(&pem).map(|k| k.public()))
                .with_context(|| format!("--key {}", path.display()))?
        }
        None => {
            let path = &config.signing.manifest_key;
            let pem = std::fs::read_to_string(path).with_context(|| {
                format!(
                    "cannot read signing.manifest_key {} (or pass --key)",
                    path.display()
                )
            })?;
            ManifestKey::from_pem(&pem)
                .map(|k| k.public())
                .with_context(|| format!("signing.manifest_key {}", path.display()))?
        }
    };
    let result = match &url {
        Some(url) => {
            let upstream_config = crate::config::UpstreamConfig {
                url: url.trim_end_matches('/').to_owned(),
                public_key: crate::registry::PublicKey::hexpm(),
                repository: "hexpm".into(),
                timeout: crate::verify::REMOTE_TIMEOUT,
                retries: 2,
                pacing: crate::config::Pacing::default(),
                max_registry_bytes: crate::registry::MAX_DECODED_SIZE,
            };
            let upstream = crate::upstream::Upstream::new(&upstream_config, 8)?;
            let state = state.unwrap_or_else(|| crate::verify::default_remote_state(url));
            crate::verify::remote(upstream, &public, &state).await
        }
        None => {
            let state = state.unwrap_or_else(|| config.data_dir.join("verify.state"));
            let repositories: Vec<String> =
                config.repositories.iter().map(|r| r.name.clone()).collect();
            crate::verify::local(&config.data_dir, &public, &state, &repositories).await
        }
    };
    let result = match result {
        Ok(r) => r,
        // A refused manifest (signature, expiry, rollback) is a finding about
        // the mirror, like a corrupt file: exit 1, not the usage-error 2.
        Err(e @ crate::verify::VerifyError::Manifest { .. }) => {
            eprintln!("hexmirror: {e}");
            return Ok(ExitCode::from(EXIT_SYNC_FAILED));
        }
        Err(e) => return Err(e.into()),
    };
    let m = &result.manifest;
    let r = &result.report;
    for path in &r.missing {
        println!("missing: {path}");
    }
    for path in &r.extra {
        println!("extra: {path}");
    }
    for path in &result.lost {
        println!("lost: {path} (the database records it as published)");
    }
    for (path, want, got) in &r.corrupt {
        println!(
            "corrupt: {path}: sha256 {} size {}, manifest says sha256 {} size {}",
            got.sha256, got.size, want.sha256, want.size
        );
    }
    println!(
        "manifest version {} ({}), signed {}, expires {}: {} ok, {} missing, {} extra{}, {} corrupt",
        m.version,
        m.generation,
        crate::manifest::rfc3339(m.signed_at),
        crate::manifest::rfc3339(m.expires_at),
        r.ok,
        r.missing.len(),
        r.extra.len(),
        if result.extra_checked {
            ""
        } else {
            " (not checked remotely)"
        },
        r.corrupt.len()
    );
    if !result.lost.is_empty() {
        println!(
            "{} files of published releases are not in the generation; run `hexmirror sync` to \
             publish them again",
            result.lost.len()
        );
    }
    Ok(if result.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_SYNC_FAILED)
    })
}

async fn run_gc(config: &Config) -> anyhow::Result<ExitCode> {
    let data_dir = config.data_dir.clone();
    let grace = config.signing.generation_grace;
    let (generations, (blobs, bytes)) = tokio::task::spawn_blocking(move || {
        let store = crate::store::Store::open(&data_dir)?;
        let _lock = store.try_lock()?.ok_or_else(|| {
            anyhow::anyhow!(
                "another hexmirror process is writing to {}; run gc when it is done",
                data_dir.display()
            )
        })?;
        let generations = store.prune_generations(crate::store::KEEP_GENERATIONS, grace)?;
        let blobs = store.collect_garbage()?;
        Ok::<_, anyhow::Error>((generations, blobs))
    })
    .await??;
    println!("removed {generations} old generations and {blobs} unused blobs ({bytes} bytes)");
    if let crate::config::StorageConfig::S3(s3) = &config.storage
        && s3.role == crate::config::StorageRole::Writer
    {
        let Some(writer) = bucket_writer_unless_serve_holds(config, s3).await? else {
            return Ok(ExitCode::SUCCESS);
        };
        let collected = writer.collect_garbage().await;
        writer.release().await;
        let c = collected?;
        println!(
            "bucket {}: removed {} manifests and {} blobs ({} bytes) no live generation references",
            writer.bucket().name(),
            c.manifests,
            c.blobs,
            c.bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}

use crate::store::bucket::writer::{BucketWriter, OnHeld};

/// The writer's hold on the bucket: probe, lease, for `serve` and `sync`.
async fn start_bucket_writer(
    config: &Config,
    s3: &crate::config::S3Config,
    on_held: OnHeld,
) -> anyhow::Result<std::sync::Arc<BucketWriter>> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let store = std::sync::Arc::new(crate::store::Store::open(&config.data_dir)?);
    let writer = BucketWriter::start(store, config, s3, on_held).await?;
    Ok(std::sync::Arc::new(writer))
}

/// Before a sync: another node's live lease refuses it; this node's own
/// `serve` holding it is fine (that `serve` publishes what the sync makes).
async fn bucket_lease_check(config: &Config, s3: &crate::config::S3Config) -> anyhow::Result<()> {
    if s3.lease == crate::config::LeaseMode::None {
        return Ok(());
    }
    let bucket = crate::store::bucket::Bucket::open(s3)?;
    let data_dir = config.data_dir.clone();
    let me = tokio::task::spawn_blocking(move || {
        crate::store::bucket::lease::Holder::this_process(&data_dir)
    })
    .await?
    .with_context(|| {
        format!(
            "cannot read or create {}",
            config.data_dir.join("node-id").display()
        )
    })?;
    crate::store::bucket::lease::refuse_other_node(&bucket, &me, crate::clock::unix_now()).await?;
    Ok(())
}

/// The bucket writer for a one-off command (sync, gc), or `None` when
/// another process of this data directory (its `serve`) writes into the
/// bucket: that one publishes and collects itself.
async fn bucket_writer_unless_serve_holds(
    config: &Config,
    s3: &crate::config::S3Config,
) -> anyhow::Result<Option<std::sync::Arc<BucketWriter>>> {
    match start_bucket_writer(config, s3, OnHeld::Refuse).await {
        Ok(writer) => Ok(Some(writer)),
        Err(e) => {
            // Only a running `serve` publishes for this command; another
            // command holding the lock (a `gc`) does not, so that is an
            // error to run this again after.
            if let Some(busy @ crate::store::bucket::writer::StartError::Busy { holder, .. }) =
                e.downcast_ref()
                && holder.starts_with(crate::store::bucket::writer::SERVE_ROLE)
            {
                println!(
                    "bucket {}: {busy}; that `serve` publishes and collects garbage itself",
                    s3.bucket
                );
                return Ok(None);
            }
            if let Some(crate::store::bucket::writer::StartError::Busy { .. }) = e.downcast_ref() {
                return Err(e.context(
                    "the bucket was not written: run this command again when that one has ended",
                ));
            }
            Err(e)
        }
    }
}

/// After a sync: publish the new generation into the bucket, unless this
/// node's `serve` holds the lease (it publishes within its poll interval).
async fn publish_to_bucket(config: &Config, s3: &crate::config::S3Config) -> anyhow::Result<()> {
    let Some(writer) = bucket_writer_unless_serve_holds(config, s3).await? else {
        return Ok(());
    };
    let published = writer.publish().await;
    writer.release().await;
    match published? {
        crate::store::bucket::upload::Uploaded::AlreadyServed { version } => {
            println!(
                "bucket {}: already serves manifest version {version}",
                writer.bucket().name()
            );
        }
        crate::store::bucket::upload::Uploaded::Switched {
            version,
            blobs,
            bytes,
        } => println!(
            "bucket {}: now serves manifest version {version} ({blobs} new objects, {bytes} bytes)",
            writer.bucket().name()
        ),
    }
    Ok(())
}

/// `serve` on a read-only node: the generation the bucket's pointer names,
/// followed every `storage.poll_ms`; no API, no sync, no writes.
async fn run_serve_reader(
    config: &Config,
    s3: &crate::config::S3Config,
) -> anyhow::Result<ExitCode> {
    use crate::store::bucket::reader::{self, Reader};
    let key = s3
        .manifest_public_key
        .clone()
        .context("storage.manifest_public_key is required on a read-only node")?;
    let bucket = crate::store::bucket::Bucket::open(s3)?;
    let reader = std::sync::Arc::new(Reader::new(bucket.clone(), key, config.server.cache_bytes));
    match reader.refresh(crate::clock::unix_now()).await {
        Ok(outcome) => tracing::info!(?outcome, "read the bucket's pointer"),
        Err(e) => tracing::warn!("the bucket does not answer yet ({e}); serving 503 until it does"),
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (config key `listen`)", config.listen))?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let mut background = tokio::task::JoinSet::new();
    background.spawn(reader::follow(
        std::sync::Arc::clone(&reader),
        s3.poll,
        stop.clone(),
    ));
    // Downloads counted here go to the writer's catalog through the bucket.
    let counter = config
        .server
        .count_downloads
        .then(|| std::sync::Arc::new(crate::catalog::downloads::Counter::default()));
    if let Some(counter) = &counter {
        background.spawn(crate::catalog::bucket::push(
            std::sync::Arc::clone(counter),
            bucket,
            s3.poll * 10,
            stop.clone(),
        ));
    }
    let options = server::Options {
        bucket: Some(reader),
        downloads: counter,
        public_repos: server::PublicRepos::new(public_repos(config)),
        ..server::Options::default()
    };
    let shutdown = shutdown_signal();
    println!(
        "hexmirror serving bucket {} (read-only) on http://{addr}",
        s3.bucket
    );
    let app = server::app_with(config.data_dir.join("current"), options);
    serve_until_stopped(config, listener, app, shutdown, stop, background).await
}
