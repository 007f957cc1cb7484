//! Private packages through the write API: published with hex_core (the
//! oracle, as rebar3 3.19 publishes), resolved and compiled by stock rebar3
//! from the repository `acme`, retired, replaced, reverted, and refused
//! after the revert window; a sync afterwards keeps them.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;
use hexmirror::registry::proto::package::RetirementReason;
use hexmirror::registry::{PublicKey, verify_names, verify_package};

/// The revert window of the lifecycle test. It is never waited out: the
/// test moves the release's publication time back instead (the writer reads
/// it from the database on every change), and `hosted::rules` unit-tests
/// the window's edges with an injected clock.
const WINDOW: Duration = Duration::from_secs(3600);

/// Moves every release of `package` back in time by `by`, as if that much
/// time had passed since it was published.
fn backdate(mirror: &Mirror, package: &str, by: Duration) {
    let db = rusqlite::Connection::open(mirror.data_dir().join("hexmirror.db")).unwrap();
    let moved = db
        .execute(
            "UPDATE hosted_releases SET inserted_at = inserted_at - ?1 WHERE package = ?2",
            rusqlite::params![by.as_secs() as i64, package],
        )
        .unwrap();
    assert!(moved > 0, "no release of {package} to move back");
}

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
    backdate(&mirror, "acme_app", WINDOW + Duration::from_secs(1));
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
    mirror.sync_ok();
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
    mirror.sync_ok();
    assert_eq!(record(&served, "delta").unwrap().releases.len(), 1);
}

/// A change patches the served generation in place and signs a delta that
/// lists only what changed; `hexmirror verify` (local and over HTTP) accepts
/// the pair. A crash after the delta was written but before the files moved
/// is finished when `serve` starts again, and a sync folds everything into
/// a complete generation.
#[test]
fn changes_patch_the_served_generation_and_an_interrupted_one_is_finished() {
    use hexmirror::store::MANIFEST_DELTA_FILE;
    let upstream = TestUpstream::build(SPEC_SMALL);
    let (mirror, served, token) = hosting(&upstream, 3600);
    let work = tempfile::TempDir::new().unwrap();
    let api = api_url(&served);
    let current = || fs::read_link(mirror.data_dir().join("current")).unwrap();
    let synced = current();
    let before = mirror.current_manifest();
    assert!(!mirror.tree().join(MANIFEST_DELTA_FILE).exists());

    for version in ["1.0.0", "1.1.0"] {
        let file = tarball(work.path(), "acme_app", version, &[]);
        let (status, body) = Oracle::api(&api, &token, &["publish", &file]);
        assert_eq!(status, 201, "publish {version}: {body}");
    }
    assert_eq!(
        current(),
        synced,
        "a publish patches, it does not copy the tree"
    );
    let delta_bytes = fs::read(mirror.tree().join(MANIFEST_DELTA_FILE)).unwrap();
    let delta =
        hexmirror::manifest::verify_delta(&delta_bytes, &mirror.manifest_key().public()).unwrap();
    let changed: Vec<&str> = delta.files.keys().map(String::as_str).collect();
    assert_eq!(
        changed,
        [
            "repos/acme/names",
            "repos/acme/packages/acme_app",
            "repos/acme/tarballs/acme_app-1.0.0.tar",
            "repos/acme/tarballs/acme_app-1.1.0.tar",
            "repos/acme/versions",
        ]
    );
    let patched = mirror.current_manifest();
    assert_eq!(patched.version, before.version + 2);
    assert_eq!(patched.files.len(), before.files.len() + 3);
    mirror.assert_verifies();
    let pem = work.path().join("manifest.pub.pem");
    fs::write(&pem, mirror.manifest_key().public().to_pem()).unwrap();
    let remote = mirror.run(&[
        "verify",
        "--url",
        &served.url(),
        "--key",
        pem.to_str().unwrap(),
        "--state",
        work.path().join("remote.state").to_str().unwrap(),
    ]);
    assert!(remote.ok(), "verify over HTTP:\n{remote}");

    // Revert 1.1.0, then put its files back as they were before: what a
    // kill -9 leaves after the delta was renamed in and before any file moved.
    let tree = mirror.tree();
    let paths = [
        "repos/acme/names",
        "repos/acme/versions",
        "repos/acme/packages/acme_app",
        "repos/acme/tarballs/acme_app-1.1.0.tar",
    ];
    let old: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| fs::read(tree.join(p)).unwrap())
        .collect();
    let (status, body) = Oracle::api(&api, &token, &["revert", "acme_app", "1.1.0"]);
    assert_eq!(status, 204, "{body}");
    drop(served);
    for (path, bytes) in paths.iter().zip(&old) {
        // Unlink first: writing through the name would change the blob.
        let _ = fs::remove_file(tree.join(path));
        fs::write(tree.join(path), bytes).unwrap();
    }
    let out = mirror.run(&["verify"]);
    assert!(!out.ok(), "the half-applied change is detected:\n{out}");

    let served = mirror.serve();
    mirror.assert_verifies();
    let rec = record(&served, "acme_app").expect("record");
    let versions: Vec<&str> = rec.releases.iter().map(|r| r.version.as_str()).collect();
    assert_eq!(versions, ["1.0.0"]);
    let gone = http(
        "GET",
        &format!("{}/repos/{REPO}/tarballs/acme_app-1.1.0.tar", served.url()),
        &[],
    );
    assert_eq!(gone.status, 404);

    // A sync with nothing new upstream leaves the patched generation alone;
    // one with an upstream change publishes a complete generation, which
    // keeps the hosted package and needs no delta.
    let out = mirror.sync();
    assert!(out.ok(), "{out}");
    assert_eq!(current(), synced);
    mirror.assert_verifies();
    rebuild_upstream(
        &upstream,
        &format!("{SPEC_SMALL}{{\"beta\", \"0.3.0\", [{{\"alpha\", \"~> 1.1\", false}}], []}}.\n"),
    );
    let out = mirror.sync();
    assert!(out.ok(), "{out}");
    assert_ne!(current(), synced);
    assert!(!mirror.tree().join(MANIFEST_DELTA_FILE).exists());
    assert_eq!(record(&served, "acme_app").unwrap().releases.len(), 1);
    assert!(mirror.current_manifest().version > patched.version);
    mirror.assert_verifies();

    // The writer's decoded /names is not reused across the sync's new files.
    let file = tarball(work.path(), "acme_lib", "0.1.0", &[]);
    let (status, body) = Oracle::api(&api_url(&served), &token, &["publish", &file]);
    assert_eq!(status, 201, "{body}");
    let names = listed_names(&served);
    for name in ["acme_app", "acme_lib", "alpha", "beta"] {
        assert!(names.contains(&name.to_owned()), "{name} in {names:?}");
    }
    mirror.assert_verifies();
}
