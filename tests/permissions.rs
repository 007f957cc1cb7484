//! The permission matrix of the write API and of private repository reads:
//! every endpoint with no token, a read token, a write token for another
//! package, an expired token, a version-limited token and an admin token,
//! each cell's status asserted at once (one failure lists every wrong cell).
//! Then what the matrix cannot show: the audit log, a key created by a read
//! token, and the failure limiter (in its own test, with its own server).

mod common;

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;

use common::*;
use hexmirror::registry::{PublicKey, verify_names, verify_package, verify_versions};
use serde_json::Value;

/// The private repository under test.
const REPO: &str = "acme";

/// The columns of the matrix, in the order of [`Row::want`].
const COLUMNS: [&str; 6] = ["none", "read", "other-write", "expired", "limited", "admin"];
const NONE: usize = 0;
const READ: usize = 1;
const OTHER: usize = 2;
const EXPIRED: usize = 3;
const LIMITED: usize = 4;
const ADMIN: usize = 5;

/// Expired-token cells sent to one `serve` process. Each is a failed
/// authentication, and the server blocks a client after 10 of them within
/// 5 minutes (`MAX_FAILURES` in src/api/mod.rs), so the expired column runs
/// on fresh processes (each has its own limiter), at most this many cells
/// each. The main server never sees a failure, so nothing there turns 429.
const EXPIRED_CELLS_PER_SERVER: usize = 9;

fn mirror_key() -> PublicKey {
    PublicKey::from_pem(&fs::read_to_string(fixture_key("other.pub.pem")).unwrap()).unwrap()
}

/// A synced mirror hosting the private repository `acme` (names `acme_*`
/// reserved for it), serving, with one token per column (`None` for none).
struct Hosting {
    // Kept alive for the mirror's syncs.
    _upstream: TestUpstream,
    mirror: Mirror,
    served: Served,
    tokens: [Option<String>; 6],
    work: tempfile::TempDir,
}

fn hosting() -> Hosting {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let extra = repositories_config(
        &fixture_key("other.pem"),
        &[&format!(
            "name = \"{REPO}\"\nprivate = true\nreserved = [\"acme_*\"]"
        )],
    );
    let mirror = Mirror::new(&upstream, &extra);
    let out = mirror.sync();
    assert!(out.ok(), "first sync failed:\n{out}");
    let admin = mirror.token(&["--admin", "--name", "admin", "--user", "alice"]);
    let read = mirror.token(&[
        "--name",
        "reader",
        "--user",
        "rita",
        "--scope",
        "acme/*:read",
    ]);
    let other = mirror.token(&[
        "--name",
        "other",
        "--user",
        "oscar",
        "--scope",
        "acme/acme_other:write",
    ]);
    // Expires at its creation: already expired when the first request comes.
    let expired = mirror.token(&[
        "--name",
        "old",
        "--user",
        "olga",
        "--scope",
        "acme/*:admin",
        "--expires-days",
        "0",
    ]);
    let limited = mirror.token(&[
        "--name",
        "limited",
        "--user",
        "lima",
        "--scope",
        "acme/acme_app:read:~> 1.0",
    ]);
    let served = mirror.serve();
    Hosting {
        _upstream: upstream,
        mirror,
        served,
        tokens: [
            None,
            Some(read),
            Some(other),
            Some(expired),
            Some(limited),
            Some(admin),
        ],
        work: tempfile::TempDir::new().unwrap(),
    }
}

impl Hosting {
    fn token(&self, col: usize) -> Option<&str> {
        self.tokens[col].as_deref()
    }

    /// A package tarball built by hex_core, as bytes and as a file path.
    fn tarball(&self, name: &str, version: &str) -> (Vec<u8>, String) {
        let path = self.work.path().join(format!("{name}-{version}.tar"));
        Oracle::tarball(name, version, &path, &[]);
        (
            fs::read(&path).unwrap(),
            path.to_string_lossy().into_owned(),
        )
    }

    /// Publishes through hex_core with the admin token, as rebar3 does.
    fn publish(&self, name: &str, version: &str) {
        let (_, path) = self.tarball(name, version);
        let api = format!("{}/api/repos/{REPO}", self.served.url());
        let (status, body) = Oracle::api(&api, self.token(ADMIN).unwrap(), &["publish", &path]);
        assert_eq!(status, 201, "publish {name} {version}: {body}");
    }
}

/// Sends one request with an optional raw `authorization` token (as hex_core
/// sends it), `accept: application/json` and an optional body. Blocking, on
/// a runtime of its own like `common::http` (which sends no body).
fn send(
    method: &str,
    url: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> HttpResponse {
    let mut headers = vec![("accept", "application/json")];
    if let Some(token) = token {
        headers.push(("authorization", token));
    }
    if let Some(ctype) = content_type {
        headers.push(("content-type", ctype));
    }
    http_body(method, url, &headers, body)
}

fn get(url: &str, token: Option<&str>) -> HttpResponse {
    send("GET", url, token, None, Vec::new())
}

/// A gzipped docs tarball with one page.
fn docs_tarball() -> Vec<u8> {
    let page = b"<!doctype html><title>acme_app</title>\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(page.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    let mut tar = tar::Builder::new(Vec::new());
    tar.append_data(&mut header, "index.html", &page[..])
        .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

/// One row of the matrix: a request and the status wanted per column.
struct Row {
    label: &'static str,
    method: &'static str,
    /// Path and query, after the server's base URL.
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    want: [u16; 6],
}

fn row(label: &'static str, method: &'static str, path: &str, want: [u16; 6]) -> Row {
    Row {
        label,
        method,
        path: path.to_owned(),
        content_type: None,
        body: Vec::new(),
        want,
    }
}

fn with_body(mut r: Row, content_type: &'static str, body: Vec<u8>) -> Row {
    r.content_type = Some(content_type);
    r.body = body;
    r
}

fn json_body(r: Row, json: &str) -> Row {
    with_body(r, "application/json", json.as_bytes().to_vec())
}

/// The rows, in the order they run. Reads first (on acme_app 1.0.0 and
/// 2.0.0), then writes; within a row the admin cell runs last, so every
/// refusal is tried while its target exists, and each admin write leaves
/// the state the next row expects (3.0.0 is published, replaced, then
/// reverted; bob is added, then removed; k1 is created, read, revoked).
fn rows(h: &Hosting) -> Vec<Row> {
    const OCTET: &str = "application/octet-stream";
    let (v3, _) = h.tarball("acme_app", "3.0.0");
    let a = format!("/api/repos/{REPO}");
    let pkg = format!("{a}/packages/acme_app");
    vec![
        // API reads.
        row(
            "GET packages list",
            "GET",
            &format!("{a}/packages"),
            [401, 200, 200, 401, 200, 200],
        ),
        row(
            "GET package acme_app",
            "GET",
            &pkg,
            [401, 200, 403, 401, 200, 200],
        ),
        row(
            "GET release 1.0.0",
            "GET",
            &format!("{pkg}/releases/1.0.0"),
            [401, 200, 403, 401, 200, 200],
        ),
        row(
            "GET release 2.0.0",
            "GET",
            &format!("{pkg}/releases/2.0.0"),
            [401, 200, 403, 401, 404, 200],
        ),
        row(
            "GET owners",
            "GET",
            &format!("{pkg}/owners"),
            [401, 200, 403, 401, 200, 200],
        ),
        row(
            "GET owners/alice",
            "GET",
            &format!("{pkg}/owners/alice"),
            [401, 200, 403, 401, 200, 200],
        ),
        // Tree reads of the private repository.
        row(
            "GET /repos/acme/names",
            "GET",
            "/repos/acme/names",
            [401, 200, 200, 401, 200, 200],
        ),
        row(
            "GET /repos/acme/versions",
            "GET",
            "/repos/acme/versions",
            [401, 200, 200, 401, 200, 200],
        ),
        row(
            "GET /repos/acme/packages/acme_app",
            "GET",
            "/repos/acme/packages/acme_app",
            [401, 200, 404, 401, 200, 200],
        ),
        row(
            "GET /repos/acme/tarballs/acme_app-1.0.0.tar",
            "GET",
            "/repos/acme/tarballs/acme_app-1.0.0.tar",
            [401, 200, 404, 401, 200, 200],
        ),
        row(
            "GET /repos/acme/tarballs/acme_app-2.0.0.tar",
            "GET",
            "/repos/acme/tarballs/acme_app-2.0.0.tar",
            [401, 200, 404, 401, 404, 200],
        ),
        // Account endpoints.
        row(
            "GET /api/auth",
            "GET",
            "/api/auth",
            [401, 204, 204, 401, 204, 204],
        ),
        row(
            "GET /api/users/me",
            "GET",
            "/api/users/me",
            [401, 200, 200, 401, 200, 200],
        ),
        row(
            "GET /api/keys",
            "GET",
            "/api/keys",
            [401, 200, 200, 401, 200, 200],
        ),
        row(
            "GET /api/audit-logs",
            "GET",
            "/api/audit-logs",
            [401, 403, 403, 401, 403, 200],
        ),
        // Writes.
        with_body(
            row(
                "publish acme_app 3.0.0",
                "POST",
                &format!("{a}/publish"),
                [401, 403, 403, 401, 403, 201],
            ),
            OCTET,
            v3.clone(),
        ),
        with_body(
            row(
                "POST releases 3.0.0 ?replace=true",
                "POST",
                &format!("{pkg}/releases?replace=true"),
                [401, 403, 403, 401, 403, 200],
            ),
            OCTET,
            v3,
        ),
        row(
            "GET release 3.0.0",
            "GET",
            &format!("{pkg}/releases/3.0.0"),
            [401, 200, 403, 401, 404, 200],
        ),
        json_body(
            row(
                "retire 1.0.0",
                "POST",
                &format!("{pkg}/releases/1.0.0/retire"),
                [401, 403, 403, 401, 403, 204],
            ),
            r#"{"reason":"other","message":"x"}"#,
        ),
        row(
            "unretire 1.0.0",
            "DELETE",
            &format!("{pkg}/releases/1.0.0/retire"),
            [401, 403, 403, 401, 403, 204],
        ),
        with_body(
            row(
                "docs 1.0.0",
                "POST",
                &format!("{pkg}/releases/1.0.0/docs"),
                [401, 403, 403, 401, 403, 201],
            ),
            "application/octet-stream",
            docs_tarball(),
        ),
        row(
            "GET /repos/acme/docs/acme_app-1.0.0.tar.gz",
            "GET",
            "/repos/acme/docs/acme_app-1.0.0.tar.gz",
            [401, 200, 404, 401, 200, 200],
        ),
        row(
            "DELETE docs 1.0.0",
            "DELETE",
            &format!("{pkg}/releases/1.0.0/docs"),
            [401, 403, 403, 401, 403, 204],
        ),
        row(
            "GET /repos/acme/docs/acme_app-1.0.0.tar.gz (deleted)",
            "GET",
            "/repos/acme/docs/acme_app-1.0.0.tar.gz",
            [401, 404, 404, 401, 404, 404],
        ),
        row(
            "revert 3.0.0",
            "DELETE",
            &format!("{pkg}/releases/3.0.0"),
            [401, 403, 403, 401, 403, 204],
        ),
        row(
            "GET release 3.0.0 (reverted)",
            "GET",
            &format!("{pkg}/releases/3.0.0"),
            [401, 404, 403, 401, 404, 404],
        ),
        json_body(
            row(
                "PUT owners/bob",
                "PUT",
                &format!("{pkg}/owners/bob"),
                [401, 403, 403, 401, 403, 204],
            ),
            r#"{"level":"maintainer"}"#,
        ),
        row(
            "GET owners/bob",
            "GET",
            &format!("{pkg}/owners/bob"),
            [401, 200, 403, 401, 200, 200],
        ),
        row(
            "DELETE owners/bob",
            "DELETE",
            &format!("{pkg}/owners/bob"),
            [401, 403, 403, 401, 403, 204],
        ),
        row(
            "GET owners/bob (removed)",
            "GET",
            &format!("{pkg}/owners/bob"),
            [401, 404, 403, 401, 404, 404],
        ),
        json_body(
            row(
                "POST /api/keys (api write)",
                "POST",
                "/api/keys",
                [401, 403, 403, 401, 403, 201],
            ),
            r#"{"name":"k1","permissions":[{"domain":"api","resource":"write"}]}"#,
        ),
        row(
            "GET /api/keys/k1",
            "GET",
            "/api/keys/k1",
            [401, 404, 404, 401, 404, 200],
        ),
        row(
            "DELETE /api/keys/k1",
            "DELETE",
            "/api/keys/k1",
            [401, 404, 404, 401, 404, 200],
        ),
        row(
            "GET /api/keys/k1 (revoked)",
            "GET",
            "/api/keys/k1",
            [401, 404, 404, 401, 404, 404],
        ),
    ]
}

fn run_cell(base: &str, row: &Row, token: Option<&str>) -> HttpResponse {
    send(
        row.method,
        &format!("{base}{}", row.path),
        token,
        row.content_type,
        row.body.clone(),
    )
}

/// What a cell's response says beyond its status, for the failure message.
fn excerpt(res: &HttpResponse) -> String {
    let text = String::from_utf8_lossy(&res.body);
    let text: String = text.chars().take(160).collect();
    if text.chars().all(|c| !c.is_control() || c == '\n') {
        text
    } else {
        format!("<{} bytes>", res.body.len())
    }
}

/// Whether a 403 is the scope check's: the handlers' and the read gate's
/// refusals name the API key, key creation says it is beyond the creator.
fn refused_for_scope(res: &HttpResponse) -> bool {
    let message = json(res)["message"].as_str().unwrap_or("").to_owned();
    message.starts_with("API key ") || message.contains("rights its creator has")
}

fn json(res: &HttpResponse) -> Value {
    serde_json::from_slice(&res.body).unwrap_or(Value::Null)
}

/// Versions of the releases a package (or release list) JSON names.
fn release_versions(package: &Value) -> Vec<String> {
    package["releases"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["version"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn every_endpoint_with_every_kind_of_token() {
    let h = hosting();
    h.publish("acme_app", "1.0.0");
    h.publish("acme_app", "2.0.0");
    let rows = rows(&h);
    let base = h.served.url();
    let mut got: Vec<[Option<HttpResponse>; 6]> = rows.iter().map(|_| Default::default()).collect();

    for (i, row) in rows.iter().enumerate() {
        for col in [NONE, READ, OTHER, LIMITED, ADMIN] {
            got[i][col] = Some(run_cell(&base, row, h.token(col)));
        }
    }
    for (chunk, rows_chunk) in rows.chunks(EXPIRED_CELLS_PER_SERVER).enumerate() {
        let fresh = h.mirror.serve();
        for (j, row) in rows_chunk.iter().enumerate() {
            let i = chunk * EXPIRED_CELLS_PER_SERVER + j;
            got[i][EXPIRED] = Some(run_cell(&fresh.url(), row, h.token(EXPIRED)));
        }
    }

    let mut wrong = Vec::new();
    let cell = |label: &str, col: usize| -> &HttpResponse {
        let i = rows
            .iter()
            .position(|r| r.label == label)
            .unwrap_or_else(|| panic!("no row {label:?}"));
        got[i][col].as_ref().unwrap()
    };
    let mut table = format!("{:<52}", "endpoint");
    for c in COLUMNS {
        let _ = write!(table, " | {c:>11}");
    }
    table.push('\n');
    for (i, row) in rows.iter().enumerate() {
        let _ = write!(table, "{:<52}", row.label);
        for (col, name) in COLUMNS.iter().enumerate() {
            let res = got[i][col].as_ref().unwrap();
            let want = row.want[col];
            let mut problem = None;
            if res.status != want {
                problem = Some(format!("got {}, want {want}", res.status));
            } else if want == 401 && res.header("www-authenticate").is_none() {
                problem = Some("401 without www-authenticate".to_owned());
            } else if col == EXPIRED && !excerpt(res).contains("expired") {
                // Not some other 401 (a token the server does not know).
                problem = Some("the refusal does not say the key expired".to_owned());
            } else if want == 403 && !refused_for_scope(res) {
                // Not a 403 of the writer (owners, dependency confusion).
                problem = Some("403 for another reason than the key's scopes".to_owned());
            }
            // `got!=want`, or `status*` when the status is right but the
            // answer is not (see the list above the table).
            let shown = match &problem {
                None => res.status.to_string(),
                Some(_) if res.status != want => format!("{}!={want}", res.status),
                Some(_) => format!("{}*", res.status),
            };
            let _ = write!(table, " | {shown:>11}");
            if let Some(p) = problem {
                wrong.push(format!("{} / {name}: {p}: {}", row.label, excerpt(res)));
            }
        }
        table.push('\n');
    }

    // What the 200s contain: a version-limited token sees only 1.0.0, a
    // token for another package sees nothing of acme_app, and the filtered
    // index files are signed with the mirror's key for repository acme.
    let mut content = |ok: bool, what: &str| {
        if !ok {
            wrong.push(format!("content: {what}"));
        }
    };
    let key = mirror_key();
    let record_versions = |res: &HttpResponse| -> Result<Vec<String>, String> {
        verify_package(&res.body, &key, REPO, "acme_app")
            .map(|p| {
                p.into_inner()
                    .releases
                    .into_iter()
                    .map(|r| r.version)
                    .collect()
            })
            .map_err(|e| e.to_string())
    };
    let record = "GET /repos/acme/packages/acme_app";
    let limited_record = record_versions(cell(record, LIMITED));
    content(
        limited_record.as_deref() == Ok(&["1.0.0".to_owned()][..]),
        &format!("limited {record}: want a verified record of 1.0.0 only, got {limited_record:?}"),
    );
    let full_record = record_versions(cell(record, READ));
    content(
        full_record.as_deref() == Ok(&["1.0.0".to_owned(), "2.0.0".to_owned()][..]),
        &format!("read {record}: want 1.0.0 and 2.0.0, got {full_record:?}"),
    );
    let limited_versions =
        verify_versions(&cell("GET /repos/acme/versions", LIMITED).body, &key, REPO)
            .map(|v| {
                v.into_inner()
                    .packages
                    .into_iter()
                    .map(|p| (p.name, p.versions))
                    .collect::<Vec<_>>()
            })
            .map_err(|e| e.to_string());
    content(
        limited_versions == Ok(vec![("acme_app".to_owned(), vec!["1.0.0".to_owned()])]),
        &format!(
            "limited /repos/acme/versions: want acme_app 1.0.0 only, got {limited_versions:?}"
        ),
    );
    let other_names = verify_names(&cell("GET /repos/acme/names", OTHER).body, &key, REPO)
        .map(|n| n.into_inner().packages.len())
        .map_err(|e| e.to_string());
    content(
        other_names == Ok(0),
        &format!("other-write /repos/acme/names: want a verified empty list, got {other_names:?}"),
    );
    let limited_api = release_versions(&json(cell("GET package acme_app", LIMITED)));
    content(
        limited_api == ["1.0.0"],
        &format!("limited GET package acme_app: want releases [1.0.0], got {limited_api:?}"),
    );
    let other_list = json(cell("GET packages list", OTHER));
    content(
        other_list == Value::Array(vec![]),
        &format!("other-write GET packages list: want [], got {other_list}"),
    );
    let limited_list = json(cell("GET packages list", LIMITED));
    content(
        limited_list.as_array().map(Vec::len) == Some(1)
            && release_versions(&limited_list[0]) == ["1.0.0"],
        &format!("limited GET packages list: want acme_app with 1.0.0 only, got {limited_list}"),
    );
    let me = json(cell("GET /api/users/me", ADMIN));
    content(
        me["username"] == "alice",
        &format!("admin GET /api/users/me: want alice, got {me}"),
    );

    // Every admin write of the matrix is in the audit log, and nothing the
    // other columns tried: a refusal changes nothing and logs no change.
    let log = get(&format!("{base}/api/audit-logs"), h.token(ADMIN));
    let entries = json(&log);
    let entries = entries.as_array().cloned().unwrap_or_default();
    let logged = |action: &str, target: &str| {
        entries
            .iter()
            .any(|e| e["action"] == action && e["target"] == target)
    };
    for (action, target) in [
        ("release.publish", "acme/acme_app 1.0.0"),
        ("release.publish", "acme/acme_app 2.0.0"),
        ("release.publish", "acme/acme_app 3.0.0"),
        ("release.publish_replace", "acme/acme_app 3.0.0"),
        ("release.retire", "acme/acme_app 1.0.0"),
        ("release.unretire", "acme/acme_app 1.0.0"),
        ("docs.publish", "acme/acme_app 1.0.0"),
        ("docs.revert", "acme/acme_app 1.0.0"),
        ("release.revert", "acme/acme_app 3.0.0"),
        ("owner.add", "acme/acme_app"),
        ("owner.remove", "acme/acme_app"),
        ("key.generate", "k1"),
        ("key.revoke", "k1"),
    ] {
        content(
            logged(action, target),
            &format!("audit log (status {}): no {action} of {target}", log.status),
        );
    }
    let strangers: Vec<&Value> = entries
        .iter()
        .filter(|e| e["actor"] != "alice" && e["actor"] != "cli")
        .collect();
    content(
        strangers.is_empty(),
        &format!("audit log: entries by refused keys: {strangers:?}"),
    );

    // Shown with --nocapture; the failure message repeats it.
    eprintln!("{table}");
    assert!(
        wrong.is_empty(),
        "{} cell(s) wrong:\n  {}\n\n{table}",
        wrong.len(),
        wrong.join("\n  ")
    );
}

#[test]
fn the_audit_log_records_changes_and_a_read_token_creates_a_read_key() {
    let h = hosting();
    h.publish("acme_app", "1.0.0");
    h.publish("acme_app", "2.0.0");
    let base = h.served.url();
    let admin = h.token(ADMIN);

    let created = send(
        "POST",
        &format!("{base}/api/keys"),
        admin,
        Some("application/json"),
        br#"{"name":"k1","permissions":[{"domain":"api","resource":"write"}]}"#.to_vec(),
    );
    assert_eq!(created.status, 201, "{}", excerpt(&created));

    // A read token may make a key within its rights, and the key works.
    let by_reader = send(
        "POST",
        &format!("{base}/api/keys"),
        h.token(READ),
        Some("application/json"),
        br#"{"name":"rk","permissions":[{"domain":"repository","resource":"acme"}]}"#.to_vec(),
    );
    assert_eq!(by_reader.status, 201, "{}", excerpt(&by_reader));
    let key = json(&by_reader);
    let secret = key["secret"]
        .as_str()
        .expect("the new key's secret")
        .to_owned();
    let names = get(&format!("{base}/repos/acme/names"), Some(&secret));
    assert_eq!(names.status, 200, "{}", excerpt(&names));
    let listed = verify_names(&names.body, &mirror_key(), REPO)
        .expect("names verify")
        .into_inner();
    assert!(listed.packages.iter().any(|p| p.name == "acme_app"));
    // ... and nothing beyond them.
    let audit = get(&format!("{base}/api/audit-logs"), Some(&secret));
    assert_eq!(audit.status, 403, "{}", excerpt(&audit));
    // Nor more than its creator has: write is refused.
    let wider = send(
        "POST",
        &format!("{base}/api/keys"),
        h.token(READ),
        Some("application/json"),
        br#"{"name":"rk2","permissions":[{"domain":"package","resource":"acme/*","access":"write"}]}"#.to_vec(),
    );
    assert_eq!(wider.status, 403, "{}", excerpt(&wider));

    // The audit log (newest first) holds the publishes and the key creations.
    let log = get(&format!("{base}/api/audit-logs"), admin);
    assert_eq!(log.status, 200, "{}", excerpt(&log));
    let entries = json(&log);
    let entries = entries.as_array().expect("audit log is a JSON array");
    let has = |action: &str, target: &str| {
        entries
            .iter()
            .any(|e| e["action"] == action && e["target"] == target)
    };
    let shown = serde_json::to_string_pretty(entries).unwrap();
    for version in ["1.0.0", "2.0.0"] {
        assert!(
            has("release.publish", &format!("acme/acme_app {version}")),
            "no publish of {version} in the audit log:\n{shown}"
        );
    }
    assert!(
        has("key.generate", "k1"),
        "no k1 in the audit log:\n{shown}"
    );
    assert!(
        has("key.generate", "rk"),
        "no rk in the audit log:\n{shown}"
    );
    let publish = entries
        .iter()
        .find(|e| e["action"] == "release.publish")
        .unwrap();
    assert_eq!(publish["actor"], "alice", "{shown}");
    let rk = entries
        .iter()
        .find(|e| e["action"] == "key.generate" && e["target"] == "rk")
        .unwrap();
    assert_eq!(rk["actor"], "rita", "{shown}");
    assert!(
        !has("key.generate", "rk2"),
        "a refused key is not logged as made:\n{shown}"
    );
}

#[test]
fn ten_failed_authentications_block_the_client() {
    let h = hosting();
    let base = h.served.url();
    let me = format!("{base}/api/users/me");
    // Well-formed but wrong: the admin key's id with the reader's secret.
    let id = |t: &str| t["hxm_".len()..].split_once('_').unwrap().0.to_owned();
    let secret = |t: &str| t["hxm_".len()..].split_once('_').unwrap().1.to_owned();
    let admin = h.token(ADMIN).unwrap();
    let forged = format!("hxm_{}_{}", id(admin), secret(h.token(READ).unwrap()));
    let garbage = "hxm_not_a_token";

    // A valid key before: fine, and successes never count.
    assert_eq!(get(&me, Some(admin)).status, 200);
    // An expired key is refused but not counted: its holder knows the
    // secret, and OAuth clients meet expiry every hour by design.
    for _ in 0..12 {
        let res = get(&me, h.token(EXPIRED));
        assert_eq!(res.status, 401, "{}", excerpt(&res));
        assert_eq!(
            res.header("www-authenticate"),
            Some("Bearer realm=\"hex\", error=\"token_expired\"")
        );
    }
    for i in 0..10 {
        let token = match i % 2 {
            0 => forged.as_str(),
            _ => garbage,
        };
        let res = get(&me, Some(token));
        assert_eq!(res.status, 401, "failure {i}: {}", excerpt(&res));
        assert!(res.header("www-authenticate").is_some());
    }
    // The 11th request from this client is refused whatever it carries.
    for (what, res) in [
        ("a valid admin key", get(&me, Some(admin))),
        (
            "no key, a private tree read",
            get(&format!("{base}/repos/acme/names"), None),
        ),
        (
            "a valid read key, a tree read",
            get(&format!("{base}/repos/acme/names"), h.token(READ)),
        ),
    ] {
        assert_eq!(res.status, 429, "{what}: {}", excerpt(&res));
        let retry: u64 = res
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{what}: 429 without a numeric retry-after"));
        assert!((1..=300).contains(&retry), "{what}: retry-after {retry}");
    }
    // The limiter lives in the serving process: another one is unaffected.
    let fresh = h.mirror.serve();
    assert_eq!(
        get(&format!("{}/api/users/me", fresh.url()), Some(admin)).status,
        200
    );
}
