//! Bad package tarballs published through the write API: each is refused
//! with a 4xx whose error body names the problem, and none of them changes
//! the served tree (same generation, same manifest). Then the wire format of
//! a publish: JSON and Erlang-term bodies, `Expect: 100-continue` without a
//! key, a URL that names another package, and the same version twice.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::tarballs::{Entry, contents_tar_gz, hex_tarball, inner_checksum, metadata, outer_tar};
use common::*;
use hexmirror::manifest::FileEntry;
use hexmirror::registry::{PublicKey, verify_names};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The repository packages are published to.
const REPO: &str = "acme";

/// `[api] max_tarball_bytes` of these mirrors.
const MAX_TARBALL: usize = 200_000;

/// hex_core's (and hexmirror's) limit on an inflated contents.tar.gz.
const MAX_UNCOMPRESSED: u64 = 128 * 1024 * 1024;

/// One harmless source file, for tarballs whose problem is elsewhere.
const SOURCE: Entry<'static> = Entry::File("src/acme_bad.erl", b"-module(acme_bad).\n");

fn mirror_key() -> PublicKey {
    PublicKey::from_pem(&fs::read_to_string(fixture_key("other.pub.pem")).unwrap()).unwrap()
}

/// A synced mirror whose repository `acme` reserves `acme_*` (so the
/// dependency-confusion guard never is what refuses a test's package), with
/// a tarball limit of [`MAX_TARBALL`], serving, with an admin token.
fn hosting(upstream: &TestUpstream) -> (Mirror, Served, String) {
    let mirror = Mirror::hosting(
        upstream,
        &format!("name = \"{REPO}\"\nreserved = [\"acme_*\"]"),
        &format!("[api]\nmax_tarball_bytes = {MAX_TARBALL}"),
    );
    let token = mirror.token(&["--admin"]);
    let served = mirror.serve();
    (mirror, served, token)
}

/// A tarball of `name` `version` built by hex_core, as rebar3 publishes it.
fn oracle_tarball(dir: &Path, name: &str, version: &str) -> Vec<u8> {
    let path = dir.join(format!("{name}-{version}.tar"));
    Oracle::tarball(name, version, &path, &[]);
    fs::read(&path).unwrap()
}

/// Sends one request with `headers` and, when given, `body`.
fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Option<Vec<u8>>) -> HttpResponse {
    http_body(method, url, headers, body.unwrap_or_default())
}

/// POSTs `tarball` raw to `PATH` under the API of `acme`, with the admin
/// token and `accept` as the wanted body format.
fn post_tarball(
    served: &Served,
    token: &str,
    path: &str,
    accept: &str,
    tarball: &[u8],
) -> HttpResponse {
    send(
        "POST",
        &format!("{}/api/repos/{REPO}{path}", served.url()),
        &[
            ("authorization", token),
            ("content-type", "application/octet-stream"),
            ("accept", accept),
        ],
        Some(tarball.to_vec()),
    )
}

/// The body of a JSON answer.
fn json(res: &HttpResponse) -> Value {
    assert!(
        res.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "not JSON: {:?} {}",
        res.headers,
        String::from_utf8_lossy(&res.body)
    );
    serde_json::from_slice(&res.body).unwrap_or_else(|e| {
        panic!(
            "body is not JSON ({e}): {}",
            String::from_utf8_lossy(&res.body)
        )
    })
}

/// What identifies the served tree: the generation `current` points to and
/// the files its signed manifest lists, with their digests.
#[derive(Debug, PartialEq)]
struct Tree {
    generation: PathBuf,
    files: BTreeMap<String, FileEntry>,
}

fn tree(mirror: &Mirror) -> Tree {
    Tree {
        generation: fs::read_link(mirror.tree()).expect("`current` is a symlink"),
        files: mirror.current_manifest().files,
    }
}

fn listed_names(served: &Served) -> Vec<String> {
    let res = http("GET", &format!("{}/repos/{REPO}/names", served.url()), &[]);
    assert_eq!(res.status, 200);
    verify_names(&res.body, &mirror_key(), REPO)
        .expect("names verify with the mirror key")
        .into_inner()
        .packages
        .into_iter()
        .map(|p| p.name)
        .collect()
}

/// Bytes that do not compress: sha256 in counter mode.
fn noise(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut counter = 0u64;
    while out.len() < len {
        out.extend_from_slice(&Sha256::digest(counter.to_le_bytes()));
        counter += 1;
    }
    out.truncate(len);
    out
}

/// One bad tarball and how it must be refused.
struct Case {
    what: &'static str,
    tarball: Vec<u8>,
    status: u16,
    /// Each must appear in the error message.
    says: &'static [&'static str],
}

fn case(what: &'static str, tarball: Vec<u8>, status: u16, says: &'static [&'static str]) -> Case {
    Case {
        what,
        tarball,
        status,
        says,
    }
}

/// A consistent `acme_bad 1.0.0` tarball with `entries` as its contents.
fn acme_bad(entries: &[Entry<'_>]) -> Vec<u8> {
    hex_tarball(b"3", &metadata("acme_bad", "1.0.0"), entries).0
}

/// A consistent tarball with `meta` as metadata.config.
fn with_metadata(meta: &str) -> Vec<u8> {
    hex_tarball(b"3", meta, &[SOURCE]).0
}

fn bad_cases() -> Vec<Case> {
    let meta = metadata("acme_bad", "1.0.0");
    let contents = contents_tar_gz(&[SOURCE]);

    let wrong_checksum = {
        // The checksum of other contents: well-formed, and a lie.
        let other = contents_tar_gz(&[Entry::File("src/acme_bad.erl", b"-module(other).\n")]);
        let lie = hex::encode_upper(inner_checksum(b"3", meta.as_bytes(), &other));
        outer_tar(&[
            ("VERSION", b"3"),
            ("CHECKSUM", lie.as_bytes()),
            ("metadata.config", meta.as_bytes()),
            ("contents.tar.gz", &contents),
        ])
    };
    let no_metadata = {
        let checksum = hex::encode_upper(inner_checksum(b"3", b"", &contents));
        outer_tar(&[
            ("VERSION", b"3"),
            ("CHECKSUM", checksum.as_bytes()),
            ("contents.tar.gz", &contents),
        ])
    };
    let not_terms = with_metadata("{<<\"name\">>,<<\"acme_bad\">>}.\n{<<\"version\">>,<<\"1.0.0\"");
    let edit = |from: &str, to: &str| {
        assert!(meta.contains(from), "no `{from}` in\n{meta}");
        with_metadata(&meta.replace(from, to))
    };
    let no_version = edit("{<<\"version\">>,<<\"1.0.0\">>}.\n", "");
    let missing_dependency = edit(
        "{<<\"requirements\">>,[]}",
        "{<<\"requirements\">>,[{<<\"acme_ghost\">>,[{<<\"app\">>,<<\"acme_ghost\">>},\
         {<<\"optional\">>,false},{<<\"requirement\">>,<<\"~> 1.0\">>}]}]}",
    );

    let noise = noise(MAX_TARBALL + 50_000);
    let oversize = acme_bad(&[SOURCE, Entry::File("priv/noise.bin", &noise)]);
    assert!(oversize.len() > MAX_TARBALL);

    let started = Instant::now();
    let bomb = acme_bad(&[
        SOURCE,
        Entry::Zeros("priv/zeros.bin", MAX_UNCOMPRESSED + 22 * 1024 * 1024),
    ]);
    assert!(
        bomb.len() < MAX_TARBALL,
        "the bomb ({} bytes) must be refused for what it inflates to, not its size",
        bomb.len()
    );
    eprintln!(
        "gzip bomb: {} bytes, built in {:?}",
        bomb.len(),
        started.elapsed()
    );

    vec![
        case(
            "wrong CHECKSUM member",
            wrong_checksum,
            422,
            &["CHECKSUM member says"],
        ),
        case(
            "no metadata.config member",
            no_metadata,
            422,
            &["no `metadata.config` member"],
        ),
        case(
            "metadata.config not Erlang terms",
            not_terms,
            422,
            &["metadata.config is not valid erlang terms"],
        ),
        case(
            "metadata.config without version",
            no_version,
            422,
            &["required key `version` is missing"],
        ),
        case(
            "contents entry ../../evil",
            acme_bad(&[SOURCE, Entry::File("../../evil", b"owned\n")]),
            422,
            &["`../../evil` escapes the package"],
        ),
        case(
            "symlink to /etc/passwd",
            acme_bad(&[SOURCE, Entry::Symlink("priv/passwd", "/etc/passwd")]),
            422,
            &["`priv/passwd` points to absolute path `/etc/passwd`"],
        ),
        case(
            "symlink a -> .. alone",
            acme_bad(&[SOURCE, Entry::Symlink("a", "..")]),
            422,
            &["link `a` -> `..` escapes the package"],
        ),
        case(
            "symlink a -> .. then file a/x",
            acme_bad(&[
                SOURCE,
                Entry::Symlink("a", ".."),
                Entry::File("a/x", b"owned\n"),
            ]),
            422,
            &["`a/x` goes through symlink `a`"],
        ),
        case(
            "tarball over max_tarball_bytes",
            oversize,
            413,
            &["larger than the limit of 200000 bytes"],
        ),
        case(
            "gzip bomb",
            bomb,
            422,
            &["contents.tar.gz inflates to more than 134217728 bytes"],
        ),
        case(
            "VERSION member 2",
            hex_tarball(b"2", &meta, &[SOURCE]).0,
            422,
            &["VERSION is \"2\", only \"3\" is supported"],
        ),
        case(
            "name Bad-Name",
            with_metadata(&metadata("Bad-Name", "1.0.0")),
            422,
            &["package name \"Bad-Name\"", "lowercase"],
        ),
        case(
            "version 1.0",
            with_metadata(&metadata("acme_bad", "1.0")),
            422,
            &["version \"1.0\"", "semantic version"],
        ),
        case(
            "dependency on a package that does not exist",
            missing_dependency,
            422,
            &["acme_ghost", "does not exist"],
        ),
    ]
}

#[test]
fn bad_tarballs_are_refused_and_leave_the_tree_unchanged() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let (mirror, served, token) = hosting(&upstream);
    let work = tempfile::TempDir::new().unwrap();

    let good = work.path().join("acme_good-1.0.0.tar");
    Oracle::tarball("acme_good", "1.0.0", &good, &[]);
    let (status, body) = Oracle::api(
        &format!("{}/api/repos/{REPO}", served.url()),
        &token,
        &["publish", &good.to_string_lossy()],
    );
    assert_eq!(status, 201, "publish acme_good: {body}");
    let before = tree(&mirror);
    for file in [
        "repos/acme/packages/acme_good",
        "repos/acme/tarballs/acme_good-1.0.0.tar",
    ] {
        assert!(
            before.files.contains_key(file),
            "{file} is not in the tree: {:?}",
            before.files.keys().collect::<Vec<_>>()
        );
    }

    let mut wrong = Vec::new();
    for case in bad_cases() {
        let res = post_tarball(
            &served,
            &token,
            "/publish",
            "application/json",
            &case.tarball,
        );
        let body = String::from_utf8_lossy(&res.body).into_owned();
        eprintln!(
            "{:<45} {} bytes -> {} {body}",
            case.what,
            case.tarball.len(),
            res.status
        );
        if res.status != case.status {
            wrong.push(format!(
                "{}: status {}, expected {}: {body}",
                case.what, res.status, case.status
            ));
        }
        match serde_json::from_slice::<Value>(&res.body) {
            Ok(json) => {
                if json["status"].as_u64() != Some(u64::from(res.status)) {
                    wrong.push(format!(
                        "{}: body status is not {}: {body}",
                        case.what, res.status
                    ));
                }
                let message = json["message"].as_str().unwrap_or("");
                for word in case.says {
                    if !message.contains(word) {
                        wrong.push(format!(
                            "{}: message does not say `{word}`: {body}",
                            case.what
                        ));
                    }
                }
            }
            Err(e) => wrong.push(format!(
                "{}: error body is not JSON ({e}): {body}",
                case.what
            )),
        }
        if tree(&mirror) != before {
            wrong.push(format!("{}: the served tree changed", case.what));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));

    // `acme` has no `packages` filter, so it also serves all of upstream;
    // acme_good is the one hosted name, and no refused one appeared.
    assert_eq!(
        listed_names(&served),
        ["acme_good", "alpha", "beta", "delta", "gamma"]
    );
    assert_eq!(tree(&mirror), before);
    mirror.assert_verifies();
}

#[test]
fn publish_answers_in_json_and_erlang_terms_and_guards_names_and_versions() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let (mirror, served, token) = hosting(&upstream);
    let work = tempfile::TempDir::new().unwrap();
    let api = format!("{}/api/repos/{REPO}", served.url());

    // JSON, as Mix and most HTTP clients ask for it.
    let v1 = oracle_tarball(work.path(), "acme_wire", "1.0.0");
    let res = post_tarball(&served, &token, "/publish", "application/json", &v1);
    assert_eq!(res.status, 201, "{}", String::from_utf8_lossy(&res.body));
    let release = json(&res);
    let url = format!("{api}/packages/acme_wire/releases/1.0.0");
    assert_eq!(release["version"], "1.0.0", "{release}");
    assert_eq!(
        release["checksum"].as_str(),
        Some(hex::encode(Sha256::digest(&v1)).as_str()),
        "{release}"
    );
    assert_eq!(release["url"].as_str(), Some(url.as_str()), "{release}");
    let inserted_at = release["inserted_at"].as_str().expect("inserted_at");
    assert!(
        inserted_at.len() == 20 && inserted_at.ends_with('Z') && inserted_at.contains('T'),
        "inserted_at is not RFC 3339: {inserted_at}"
    );
    assert_eq!(res.header("location"), Some(url.as_str()));

    // Erlang terms, as hex_core asks for them.
    let v2 = oracle_tarball(work.path(), "acme_wire", "1.1.0");
    let res = post_tarball(
        &served,
        &token,
        "/publish",
        "application/vnd.hex+erlang",
        &v2,
    );
    assert_eq!(res.status, 201, "{:?}", res.body);
    assert_eq!(
        res.header("content-type"),
        Some("application/vnd.hex+erlang")
    );
    assert_eq!(
        res.body.first(),
        Some(&131),
        "not an ETF body: {:?}",
        res.body
    );
    let release = hexmirror::api::etf::decode(&res.body).expect("the body decodes as ETF");
    assert_eq!(release["version"], "1.1.0", "{release}");
    assert_eq!(
        release["checksum"].as_str(),
        Some(hex::encode(Sha256::digest(&v2)).as_str()),
        "{release}"
    );

    // The URL names one package, the tarball another.
    let good = oracle_tarball(work.path(), "acme_good", "1.0.0");
    let before = tree(&mirror);
    let res = post_tarball(
        &served,
        &token,
        "/packages/acme_other/releases",
        "application/json",
        &good,
    );
    assert_eq!(res.status, 422, "{}", String::from_utf8_lossy(&res.body));
    let message = json(&res)["message"].as_str().unwrap_or("").to_owned();
    assert!(
        message.contains("acme_good") && message.contains("acme_other"),
        "{message}"
    );
    assert_eq!(tree(&mirror), before);

    // The same version again: refused, unless replacing (within the window).
    let res = post_tarball(&served, &token, "/publish", "application/json", &v1);
    assert_eq!(res.status, 422, "{}", String::from_utf8_lossy(&res.body));
    let message = json(&res)["message"].as_str().unwrap_or("").to_owned();
    assert!(message.contains("already published"), "{message}");
    assert_eq!(tree(&mirror), before);

    let (replacement, _) = hex_tarball(
        b"3",
        &metadata("acme_wire", "1.0.0"),
        &[Entry::File("src/acme_wire.erl", b"-module(acme_wire).\n")],
    );
    assert_ne!(replacement, v1);
    let res = post_tarball(
        &served,
        &token,
        "/publish?replace=true",
        "application/json",
        &replacement,
    );
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    let release = json(&res);
    assert_eq!(
        release["checksum"].as_str(),
        Some(hex::encode(Sha256::digest(&replacement)).as_str()),
        "{release}"
    );
    let served_tarball = http(
        "GET",
        &format!("{}/repos/{REPO}/tarballs/acme_wire-1.0.0.tar", served.url()),
        &[],
    );
    assert_eq!(served_tarball.status, 200);
    assert!(
        served_tarball.body == replacement,
        "the replacement is not served"
    );
    assert_eq!(
        listed_names(&served),
        ["acme_wire", "alpha", "beta", "delta", "gamma"]
    );
    mirror.assert_verifies();
}

/// Sends the head of an upload to `path` that announces a body (`Expect:
/// 100-continue`) and carries no key, never sends the body, and returns the
/// raw answer: the server must refuse from the head alone.
fn upload_head_without_key(served: &Served, path: &str) -> String {
    let addr = served.url().trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).expect("connect to the mirror");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\n\
         host: {addr}\r\n\
         content-type: application/octet-stream\r\n\
         content-length: 150000\r\n\
         expect: 100-continue\r\n\
         accept: application/json\r\n\
         connection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "no complete answer without the body ({e}); got so far: {:?}",
                String::from_utf8_lossy(&answer)
            ),
        }
        if complete(&answer) {
            break;
        }
    }
    String::from_utf8(answer).expect("the answer is text")
}

/// Whether `answer` holds a whole response head and its Content-Length body.
fn complete(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    length.is_some_and(|n| body.len() >= n)
}

#[test]
fn publish_without_a_key_is_refused_before_the_body_is_sent() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let (mirror, served, _token) = hosting(&upstream);
    let before = tree(&mirror);

    let answer = upload_head_without_key(&served, &format!("/api/repos/{REPO}/publish"));
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap();
    assert!(
        status.starts_with("HTTP/1.1 401"),
        "expected 401 without a 100 Continue first:\n{answer}"
    );
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    assert!(
        headers
            .get("www-authenticate")
            .is_some_and(|v| v.starts_with("Basic")),
        "no www-authenticate:\n{answer}"
    );
    let error: Value = serde_json::from_str(body).expect("JSON error body");
    assert_eq!(error["status"], 401, "{error}");
    assert!(
        error["message"].as_str().unwrap_or("").contains("API key"),
        "{error}"
    );
    assert_eq!(tree(&mirror), before);
}

#[test]
fn docs_without_a_key_are_refused_before_the_body_is_sent() {
    // Regression: the docs upload read its whole body before checking the key.
    let upstream = TestUpstream::build(SPEC_SMALL);
    let (mirror, served, _token) = hosting(&upstream);
    let before = tree(&mirror);
    let answer = upload_head_without_key(
        &served,
        &format!("/api/repos/{REPO}/packages/acme_wire/releases/1.0.0/docs"),
    );
    assert!(
        answer.starts_with("HTTP/1.1 401"),
        "expected 401 without a 100 Continue first:\n{answer}"
    );
    assert_eq!(tree(&mirror), before);
}
