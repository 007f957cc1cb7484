//! Driving the `hexmirror` binary in tests: a data directory with a config,
//! `sync` runs, and a `serve` process.

use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tempfile::TempDir;

use super::{Oracle, TestUpstream, fixture_key, hexmirror, run_with_timeout, write_config};

/// How long one `hexmirror sync` may take in a test before it is a hang.
const SYNC_TIMEOUT: Duration = Duration::from_secs(120);

/// A mirror under test: a temp dir holding its config and data directory.
pub struct Mirror {
    dir: TempDir,
    config: PathBuf,
}

/// What a finished `hexmirror` process said.
pub struct Output {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output (the summary).
    pub stdout: String,
    /// Standard error (the logs).
    pub stderr: String,
}

impl Output {
    /// Exit code 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Mirror {
    /// A mirror of `upstream` trusting `fixtures/keys/upstream.pub.pem`;
    /// `mirror_extra` goes into the `[mirror]` section (e.g. a package list).
    pub fn new(upstream: &TestUpstream, mirror_extra: &str) -> Self {
        Self::with_upstream_keys(upstream, "", mirror_extra)
    }

    /// Like [`Mirror::new`], with extra `[upstream]` keys (`timeout_secs = 1`).
    pub fn with_upstream_keys(
        upstream: &TestUpstream,
        upstream_extra: &str,
        mirror_extra: &str,
    ) -> Self {
        let dir = TempDir::new().expect("mirror temp dir");
        let data = dir.path().join("data");
        let config = write_config(
            dir.path(),
            &upstream.url(),
            &fixture_key("upstream.pub.pem"),
            &data,
            mirror_extra,
        );
        if !upstream_extra.is_empty() {
            let text = fs::read_to_string(&config).unwrap().replacen(
                "repository = \"hexpm\"\n",
                &format!("repository = \"hexpm\"\n{upstream_extra}\n"),
                1,
            );
            fs::write(&config, text).unwrap();
        }
        Self { dir, config }
    }

    /// The config file.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The served tree: the current generation.
    pub fn tree(&self) -> PathBuf {
        self.data_dir().join("current")
    }

    /// `hexmirror sync --config ...` as a command, for tests that manage it.
    pub fn sync_command(&self) -> Command {
        let mut cmd = hexmirror();
        cmd.arg("sync").arg("--config").arg(&self.config);
        cmd
    }

    /// Runs `hexmirror sync` and fails the test, showing its output, unless it succeeds.
    pub fn sync_ok(&self) -> Output {
        let out = self.sync();
        assert!(out.ok(), "sync failed: {out}");
        out
    }

    /// Runs a sync to the end and returns what it printed.
    pub fn sync(&self) -> Output {
        let out = run_with_timeout(self.sync_command(), SYNC_TIMEOUT);
        Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts `hexmirror serve` on a free loopback port.
    pub fn serve(&self) -> Served {
        Served::start(&self.config)
    }
}

impl Mirror {
    /// A mirror with one repository of ours (`repo_body` is the body of its
    /// `[[repository]]` table), signed with `other.pem`, plus `sections`
    /// appended to the config, after one sync that must succeed.
    pub fn hosting(upstream: &TestUpstream, repo_body: &str, sections: &str) -> Self {
        let extra = format!(
            "{}\n{sections}\n",
            repositories_config(&fixture_key("other.pem"), &[repo_body])
        );
        let mirror = Self::new(upstream, &extra);
        let out = mirror.sync();
        assert!(out.ok(), "first sync failed:\n{out}");
        mirror
    }

    /// Creates an API token with `hexmirror token create ARGS...` and
    /// returns its secret.
    pub fn token(&self, args: &[&str]) -> String {
        let mut all = vec!["token", "create"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(out.ok(), "token create {args:?} failed:\n{out}");
        out.stdout.trim().to_owned()
    }
}

/// A running `hexmirror serve`, killed when dropped.
pub struct Served {
    child: Child,
    url: String,
}

impl Served {
    /// Starts `hexmirror serve --config CONFIG` and waits until it listens.
    pub fn start(config: &Path) -> Self {
        let mut cmd = hexmirror();
        cmd.arg("serve").arg("--config").arg(config);
        cmd.stderr(Stdio::null());
        Self::spawn(cmd, String::new)
    }

    /// Spawns `cmd` (a `hexmirror serve`), reads the address line it prints
    /// first, and panics with `context()` if none comes.
    pub fn spawn(mut cmd: Command, context: impl Fn() -> String) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn hexmirror serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("hexmirror serve printed no address\n{}", context()));
        let url = line
            .rsplit(" on ")
            .next()
            .filter(|u| u.starts_with("http://"))
            .unwrap_or_else(|| panic!("unexpected first line from serve: {line}"))
            .to_owned();
        Self { child, url }
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The process id (to send signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Served {
    /// Stops it as a service manager does (SIGTERM) and waits for the exit:
    /// what it writes at shutdown is on disk afterwards.
    pub fn stop(mut self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().expect("wait for serve").is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "serve did not exit within 10 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `[signing] key = KEY` followed by one `[[repository]]` table per entry of
/// `repos` (each the body of the table, e.g. `name = "mirror"`). Goes into
/// `Mirror::new`'s extra, which ends the file, so it may open sections.
pub fn repositories_config(key: &Path, repos: &[&str]) -> String {
    let mut text = signing_section(key);
    for body in repos {
        text.push_str(&format!("\n[[repository]]\n{body}\n"));
    }
    text
}

/// The `[signing]` section alone, so a test can swap the key in place.
pub fn signing_section(key: &Path) -> String {
    // Debug quoting is a valid TOML basic string for the ASCII temp paths.
    format!("\n[signing]\nkey = {:?}\n", key.display().to_string())
}

/// Replaces the upstream's content with `spec` built by the oracle (same
/// key, same repository). hex_core is deterministic, so unchanged packages
/// keep their bytes.
pub fn rebuild_upstream(upstream: &TestUpstream, spec: &str) {
    for sub in ["packages", "tarballs"] {
        let dir = upstream.dir().join(sub);
        for entry in fs::read_dir(&dir).unwrap() {
            fs::remove_file(entry.unwrap().path()).unwrap();
        }
    }
    Oracle::build_upstream(upstream.dir(), "hexpm", &fixture_key("upstream.pem"), spec);
}

// ---------------------------------------------------------------------------
// Generations, manifests and `hexmirror verify` / `gc`
// ---------------------------------------------------------------------------

/// How long one `hexmirror verify` or `gc` may take in a test.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

impl Mirror {
    /// The manifest signing key: the first sync creates it at the default
    /// place, `DATA_DIR/keys/manifest.pem` (`verify --key` takes it as is).
    pub fn manifest_key_path(&self) -> PathBuf {
        self.data_dir().join("keys/manifest.pem")
    }

    /// The manifest signing key, loaded.
    pub fn manifest_key(&self) -> hexmirror::manifest::ManifestKey {
        let pem = fs::read_to_string(self.manifest_key_path()).expect("read the manifest key");
        hexmirror::manifest::ManifestKey::from_pem(&pem).expect("manifest key")
    }

    /// The current generation's manifest (with its delta, if hosted changes
    /// patched it), checked against the mirror's key (but not for expiry, so
    /// a test can read one it forged as expired).
    pub fn current_manifest(&self) -> hexmirror::manifest::Manifest {
        let (bytes, delta) =
            hexmirror::store::read_manifest(&self.tree()).expect("read the current manifest");
        hexmirror::manifest::verify_with_delta(
            &bytes,
            delta.as_deref(),
            &self.manifest_key().public(),
            0,
            None,
        )
        .expect("the current manifest verifies with the mirror's key")
    }

    /// Replaces the current generation's manifest with `edit` applied to it,
    /// signed by `key`: a forgery when `key` is not the mirror's, otherwise a
    /// validly signed manifest the mirror never published. Written with a
    /// rename so the manifest is a new file (no other link is touched).
    pub fn replace_current_manifest(
        &self,
        key: &hexmirror::manifest::ManifestKey,
        edit: impl FnOnce(&mut hexmirror::manifest::Manifest),
    ) {
        let mut manifest = self.current_manifest();
        edit(&mut manifest);
        let path = self.tree().join(hexmirror::store::MANIFEST_FILE);
        let tmp = path.with_extension("forged");
        fs::write(&tmp, hexmirror::manifest::sign(&manifest, key)).unwrap();
        fs::rename(&tmp, &path).unwrap();
    }

    /// Runs `hexmirror ARGS... --config CONFIG` to the end.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, None)
    }

    /// Like [`Mirror::run`], with `input` on standard input.
    pub fn run_with_stdin(&self, args: &[&str], input: Option<&str>) -> Output {
        let mut cmd = super::hexmirror();
        cmd.args(args).arg("--config").arg(&self.config);
        let out = super::run_with_input(cmd, COMMAND_TIMEOUT, input.map(str::as_bytes));
        Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts `hexmirror verify` accepts the current generation.
    pub fn assert_verifies(&self) {
        let out = self.run(&["verify"]);
        assert!(out.ok(), "hexmirror verify failed:\n{out}");
    }
}
