//! The pull mirror end to end: the real `hexmirror` binary syncs an upstream
//! built by hex_core (the reference implementation) and served over loopback.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// Every registry file and tarball under an upstream directory, as
/// repository paths (`names`, `packages/beta`, `tarballs/beta-0.2.1.tar`).
fn repository_files(root: &Path) -> Vec<String> {
    let mut out = vec!["names".to_string(), "versions".to_string()];
    for sub in ["packages", "tarballs"] {
        for entry in fs::read_dir(root.join(sub)).unwrap() {
            out.push(format!(
                "{sub}/{}",
                entry.unwrap().file_name().to_string_lossy()
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn sync_then_serve_every_file_byte_for_byte() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = Mirror::new(&upstream, "");
    let out = mirror.sync();
    assert!(out.ok(), "{out}");
    assert!(out.stdout.contains("sync complete"), "{out}");
    assert!(out.stdout.contains("4 packages"), "{out}");

    let server = mirror.serve();
    let files = repository_files(upstream.dir());
    assert_eq!(files.len(), 2 + 4 + 8, "{files:?}");
    for path in &files {
        let want = fs::read(upstream.dir().join(path)).unwrap();
        let got = http("GET", &format!("{}/{path}", server.url()), &[]);
        assert_eq!(got.status, 200, "{path}");
        assert!(
            got.body == want,
            "{path}: served bytes differ from upstream"
        );
        assert!(got.header("etag").is_some(), "{path}: no ETag");
        assert!(got.header("content-encoding").is_none(), "{path}");
    }
    // The reference client verifies what the mirror serves, with the
    // upstream's key and repository name.
    for package in ["alpha", "beta", "gamma", "delta"] {
        let releases = Oracle::fetch(
            &server.url(),
            "hexpm",
            &fixture_key("upstream.pub.pem"),
            package,
        )
        .unwrap_or_else(|e| panic!("oracle fetch {package}: {e}"));
        assert!(!releases.is_empty());
    }
}

#[test]
fn incremental_sync_of_an_unchanged_upstream_makes_only_conditional_requests() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = Mirror::new(&upstream, "");
    mirror.sync_ok();
    upstream.clear_log();

    let out = mirror.sync();
    assert!(out.ok(), "{out}");
    assert!(out.stdout.contains("up to date"), "{out}");
    let requests = upstream.requests();
    assert!(!requests.is_empty());
    assert!(
        requests.iter().all(|r| r.conditional && r.status == 304),
        "every request must be conditional and answered 304: {requests:?}"
    );
    assert_eq!(upstream.count(|r| r.path.starts_with("/tarballs/")), 0);
}

#[test]
fn after_an_upstream_change_only_changed_packages_and_new_tarballs_are_fetched() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = Mirror::new(&upstream, "");
    mirror.sync_ok();

    // New alpha release; beta 0.1.0 removed upstream. hex_core output is
    // deterministic, so every other file keeps its bytes and its ETag.
    let spec = SPEC_SMALL.replace(
        "{\"beta\", \"0.1.0\", [{\"alpha\", \"~> 1.0\", false}], []}.\n",
        "",
    ) + "{\"alpha\", \"1.2.0\", [], []}.\n";
    rebuild_upstream(&upstream, &spec);
    upstream.clear_log();

    let out = mirror.sync();
    assert!(out.ok(), "{out}");
    let tarballs: Vec<_> = upstream
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/tarballs/"))
        .map(|r| r.path)
        .collect();
    assert_eq!(tarballs, vec!["/tarballs/alpha-1.2.0.tar".to_string()]);
    let full_package_fetches: Vec<_> = upstream
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/packages/") && r.status == 200)
        .map(|r| r.path)
        .collect();
    assert_eq!(
        sorted(full_package_fetches),
        vec!["/packages/alpha".to_string(), "/packages/beta".to_string()]
    );
    // The dropped release left the tree only after the new index was in place.
    let tree = mirror.tree();
    assert!(!tree.join("tarballs/beta-0.1.0.tar").exists());
    assert!(tree.join("tarballs/alpha-1.2.0.tar").exists());
    assert_eq!(
        fs::read(tree.join("versions")).unwrap(),
        fs::read(upstream.dir().join("versions")).unwrap()
    );
}

#[test]
fn a_selected_package_brings_its_whole_dependency_closure() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = Mirror::new(&upstream, "packages = [\"beta\"]");
    let out = mirror.sync();
    assert!(out.ok(), "{out}");
    let tree = mirror.tree();
    for file in [
        "packages/beta",
        "packages/alpha",
        "packages/gamma",
        "tarballs/alpha-1.0.0.tar",
        "tarballs/gamma-3.0.0.tar",
        "tarballs/beta-0.2.1.tar",
    ] {
        assert!(tree.join(file).is_file(), "{file} missing: {out}");
    }
    assert!(!tree.join("packages/delta").exists());
    assert!(!tree.join("tarballs/delta-1.0.0.tar").exists());
    assert_eq!(upstream.count(|r| r.path.contains("delta")), 0);
    // Byte-identical mode keeps the upstream's signed index as it is.
    assert_eq!(
        fs::read(tree.join("names")).unwrap(),
        fs::read(upstream.dir().join("names")).unwrap()
    );
}

#[test]
fn a_mistyped_selected_package_is_reported_and_fails_the_sync() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = Mirror::new(&upstream, "packages = [\"beta\", \"betta\"]");
    let out = mirror.sync();
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stdout
            .contains("failed: betta: not in the upstream index"),
        "{out}"
    );
    assert!(mirror.tree().join("packages/beta").is_file());
}

#[test]
fn transient_errors_are_retried_and_a_404_is_not() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    upstream.fail_next("/packages/alpha", 503, 2);
    upstream.fail_next("/tarballs/gamma-3.0.0.tar", 429, 1);
    let mirror = Mirror::new(&upstream, "");
    let out = mirror.sync();
    assert!(out.ok(), "{out}");
    assert_eq!(upstream.count_path("/packages/alpha"), 3);
    assert_eq!(upstream.count_path("/tarballs/gamma-3.0.0.tar"), 2);

    let upstream = TestUpstream::build(SPEC_SMALL);
    fs::remove_file(upstream.dir().join("tarballs/alpha-1.0.0.tar")).unwrap();
    let mirror = Mirror::new(&upstream, "");
    let out = mirror.sync();
    assert_eq!(out.code, Some(1), "{out}");
    assert_eq!(
        upstream.count_path("/tarballs/alpha-1.0.0.tar"),
        1,
        "404 is not retried"
    );
    assert!(out.stdout.contains("failed: alpha 1.0.0"), "{out}");
    assert!(out.stdout.contains("not found (404)"), "{out}");
    // One failing package does not stop the others...
    assert!(mirror.tree().join("packages/beta").is_file());
    assert!(mirror.tree().join("packages/delta").is_file());
    // ...alpha's record is not published without its tarball (alpha is
    // quarantined), and the index moves on without it.
    assert!(!mirror.tree().join("packages/alpha").exists());
    assert!(mirror.tree().join("versions").is_file());
}

/// A sync ends promptly even when the upstream stalls: every request has a
/// timeout, and the stalled package is reported.
#[test]
fn a_stalled_upstream_times_out_instead_of_hanging() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    upstream.delay("/packages/gamma", Duration::from_secs(30));
    let mirror = Mirror::with_upstream_keys(&upstream, "timeout_secs = 1\nretries = 1", "");
    let started = Instant::now();
    let out = mirror.sync();
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert!(out.stdout.contains("failed: gamma"), "{out}");
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}
