//! Private packages through the write API: published with hex_core (the
//! oracle, as rebar3 3.19 publishes), resolved and compiled by stock rebar3
//! from the repository `acme`, retired, replaced, reverted, and refused
//! after the revert window; a sync afterwards keeps them.

mod common;

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use hexmirror::registry::proto::package::RetirementReason;
use hexmirror::registry::{PublicKey, verify_names, verify_package};

/// The revert window of the lifecycle test: long enough for the steps
/// inside it on a slow machine, short enough to wait out.
const WINDOW: Duration = Duration::from_secs(20);

/// The repository packages are published to.
const REPO: &str = "acme";

fn mirror_key() -> PublicKey {
    PublicKey::from_pem(&fs::read_to_string(fixture_key("other.pub.pem")).unwrap()).unwrap()
}

/// A synced mirror with repository `acme` (beta and its closure from the
/// upstream) and a revert window of `window` seconds, serving, with an admin token.
fn hosting(upstream: &TestUpstream, window: u64) -> (Mirror, Served, String) {
    let mirror = Mirror::hosting(
        upstream,
        &format!("name = \"{REPO}\"\npackages = [\"beta\"]"),
        &format!("[api]\nrevert_window_secs = {window}"),
    );
    let token = mirror.token(&["--admin", "--name", "ci", "--user", "builder"]);
    let served = mirror.serve();
    (mirror, served, token)
}

fn api_url(served: &Served) -> String {
    format!("{}/api/repos/{REPO}", served.url())
}

/// The signed package record of `name` in `acme`, verified with the mirror key.
fn record(served: &Served, name: &str) -> Option<hexmirror::registry::proto::package::Package> {
    let res = http(
        "GET",
        &format!("{}/repos/{REPO}/packages/{name}", served.url()),
        &[],
    );
    match res.status {
        404 => None,
        200 => Some(
            verify_package(&res.body, &mirror_key(), REPO, name)
                .expect("record verifies with the mirror key")
                .into_inner(),
        ),
        s => panic!("GET /repos/{REPO}/packages/{name}: {s}"),
    }
}

fn listed_names(served: &Served) -> Vec<String> {
    let res = http("GET", &format!("{}/repos/{REPO}/names", served.url()), &[]);
    assert_eq!(res.status, 200);
    verify_names(&res.body, &mirror_key(), REPO)
        .expect("names verify")
        .into_inner()
        .packages
        .into_iter()
        .map(|p| p.name)
        .collect()
}

fn tarball(dir: &Path, name: &str, version: &str, deps: &[(&str, &str)]) -> String {
    let path = dir.join(format!("{name}-{version}.tar"));
    Oracle::tarball(name, version, &path, deps);
    path.to_string_lossy().into_owned()
}

#[test]
fn publish_compile_retire_replace_revert_and_the_window() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let (mirror, served, token) = hosting(&upstream, WINDOW.as_secs());
    let work = tempfile::TempDir::new().unwrap();
    let api = api_url(&served);

    // Publish as rebar3 3.19 does; hex_core must decode our Erlang-term body.
    let v1 = tarball(work.path(), "acme_app", "1.0.0", &[("beta", "~> 0.2")]);
    let (status, body) = Oracle::api(&api, &token, &["publish", &v1]);
    assert_eq!(status, 201, "publish: {body}");
    assert!(
        body.contains("<<\"checksum\">>"),
        "hex_core decoded no release body: {body}"
    );
    assert!(listed_names(&served).contains(&"acme_app".to_owned()));
    let rec = record(&served, "acme_app").expect("record published");
    assert_eq!(rec.releases.len(), 1);
    assert_eq!(rec.releases[0].dependencies[0].package, "beta");
    // hex_core accepts the record under the mirror's key and name.
    let fetched = Oracle::fetch(
        &format!("{}/repos/{REPO}", served.url()),
        REPO,
        &fixture_key("other.pub.pem"),
        "acme_app",
    )
    .expect("hex_core fetches the published record");
    assert_eq!(fetched.len(), 1, "{fetched:?}");
    assert_eq!(fetched[0].0, "1.0.0");

    // The same version again without replace is refused; with it, replaced.
    let (status, body) = Oracle::api(&api, &token, &["publish", &v1]);
    assert_eq!(status, 422, "{body}");
    let (status, body) = Oracle::api(&api, &token, &["publish", &v1, "replace"]);
    assert_eq!(status, 200, "{body}");

    // Retire: the signed record says so.
    let (status, body) = Oracle::api(
        &api,
        &token,
        &["retire", "acme_app", "1.0.0", "security", "CVE-2026-1"],
    );
    assert_eq!(status, 204, "{body}");
    let retired = record(&served, "acme_app").unwrap().releases[0]
        .retired
        .clone()
        .expect("retired in the record");
    assert_eq!(retired.reason, RetirementReason::RetiredSecurity as i32);
    assert_eq!(retired.message.as_deref(), Some("CVE-2026-1"));
    let (status, _) = Oracle::api(&api, &token, &["unretire", "acme_app", "1.0.0"]);
    assert_eq!(status, 204);
    assert!(
        record(&served, "acme_app").unwrap().releases[0]
            .retired
            .is_none()
    );

    // Revert inside the window: gone from the record and from /names.
    let (status, body) = Oracle::api(&api, &token, &["revert", "acme_app", "1.0.0"]);
    assert_eq!(status, 204, "{body}");
    assert!(record(&served, "acme_app").is_none());
    assert!(!listed_names(&served).contains(&"acme_app".to_owned()));
    let gone = http(
        "GET",
        &format!("{}/repos/{REPO}/tarballs/acme_app-1.0.0.tar", served.url()),
        &[],
    );
    assert_eq!(gone.status, 404);

    // Published again (a revert frees the version) ...
    let (status, _) = Oracle::api(&api, &token, &["publish", &v1]);
    assert_eq!(status, 201);
    let published = Instant::now();

    // Stock rebar3 resolves it (and beta, alpha from the curated upstream part).
    let project = Rebar3Project::with_repo(
        &[("acme_app", "1.0.0")],
        REPO,
        Some(&format!("{}/repos/{REPO}", served.url())),
        &fixture_key("other.pub.pem"),
    );
    let run = project.compile(DEAD_CDN);
    assert!(run.success, "rebar3 compile failed:\n{}", run.output);
    assert!(project.has_beam("acme_app") && project.has_beam("beta"));

    // ... then the window passes: no revert, no replace.
    thread::sleep(WINDOW.saturating_sub(published.elapsed()) + Duration::from_secs(1));
    let (status, body) = Oracle::api(&api, &token, &["revert", "acme_app", "1.0.0"]);
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("retire"),
        "the refusal says what to do: {body}"
    );
    let (status, body) = Oracle::api(&api, &token, &["publish", &v1, "replace"]);
    assert_eq!(status, 422, "{body}");
    assert!(record(&served, "acme_app").is_some());

    // A sync keeps hosted packages, and the tree verifies.
    let out = mirror.sync();
    assert!(out.ok(), "sync after publishing failed:\n{out}");
    assert_eq!(record(&served, "acme_app").unwrap().releases.len(), 1);
    mirror.assert_verifies();
}

#[test]
fn names_of_upstream_packages_and_missing_dependencies_are_refused() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let (mirror, served, token) = hosting(&upstream, 3600);
    let work = tempfile::TempDir::new().unwrap();
    let api = api_url(&served);
    let before = mirror.current_manifest().files;

    // Dependency confusion: alpha exists upstream and is not reserved.
    let alpha = tarball(work.path(), "alpha", "9.0.0", &[]);
    let (status, body) = Oracle::api(&api, &token, &["publish", &alpha]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("dependency confusion"), "{body}");

    // A dependency that does not exist, or no release matches.
    let ghost = tarball(
        work.path(),
        "acme_ghost",
        "1.0.0",
        &[("nonexistent", "~> 1.0")],
    );
    let (status, body) = Oracle::api(&api, &token, &["publish", &ghost]);
    assert_eq!(status, 422, "{body}");
    let too_new = tarball(work.path(), "acme_new", "1.0.0", &[("beta", "~> 9.0")]);
    let (status, body) = Oracle::api(&api, &token, &["publish", &too_new]);
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("0.2.1"),
        "the refusal lists what exists: {body}"
    );

    assert_eq!(
        mirror.current_manifest().files,
        before,
        "refusals changed the tree"
    );
}

#[test]
fn reserved_names_replace_the_upstream_package_in_the_repository() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let extra = repositories_config(
        &fixture_key("other.pem"),
        &[&format!("name = \"{REPO}\"\nreserved = [\"delta\"]")],
    );
    let mirror = Mirror::new(&upstream, &extra);
    assert!(mirror.sync().ok());
    let token = mirror.token(&["--admin"]);
    let served = mirror.serve();
    let work = tempfile::TempDir::new().unwrap();
    assert!(
        record(&served, "delta").is_none(),
        "a reserved upstream name is never served"
    );

    let delta = tarball(work.path(), "delta", "5.0.0", &[]);
    let (status, body) = Oracle::api(&api_url(&served), &token, &["publish", &delta]);
    assert_eq!(status, 201, "{body}");
    let versions: Vec<String> = record(&served, "delta")
        .unwrap()
        .releases
        .into_iter()
        .map(|r| r.version)
        .collect();
    assert_eq!(
        versions,
        ["5.0.0"],
        "only the private package, never upstream's 1.0.0"
    );
    assert!(mirror.sync().ok());
    assert_eq!(record(&served, "delta").unwrap().releases.len(), 1);
}
