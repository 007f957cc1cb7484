//! The import folder of `hexmirror serve` (`[import]`): a package tarball
//! built by hex_core (the oracle) and copied into the folder is published
//! into repository `acme` and then resolved and compiled by stock rebar3; a
//! tarball left in `processing/` by a daemon that stopped mid-way is
//! published at start; files that are not package tarballs land in
//! `failed/` with a reason.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use hexmirror::registry::{PublicKey, verify_package};

/// The repository imported packages go to.
const REPO: &str = "acme";

/// How long a dropped file may take to show up where it should.
const WAIT: Duration = Duration::from_secs(30);

fn mirror_key() -> PublicKey {
    PublicKey::from_pem(&fs::read_to_string(fixture_key("other.pub.pem")).unwrap()).unwrap()
}

/// The folder's state, for failure messages.
fn describe(dir: &Path) -> String {
    let mut out = String::new();
    for sub in ["", "processing", "done", "failed"] {
        let mut names: Vec<String> = fs::read_dir(dir.join(sub))
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        out.push_str(&format!("{sub}/: {names:?}\n"));
        for n in names.iter().filter(|n| n.ends_with(".reason")) {
            let text = fs::read_to_string(dir.join(sub).join(n)).unwrap_or_default();
            out.push_str(&format!("  {n}: {text}\n"));
        }
    }
    out
}

/// Polls `cond` until it holds, failing after [`WAIT`] with the folder's state.
fn wait_until(what: &str, import: &Path, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting until {what}; the import folder:\n{}",
            describe(import)
        );
        thread::sleep(Duration::from_millis(200));
    }
}

fn status(served: &Served, path: &str) -> u16 {
    http("GET", &format!("{}{path}", served.url()), &[]).status
}

/// A synced mirror with repository `acme` (beta and its closure from the
/// upstream) and an import folder `import` beside the config file (a
/// relative path, resolved against the config file).
fn importing_mirror(upstream: &TestUpstream) -> (Mirror, PathBuf) {
    let mirror = Mirror::hosting(
        upstream,
        &format!("name = \"{REPO}\"\npackages = [\"beta\"]"),
        "[import]\ndir = \"import\"\nsettle_ms = 300",
    );
    let import = mirror.config().parent().unwrap().join("import");
    (mirror, import)
}

#[test]
fn dropped_tarballs_are_published_and_build_with_rebar3() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let (mirror, import) = importing_mirror(&upstream);
    let work = tempfile::TempDir::new().unwrap();

    // A daemon that stopped mid-way left a claimed tarball behind.
    fs::create_dir_all(import.join("processing")).unwrap();
    Oracle::tarball(
        "acme_left",
        "1.0.0",
        &import.join("processing/acme_left-1.0.0.tar"),
        &[],
    );

    let served = mirror.serve();

    // Copied in place (not renamed): the settle time keeps a half-written
    // file from being taken.
    let built = work.path().join("acme_app-1.0.0.tar");
    let sums = Oracle::tarball("acme_app", "1.0.0", &built, &[("beta", "~> 0.2")]);
    fs::copy(&built, import.join("acme_app-1.0.0.tar")).unwrap();
    fs::write(import.join("broken-1.0.0.tar"), b"this is not a tar file").unwrap();
    fs::write(import.join("bundle.zip"), b"PK\x03\x04").unwrap();

    for name in ["acme_left", "acme_app"] {
        let path = format!("/repos/{REPO}/packages/{name}");
        wait_until(&format!("GET {path} answers 200"), &import, || {
            status(&served, &path) == 200
        });
    }
    wait_until("both bad files are in failed/", &import, || {
        import.join("failed/broken-1.0.0.tar.reason").is_file()
            && import.join("failed/bundle.zip.reason").is_file()
    });

    // The signed record carries the dropped bytes.
    let res = http(
        "GET",
        &format!("{}/repos/{REPO}/packages/acme_app", served.url()),
        &[],
    );
    let record = verify_package(&res.body, &mirror_key(), REPO, "acme_app")
        .expect("record verifies with the mirror key")
        .into_inner();
    assert_eq!(record.releases.len(), 1);
    assert_eq!(record.releases[0].version, "1.0.0");
    let outer = record.releases[0]
        .outer_checksum
        .as_deref()
        .unwrap_or_default();
    assert_eq!(hex::encode(outer), sums.outer);
    assert_eq!(record.releases[0].dependencies[0].package, "beta");

    // Files end up in done/ and failed/, nothing is left in processing/.
    assert!(
        import.join("done/acme_app-1.0.0.tar").is_file()
            && import.join("done/acme_left-1.0.0.tar").is_file(),
        "{}",
        describe(&import)
    );
    assert_eq!(
        fs::read(import.join("done/acme_app-1.0.0.tar")).unwrap(),
        fs::read(&built).unwrap()
    );
    assert_eq!(
        fs::read_dir(import.join("processing")).unwrap().count(),
        0,
        "{}",
        describe(&import)
    );
    assert!(import.join("failed/broken-1.0.0.tar").is_file());
    let reason = fs::read_to_string(import.join("failed/broken-1.0.0.tar.reason")).unwrap();
    assert!(reason.contains("package tarball"), "{reason}");
    assert!(reason.contains("What to do:"), "{reason}");
    let reason = fs::read_to_string(import.join("failed/bundle.zip.reason")).unwrap();
    assert!(reason.contains("only package tarballs"), "{reason}");
    assert_eq!(
        status(&served, &format!("/repos/{REPO}/packages/broken")),
        404
    );

    // Stock rebar3 resolves and compiles both (and beta, alpha from the
    // curated upstream part), with nothing from hex.pm.
    let project = Rebar3Project::with_repo(
        &[("acme_app", "1.0.0"), ("acme_left", "1.0.0")],
        REPO,
        Some(&format!("{}/repos/{REPO}", served.url())),
        &fixture_key("other.pub.pem"),
    );
    let run = project.compile(DEAD_CDN);
    assert!(run.success, "rebar3 compile failed:\n{}", run.output);
    assert!(project.has_beam("acme_app") && project.has_beam("acme_left"));
    assert!(project.has_beam("beta"));
}

#[test]
fn the_same_tarball_dropped_again_is_done_not_republished() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let (mirror, import) = importing_mirror(&upstream);
    let work = tempfile::TempDir::new().unwrap();
    let built = work.path().join("acme_twice-1.0.0.tar");
    Oracle::tarball("acme_twice", "1.0.0", &built, &[]);
    let served = mirror.serve();

    // Written under a `.part` name, then renamed: taken only after the rename.
    let part = import.join("acme_twice-1.0.0.tar.part");
    fs::create_dir_all(&import).unwrap();
    fs::copy(&built, &part).unwrap();
    thread::sleep(Duration::from_millis(1500));
    assert!(part.is_file(), "a .part file is never taken");
    fs::rename(&part, import.join("acme_twice-1.0.0.tar")).unwrap();
    let path = format!("/repos/{REPO}/packages/acme_twice");
    wait_until("the first drop is published", &import, || {
        status(&served, &path) == 200
    });
    wait_until("the first drop is in done/", &import, || {
        import.join("done/acme_twice-1.0.0.tar").is_file()
    });
    let generation = fs::read_link(mirror.tree()).unwrap();

    fs::copy(&built, import.join("acme_twice-1.0.0.tar")).unwrap();
    wait_until("the second drop is in done/", &import, || {
        import.join("done/acme_twice-1.0.0~1.tar").is_file()
    });
    let result = fs::read_to_string(import.join("done/acme_twice-1.0.0~1.tar.result")).unwrap();
    assert!(result.starts_with("already published"), "{result}");
    assert!(!import.join("failed").read_dir().unwrap().any(|_| true));
    assert_eq!(
        fs::read_link(mirror.tree()).unwrap(),
        generation,
        "no new generation for a tarball already published"
    );
}
