//! `hexmirror verify`, locally (the data directory) and remotely (over HTTP
//! through `hexmirror serve`): a clean tree passes; a corrupt, missing or
//! extra file, an expired manifest, a rolled-back manifest and a manifest
//! signed by another key are each caught and named.

mod common;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use common::*;
use hexmirror::manifest::ManifestKey;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// SPEC_SMALL plus one release: syncing it after SPEC_SMALL publishes a
/// second generation.
fn spec_next() -> String {
    format!("{SPEC_SMALL}{{\"delta\", \"1.1.0\", [], []}}.\n")
}

/// A file every generation of SPEC_SMALL serves.
const TARBALL: &str = "tarballs/beta-0.2.1.tar";

/// An upstream and a mirror of it after one complete sync.
fn synced_mirror() -> (TestUpstream, Mirror) {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = Mirror::new(&upstream, "");
    sync_ok(&mirror);
    (upstream, mirror)
}

fn sync_ok(mirror: &Mirror) {
    let out = mirror.sync();
    assert!(out.ok(), "{out}");
}

/// Moves the upstream to `spec_next` and syncs: generation 2 is current,
/// generation 1 is still on disk (the default grace period is an hour).
fn publish_second_generation(upstream: &TestUpstream, mirror: &Mirror) {
    rebuild_upstream(upstream, &spec_next());
    sync_ok(mirror);
    assert_eq!(mirror.current_manifest().version, 2);
}

/// What a finished `hexmirror verify` said. (The harness's own output type
/// lives in a private module, so test crates cannot name it.)
struct Verdict {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Verdict {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `hexmirror verify ARGS... --config CONFIG`.
fn verify(mirror: &Mirror, args: &[&str]) -> Verdict {
    let out = mirror.run(&[&["verify"], args].concat());
    Verdict {
        code: out.code,
        stdout: out.stdout,
        stderr: out.stderr,
    }
}

/// The local check of the data directory, with its default state file.
fn verify_local(mirror: &Mirror) -> Verdict {
    verify(mirror, &[])
}

/// A client that only has the manifest public key and its own rollback state.
struct RemoteClient {
    dir: TempDir,
}

impl RemoteClient {
    /// Gives the client the public half of `mirror`'s manifest key.
    fn new(mirror: &Mirror) -> Self {
        let dir = TempDir::new().unwrap();
        fs::write(
            dir.path().join("manifest.pub.pem"),
            mirror.manifest_key().public().to_pem(),
        )
        .unwrap();
        Self { dir }
    }

    /// `hexmirror verify --url URL --key PUB --state FILE`.
    fn verify(&self, mirror: &Mirror, url: &str) -> Verdict {
        let key = self.dir.path().join("manifest.pub.pem");
        let state = self.dir.path().join("state");
        verify(
            mirror,
            &[
                "--url",
                url,
                "--key",
                key.to_str().unwrap(),
                "--state",
                state.to_str().unwrap(),
            ],
        )
    }
}

fn assert_clean(out: &Verdict) {
    assert!(out.ok(), "verify of a clean tree failed:\n{out}");
    assert!(out.stdout.contains("0 missing, 0 extra"), "{out}");
    assert!(out.stdout.contains("0 corrupt"), "{out}");
}

/// A file-level finding: exit 1 and the finding on its own line.
fn assert_finding(out: &Verdict, line_start: &str) {
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stdout.lines().any(|l| l.starts_with(line_start)),
        "no line starting with {line_start:?}:\n{out}"
    );
}

/// A refused manifest: failure, and `needle` in what the user is told.
fn assert_refused(out: &Verdict, needle: &str) {
    // Exit 1, like a file difference: a refused manifest is a finding about
    // the mirror, not a usage error (exit 2). Regression: it used to be 2.
    assert_eq!(
        out.code,
        Some(1),
        "verify did not refuse with exit 1:\n{out}"
    );
    assert!(
        out.stderr.contains(needle) || out.stdout.contains(needle),
        "no {needle:?} in the output:\n{out}"
    );
}

/// Flips one byte in place, keeping the inode: the generation's file is a
/// hard link to its blob, so the blob changes too, which is exactly what a
/// bad disk or an attacker with write access does.
fn flip_byte(path: &Path) {
    let mut perms = fs::metadata(path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)] // a test file we own
    perms.set_readonly(false);
    fs::set_permissions(path, perms).unwrap();
    let len = fs::metadata(path).unwrap().len();
    let at = len / 2;
    let mut byte = [0u8];
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    file.seek(SeekFrom::Start(at)).unwrap();
    std::io::Read::read_exact(&mut file, &mut byte).unwrap();
    file.seek(SeekFrom::Start(at)).unwrap();
    file.write_all(&[byte[0] ^ 0x01]).unwrap();
    file.sync_all().unwrap();
}

/// Points `current` at generation `id`, atomically (as an attacker or a
/// botched restore from backup would: an old, validly signed generation).
fn point_current_at(mirror: &Mirror, id: u64) {
    let data = mirror.data_dir();
    let tmp = data.join(".current-test");
    std::os::unix::fs::symlink(PathBuf::from(format!("generations/g{id:012}")), &tmp).unwrap();
    fs::rename(&tmp, data.join("current")).unwrap();
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn a_clean_tree_verifies() {
    let (_upstream, mirror) = synced_mirror();
    let out = verify_local(&mirror);
    assert_clean(&out);
    assert!(out.stdout.contains("manifest version 1 "), "{out}");
}

#[test]
fn a_flipped_byte_is_reported_corrupt() {
    let (_upstream, mirror) = synced_mirror();
    let file = mirror.tree().join(TARBALL);
    let before = fs::read(&file).unwrap();
    flip_byte(&file);
    // The damage reached the blob through the hard link.
    let blob = mirror
        .data_dir()
        .join("blobs/sha256")
        .join(hex::encode(&Sha256::digest(&before)[..1]))
        .join(hex::encode(Sha256::digest(&before)));
    assert_ne!(fs::read(blob).unwrap(), before);

    let out = verify_local(&mirror);
    assert_finding(&out, &format!("corrupt: {TARBALL}:"));
    assert!(out.stdout.contains("1 corrupt"), "{out}");
}

#[test]
fn a_missing_file_is_reported() {
    let (_upstream, mirror) = synced_mirror();
    fs::remove_file(mirror.tree().join("tarballs/alpha-1.0.0.tar")).unwrap();
    let out = verify_local(&mirror);
    assert_finding(&out, "missing: tarballs/alpha-1.0.0.tar");
    assert!(out.stdout.contains("1 missing, 0 extra"), "{out}");
}

#[test]
fn an_extra_file_is_reported() {
    let (_upstream, mirror) = synced_mirror();
    fs::write(mirror.tree().join("tarballs/zeta-1.0.0.tar"), b"planted").unwrap();
    let out = verify_local(&mirror);
    assert_finding(&out, "extra: tarballs/zeta-1.0.0.tar");
    assert!(out.stdout.contains("0 missing, 1 extra"), "{out}");
}

#[test]
fn an_expired_manifest_is_refused() {
    let (_upstream, mirror) = synced_mirror();
    // Validly signed by the mirror's own key, files intact: only the expiry
    // is wrong, as with a mirror that stopped re-signing (frozen).
    let now = unix_now();
    mirror.replace_current_manifest(&mirror.manifest_key(), |m| {
        m.signed_at = now - 2 * 86_400;
        m.expires_at = now - 86_400;
    });
    assert_refused(&verify_local(&mirror), "expired");
}

#[test]
fn a_rolled_back_manifest_is_refused() {
    let (upstream, mirror) = synced_mirror();
    publish_second_generation(&upstream, &mirror);
    // The state file now records version 2.
    assert_clean(&verify_local(&mirror));

    // Validly signed, files intact, only the version is older.
    mirror.replace_current_manifest(&mirror.manifest_key(), |m| m.version = 1);
    assert_refused(&verify_local(&mirror), "rollback");

    // Without the remembered version it passes: the state is what catches it.
    let fresh = TempDir::new().unwrap();
    let state = fresh.path().join("state");
    let out = verify(&mirror, &["--state", state.to_str().unwrap()]);
    assert_clean(&out);
}

#[test]
fn a_manifest_signed_by_another_key_is_refused() {
    let (_upstream, mirror) = synced_mirror();
    // Nothing changed but the signature: an attacker re-signing the real file list.
    mirror.replace_current_manifest(&ManifestKey::generate(), |_| {});
    assert_refused(&verify_local(&mirror), "not signed by the configured key");
}

#[test]
fn remote_verify_passes_a_clean_mirror_and_reports_a_corrupt_file() {
    let (_upstream, mirror) = synced_mirror();
    let served = mirror.serve();
    let client = RemoteClient::new(&mirror);
    assert_clean(&client.verify(&mirror, &served.url()));

    // Damage on disk, behind the writer's back. The running server answers
    // from what it read into memory for this generation; a restarted one
    // reads the disk again and serves the damage, which verify must report.
    flip_byte(&mirror.tree().join(TARBALL));
    drop(served);
    let served = mirror.serve();
    let out = client.verify(&mirror, &served.url());
    assert_finding(&out, &format!("corrupt: {TARBALL}:"));
}

#[test]
fn remote_verify_refuses_a_rolled_back_mirror() {
    let (upstream, mirror) = synced_mirror();
    publish_second_generation(&upstream, &mirror);
    let served = mirror.serve();
    let client = RemoteClient::new(&mirror);
    assert_clean(&client.verify(&mirror, &served.url()));

    // The server now serves generation 1 again: every file matches its
    // validly signed manifest, only its version is older than seen before.
    point_current_at(&mirror, 1);
    assert_refused(&client.verify(&mirror, &served.url()), "rollback");
}
