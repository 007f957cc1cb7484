//! Self-test of the test harness in `tests/common`: the hex_core oracle, the
//! in-process upstream and the rebar3 recipe, run end to end with no
//! hexmirror in between. If these fail, every other suite's verdicts are
//! suspect.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{
    Oracle, Rebar3Project, RegistryFile, SPEC_SMALL, TestUpstream, fixture_key, http, write_config,
};
use sha2::{Digest, Sha256};

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The status of a GET for `path` sent verbatim, without URL normalisation.
fn raw_get_status(base: &str, path: &str) -> u16 {
    let addr = base.strip_prefix("http://").unwrap();
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).expect("status line");
    status.parse().unwrap()
}

#[test]
fn oracle_fetch_checks_signature_and_repository_name() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let good_key = fixture_key("upstream.pub.pem");

    let releases = Oracle::fetch(&upstream.url(), "hexpm", &good_key, "beta")
        .expect("hex_core accepts the upstream it built");
    let versions: Vec<&str> = releases.iter().map(|(v, _)| v.as_str()).collect();
    assert_eq!(versions, ["0.1.0", "0.2.0", "0.2.1"]);
    // The signed outer checksums are the sha256 of the tarballs we serve.
    for (version, outer) in &releases {
        let tarball =
            fs::read(upstream.dir().join(format!("tarballs/beta-{version}.tar"))).unwrap();
        assert_eq!(outer, &sha256_hex(&tarball), "beta {version}");
    }
    // SemVer order, pre-release before its release.
    let alpha = Oracle::fetch(&upstream.url(), "hexpm", &good_key, "alpha").unwrap();
    let alpha: Vec<&str> = alpha.iter().map(|(v, _)| v.as_str()).collect();
    assert_eq!(alpha, ["1.0.0", "1.1.0", "2.0.0-rc.1"]);

    let wrong_key = Oracle::fetch(
        &upstream.url(),
        "hexpm",
        &fixture_key("other.pub.pem"),
        "beta",
    )
    .expect_err("a payload signed by another key is refused");
    eprintln!("wrong key: {wrong_key}");
    assert!(wrong_key.contains("unverified"), "{wrong_key}");

    let wrong_repo = Oracle::fetch(&upstream.url(), "other", &good_key, "beta")
        .expect_err("a payload for repository hexpm is refused as repository other");
    eprintln!("wrong repository: {wrong_repo}");
    assert!(wrong_repo.contains("unverified"), "{wrong_repo}");

    let missing = Oracle::fetch(&upstream.url(), "hexpm", &good_key, "nosuch").unwrap_err();
    assert!(missing.contains("404"), "{missing}");
}

#[test]
fn oracle_verifies_registry_files_on_disk() {
    let dir = tempfile::TempDir::new().unwrap();
    Oracle::build_upstream(
        dir.path(),
        "hexpm",
        &fixture_key("upstream.pem"),
        SPEC_SMALL,
    );
    let key = fixture_key("upstream.pub.pem");
    let file = |p: &str| dir.path().join(p);

    Oracle::verify_file(&file("names"), RegistryFile::Names, "hexpm", &key).unwrap();
    Oracle::verify_file(&file("versions"), RegistryFile::Versions, "hexpm", &key).unwrap();
    let beta = file("packages/beta");
    Oracle::verify_file(&beta, RegistryFile::Package("beta"), "hexpm", &key).unwrap();
    // hex_core takes PKCS#1 public keys as well as SPKI.
    let pkcs1 = fixture_key("upstream.pkcs1.pub.pem");
    Oracle::verify_file(&beta, RegistryFile::Package("beta"), "hexpm", &pkcs1).unwrap();

    let other_key = fixture_key("other.pub.pem");
    let refusals = [
        Oracle::verify_file(&beta, RegistryFile::Package("beta"), "hexpm", &other_key),
        Oracle::verify_file(&beta, RegistryFile::Package("beta"), "other", &key),
        Oracle::verify_file(&beta, RegistryFile::Package("alpha"), "hexpm", &key),
        Oracle::verify_file(
            &file("tarballs/beta-0.2.1.tar"),
            RegistryFile::Names,
            "hexpm",
            &key,
        ),
    ];
    for refusal in refusals {
        let reason = refusal.expect_err("hex_core refuses it");
        eprintln!("refused: {reason}");
    }

    // The published key is the SPKI form of the signing key.
    let published = fs::read_to_string(file("public_key")).unwrap();
    let fixture = fs::read_to_string(&key).unwrap();
    assert_eq!(published.trim(), fixture.trim());
}

#[test]
fn oracle_tarballs_and_unpack() {
    let dir = tempfile::TempDir::new().unwrap();
    let tar = dir.path().join("foo-1.0.0.tar");
    let built = Oracle::tarball("foo", "1.0.0", &tar, &[("bar", "~> 1.0")]);
    let bytes = fs::read(&tar).unwrap();
    assert_eq!(built.outer, sha256_hex(&bytes));
    assert_eq!(Oracle::unpack(&tar).unwrap(), built);

    // A truncated download must be refused by the reference too.
    let truncated = dir.path().join("truncated.tar");
    fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    // hex_core 0.7.1 does not return an error here: it crashes
    // ({case_clause, eof} in r3_hex_erl_tar), which the escript reports as a
    // refusal all the same, as a client would fail.
    let reason = Oracle::unpack(&truncated).unwrap_err();
    eprintln!("truncated tarball: {reason}");
}

#[test]
fn test_upstream_serves_like_a_cdn() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let url = format!("{}/packages/beta", upstream.url());
    let on_disk = fs::read(upstream.dir().join("packages/beta")).unwrap();

    let first = http("GET", &url, &[]);
    assert_eq!(first.status, 200);
    assert_eq!(first.body, on_disk, "served byte for byte");
    assert_eq!(first.header("content-encoding"), None);
    let etag = first.header("etag").expect("ETag").to_owned();
    assert_eq!(etag, format!("\"{}\"", sha256_hex(&on_disk)));
    let last_modified = first
        .header("last-modified")
        .expect("Last-Modified")
        .to_owned();

    let revalidated = http("GET", &url, &[("if-none-match", &etag)]);
    assert_eq!(revalidated.status, 304);
    assert!(revalidated.body.is_empty());
    let by_date = http("GET", &url, &[("if-modified-since", &last_modified)]);
    assert_eq!(by_date.status, 304);
    let stale = http("GET", &url, &[("if-none-match", "\"0000\"")]);
    assert_eq!(stale.status, 200);

    let head = http("HEAD", &url, &[]);
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(on_disk.len().to_string().as_str())
    );
    assert!(head.body.is_empty());

    assert_eq!(
        http("GET", &format!("{}/packages/nosuch", upstream.url()), &[]).status,
        404
    );
    // reqwest resolves `..` before sending, so send this one by hand.
    assert_eq!(raw_get_status(&upstream.url(), "/packages/../names"), 404);
    assert_eq!(
        raw_get_status(&upstream.url(), "/packages/%2e%2e/names"),
        404
    );
    assert_eq!(
        http("GET", &format!("{}/packages", upstream.url()), &[]).status,
        404
    );

    let log = upstream.requests();
    eprintln!("{log:#?}");
    assert_eq!(
        upstream.count(|r| r.path == "/packages/beta" && r.conditional && r.status == 304),
        2
    );
    assert_eq!(upstream.count(|r| r.method == "HEAD"), 1);
    upstream.clear_log();
    assert!(upstream.requests().is_empty());

    // Faults: the next two answers are 429 with Retry-After, then normal.
    upstream.fail_next("/packages/beta", 429, 2);
    for _ in 0..2 {
        let limited = http("GET", &url, &[]);
        assert_eq!(limited.status, 429);
        assert_eq!(limited.header("retry-after"), Some("1"));
    }
    assert_eq!(http("GET", &url, &[]).status, 200);
    assert_eq!(upstream.count(|r| r.status == 429), 2);

    upstream.delay("/tarballs/", Duration::from_millis(300));
    let started = Instant::now();
    let tarball = http(
        "GET",
        &format!("{}/tarballs/alpha-1.0.0.tar", upstream.url()),
        &[],
    );
    assert_eq!(tarball.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(http("GET", &url, &[]).status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "delay is per prefix"
    );

    // The tree is read on every request, so tests can change it between syncs.
    fs::write(upstream.dir().join("packages/beta"), b"changed").unwrap();
    let changed = http("GET", &url, &[("if-none-match", &etag)]);
    assert_eq!(changed.status, 200);
    assert_eq!(changed.body, b"changed");
}

#[test]
fn rebar3_compiles_through_test_upstream() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let project =
        Rebar3Project::new(&[("beta", "0.2.1")], &fixture_key("upstream.pub.pem")).debug(true);

    let run = project.compile(&upstream.url());
    let requests = upstream.requests();
    assert!(
        run.success,
        "rebar3 compile failed:\n{}\nrequests: {requests:#?}",
        run.output
    );
    for line in run
        .output
        .lines()
        .filter(|l| l.contains("Fetching ") || l.contains("Downloaded package"))
    {
        eprintln!("{line}");
    }
    assert!(project.has_beam("beta"), "{}", run.output);
    // alpha comes in transitively, at the newest version matching ~> 1.1
    // (2.0.0-rc.1 is neither in range nor a release).
    assert!(project.has_beam("alpha"), "{}", run.output);
    let alpha_app = fs::read_to_string(project.lib_dir("alpha").join("ebin/alpha.app")).unwrap();
    assert!(alpha_app.contains("\"1.1.0\""), "{alpha_app}");

    let fetched = |path: &str| upstream.count(|r| r.path == path && r.status == 200);
    assert_eq!(fetched("/tarballs/beta-0.2.1.tar"), 1, "{requests:#?}");
    assert_eq!(fetched("/tarballs/alpha-1.1.0.tar"), 1, "{requests:#?}");
    assert_eq!(
        fetched("/packages/delta"),
        0,
        "unrelated packages are not asked for"
    );
    // rebar3 3.19 ignores `optional` in the registry: it fetches and builds
    // gamma like any other dependency, and the build fails ("Package not
    // found in any repo: gamma") when /packages/gamma is a 404. A filtered
    // mirror must therefore carry optional dependencies too.
    assert_eq!(fetched("/tarballs/gamma-3.0.0.tar"), 1, "{requests:#?}");
    assert!(project.has_beam("gamma"), "{}", run.output);
}

#[test]
fn write_config_keeps_extra_inside_the_mirror_section() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = write_config(
        dir.path(),
        "http://127.0.0.1:1",
        &fixture_key("upstream.pub.pem"),
        &dir.path().join("data"),
        "packages = [\"beta\"]",
    );
    let config: toml::Table = fs::read_to_string(path).unwrap().parse().unwrap();
    assert_eq!(config["listen"].as_str(), Some("127.0.0.1:0"));
    assert_eq!(config["upstream"]["repository"].as_str(), Some("hexpm"));
    assert_eq!(config["mirror"]["concurrency"].as_integer(), Some(4));
    assert_eq!(config["mirror"]["packages"][0].as_str(), Some("beta"));
}
