//! The command line: `hexmirror sync` and `hexmirror serve`. The only place
//! that turns errors into exit codes and prints for people.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

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
    Sync,
    /// Serve the mirrored tree read-only over HTTP.
    Serve,
}

/// Exit status for a sync that finished with failures.
const EXIT_SYNC_FAILED: u8 = 1;
/// Exit status for a configuration or start-up problem.
const EXIT_CONFIG: u8 = 2;

/// Runs the parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hexmirror: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
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
            Command::Sync => run_sync(&config).await,
            Command::Serve => run_serve(&config).await,
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

async fn run_sync(config: &Config) -> anyhow::Result<ExitCode> {
    tracing::info!(upstream = %config.upstream.url, data_dir = %config.data_dir.display(), "sync starting");
    let progress = Progress::new(std::io::stderr().is_terminal());
    let summary = sync::run(config, &progress).await?;
    print_summary(&summary);
    Ok(if summary.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_SYNC_FAILED)
    })
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
    if !s.index_published {
        println!("  /names and /versions were not updated; the previous index is still served");
    }
}

async fn run_serve(config: &Config) -> anyhow::Result<ExitCode> {
    let tree = config.data_dir.join("tree");
    if !tree.join("packages").is_dir() {
        tracing::warn!(tree = %tree.display(), "no mirrored tree yet; run `hexmirror sync` first");
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (config key `listen`)", config.listen))?;
    let addr = listener.local_addr()?;
    println!("hexmirror serving {} on http://{addr}", tree.display());
    server::run(listener, server::router(tree), shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down");
}
