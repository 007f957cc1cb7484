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

/// Twelve packages of `versions` releases each: enough tarballs to kill a
/// sync in the middle of them.
fn spec(versions: &[&str]) -> String {
    let mut spec = String::new();
    for p in 0..12 {
        for v in versions {
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
fn assert_tree_is_usable(tree: &Path, upstream: &Path, index_current: bool) {
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
    // `/names` does not change when releases are added; `/versions` does.
    let versions = fs::read(tree.join("versions")).unwrap();
    let same = versions == fs::read(upstream.join("versions")).unwrap();
    assert_eq!(same, index_current, "versions is from the wrong generation");
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

/// Starts `hexmirror sync` and returns it once `reached` holds (at most 60 s;
/// the sync must still be running then).
fn sync_until(mirror: &Mirror, what: &str, reached: impl Fn() -> bool) -> std::process::Child {
    let mut child = mirror
        .sync_command()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !reached() {
        assert!(Instant::now() < deadline, "sync never {what}");
        assert!(
            child.try_wait().unwrap().is_none(),
            "sync ended before it {what}"
        );
        sleep(Duration::from_millis(5));
    }
    child
}

/// Starts a sync and SIGKILLs it once it has stored `tarballs` more of the
/// upstream's tarballs than were stored before. Waiting on the store rather
/// than on upstream answers keeps this true on a loaded machine, where a
/// fetched tarball may still be in verification when the next one is sent.
fn kill_after_tarballs(mirror: &Mirror, upstream: &TestUpstream, tarballs: usize) {
    let wanted: BTreeSet<String> = fs::read_dir(upstream.dir().join("tarballs"))
        .unwrap()
        .map(|e| hex::encode(Sha256::digest(fs::read(e.unwrap().path()).unwrap())))
        .collect();
    let stored = || {
        stored_blobs(&mirror.data_dir())
            .intersection(&wanted)
            .count()
    };
    let before = stored();
    let mut child = sync_until(mirror, &format!("stored {tarballs} more tarballs"), || {
        stored() >= before + tarballs
    });
    child.kill().unwrap(); // SIGKILL: no destructor, no flush, no cleanup
    child.wait().unwrap();
}

#[test]
fn kill_9_mid_sync_leaves_a_usable_tree_and_the_next_sync_resumes() {
    let upstream = TestUpstream::build(&spec(&["1.0.0", "1.1.0"]));
    let mirror = Mirror::new(&upstream, "");
    let first = mirror.sync();
    assert!(first.ok(), "{first}");
    let served_before: Vec<(String, Vec<u8>)> = repository_files(&mirror.tree());

    // The upstream moves on: a new release of every package.
    rebuild_upstream(&upstream, &spec(&["1.0.0", "1.1.0", "2.0.0"]));
    upstream.delay("/tarballs/", Duration::from_millis(40));
    // Kill twice, each time after some new tarballs were verified and stored.
    for _ in 0..2 {
        kill_after_tarballs(&mirror, &upstream, 2);
        // Clients still get the last good generation, whole and unchanged.
        assert_tree_is_usable(&mirror.tree(), upstream.dir(), false);
        assert_eq!(repository_files(&mirror.tree()), served_before);
    }
    let verified_before = stored_blobs(&mirror.data_dir());

    upstream.delay("/tarballs/", Duration::ZERO);
    upstream.clear_log();
    let out = mirror.sync();
    assert!(out.ok(), "{out}");
    assert_tree_is_usable(&mirror.tree(), upstream.dir(), true);

    // Exactly the new releases the killed syncs had not stored were fetched:
    // nothing already verified was downloaded again.
    let fetched: BTreeSet<String> = upstream
        .requests()
        .into_iter()
        .filter_map(|r| r.path.strip_prefix("/tarballs/").map(str::to_owned))
        .collect();
    let missing: BTreeSet<String> = (0..12)
        .map(|p| format!("pkg{p}-2.0.0.tar"))
        .filter(|file| {
            let bytes = fs::read(upstream.dir().join("tarballs").join(file)).unwrap();
            !verified_before.contains(&hex::encode(Sha256::digest(&bytes)))
        })
        .collect();
    assert!(missing.len() < 12, "the killed syncs stored no new tarball");
    assert_eq!(fetched, missing);
    // The tree is now the complete mirror, and hexmirror verify agrees.
    let upstream_files: Vec<_> = repository_files(upstream.dir())
        .into_iter()
        .filter(|(p, _)| p != "public_key")
        .collect();
    let mirrored: Vec<_> = repository_files(&mirror.tree())
        .into_iter()
        .filter(|(p, _)| p != "public_key")
        .collect();
    assert_eq!(upstream_files, mirrored);
    mirror.assert_verifies();
}

/// Every registry file and tarball under `root`, with its bytes, sorted.
fn repository_files(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for top in ["names", "versions", "public_key"] {
        if let Ok(bytes) = fs::read(root.join(top)) {
            out.push((top.to_string(), bytes));
        }
    }
    for sub in ["packages", "tarballs"] {
        for entry in fs::read_dir(root.join(sub)).into_iter().flatten() {
            let entry = entry.unwrap();
            let name = format!("{sub}/{}", entry.file_name().to_string_lossy());
            out.push((name, fs::read(entry.path()).unwrap()));
        }
    }
    out.sort();
    out
}

/// Regression: a stored tarball damaged on disk was linked into every later
/// generation, so `verify` reported it forever. The next sync that touches
/// the package re-hashes what it reuses and fetches a good copy.
#[test]
fn a_damaged_blob_is_fetched_again_by_the_next_sync_that_needs_it() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = Mirror::new(&upstream, "");
    mirror.sync_ok();
    // Flip a byte through the served link: that is the blob itself.
    let served = mirror.tree().join("tarballs/alpha-1.0.0.tar");
    let mut bytes = fs::read(&served).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    let mut f = fs::OpenOptions::new().write(true).open(&served).unwrap();
    std::io::Write::write_all(&mut f, &bytes).unwrap();
    drop(f);

    rebuild_upstream(
        &upstream,
        &format!("{SPEC_SMALL}{{\"alpha\", \"1.2.0\", [], []}}.\n"),
    );
    upstream.clear_log();
    let out = mirror.sync();
    assert!(out.ok(), "{out}");
    assert_eq!(
        upstream.count_path("/tarballs/alpha-1.0.0.tar"),
        1,
        "refetched once"
    );
    assert_eq!(
        fs::read(mirror.tree().join("tarballs/alpha-1.0.0.tar")).unwrap(),
        fs::read(upstream.dir().join("tarballs/alpha-1.0.0.tar")).unwrap()
    );
    mirror.assert_verifies();
}

#[test]
fn sigterm_mid_sync_stops_at_a_safe_point_and_the_tree_verifies() {
    let upstream = TestUpstream::build(&spec(&["1.0.0", "1.1.0"]));
    let mirror = Mirror::new(&upstream, "");
    let first = mirror.sync();
    assert!(first.ok(), "{first}");
    rebuild_upstream(&upstream, &spec(&["1.0.0", "1.1.0", "2.0.0"]));
    upstream.delay("/tarballs/", Duration::from_millis(40));
    upstream.clear_log();
    let mut child = sync_until(&mirror, "reached 4 tarballs", || {
        upstream.count(|r| r.path.starts_with("/tarballs/") && r.status == 200) >= 4
    });
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "sync did not stop on SIGTERM");
        sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(143), "SIGTERM ends the sync with 143");
    assert_tree_is_usable(&mirror.tree(), upstream.dir(), false);
    mirror.assert_verifies();

    upstream.delay("/tarballs/", Duration::ZERO);
    let out = mirror.sync();
    assert!(out.ok(), "{out}");
    assert_tree_is_usable(&mirror.tree(), upstream.dir(), true);
    mirror.assert_verifies();
}
