//! Static hosting: a real nginx (Debian) serving `DATA_DIR/current` with
//! `config/nginx.conf`, and stock rebar3 building through it. hexmirror is
//! not running; the tree alone is enough.

mod common;

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// nginx in the foreground with the shipped config, pointed at `root`.
struct Nginx {
    child: Child,
    url: String,
    _prefix: tempfile::TempDir,
}

impl Nginx {
    fn start(root: &Path) -> Self {
        let nginx = require_tool("nginx");
        let prefix = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let shipped =
            fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/nginx.conf"))
                .unwrap();
        let conf = shipped
            .replace(
                "listen 127.0.0.1:8080;",
                &format!("listen 127.0.0.1:{port};"),
            )
            .replace(
                "root /var/lib/hexmirror/current;",
                &format!("root {};", root.display()),
            );
        assert_ne!(
            conf, shipped,
            "the shipped config no longer has the expected listen/root lines"
        );
        let conf_path = prefix.path().join("nginx.conf");
        fs::write(&conf_path, conf).unwrap();
        let child = Command::new(nginx)
            .arg("-p")
            .arg(prefix.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-g")
            .arg(format!(
                "daemon off; master_process off; pid {}/nginx.pid; error_log stderr;",
                prefix.path().display()
            ))
            .stdout(Stdio::null())
            .spawn()
            .expect("start nginx");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            url,
            _prefix: prefix,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx workers run as an unprivileged user: let them traverse to the tree.
fn open_up(path: &Path) {
    let mut p = path.to_path_buf();
    while p.pop() && p != Path::new("/") {
        let mode = fs::metadata(&p).unwrap().permissions().mode();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode | 0o755)).unwrap();
    }
    Command::new("chmod")
        .arg("-R")
        .arg("a+rX")
        .arg(path)
        .status()
        .unwrap();
}

#[test]
fn nginx_serves_the_current_generation_and_rebar3_builds_through_it() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = Mirror::new(&upstream, "");
    let out = mirror.sync();
    assert!(out.ok(), "{out}");
    drop(upstream);
    open_up(&mirror.data_dir());
    let nginx = Nginx::start(&mirror.tree());

    for path in ["packages/beta", "versions", "tarballs/beta-0.2.1.tar"] {
        let got = http("GET", &format!("{}/{path}", nginx.url), &[]);
        assert_eq!(got.status, 200, "{path}");
        assert_eq!(
            got.body,
            fs::read(mirror.tree().join(path)).unwrap(),
            "{path}"
        );
        assert!(got.header("etag").is_some(), "{path}: rebar3 needs an ETag");
        assert!(got.header("content-encoding").is_none(), "{path}");
        assert!(got.header("cache-control").is_some(), "{path}");
    }
    assert_eq!(
        http("GET", &format!("{}/hexmirror.db", nginx.url), &[]).status,
        404
    );
    assert_eq!(
        http(
            "GET",
            &format!("{}/packages/../../hexmirror.db", nginx.url),
            &[]
        )
        .status,
        404
    );

    let project = Rebar3Project::new(&[("beta", "0.2.1")], &fixture_key("upstream.pub.pem"));
    let run = project.compile(&nginx.url);
    assert!(run.success, "rebar3 through nginx failed:\n{}", run.output);
    for app in ["beta", "alpha", "gamma"] {
        assert!(project.has_beam(app), "{app}:\n{}", run.output);
    }
}
