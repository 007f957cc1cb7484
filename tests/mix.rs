//! Stock `mix` with the stock Hex 2.5.1 client on every path the README
//! documents for it: publishing with `HEX_API_URL=http://HOST/api/repos/NAME`,
//! the account tasks that follow that URL (`hex.user whoami`, `hex.owner`),
//! `hex.info`, `hex.docs fetch` for a hosted package, Hex's update check
//! (`/installs/hex-1.x.csv`), the API's error shape and its request log.
//! Each of these failed with Hex 2.5.1 once; each test runs the real client.

mod common;

use std::fs;
use std::io::Write;

use common::mix::{LoggedServe, MixClient};
use common::*;

/// The repository packages are published to.
const REPO: &str = "acme";

/// A synced mirror with repository `acme` and an admin token for user
/// `alice` named `ci`; the upstream is returned to keep it alive.
fn hosting() -> (TestUpstream, Mirror, String) {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = Mirror::hosting(
        &upstream,
        &format!("name = \"{REPO}\"\npackages = [\"beta\"]"),
        "",
    );
    let token = mirror.token(&["--admin", "--name", "ci", "--user", "alice"]);
    (upstream, mirror, token)
}

/// What mix needs to publish and to ask the API: the repository's API URL
/// (as the README says), the token, and the mirror's root as Hex's hexpm
/// repository (so the update check asks us, not hex.pm).
fn api_env(url: &str, token: &str) -> Vec<(&'static str, String)> {
    vec![
        ("HEX_API_URL", format!("{url}/api/repos/{REPO}")),
        ("HEX_API_KEY", token.to_owned()),
        ("HEX_MIRROR", url.to_owned()),
    ]
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Publishes `name` `version` to `acme` as rebar3 does (hex_core), quicker
/// than a mix project when the test is about reading it back.
fn publish_with_oracle(url: &str, token: &str, name: &str, version: &str) {
    let work = tempfile::TempDir::new().unwrap();
    let path = work.path().join(format!("{name}-{version}.tar"));
    Oracle::tarball(name, version, &path, &[]);
    let (status, body) = Oracle::api(
        &format!("{url}/api/repos/{REPO}"),
        token,
        &["publish", &path.to_string_lossy()],
    );
    assert_eq!(status, 201, "publish {name} {version}: {body}");
}

#[test]
fn publish_and_account_tasks_work_under_the_repository_api_url() {
    let (_upstream, mirror, token) = hosting();
    let served = mirror.serve();
    let url = served.url();
    let env = api_env(&url, &token);
    let env = env_refs(&env);
    let mix = MixClient::new("acme_app", "1.0.0");

    let out = mix.run_ok(&["hex.publish", "package", "--yes"], &env);
    assert!(out.contains("Package published"), "{out}");
    // Hex asks users/me (and more) at the API URL it was given.
    assert!(!out.contains("Entity not found"), "{out}");
    assert!(!out.contains("(404)"), "{out}");
    // The update check asked us (HEX_MIRROR) and got a valid, empty list.
    assert!(
        !out.contains("Failed to check for new Hex version"),
        "{out}"
    );

    let out = mix.run_ok(&["hex.user", "whoami"], &env);
    assert!(out.lines().any(|l| l.trim() == "alice"), "{out}");

    let out = mix.run_ok(&["hex.owner", "packages"], &env);
    let expected = format!("{REPO}/acme_app - {url}/api/repos/{REPO}/packages/acme_app");
    assert!(out.lines().any(|l| l.trim() == expected), "{out}");

    // Every account endpoint answers under the repository prefix too.
    let auth = [("authorization", token.as_str())];
    for (path, status) in [
        ("users/me", 200),
        ("auth", 204),
        ("keys", 200),
        ("keys/ci", 200),
        ("audit-logs", 200),
    ] {
        let got = http("GET", &format!("{url}/api/repos/{REPO}/{path}"), &auth);
        assert_eq!(
            got.status,
            status,
            "{path}: {}",
            String::from_utf8_lossy(&got.body)
        );
    }
    let me: serde_json::Value = serde_json::from_slice(
        &http("GET", &format!("{url}/api/repos/{REPO}/users/me"), &auth).body,
    )
    .unwrap();
    assert_eq!(me["packages"][0]["name"], "acme_app", "{me}");
    assert_eq!(me["packages"][0]["repository"], REPO, "{me}");
}

#[test]
fn info_shows_computed_install_snippets_and_owner_list_shows_owners() {
    let (_upstream, mirror, token) = hosting();
    let served = mirror.serve();
    let url = served.url();
    publish_with_oracle(&url, &token, "acme_lib", "0.3.1");
    publish_with_oracle(&url, &token, "acme_lib", "1.2.0");
    let env = api_env(&url, &token);
    let env = env_refs(&env);
    let mix = MixClient::new("client", "0.1.0");

    // The package's snippet is for its latest stable release...
    let out = mix.run_ok(&["hex.info", "acme_lib"], &env);
    assert!(
        out.contains(r#"Config: {:acme_lib, "~> 1.2", repo: "acme"}"#),
        "{out}"
    );
    assert!(out.contains("1.2.0") && out.contains("0.3.1"), "{out}");
    // ...and a release's is for that release (below 1.0: patch level).
    let out = mix.run_ok(&["hex.info", "acme_lib", "0.3.1"], &env);
    assert!(
        out.contains(r#"Config: {:acme_lib, "~> 0.3.1", repo: "acme"}"#),
        "{out}"
    );
    assert!(out.contains("Published by: alice"), "{out}");
    // Search in the repository's API finds hosted packages (the catalog).
    let out = mix.run_ok(&["hex.package", "search", "acme"], &env);
    assert!(out.contains("acme_lib") && out.contains("1.2.0"), "{out}");

    // This client prints only email and level: the user name stands in.
    let out = mix.run_ok(&["hex.owner", "list", "acme_lib"], &env);
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["alice", "full"]),
        "{out}"
    );

    // The other snippets, as hex.pm sends them.
    let got = http(
        "GET",
        &format!("{url}/api/repos/{REPO}/packages/acme_lib/releases/0.3.1"),
        &[],
    );
    let release: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(release["configs"]["rebar.config"], r#"{acme_lib, "0.3.1"}"#);
    assert_eq!(release["configs"]["erlang.mk"], "dep_acme_lib = hex 0.3.1");
}

#[test]
fn unknown_api_routes_answer_in_the_api_error_shape() {
    let (_upstream, mirror, token) = hosting();
    let served = mirror.serve();
    let url = served.url();
    let env = api_env(&url, &token);
    let env = env_refs(&env);
    let mix = MixClient::new("client", "0.1.0");

    // `acme` is a configured repository, not an organization; Hex shows
    // our message, which it can only read from a `{status, message,
    // errors}` body.
    let run = mix.run(&["hex.organization", "key", REPO, "list"], &env);
    assert!(
        run.output.contains(&format!(
            "no organization \"{REPO}\" that this key may read"
        )),
        "{}",
        run.output
    );

    let got = http("GET", &format!("{url}/api/nope"), &[]);
    assert_eq!(got.status, 404);
    assert_eq!(
        got.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let body: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["status"], 404, "{body}");
    assert_eq!(body["message"], "no API endpoint /api/nope", "{body}");
    assert!(body["errors"].is_object(), "{body}");
    let got = http(
        "DELETE",
        &format!("{url}/api/repos/{REPO}/what/ever"),
        &[("accept", "application/vnd.hex+erlang")],
    );
    assert_eq!(got.status, 404);
    assert_eq!(
        got.header("content-type"),
        Some("application/vnd.hex+erlang")
    );
    // Erlang External Term Format, version 131.
    assert_eq!(got.body.first(), Some(&131), "{:?}", got.body);

    // A server with no repository of its own says so in the same shape.
    let upstream = TestUpstream::build(SPEC_SMALL);
    let plain = Mirror::new(&upstream, "");
    plain.sync_ok();
    let served = plain.serve();
    let got = http("GET", &format!("{}/api/users/me", served.url()), &[]);
    assert_eq!(got.status, 404);
    let body: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("no repository of its own")),
        "{body}"
    );
}

#[test]
fn api_requests_are_logged_by_route_and_token_name_never_the_secret() {
    let (_upstream, mirror, token) = hosting();
    let served = LoggedServe::start(mirror.config(), "hexmirror=debug");
    let url = served.url();
    let env = api_env(&url, &token);
    let env = env_refs(&env);
    let mix = MixClient::new("acme_app", "1.0.0");
    mix.run_ok(&["hex.publish", "package", "--yes"], &env);
    mix.run_ok(&["hex.info", "acme_app"], &env);

    let log = served.log();
    let api_lines: Vec<&str> = log.lines().filter(|l| l.contains("API request")).collect();
    // The write, at info, with the route as declared and the token's name.
    let publish = api_lines
        .iter()
        .find(|l| l.contains("method=POST"))
        .unwrap_or_else(|| panic!("no POST line in:\n{log}"));
    assert!(publish.contains(" INFO "), "{publish}");
    assert!(
        publish.contains(r#"route="/api/repos/{repo}/packages/{name}/releases""#),
        "{publish}"
    );
    assert!(publish.contains("status=201"), "{publish}");
    assert!(publish.contains(r#"token="ci""#), "{publish}");
    assert!(publish.contains("duration_ms="), "{publish}");
    assert!(!publish.contains("/api/repos/acme/"), "{publish}");
    // The reads, at debug.
    let read = api_lines
        .iter()
        .find(|l| l.contains(r#"route="/api/repos/{repo}/packages/{name}""#))
        .unwrap_or_else(|| panic!("no package read in:\n{log}"));
    assert!(read.contains(" DEBUG "), "{read}");
    assert!(
        read.contains("method=GET") && read.contains("status=200"),
        "{read}"
    );

    // Never the secret, whole or in part.
    let secret = token.splitn(3, '_').nth(2).expect("hxm_ID_SECRET");
    assert!(!log.contains(&token), "{log}");
    assert!(!log.contains(secret), "{log}");
}

/// A docs tarball holding one `index.html` with `marker`.
fn docs_tarball(marker: &str) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let html = format!("<html>{marker}</html>");
    let mut header = tar::Header::new_gnu();
    header.set_size(html.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "index.html", html.as_bytes())
        .unwrap();
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

#[test]
fn docs_fetch_finds_the_docs_of_a_hosted_package() {
    // Two repositories of ours: `hexpm` (replacing hex.pm's, as the README
    // shows) and `acme`, which hosts the package.
    let upstream = TestUpstream::build(SPEC_SMALL);
    let key = fixture_key("other.pem");
    let mirror = Mirror::new(
        &upstream,
        &repositories_config(
            &key,
            &[
                "name = \"hexpm\"\npackages = [\"beta\"]",
                "name = \"acme\"\npackages = [\"beta\"]",
            ],
        ),
    );
    mirror.sync_ok();
    let token = mirror.token(&["--admin", "--name", "ci", "--user", "alice"]);
    let served = mirror.serve();
    let url = served.url();
    publish_with_oracle(&url, &token, "acme_app", "1.0.0");
    let got = http_body(
        "POST",
        &format!("{url}/api/repos/{REPO}/packages/acme_app/releases/1.0.0/docs"),
        &[("authorization", &token)],
        docs_tarball("acme_app docs"),
    );
    assert_eq!(got.status, 201, "{}", String::from_utf8_lossy(&got.body));
    let fetched = |mix: &MixClient| {
        let index = mix
            .hex_home()
            .join("docs/hexpm:acme/acme_app/1.0.0/index.html");
        fs::read_to_string(&index).unwrap_or_else(|e| panic!("{}: {e}", index.display()))
    };
    let pub_key = fixture_key("other.pub.pem");
    let pub_key = pub_key.to_string_lossy();

    // Hex fetches a package of repository ORG's docs from its hexpm URL +
    // /repos/ORG/docs/. With hexpm replaced by /repos/hexpm that is
    // /repos/hexpm/repos/acme/docs/..., which serves acme's docs.
    let mix = MixClient::new("client", "0.1.0");
    let hexpm = format!("{url}/repos/hexpm");
    mix.run_ok(
        &[
            "hex.repo",
            "set",
            "hexpm",
            "--url",
            &hexpm,
            "--public-key",
            &pub_key,
        ],
        &[],
    );
    let out = mix.run_ok(
        &[
            "hex.docs",
            "fetch",
            "acme_app",
            "1.0.0",
            "--organization",
            REPO,
        ],
        &[],
    );
    assert!(out.contains("Docs fetched"), "{out}");
    assert_eq!(fetched(&mix), "<html>acme_app docs</html>");

    // With the mirror's root as hexpm (HEX_MIRROR), /repos/acme/docs/ itself.
    let mix = MixClient::new("client", "0.1.0");
    let out = mix.run_ok(
        &[
            "hex.docs",
            "fetch",
            "acme_app",
            "1.0.0",
            "--organization",
            REPO,
        ],
        &[("HEX_MIRROR", url.as_str())],
    );
    assert!(out.contains("Docs fetched"), "{out}");
    assert_eq!(fetched(&mix), "<html>acme_app docs</html>");
}

#[test]
fn hex_update_check_gets_the_upstream_list_through_the_proxy() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    // As hex.pm lays it out: version, digest, the Elixir versions it runs on.
    let list = "2.5.1,abc123,1.14.0\n9.9.9,def456,1.0.0\n";
    fs::create_dir_all(upstream.dir().join("installs")).unwrap();
    fs::write(upstream.dir().join("installs/hex-1.x.csv"), list).unwrap();
    let mirror = Mirror::new(&upstream, "\n[proxy]\nenabled = true\n");
    let served = mirror.serve();
    let url = served.url();

    let got = http("GET", &format!("{url}/installs/hex-1.x.csv"), &[]);
    assert_eq!(got.status, 200);
    assert_eq!(got.body, list.as_bytes(), "passed through as received");
    assert_eq!(got.header("content-type"), Some("text/csv; charset=utf-8"));

    // The stock client reads it and tells the user about the newer Hex.
    let mix = MixClient::new("client", "0.1.0");
    let out = mix.run_ok(&["hex.info"], &[("HEX_MIRROR", url.as_str())]);
    assert!(
        out.contains("A new Hex version is available (2.5.1 < 9.9.9)"),
        "{out}"
    );

    // Without an upstream copy: a valid empty list, not an error.
    fs::remove_file(upstream.dir().join("installs/hex-1.x.csv")).unwrap();
    let got = http("GET", &format!("{url}/installs/hex-1.x.csv"), &[]);
    assert_eq!(got.status, 200);
    assert!(got.body.is_empty());
    let mix = MixClient::new("client", "0.1.0");
    let out = mix.run_ok(&["hex.info"], &[("HEX_MIRROR", url.as_str())]);
    assert!(
        !out.contains("Failed to check for new Hex version") && !out.contains("new Hex version"),
        "{out}"
    );
}
