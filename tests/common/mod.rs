//! Shared helpers for the end-to-end suites in `tests/`.
//!
//! - [`Oracle`]: hex_core (the reference implementation, as vendored in
//!   rebar3) driven through `tests/support/hexcore.escript`. It builds signed
//!   upstream repositories and judges what hexmirror serves.
//! - [`TestUpstream`]: an in-process HTTP server that serves a directory the
//!   way the Hex CDN does, logs every request and injects faults.
//! - [`Rebar3Project`]: a throwaway rebar3 project, to prove that a stock
//!   client builds against what we serve.
//! - [`hexmirror`], [`write_config`]: run the binary under test.
//!
//! Tools the suites need (`escript`, `rebar3`) are required, never optional:
//! a missing tool fails the test loudly instead of skipping it.

// Each `tests/*.rs` compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

pub mod browser;
mod mirror;
pub mod mix;
pub mod s3;
pub mod tarballs;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;
#[allow(unused_imports)] // each test crate uses a different subset
pub use mirror::{
    Mirror, Output as Run, Served, rebuild_upstream, repositories_config, signing_section,
};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// How long one oracle call may take before the test fails. hex_core starts
/// in well under a second; a hang means a server under test stopped answering.
const ORACLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one `rebar3 compile` may take. A cold rebar3 with a few packages
/// needs about ten seconds; the margin is for loaded CI machines.
const REBAR3_TIMEOUT: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------
// Tools, paths and the binary under test
// ---------------------------------------------------------------------------

/// Returns the path of executable `name` on `PATH`, or panics with a message
/// that says the tool is required and how to install it.
///
/// The suites never skip: a test that silently passes because rebar3 is
/// missing proves nothing.
pub fn require_tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| is_executable(candidate))
    });
    match found {
        Some(path) => path,
        None => panic!(
            "\n\n*** `{name}` is required by hexmirror's integration tests and is not on PATH ***\n\
             Install it with `bash .ci/run` (it installs Erlang and rebar3), or on Debian/Ubuntu:\n    \
             apt-get install erlang-base erlang-crypto erlang-public-key erlang-inets erlang-ssl rebar3\n\
             These tests are never skipped when a tool is missing.\n"
        ),
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Path of a test-only key in `tests/fixtures/keys/` (see the README there):
/// `upstream.pem`, `upstream.pub.pem`, `upstream.pkcs1.pub.pem`, `other.pem`,
/// `other.pub.pem`.
pub fn fixture_key(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name);
    assert!(path.is_file(), "no fixture key {}", path.display());
    path
}

/// A `Command` for the `hexmirror` binary built by this cargo invocation.
pub fn hexmirror() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hexmirror"))
}

/// Writes `DIR/hexmirror.toml` and returns its path.
///
/// `extra` is appended raw at the end of the `[mirror]` section, which is the
/// last section of the file, so it may hold more `[mirror]` keys (for example
/// `packages = ["beta"]`) or start new sections of its own. The result is
/// parsed before it is written, so a bad `extra` fails here, not in hexmirror.
pub fn write_config(
    dir: &Path,
    upstream_url: &str,
    pubkey: &Path,
    data_dir: &Path,
    extra: &str,
) -> PathBuf {
    let text = format!(
        "data_dir = {data_dir}\n\
         listen = \"127.0.0.1:0\"\n\
         \n\
         [upstream]\n\
         url = {url}\n\
         public_key = {pubkey}\n\
         repository = \"hexpm\"\n\
         \n\
         [mirror]\n\
         concurrency = 4\n\
         {extra}\n",
        data_dir = toml_string(&data_dir.to_string_lossy()),
        url = toml_string(upstream_url),
        pubkey = toml_string(&pubkey.to_string_lossy()),
    );
    if let Err(err) = text.parse::<toml::Table>() {
        panic!("write_config: `extra` makes the config invalid TOML: {err}\n{text}");
    }
    let path = dir.join("hexmirror.toml");
    fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// A TOML basic string. Temp paths are plain ASCII in practice, but escaping
/// keeps a stray quote or backslash from turning into a confusing parse error.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Waits for `child` at most `timeout`; kills it and returns `None` if it is
/// still running then, so a hung server fails the test instead of the CI job.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait().expect("wait for child process") {
            Some(status) => return Some(status),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            None => thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Runs `cmd` to completion with piped stdout and stderr, panicking if it
/// takes longer than `timeout`. The pipes are drained on their own threads so
/// a chatty child cannot block on a full pipe.
fn run_with_timeout(cmd: Command, timeout: Duration) -> Output {
    run_with_input(cmd, timeout, None)
}

/// Like [`run_with_timeout`], with `input` written to the child's stdin.
pub fn run_with_input(mut cmd: Command, timeout: Duration, input: Option<&[u8]>) -> Output {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {shown}: {e}"));
    if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
        std::io::Write::write_all(&mut stdin, bytes).expect("write the child's stdin");
    }
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let status = wait_timeout(&mut child, timeout);
    let output = Output {
        status: status.unwrap_or_default(),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    if status.is_none() {
        panic!(
            "{shown} did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    output
}

// ---------------------------------------------------------------------------
// The oracle: hex_core through tests/support/hexcore.escript
// ---------------------------------------------------------------------------

/// A loopback port nothing listens on (discard), for rebar3's built-in
/// `hexpm` repository: any package found must have come from the server under test.
pub const DEAD_CDN: &str = "http://127.0.0.1:9";

/// A small upstream for the suites, in `hexcore.escript build-upstream` form.
///
/// - alpha 1.0.0, 1.1.0, 2.0.0-rc.1 (a pre-release clients skip for `~> 1.1`)
/// - beta 0.1.0 (alpha ~> 1.0), 0.2.0 (alpha ~> 1.1, retired for security),
///   0.2.1 (alpha ~> 1.1, optional gamma >= 0.0.0)
/// - gamma 3.0.0, reached from beta only as an optional dependency (which
///   rebar3 3.19 still fetches: it ignores `optional`)
/// - delta 1.0.0, unrelated to beta (a package a filtered mirror leaves out)
pub const SPEC_SMALL: &str = r#"
{"alpha", "1.0.0", [], []}.
{"alpha", "1.1.0", [], []}.
{"alpha", "2.0.0-rc.1", [], []}.
{"beta", "0.1.0", [{"alpha", "~> 1.0", false}], []}.
{"beta", "0.2.0", [{"alpha", "~> 1.1", false}],
 [{retired, 'RETIRED_SECURITY', "use 0.2.1"}]}.
{"beta", "0.2.1", [{"alpha", "~> 1.1", false}, {"gamma", ">= 0.0.0", true}], []}.
{"gamma", "3.0.0", [], []}.
{"delta", "1.0.0", [], []}.
"#;

/// Which registry resource a file holds, for [`Oracle::verify_file`].
#[derive(Debug, Clone, Copy)]
pub enum RegistryFile<'a> {
    /// `/names`
    Names,
    /// `/versions`
    Versions,
    /// `/packages/NAME`; the name is checked against the payload as clients do
    Package(&'a str),
}

/// The two checksums of a package tarball, as lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksums {
    /// sha256 over VERSION, metadata.config and contents.tar.gz (`CHECKSUM`)
    pub inner: String,
    /// sha256 of the whole tarball, the one clients check
    pub outer: String,
}

/// hex_core, the reference implementation, run as `escript
/// tests/support/hexcore.escript COMMAND ...`.
///
/// A refusal by hex_core comes back as `Err(reason)`; a usage error or a
/// timeout is a harness bug and panics.
pub struct Oracle;

impl Oracle {
    /// Writes a complete repository signed with the private key `key` into
    /// `dir`: `names`, `versions`, `packages/*`, `tarballs/*`, `public_key`.
    /// `spec` uses the format of [`SPEC_SMALL`]. Panics on failure.
    pub fn build_upstream(dir: &Path, repo: &str, key: &Path, spec: &str) {
        let spec_file = tempfile::Builder::new()
            .prefix("hexcore-spec")
            .suffix(".terms")
            .tempfile()
            .expect("create spec file");
        fs::write(spec_file.path(), spec).expect("write spec file");
        let args: [&OsStr; 5] = [
            "build-upstream".as_ref(),
            dir.as_os_str(),
            repo.as_ref(),
            key.as_os_str(),
            spec_file.path().as_os_str(),
        ];
        if let Err(reason) = Self::run(&args) {
            panic!(
                "hexcore build-upstream into {} failed: {reason}",
                dir.display()
            );
        }
    }

    /// Fetches `/packages/PACKAGE` from `url` the way rebar3 does (signature
    /// against `pubkey`, repository name `repo`, package name) and returns
    /// `(version, outer checksum hex)` per release, in registry order.
    pub fn fetch(
        url: &str,
        repo: &str,
        pubkey: &Path,
        package: &str,
    ) -> Result<Vec<(String, String)>, String> {
        let out = Self::run(&[
            OsStr::new("fetch"),
            url.as_ref(),
            repo.as_ref(),
            pubkey.as_os_str(),
            package.as_ref(),
        ])?;
        Ok(out
            .lines()
            .filter_map(|line| {
                let (version, outer) = line.split_once(' ')?;
                Some((version.to_owned(), outer.to_owned()))
            })
            .collect())
    }

    /// Checks a gzipped, signed registry file on disk as a client would:
    /// signature against `pubkey`, then the repository (and package) name.
    pub fn verify_file(
        file: &Path,
        kind: RegistryFile<'_>,
        repo: &str,
        pubkey: &Path,
    ) -> Result<(), String> {
        let mut args: Vec<&OsStr> = vec!["verify-file".as_ref(), file.as_os_str()];
        match kind {
            RegistryFile::Names => {
                args.extend(["names".as_ref(), repo.as_ref(), pubkey.as_os_str()])
            }
            RegistryFile::Versions => {
                args.extend(["versions".as_ref(), repo.as_ref(), pubkey.as_os_str()])
            }
            RegistryFile::Package(name) => args.extend([
                "package".as_ref(),
                repo.as_ref(),
                pubkey.as_os_str(),
                name.as_ref(),
            ]),
        }
        Self::run(&args).map(|_| ())
    }

    /// Builds one package tarball at `out` with `deps` as `(package,
    /// requirement)` pairs and returns its checksums. Panics on failure.
    pub fn tarball(name: &str, version: &str, out: &Path, deps: &[(&str, &str)]) -> Checksums {
        let deps: Vec<String> = deps.iter().map(|(d, r)| format!("{d}:{r}")).collect();
        let mut args: Vec<&OsStr> = vec![
            "tarball".as_ref(),
            name.as_ref(),
            version.as_ref(),
            out.as_os_str(),
        ];
        args.extend(deps.iter().map(OsStr::new));
        match Self::run(&args) {
            Ok(out) => parse_checksums(&out),
            Err(reason) => panic!("hexcore tarball {name} {version} failed: {reason}"),
        }
    }

    /// Unpacks `tarball` in memory with hex_core, as a client does after a
    /// download; `Err` carries hex_core's reason for refusing it.
    pub fn unpack(tarball: &Path) -> Result<Checksums, String> {
        Self::run(&[OsStr::new("unpack"), tarball.as_os_str()]).map(|out| parse_checksums(&out))
    }

    /// Calls the Hex API as rebar3 3.19's hex_core does: `call` is one of
    /// `publish TARBALL [replace]`, `retire NAME VERSION REASON MESSAGE`,
    /// `unretire NAME VERSION`, `revert NAME VERSION`. Returns the HTTP
    /// status and the body as hex_core decoded it (Erlang `~p` text, `nil`
    /// when the body was not Erlang terms).
    pub fn api(api_url: &str, key: &str, call: &[&str]) -> (u16, String) {
        let mut args: Vec<&OsStr> = vec![OsStr::new(call[0]), api_url.as_ref(), key.as_ref()];
        args.extend(call[1..].iter().map(OsStr::new));
        let out = Self::run(&args).unwrap_or_else(|e| panic!("hexcore {call:?}: {e}"));
        let (status, body) = out.split_once('\n').unwrap_or((out.as_str(), ""));
        let status = status
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("hexcore {call:?}: no status in {out:?}"));
        (status, body.trim().to_owned())
    }

    /// Runs one escript command: `Ok(stdout)` on exit 0, `Err(stderr)` on
    /// exit 1 (hex_core said no), panic on anything else.
    fn run(args: &[&OsStr]) -> Result<String, String> {
        let escript = require_tool("escript");
        // The escript loads hex_core out of rebar3's archive.
        require_tool("rebar3");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/hexcore.escript");
        let mut cmd = Command::new(escript);
        cmd.arg(script).args(args);
        let out = run_with_timeout(cmd, ORACLE_TIMEOUT);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        match out.status.code() {
            Some(0) => Ok(stdout),
            Some(1) => Err(stderr),
            _ => panic!(
                "hexcore.escript {args:?} exited with {}: {stderr}",
                out.status
            ),
        }
    }
}

fn parse_checksums(out: &str) -> Checksums {
    let field = |key: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ').map(str::to_owned))
            .unwrap_or_else(|| panic!("no {key} in hexcore output:\n{out}"))
    };
    Checksums {
        inner: field("inner_checksum"),
        outer: field("outer_checksum"),
    }
}

// ---------------------------------------------------------------------------
// TestUpstream: a directory served like the Hex CDN
// ---------------------------------------------------------------------------

/// One request as [`TestUpstream`] saw and answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Req {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// the request path as sent, e.g. `/packages/beta` (no query)
    pub path: String,
    /// the status code returned, including injected faults and 304s
    pub status: u16,
    /// whether the request carried `If-None-Match` or `If-Modified-Since`
    pub conditional: bool,
}

/// An in-process HTTP server on `127.0.0.1:0` that serves a directory the way
/// the Hex CDN does: GET and HEAD, strong sha256 ETags, `Last-Modified`, 304
/// for `If-None-Match` / `If-Modified-Since`, 404 for anything missing.
///
/// It runs on its own tokio runtime in a background thread, so plain
/// `#[test]` functions can use it while the `hexmirror` binary talks to it as
/// a subprocess. The files are read on every request, so a test may change
/// [`TestUpstream::dir`] between syncs. The server stops when dropped.
pub struct TestUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    // Keeps a directory made by `TestUpstream::build` alive while served.
    _owned_dir: Option<TempDir>,
}

struct Shared {
    root: PathBuf,
    log: Mutex<Vec<Req>>,
    faults: Mutex<Faults>,
}

#[derive(Default)]
struct Faults {
    /// exact path → (status, how many more requests get it)
    fail: HashMap<String, (StatusCode, u32)>,
    /// path prefix → delay before answering
    delay: Vec<(String, Duration)>,
    /// exact path → how its body is sent
    shape: HashMap<String, Shape>,
}

/// How the test upstream sends a file's body: the ways a network or a
/// hostile server lies about a transfer.
#[derive(Debug, Clone)]
pub enum Shape {
    /// `bytes` every `every`, with the true `Content-Length`.
    Trickle {
        /// Bytes per step.
        bytes: usize,
        /// Time between steps.
        every: Duration,
    },
    /// The full `Content-Length`, then half the body, then the end.
    Cut,
    /// Zeros for ever, chunked.
    Endless,
    /// A 302 to this location instead of the file.
    Redirect(String),
}

impl TestUpstream {
    /// Serves the existing directory `dir`; the caller keeps it alive.
    pub fn serve(dir: &Path) -> Self {
        Self::start(dir.to_owned(), None)
    }

    /// Builds `spec` with the oracle into a fresh directory, as repository
    /// `hexpm` signed with `fixtures/keys/upstream.pem`, and serves it.
    pub fn build(spec: &str) -> Self {
        let dir = TempDir::new().expect("create upstream dir");
        Oracle::build_upstream(dir.path(), "hexpm", &fixture_key("upstream.pem"), spec);
        Self::start(dir.path().to_owned(), Some(dir))
    }

    fn start(root: PathBuf, owned: Option<TempDir>) -> Self {
        // Bind before spawning, so the port is known and listening as soon
        // as this returns: no race with the first request.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("set_nonblocking");
        let addr = listener.local_addr().expect("local_addr");
        let shared = Arc::new(Shared {
            root,
            log: Mutex::new(Vec::new()),
            faults: Mutex::new(Faults::default()),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name(format!("test-upstream-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build test upstream runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    // Not a graceful shutdown: a client with an idle
                    // keep-alive connection must not keep a test from ending.
                    // Dropping the runtime drops every connection task.
                    tokio::select! {
                        res = axum::serve(listener, app) => res.expect("test upstream server"),
                        _ = rx => {}
                    }
                });
            })
            .expect("spawn test upstream thread");
        TestUpstream {
            addr,
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
            _owned_dir: owned,
        }
    }

    /// Base URL, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The directory being served.
    pub fn dir(&self) -> &Path {
        &self.shared.root
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<Req> {
        self.shared.log.lock().unwrap().clone()
    }

    /// How many logged requests match `pred`.
    pub fn count(&self, pred: impl Fn(&Req) -> bool) -> usize {
        self.shared
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| pred(r))
            .count()
    }

    /// How many requests were made for exactly `path` (any method, status).
    pub fn count_path(&self, path: &str) -> usize {
        self.count(|r| r.path == path)
    }

    /// Forgets the logged requests, e.g. between two syncs.
    pub fn clear_log(&self) {
        self.shared.log.lock().unwrap().clear();
    }

    /// Answers the next `times` requests for exactly `path` with `status` and
    /// no body. 429 and 503 carry `Retry-After: 1`, as a rate-limiting CDN
    /// would send.
    pub fn fail_next(&self, path: &str, status: u16, times: u32) {
        let status = StatusCode::from_u16(status).expect("valid status code");
        let mut faults = self.shared.faults.lock().unwrap();
        faults.fail.insert(path.to_owned(), (status, times));
    }

    /// Delays every answer for a path starting with `path_prefix` by `delay`
    /// (the longest matching prefix wins). `Duration::ZERO` removes it.
    pub fn delay(&self, path_prefix: &str, delay: Duration) {
        let mut faults = self.shared.faults.lock().unwrap();
        faults.delay.retain(|(p, _)| p != path_prefix);
        if !delay.is_zero() {
            faults.delay.push((path_prefix.to_owned(), delay));
        }
    }

    /// Sends the body of exactly `path` in `shape` from now on.
    pub fn shape(&self, path: &str, shape: Shape) {
        self.shared
            .faults
            .lock()
            .unwrap()
            .shape
            .insert(path.to_owned(), shape);
    }

    /// Removes every injected failure and delay.
    pub fn clear_faults(&self) {
        *self.shared.faults.lock().unwrap() = Faults::default();
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            // Don't turn a test's panic into an abort by panicking again.
            let _ = thread.join();
        }
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri.path().to_owned();
    let conditional = headers.contains_key(header::IF_NONE_MATCH)
        || headers.contains_key(header::IF_MODIFIED_SINCE);

    // Decide the fault under the lock, but sleep outside it: a slow answer
    // for one path must not hold up the others.
    let (delay, injected, shape) = {
        let mut faults = shared.faults.lock().unwrap();
        let shape = faults.shape.get(&path).cloned();
        let delay = faults
            .delay
            .iter()
            .filter(|(prefix, _)| path.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, d)| *d);
        let injected = match faults.fail.get_mut(&path) {
            Some((status, left)) if *left > 0 => {
                *left -= 1;
                Some(*status)
            }
            _ => None,
        };
        (delay, injected, shape)
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }

    let response = match (injected, shape) {
        (Some(status), _) => fault_response(status),
        (None, Some(Shape::Redirect(to))) => Response::builder()
            .status(StatusCode::FOUND)
            .header(header::LOCATION, to)
            .body(Body::empty())
            .unwrap(),
        (None, Some(shape)) => {
            let file = file_response(&shared.root, &method, &path, &headers).await;
            shaped(file, shape).await
        }
        (None, None) => file_response(&shared.root, &method, &path, &headers).await,
    };
    shared.log.lock().unwrap().push(Req {
        method: method.to_string(),
        path,
        status: response.status().as_u16(),
        conditional,
    });
    response
}

/// `response` with its body sent as `shape` says.
async fn shaped(response: Response, shape: Shape) -> Response {
    use tokio::io::AsyncWriteExt;
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let (mut tx, rx) = tokio::io::duplex(64 * 1024);
    let mut parts = parts;
    // An endless body has no length to declare; the others declare the
    // file's true length, whatever they then send.
    let length = (!matches!(shape, Shape::Endless)).then(|| bytes.len().to_string());
    tokio::spawn(async move {
        match shape {
            Shape::Trickle { bytes: step, every } => {
                for chunk in bytes.chunks(step.max(1)) {
                    if tx.write_all(chunk).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(every).await;
                }
            }
            Shape::Cut => {
                let _ = tx.write_all(&bytes[..bytes.len() / 2]).await;
            }
            Shape::Endless => {
                let zeros = vec![0u8; 64 * 1024];
                while tx.write_all(&zeros).await.is_ok() {}
            }
            Shape::Redirect(_) => {}
        }
    });
    parts.headers.remove(header::CONTENT_LENGTH);
    if let Some(length) = length.filter(|_| parts.status == StatusCode::OK) {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, length.parse().unwrap());
    }
    Response::from_parts(
        parts,
        Body::from_stream(tokio_util::io::ReaderStream::new(rx)),
    )
}

fn fault_response(status: StatusCode) -> Response {
    let mut builder = Response::builder().status(status);
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        builder = builder.header(header::RETRY_AFTER, "1");
    }
    builder.body(Body::empty()).unwrap()
}

async fn file_response(root: &Path, method: &Method, path: &str, headers: &HeaderMap) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return Response::builder()
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .header(header::ALLOW, "GET, HEAD")
            .body(Body::empty())
            .unwrap();
    }
    let Some(file) = resolve(root, path) else {
        return status_only(StatusCode::NOT_FOUND);
    };
    let (bytes, modified) = match read_file(&file).await {
        Some(found) => found,
        None => return status_only(StatusCode::NOT_FOUND),
    };
    let etag = format!("\"{}\"", hex::encode(Sha256::digest(&bytes)));
    let last_modified = httpdate::fmt_http_date(modified);

    if not_modified(headers, &etag, modified) {
        return Response::builder()
            .status(StatusCode::NOT_MODIFIED)
            .header(header::ETAG, &etag)
            .header(header::LAST_MODIFIED, &last_modified)
            .body(Body::empty())
            .unwrap();
    }
    let len = bytes.len();
    // The stored bytes as they are: no Content-Encoding, even for the gzipped
    // registry files (clients gunzip those themselves).
    let builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .header(header::ETAG, &etag)
        .header(header::LAST_MODIFIED, &last_modified);
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(bytes)
    };
    builder.body(body).unwrap()
}

fn status_only(status: StatusCode) -> Response {
    Response::builder()
        .status(status)
        .body(Body::empty())
        .unwrap()
}

/// Maps a URL path to a file under `root`, refusing anything that could
/// leave it (`..`, `.`, empty segments, backslashes, NUL).
fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .ok()?;
    let rel = decoded.strip_prefix('/')?;
    let mut file = root.to_owned();
    for segment in rel.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." || segment.contains(['\\', '\0'])
        {
            return None;
        }
        file.push(segment);
    }
    Some(file)
}

async fn read_file(file: &Path) -> Option<(Vec<u8>, SystemTime)> {
    let meta = tokio::fs::metadata(file).await.ok()?;
    if !meta.is_file() {
        return None;
    }
    let bytes = tokio::fs::read(file).await.ok()?;
    Some((bytes, meta.modified().ok()?))
}

/// RFC 9110 §13.1: `If-None-Match` (weak comparison) wins over
/// `If-Modified-Since`, which compares at one-second resolution.
fn not_modified(headers: &HeaderMap, etag: &str, modified: SystemTime) -> bool {
    if let Some(inm) = headers.get(header::IF_NONE_MATCH) {
        let Ok(inm) = inm.to_str() else { return false };
        return inm
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag);
    }
    if let Some(ims) = headers.get(header::IF_MODIFIED_SINCE) {
        let Some(since) = ims
            .to_str()
            .ok()
            .and_then(|s| httpdate::parse_http_date(s).ok())
        else {
            return false;
        };
        // Last-Modified is sent in whole seconds; compare the same way.
        let secs = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        return secs(modified) <= secs(since);
    }
    false
}

// ---------------------------------------------------------------------------
// Rebar3Project: a stock client against what we serve
// ---------------------------------------------------------------------------

/// The app name of every [`Rebar3Project`].
const PROJECT_APP: &str = "hexmirror_client";

/// A throwaway rebar3 project with its own `HOME`, package cache and global
/// config, so nothing is cached between tests or taken from the developer's
/// machine.
pub struct Rebar3Project {
    dir: TempDir,
    debug: bool,
}

/// The outcome of one `rebar3 compile`.
#[derive(Debug)]
pub struct Rebar3Run {
    /// whether rebar3 exited 0
    pub success: bool,
    /// stdout and stderr, interleaved as rebar3 wrote them
    pub output: String,
}

impl Rebar3Project {
    /// A project depending on `deps` (`(package, version requirement)`) from
    /// the repository `hexpm`, verified with the SPKI or PKCS#1 PEM at
    /// `repo_public_key`. Point it at a server with [`Rebar3Project::compile`]
    /// (`HEX_CDN`).
    pub fn new(deps: &[(&str, &str)], repo_public_key: &Path) -> Self {
        Self::with_repo(deps, "hexpm", None, repo_public_key)
    }

    /// A project whose `rebar.config` declares repository `name`, optionally
    /// at `repo_url`: the setup for a mirror that serves under its own name
    /// and signs with its own key. Repos listed there are tried before hexpm.
    pub fn with_repo(
        deps: &[(&str, &str)],
        name: &str,
        repo_url: Option<&str>,
        repo_public_key: &Path,
    ) -> Self {
        let dir = TempDir::new().expect("create rebar3 project dir");
        let pem = fs::read_to_string(repo_public_key)
            .unwrap_or_else(|e| panic!("read {}: {e}", repo_public_key.display()));
        let deps = deps
            .iter()
            .map(|(name, req)| format!("{{{name}, {}}}", erlang_string(req)))
            .collect::<Vec<_>>()
            .join(", ");
        let url = repo_url
            .map(|u| format!(", repo_url => <<{}>>", erlang_string(u)))
            .unwrap_or_default();
        let rebar_config = format!(
            "{{deps, [{deps}]}}.\n\
             {{hex, [{{repos, [#{{name => <<{name}>>{url},\n\
             \x20                   repo_public_key => <<{pem}>>}}]}}]}}.\n",
            name = erlang_string(name),
            pem = erlang_string(&pem),
        );
        fs::write(dir.path().join("rebar.config"), rebar_config).expect("write rebar.config");
        let app_src = format!(
            "{{application, {PROJECT_APP},\n \
             [{{description, \"hexmirror test client\"}},\n  \
             {{vsn, \"0.0.0\"}},\n  \
             {{applications, [kernel, stdlib]}}]}}.\n"
        );
        fs::create_dir_all(dir.path().join("src")).expect("create src");
        fs::write(
            dir.path().join(format!("src/{PROJECT_APP}.app.src")),
            app_src,
        )
        .expect("write .app.src");
        Rebar3Project { dir, debug: false }
    }

    /// Runs rebar3 with `DEBUG=1`, which logs every request and why a
    /// package was refused ("record format that has been deprecated" means a
    /// bad signature or repository name).
    pub fn debug(mut self, on: bool) -> Self {
        self.debug = on;
        self
    }

    /// The project directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `rebar3 compile` with `HEX_CDN=hex_cdn`. Panics only if rebar3
    /// is missing or hangs; a failed build is reported in the result.
    pub fn compile(&self, hex_cdn: &str) -> Rebar3Run {
        let rebar3 = require_tool("rebar3");
        let root = self.dir.path();
        let sandbox = root.join(".sandbox");
        for sub in ["home", "cache", "global"] {
            fs::create_dir_all(sandbox.join(sub)).expect("create rebar3 sandbox");
        }
        // One file for both streams keeps rebar3's own ordering of messages.
        let log_path = sandbox.join("rebar3.log");
        let log = File::create(&log_path).expect("create rebar3 log");
        let mut cmd = Command::new(rebar3);
        cmd.arg("compile")
            .current_dir(root)
            .env("HEX_CDN", hex_cdn)
            .env("HOME", sandbox.join("home"))
            .env("REBAR_CACHE_DIR", sandbox.join("cache"))
            .env("REBAR_GLOBAL_CONFIG_DIR", sandbox.join("global"))
            // Plain text, so tests can search the output.
            .env("REBAR_COLOR", "none")
            // Anything that would change where or how rebar3 fetches.
            .env_remove("HEX_MIRROR")
            .env_remove("REBAR_OFFLINE")
            .env_remove("REBAR_NO_VERIFY_REPO_ORIGIN")
            .env_remove("REBAR_CONFIG")
            .env_remove("REBAR_PROFILE")
            .env_remove("QUIET")
            .env_remove("DEBUG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        if self.debug {
            cmd.env("DEBUG", "1");
        }
        let mut child = cmd.spawn().expect("spawn rebar3");
        let status = wait_timeout(&mut child, REBAR3_TIMEOUT);
        let output = fs::read_to_string(&log_path).unwrap_or_default();
        match status {
            Some(status) => Rebar3Run {
                success: status.success(),
                output,
            },
            None => panic!("rebar3 compile did not finish within {REBAR3_TIMEOUT:?}:\n{output}"),
        }
    }

    /// `_build/default/lib/APP`, where rebar3 puts a fetched dependency.
    pub fn lib_dir(&self, app: &str) -> PathBuf {
        self.dir.path().join("_build/default/lib").join(app)
    }

    /// Whether `_build/default/lib/APP/ebin/APP.beam` exists, i.e. the
    /// dependency was fetched, unpacked and compiled.
    pub fn has_beam(&self, app: &str) -> bool {
        self.lib_dir(app)
            .join("ebin")
            .join(format!("{app}.beam"))
            .is_file()
    }
}

/// An Erlang string literal (also valid inside `<<...>>`).
fn erlang_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------
// A plain HTTP client for assertions
// ---------------------------------------------------------------------------

/// A response as seen by [`http`].
#[derive(Debug)]
pub struct HttpResponse {
    /// status code
    pub status: u16,
    /// response headers
    pub headers: HeaderMap,
    /// the body, exactly as received (no decoding of any kind)
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The value of header `name`, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }
}

/// Sends one request (`method` is `GET`, `HEAD`, ...) with extra `headers`
/// and returns the answer. Blocking, usable from any test: the request runs
/// on a fresh runtime in its own thread, so it also works inside
/// `#[tokio::test]`.
pub fn http(method: &str, url: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http_body(method, url, headers, Vec::new())
}

/// Like [`http`], sending `body` when it is not empty.
pub fn http_body(method: &str, url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> HttpResponse {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("valid method");
    let url = url.to_owned();
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build client runtime");
        rt.block_on(async move {
            // Redirects are answers to assert on, not to follow.
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("build reqwest client");
            let mut request = client.request(method.clone(), &url);
            for (k, v) in &headers {
                request = request.header(k, v);
            }
            if !body.is_empty() {
                request = request.body(body);
            }
            let response = request
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
            HttpResponse {
                status: response.status().as_u16(),
                headers: response.headers().clone(),
                body: response.bytes().await.expect("read body").to_vec(),
            }
        })
    })
    .join()
    .expect("http request thread panicked")
}
