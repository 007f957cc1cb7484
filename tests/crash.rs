//! Crash safety: `kill -9` in the middle of a sync leaves a tree clients can
//! use, and the next sync completes without fetching again any tarball that
//! was already verified and stored.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;
use hexmirror::registry::{PublicKey, verify_package};
use sha2::{Digest, Sha256};

/// Twelve packages of three releases: enough tarballs to kill a sync in
/// the middle of them.
fn spec() -> String {
    let mut spec = String::new();
    for p in 0..12 {
        for v in ["1.0.0", "1.1.0", "2.0.0"] {
            let deps = if p > 0 {
                format!("[{{\"pkg{}\", \"~> 1.0\", false}}]", p - 1)
            } else {
                "[]".into()
            };
            spec.push_str(&format!("{{\"pkg{p}\", \"{v}\", {deps}, []}}.\n"));
        }
    }
    spec
}

/// Checks the invariant clients rely on: every package record in the tree
/// verifies and every tarball it names is in the tree with the signed
/// checksum; `names`/`versions`, when present, are the upstream's.
fn assert_tree_is_usable(tree: &Path, upstream: &Path) {
    let key =
        PublicKey::from_pem(&fs::read_to_string(fixture_key("upstream.pub.pem")).unwrap()).unwrap();
    for entry in fs::read_dir(tree.join("packages")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let bytes = fs::read(entry.path()).unwrap();
        let package = verify_package(&bytes, &key, "hexpm", &name)
            .unwrap_or_else(|e| panic!("packages/{name} in the tree does not verify: {e}"));
        for release in &package.releases {
            let file = tree.join(format!("tarballs/{name}-{}.tar", release.version));
            let tarball = fs::read(&file).unwrap_or_else(|e| {
                panic!("{} named by a record but unreadable: {e}", file.display())
            });
            assert_eq!(
                Sha256::digest(&tarball).as_slice(),
                release.outer_checksum.as_deref().unwrap(),
                "{}",
                file.display()
            );
        }
    }
    for index in ["names", "versions"] {
        if let Ok(bytes) = fs::read(tree.join(index)) {
            assert_eq!(bytes, fs::read(upstream.join(index)).unwrap(), "{index}");
        }
    }
    let leftovers: Vec<_> = fs::read_dir(tree.join("tarballs"))
        .unwrap()
        .chain(fs::read_dir(tree.join("packages")).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') || n.contains(".tmp") || n.contains(".part"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temp files in the served tree: {leftovers:?}"
    );
}

/// SHA-256s of every blob in the store, as lowercase hex.
fn stored_blobs(data: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let root = data.join("blobs/sha256");
    for shard in fs::read_dir(root).into_iter().flatten() {
        for blob in fs::read_dir(shard.unwrap().path()).unwrap() {
            out.insert(blob.unwrap().file_name().to_string_lossy().into_owned());
        }
    }
    out
}

/// Starts a sync and SIGKILLs it once `tarballs` tarball answers went out.
fn kill_after_tarballs(mirror: &Mirror, upstream: &TestUpstream, tarballs: usize) {
    upstream.clear_log();
    let mut child = mirror
        .sync_command()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while upstream.count(|r| r.path.starts_with("/tarballs/") && r.status == 200) < tarballs {
        assert!(
            Instant::now() < deadline,
            "sync never reached {tarballs} tarballs"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "sync ended before it could be killed"
        );
        sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL: no destructor, no flush, no cleanup
    child.wait().unwrap();
}

#[test]
fn kill_9_mid_sync_leaves_a_usable_tree_and_the_next_sync_resumes() {
    let upstream = TestUpstream::build(&spec());
    let mirror = Mirror::new(&upstream, "");
    upstream.delay("/tarballs/", Duration::from_millis(40));

    // Kill twice, at different depths, before letting a sync finish.
    for tarballs in [4, 15] {
        kill_after_tarballs(&mirror, &upstream, tarballs);
        assert_tree_is_usable(&mirror.tree(), upstream.dir());
    }
    let verified_before = stored_blobs(&mirror.data_dir());
    assert!(
        !verified_before.is_empty(),
        "the killed syncs stored nothing"
    );
    // The kills landed mid-sync: some records published, not all, no index.
    let published = fs::read_dir(mirror.tree().join("packages"))
        .unwrap()
        .count();
    assert!(
        (1..12).contains(&published),
        "{published} of 12 records published"
    );
    assert!(!mirror.tree().join("versions").exists());

    upstream.delay("/tarballs/", Duration::ZERO);
    upstream.clear_log();
    let out = mirror.sync();
    assert!(out.ok(), "{out}");
    assert_tree_is_usable(&mirror.tree(), upstream.dir());

    // Nothing already verified was downloaded again.
    for req in upstream.requests() {
        if let Some(file) = req.path.strip_prefix("/tarballs/") {
            let bytes = fs::read(upstream.dir().join("tarballs").join(file)).unwrap();
            let sha = hex::encode(Sha256::digest(&bytes));
            assert!(
                !verified_before.contains(&sha),
                "{file} was fetched again after the crash"
            );
        }
    }
    // And the tree is now the complete mirror.
    for sub in ["packages", "tarballs"] {
        for entry in fs::read_dir(upstream.dir().join(sub)).unwrap() {
            let entry = entry.unwrap();
            let mirrored = mirror.tree().join(sub).join(entry.file_name());
            assert_eq!(
                fs::read(entry.path()).unwrap(),
                fs::read(&mirrored).unwrap()
            );
        }
    }
    assert!(mirror.tree().join("names").is_file());
}
