//! The served tree survives what used to empty it: a publish after the
//! manifest key was rotated (reproduced on a real data directory: the tree
//! went from 142 files to 5), a publish over a damaged delta, and a
//! generation that lost what the database says it holds is flagged by
//! `hexmirror verify`.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use hexmirror::manifest::ManifestKey;
use hexmirror::store::{MANIFEST_DELTA_FILE, MANIFEST_FILE};

/// The repository packages are published to.
const REPO: &str = "acme";

/// A synced mirror with repository `acme` (beta and its closure), an admin
/// token, and `serve` running.
fn hosting(upstream: &TestUpstream) -> (Mirror, Served, String) {
    let mirror = Mirror::hosting(
        upstream,
        &format!("name = \"{REPO}\"\npackages = [\"beta\"]"),
        "",
    );
    let token = mirror.token(&["--admin", "--name", "ci", "--user", "builder"]);
    let served = mirror.serve();
    (mirror, served, token)
}

fn publish(served: &Served, token: &str, dir: &Path, name: &str) {
    let path = dir.join(format!("{name}-1.0.0.tar"));
    Oracle::tarball(name, "1.0.0", &path, &[]);
    let api = format!("{}/api/repos/{REPO}", served.url());
    let (status, body) = Oracle::api(&api, token, &["publish", path.to_str().unwrap()]);
    assert_eq!(status, 201, "publish {name}: {body}");
}

/// Every file of the served tree but the manifest and its delta, sorted.
fn tree_files(mirror: &Mirror) -> Vec<String> {
    let root = fs::canonicalize(mirror.tree()).unwrap();
    let mut out = hexmirror::store::list_files(&root).unwrap();
    out.sort();
    out
}

/// Points `[signing] manifest_key` at a new key and returns it.
fn rotate_manifest_key(mirror: &Mirror) -> ManifestKey {
    let key = ManifestKey::generate();
    let path = mirror.data_dir().join("keys/rotated.pem");
    fs::write(&path, key.to_pkcs8_pem()).unwrap();
    let text = fs::read_to_string(mirror.config()).unwrap().replacen(
        "[signing]\n",
        &format!(
            "[signing]\nmanifest_key = {:?}\n",
            path.display().to_string()
        ),
        1,
    );
    fs::write(mirror.config(), text).unwrap();
    key
}

fn served_status(served: &Served, path: &str) -> u16 {
    http("GET", &format!("{}/{path}", served.url()), &[]).status
}

#[test]
fn a_publish_after_a_manifest_key_rotation_keeps_every_file() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let (mirror, served, token) = hosting(&upstream);
    let work = tempfile::TempDir::new().unwrap();
    publish(&served, &token, work.path(), "acme_a");
    let before = tree_files(&mirror);
    assert!(before.contains(&"repos/acme/packages/acme_a".to_string()));
    drop(served);

    let key = rotate_manifest_key(&mirror);
    let served = mirror.serve();
    publish(&served, &token, work.path(), "acme_b");

    let after = tree_files(&mirror);
    let lost: Vec<_> = before.iter().filter(|p| !after.contains(p)).collect();
    assert!(lost.is_empty(), "the publish dropped {lost:?}");
    assert!(after.contains(&"repos/acme/packages/acme_b".to_string()));
    for path in [
        "names",
        "packages/beta",
        "repos/acme/packages/acme_a",
        "repos/acme/names",
    ] {
        assert_eq!(served_status(&served, path), 200, "GET /{path}");
    }
    // Re-signed with the new key, listing exactly the files on disk.
    let (base, delta) = hexmirror::store::read_manifest(&mirror.tree()).unwrap();
    let manifest =
        hexmirror::manifest::verify_with_delta(&base, delta.as_deref(), &key.public(), 0, None)
            .expect("the tree is signed with the new key");
    assert_eq!(manifest.files.keys().cloned().collect::<Vec<_>>(), after);
    let out = mirror.run(&["verify"]);
    assert!(out.ok(), "verify with the new key:\n{out}");

    // And the next publish patches in place again, with the new key.
    publish(&served, &token, work.path(), "acme_c");
    assert!(mirror.tree().join(MANIFEST_DELTA_FILE).exists());
    let out = mirror.run(&["verify"]);
    assert!(out.ok(), "verify after the patch:\n{out}");
    assert_eq!(tree_files(&mirror).len(), after.len() + 2);
}

#[test]
fn a_publish_over_a_damaged_delta_keeps_every_file() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let (mirror, served, token) = hosting(&upstream);
    let work = tempfile::TempDir::new().unwrap();
    publish(&served, &token, work.path(), "acme_a");
    let before = tree_files(&mirror);
    // A torn write: the delta is cut in half (renamed in, so no blob changes).
    let delta = mirror.tree().join(MANIFEST_DELTA_FILE);
    let bytes = fs::read(&delta).unwrap();
    let tmp = delta.with_extension("torn");
    fs::write(&tmp, &bytes[..bytes.len() / 2]).unwrap();
    fs::rename(&tmp, &delta).unwrap();

    publish(&served, &token, work.path(), "acme_b");
    let after = tree_files(&mirror);
    let lost: Vec<_> = before.iter().filter(|p| !after.contains(p)).collect();
    assert!(lost.is_empty(), "the publish dropped {lost:?}");
    assert_eq!(served_status(&served, "repos/acme/packages/acme_a"), 200);
    assert_eq!(served_status(&served, "repos/acme/packages/acme_b"), 200);
    mirror.assert_verifies();
}

#[test]
fn verify_flags_a_generation_that_lost_what_the_database_holds() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let (mirror, served, token) = hosting(&upstream);
    let work = tempfile::TempDir::new().unwrap();
    publish(&served, &token, work.path(), "acme_a");
    drop(served);
    mirror.assert_verifies();

    // A validly signed generation that simply lacks a hosted release and an
    // upstream record: every file it lists matches, so only the database
    // can tell that something is gone.
    let gone = ["repos/acme/tarballs/acme_a-1.0.0.tar", "packages/beta"];
    for path in gone {
        fs::remove_file(mirror.tree().join(path)).unwrap();
    }
    let delta = mirror.tree().join(MANIFEST_DELTA_FILE);
    let key = mirror.manifest_key();
    let mut manifest = mirror.current_manifest();
    for path in gone {
        manifest.files.remove(path);
    }
    let _ = fs::remove_file(&delta);
    let path = mirror.tree().join(MANIFEST_FILE);
    let tmp = path.with_extension("forged");
    fs::write(&tmp, hexmirror::manifest::sign(&manifest, &key)).unwrap();
    fs::rename(&tmp, &path).unwrap();

    let out = mirror.run(&["verify"]);
    assert!(!out.ok(), "verify must flag the loss:\n{out}");
    for path in gone {
        assert!(
            out.stdout.contains(&format!("lost: {path}")),
            "{path} reported lost:\n{out}"
        );
    }
}
