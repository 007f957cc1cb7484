//! Stock `mix` with the stock Hex 2.5.1 client (`../shared/clients/hex-2.5.1.ez`,
//! built unmodified from Hex's source), in a throwaway home, and a `hexmirror
//! serve` whose log the test can read.
//!
//! Like the other tools, `mix` and the archive are required: a missing one
//! fails the test with instructions, never skips it.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::{Served, hexmirror, is_executable, wait_timeout};

/// How long one `mix` task may take. A cold mix with Hex starts in about a
/// second; the margin is for loaded CI machines.
const MIX_TIMEOUT: Duration = Duration::from_secs(180);

/// Environment variables that change where or how Hex talks to servers, or
/// which project mix runs; cleared so the developer's shell cannot leak in.
const HEX_ENV: &[&str] = &[
    "HEX_API_URL",
    "HEX_API_KEY",
    "HEX_MIRROR",
    "HEX_TRUSTED_MIRROR",
    "HEX_CDN",
    "HEX_OFFLINE",
    "HEX_REPOS_KEY",
    "HEX_UNSAFE_REGISTRY",
    "HEX_NO_VERIFY_REPO_ORIGIN",
    "HEX_HTTP_TIMEOUT",
    "HEX_CACERTS_PATH",
    "MIX_ENV",
    "MIX_EXS",
    "MIX_TARGET",
    "MIX_DEPS_PATH",
    "MIX_BUILD_PATH",
];

/// The Hex client archive, from the shared directory beside the repository.
pub fn hex_archive() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/clients/hex-2.5.1.ez");
    assert!(
        path.is_file(),
        "\n\n*** the stock Hex client {} is required by tests/mix.rs and is missing ***\n\
         It lives in the shared directory next to the repository (see ../shared/clients/README.md).\n\
         These tests are never skipped when a tool is missing.\n",
        path.display()
    );
    path
}

/// `mix` on `PATH`, or a panic that says how to install it.
pub fn require_mix() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("mix"))
            .find(|candidate| is_executable(candidate))
    });
    found.unwrap_or_else(|| {
        panic!(
            "\n\n*** `mix` is required by tests/mix.rs and is not on PATH ***\n\
             Install it with `bash .ci/run`, or on Debian/Ubuntu: apt-get install elixir\n\
             These tests are never skipped when a tool is missing.\n"
        )
    })
}

/// A stock mix with Hex 2.5.1 installed into its own `MIX_HOME` and
/// `HEX_HOME`, with a project directory to run tasks in.
pub struct MixClient {
    dir: TempDir,
    mix: PathBuf,
}

/// The outcome of one mix task.
#[derive(Debug)]
pub struct MixRun {
    /// Whether mix exited 0.
    pub success: bool,
    /// stdout and stderr, interleaved as mix wrote them.
    pub output: String,
}

impl MixClient {
    /// Installs the archive into a fresh home and writes a project for
    /// package `app` at `version` (a library with one module, publishable:
    /// description, licence).
    pub fn new(app: &str, version: &str) -> Self {
        let mix = require_mix();
        let archive = hex_archive();
        let dir = TempDir::new().expect("create mix client dir");
        for sub in ["home", "mix_home", "hex_home", "project/lib"] {
            fs::create_dir_all(dir.path().join(sub)).expect("create mix dirs");
        }
        let module: String = app
            .split('_')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect();
        let project = dir.path().join("project");
        fs::write(
            project.join("mix.exs"),
            format!(
                "defmodule {module}.MixProject do\n  \
                 use Mix.Project\n  \
                 def project do\n    \
                 [app: :{app}, version: \"{version}\", elixir: \"~> 1.14\", deps: [],\n     \
                 description: \"{app}, published by hexmirror's tests\",\n     \
                 package: [licenses: [\"Apache-2.0\"], links: %{{}}]]\n  \
                 end\n\
                 end\n"
            ),
        )
        .expect("write mix.exs");
        fs::write(
            project.join(format!("lib/{app}.ex")),
            format!("defmodule {module} do\n  def hello, do: :world\nend\n"),
        )
        .expect("write the module");
        let client = Self { dir, mix };
        let installed = client.run(
            &["archive.install", &archive.to_string_lossy(), "--force"],
            &[],
        );
        assert!(
            installed.success,
            "mix archive.install {} failed:\n{}",
            archive.display(),
            installed.output
        );
        client
    }

    /// The project directory.
    pub fn project(&self) -> PathBuf {
        self.dir.path().join("project")
    }

    /// `HEX_HOME`, where Hex keeps its config and fetched docs.
    pub fn hex_home(&self) -> PathBuf {
        self.dir.path().join("hex_home")
    }

    /// Runs `mix ARGS...` in the project with `env` on top of a clean
    /// environment. Panics only if mix hangs; a failed task is in the result.
    pub fn run(&self, args: &[&str], env: &[(&str, &str)]) -> MixRun {
        let (child, log_path) = self.spawn(args, env);
        self.wait(child, &log_path)
    }

    /// Starts `mix ARGS...` as [`MixClient::run`] does, without waiting:
    /// the child, and the log its output goes to (to read as it runs).
    pub fn spawn(&self, args: &[&str], env: &[(&str, &str)]) -> (std::process::Child, PathBuf) {
        let root = self.dir.path();
        let log_path = root.join(format!("mix-{}.log", next_log_id()));
        let log = File::create(&log_path).expect("create mix log");
        let mut cmd = Command::new(&self.mix);
        cmd.args(args)
            .current_dir(root.join("project"))
            .env("HOME", root.join("home"))
            .env("MIX_HOME", root.join("mix_home"))
            .env("HEX_HOME", root.join("hex_home"))
            // Elixir warns on a non-UTF-8 locale; keep the output plain.
            .env("LC_ALL", "C.UTF-8")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        for name in HEX_ENV {
            cmd.env_remove(name);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        (cmd.spawn().expect("spawn mix"), log_path)
    }

    /// Waits for a child of [`MixClient::spawn`] to end.
    pub fn wait(&self, mut child: std::process::Child, log: &std::path::Path) -> MixRun {
        let status = wait_timeout(&mut child, MIX_TIMEOUT);
        let output = fs::read_to_string(log).unwrap_or_default();
        match status {
            Some(status) => MixRun {
                success: status.success(),
                output,
            },
            None => panic!("mix did not finish within {MIX_TIMEOUT:?}:\n{output}"),
        }
    }

    /// Like [`MixClient::run`], failing the test unless the task succeeds.
    pub fn run_ok(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let run = self.run(args, env);
        assert!(run.success, "mix {args:?} failed:\n{}", run.output);
        run.output
    }
}

/// A number for each mix run, so every run keeps its own log file.
fn next_log_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed).to_string()
}

/// `hexmirror serve --config CONFIG` with `HEXMIRROR_LOG=log_filter` and its
/// log written to a file the test reads; killed when dropped.
pub struct LoggedServe {
    served: Served,
    _dir: TempDir,
    log: PathBuf,
}

impl LoggedServe {
    /// Starts the server and waits until it listens.
    pub fn start(config: &Path, log_filter: &str) -> Self {
        let dir = TempDir::new().expect("serve log dir");
        let log = dir.path().join("serve.log");
        let mut cmd = hexmirror();
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .env("HEXMIRROR_LOG", log_filter)
            // Plain text: tracing colours only a terminal, but say it anyway.
            .env("NO_COLOR", "1")
            .stderr(File::create(&log).expect("create serve log"));
        let shown = log.clone();
        let served = Served::spawn(cmd, move || {
            format!(
                "its log:\n{}",
                fs::read_to_string(&shown).unwrap_or_default()
            )
        });
        Self {
            served,
            _dir: dir,
            log,
        }
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        self.served.url()
    }

    /// Everything the server logged so far, without terminal colour codes.
    pub fn log(&self) -> String {
        let raw = fs::read_to_string(&self.log).unwrap_or_default();
        strip_ansi(&raw)
    }
}

/// Removes `ESC [ ... m` sequences.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
