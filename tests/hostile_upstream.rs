//! An upstream that lies must be caught. Each test builds an honest upstream
//! with hex_core, tampers with one kind of file the way an attacker (or a
//! broken CDN) could, runs the real `hexmirror sync`, and checks three things:
//! the failure is reported with the package, version and reason; nothing the
//! lie touched reached the served tree; and the honest packages were still
//! mirrored. Where practical, hex_core is asked to judge the same input, which
//! proves the tampering is real and not a bug in the test.

mod common;

use std::collections::BTreeMap;
use std::fmt::Display;
use std::fs;
use std::path::Path;

use common::tarballs::{Entry, hex_tarball, metadata};
use common::*;
use hexmirror::registry::proto::package::Package;
use hexmirror::registry::proto::signed::Signed;
use hexmirror::registry::{SigningKey, gunzip, gzip, seal_signed};
use prost::Message;
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------
// Tampering with signed registry files
// ---------------------------------------------------------------------------

fn signing_key(fixture: &str) -> SigningKey {
    let pem = fs::read_to_string(fixture_key(fixture)).expect("read fixture key");
    SigningKey::from_pem(&pem).expect("fixture key parses")
}

/// The `Signed` envelope of a registry file, decoded without verifying it.
fn read_envelope(file: &Path) -> Signed {
    let raw = gunzip(&fs::read(file).unwrap()).expect("registry file is gzip");
    Signed::decode(raw.as_slice()).expect("registry file is a Signed envelope")
}

/// The payload of `packages/NAME` in the upstream, decoded without verifying it.
fn read_package(upstream: &TestUpstream, name: &str) -> Package {
    let payload = read_envelope(&upstream.dir().join("packages").join(name)).payload;
    Package::decode(payload.as_slice()).expect("package payload decodes")
}

/// Signs `package` with the fixture key `key` and writes it as `packages/FILE`.
fn seal_package(upstream: &TestUpstream, file: &str, package: &Package, key: &str) {
    let sealed = seal_signed(package.encode_to_vec(), &signing_key(key));
    fs::write(upstream.dir().join("packages").join(file), sealed).unwrap();
}

/// Flips one bit of the signature inside a registry file, leaving the payload
/// (and the gzip and protobuf framing) intact, so only the signature check can
/// catch it.
fn corrupt_signature(file: &Path) {
    let mut signed = read_envelope(file);
    let signature = signed.signature.as_mut().expect("file is signed");
    let middle = signature.len() / 2;
    signature[middle] ^= 0x01;
    fs::write(file, gzip(&signed.encode_to_vec())).unwrap();
}

/// hex_core's verdict on a registry file of the upstream, checked with the
/// upstream's real key and repository name.
fn oracle_verdict(
    upstream: &TestUpstream,
    path: &str,
    kind: RegistryFile<'_>,
) -> Result<(), String> {
    Oracle::verify_file(
        &upstream.dir().join(path),
        kind,
        "hexpm",
        &fixture_key("upstream.pub.pem"),
    )
}

// ---------------------------------------------------------------------------
// Hostile tarballs
// ---------------------------------------------------------------------------

/// A Hex tarball for `alpha 1.1.0` that is consistent with itself (CHECKSUM is
/// the true inner checksum) but carries `version_member` as VERSION and
/// `entries` in contents.tar.gz. Its metadata is hex_core-style for `alpha
/// 1.1.0`, so it gets past the metadata checks and the test reaches the attack
/// it is about. Returns the tarball and its inner checksum.
fn hostile_tarball(version_member: &[u8], entries: &[Entry<'_>]) -> (Vec<u8>, [u8; 32]) {
    hex_tarball(version_member, &metadata("alpha", "1.1.0"), entries)
}

/// Makes the upstream lie consistently: `tarballs/alpha-1.1.0.tar` becomes
/// `tarball`, and `/packages/alpha` is re-signed with the real key so that
/// release 1.1.0 carries the hostile tarball's own checksums. Every check that
/// compares against the signed record passes; only the structure checks can
/// catch it.
fn publish_hostile_alpha_1_1_0(upstream: &TestUpstream, tarball: &[u8], inner: [u8; 32]) {
    fs::write(upstream.dir().join("tarballs/alpha-1.1.0.tar"), tarball).unwrap();
    let mut alpha = read_package(upstream, "alpha");
    let release = alpha
        .releases
        .iter_mut()
        .find(|r| r.version == "1.1.0")
        .expect("alpha 1.1.0 in the record");
    release.inner_checksum = inner.to_vec();
    release.outer_checksum = Some(Sha256::digest(tarball).to_vec());
    seal_package(upstream, "alpha", &alpha, "upstream.pem");
}

/// What hex_core's in-memory unpack (`Oracle::unpack`) makes of a hostile
/// tarball.
#[derive(Debug, Clone, Copy)]
enum HexCore {
    /// It refuses the tarball too, for a reason containing this text.
    Refuses(&'static str),
    /// It accepts it, with the checksums we signed. Its in-memory unpack does
    /// not judge entry paths or link targets (only an extraction to disk
    /// would meet them), so here it proves the lie is self-consistent: the
    /// mirror's walk of contents.tar.gz is the one check left to catch it.
    AcceptsInMemory,
}

/// Serves a hostile `alpha 1.1.0` built from `version_member` and `entries`,
/// syncs, and checks that the mirror refuses it with a reason containing
/// `reason`, that it reached neither the blob store nor the tree, and that
/// hex_core judges the file as `hex_core` says.
fn assert_hostile_alpha_refused(
    version_member: &[u8],
    entries: &[Entry<'_>],
    reason: &str,
    hex_core: HexCore,
) {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let (tarball, inner) = hostile_tarball(version_member, entries);
    publish_hostile_alpha_1_1_0(&upstream, &tarball, inner);
    // The record really is validly signed: the lie is in the tarball alone.
    oracle_verdict(&upstream, "packages/alpha", RegistryFile::Package("alpha"))
        .expect("hex_core accepts the re-signed alpha record");
    let unpacked = Oracle::unpack(&upstream.dir().join("tarballs/alpha-1.1.0.tar"));
    match hex_core {
        HexCore::Refuses(why) => match unpacked {
            Err(e) => assert!(e.contains(why), "hex_core refused for another reason: {e}"),
            Ok(sums) => panic!("hex_core unpacked it: {sums:?}"),
        },
        HexCore::AcceptsInMemory => assert_eq!(
            unpacked,
            Ok(Checksums {
                inner: hex::encode(inner),
                outer: hex::encode(Sha256::digest(&tarball)),
            })
        ),
    }

    let mirror = Mirror::new(&upstream, "");
    let out = mirror.sync();
    assert_eq!(out.code, Some(1), "{out}");
    assert_failure(&out.stdout, &out, "alpha 1.1.0", reason);
    assert_package_absent(&mirror, &upstream, "alpha");
    assert!(
        !blob_path(&mirror, &Sha256::digest(&tarball)).exists(),
        "the hostile tarball was stored as a blob"
    );
    assert_mirrored(&mirror, &upstream, &["beta", "gamma", "delta"]);
}

// ---------------------------------------------------------------------------
// Assertions about the sync and the served tree
// ---------------------------------------------------------------------------

/// `stdout` has a failure line for `subject` ("beta", or "alpha 1.1.0" for a
/// release) that gives `reason`; `out` is the whole run, shown on failure.
/// (The harness's `Output` type is not exported, hence the two arguments.)
fn assert_failure(stdout: &str, out: &dyn Display, subject: &str, reason: &str) {
    let prefix = format!("failed: {subject}: ");
    let line = stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line\n{out}"));
    assert!(
        line.contains(reason),
        "`{line}` does not say `{reason}`\n{out}"
    );
}

/// The upstream's tarball files for `package` (`tarballs/alpha-1.0.0.tar`, ...).
fn upstream_tarballs(upstream: &TestUpstream, package: &str) -> Vec<String> {
    let prefix = format!("{package}-");
    let mut out: Vec<String> = fs::read_dir(upstream.dir().join("tarballs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with(&prefix))
        .map(|f| format!("tarballs/{f}"))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "upstream has no tarballs for {package}");
    out
}

/// Neither `package`'s record nor any of its tarballs is in the served tree.
fn assert_package_absent(mirror: &Mirror, upstream: &TestUpstream, package: &str) {
    let tree = mirror.tree();
    let record = format!("packages/{package}");
    for file in std::iter::once(record).chain(upstream_tarballs(upstream, package)) {
        assert!(!tree.join(&file).exists(), "{file} reached the served tree");
    }
}

/// Each of `packages` is in the served tree, record and tarballs, byte for
/// byte as the (honest part of the) upstream has them.
fn assert_mirrored(mirror: &Mirror, upstream: &TestUpstream, packages: &[&str]) {
    let tree = mirror.tree();
    for package in packages {
        let record = format!("packages/{package}");
        for file in std::iter::once(record).chain(upstream_tarballs(upstream, package)) {
            let got =
                fs::read(tree.join(&file)).unwrap_or_else(|e| panic!("{file} not mirrored: {e}"));
            assert!(
                got == fs::read(upstream.dir().join(&file)).unwrap(),
                "{file}: mirrored bytes differ from upstream"
            );
        }
    }
}

/// Where the store keeps a verified tarball (`blobs/sha256/ab/HEX`).
fn blob_path(mirror: &Mirror, sha256: &[u8]) -> std::path::PathBuf {
    let hex = hex::encode(sha256);
    mirror
        .data_dir()
        .join("blobs/sha256")
        .join(&hex[..2])
        .join(hex)
}

/// Every file under `root`, by relative path, with its bytes.
fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Replaces `packages/beta` via `tamper`, syncs, and checks that beta alone
/// failed for `reason` (a failure of `kind`) while everything else was
/// mirrored, the index with it. hex_core must refuse the tampered record too.
fn assert_beta_record_refused(tamper: impl FnOnce(&TestUpstream), reason: &str, kind: &str) {
    let upstream = TestUpstream::build(SPEC_SMALL);
    tamper(&upstream);
    let refused = oracle_verdict(&upstream, "packages/beta", RegistryFile::Package("beta"));
    assert!(refused.is_err(), "hex_core accepts the tampered record");

    let mirror = Mirror::new(&upstream, "");
    let out = mirror.sync();
    assert_eq!(out.code, Some(1), "{out}");
    assert_failure(&out.stdout, &out, "beta", reason);
    assert_failure(
        &out.stdout,
        &out,
        "beta",
        &format!("{}/packages/beta", upstream.url()),
    );
    assert_package_absent(&mirror, &upstream, "beta");
    assert_mirrored(&mirror, &upstream, &["alpha", "gamma", "delta"]);
    // The index moves on without beta, which is quarantined.
    for file in ["names", "versions"] {
        assert_eq!(
            fs::read(mirror.tree().join(file)).unwrap(),
            fs::read(upstream.dir().join(file)).unwrap(),
            "{file} is the upstream's: {out}"
        );
    }
    let status = mirror.run(&["status"]);
    assert_eq!(status.code, Some(1), "{status}");
    assert!(
        status.stdout.contains(&format!("beta [{kind}]")),
        "{status}"
    );
}

// ---------------------------------------------------------------------------
// Package records
// ---------------------------------------------------------------------------

#[test]
fn package_record_with_a_corrupted_signature_is_refused() {
    assert_beta_record_refused(
        |upstream| corrupt_signature(&upstream.dir().join("packages/beta")),
        "signature does not verify",
        "signature",
    );
}

#[test]
fn package_record_signed_with_another_key_is_refused() {
    assert_beta_record_refused(
        |upstream| {
            let beta = read_package(upstream, "beta");
            seal_package(upstream, "beta", &beta, "other.pem");
        },
        "signature does not verify",
        "signature",
    );
}

#[test]
fn package_record_from_another_repository_is_refused_despite_a_valid_signature() {
    assert_beta_record_refused(
        |upstream| {
            let mut beta = read_package(upstream, "beta");
            beta.repository = "other".into();
            seal_package(upstream, "beta", &beta, "upstream.pem");
        },
        r#"payload says repository "other", expected "hexpm""#,
        "origin",
    );
}

#[test]
fn package_record_for_another_package_is_refused_despite_a_valid_signature() {
    assert_beta_record_refused(
        |upstream| {
            let dir = upstream.dir();
            fs::copy(dir.join("packages/alpha"), dir.join("packages/beta")).unwrap();
        },
        r#"payload is for package "alpha", expected "beta""#,
        "origin",
    );
}

// ---------------------------------------------------------------------------
// The index
// ---------------------------------------------------------------------------

/// A good sync, then `file` (`names` or `versions`) gets a bad signature: the
/// next sync is refused as a whole, before any package is asked for, and the
/// served tree is exactly what the good sync left.
fn assert_index_with_bad_signature_refuses_the_sync(file: &str, kind: RegistryFile<'_>) {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = Mirror::new(&upstream, "");
    let first = mirror.sync();
    assert!(first.ok(), "{first}");
    let before = snapshot(&mirror.tree());
    assert!(before.contains_key(file), "{file} not published: {first}");

    corrupt_signature(&upstream.dir().join(file));
    assert!(oracle_verdict(&upstream, file, kind).is_err());
    upstream.clear_log();
    let out = mirror.sync();
    assert_eq!(out.code, Some(2), "{out}");
    let url = format!("{}/{file}", upstream.url());
    assert!(
        out.stderr
            .contains(&format!("{file} from {url}: signature does not verify")),
        "{out}"
    );
    assert!(
        out.stderr.contains("the served tree was left as it was"),
        "{out}"
    );
    assert_eq!(
        upstream.count(|r| r.path != "/names" && r.path != "/versions"),
        0,
        "nothing else may be fetched on a refused index: {:?}",
        upstream.requests()
    );
    let after = snapshot(&mirror.tree());
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (path, bytes) in &before {
        assert!(after[path] == *bytes, "{path} changed in the served tree");
    }
}

#[test]
fn names_with_a_bad_signature_refuses_the_whole_sync_and_keeps_the_tree() {
    assert_index_with_bad_signature_refuses_the_sync("names", RegistryFile::Names);
}

#[test]
fn versions_with_a_bad_signature_refuses_the_whole_sync_and_keeps_the_tree() {
    assert_index_with_bad_signature_refuses_the_sync("versions", RegistryFile::Versions);
}

// ---------------------------------------------------------------------------
// Tarballs
// ---------------------------------------------------------------------------

/// Swaps `tarballs/alpha-1.1.0.tar` for alpha 1.0.0's bytes: a genuine,
/// well-formed tarball that is not the one the signed record names.
fn swap_alpha_1_1_0_for_1_0_0(upstream: &TestUpstream) {
    let dir = upstream.dir().join("tarballs");
    fs::copy(dir.join("alpha-1.0.0.tar"), dir.join("alpha-1.1.0.tar")).unwrap();
}

#[test]
fn tarball_not_matching_the_signed_outer_checksum_is_refused() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    swap_alpha_1_1_0_for_1_0_0(&upstream);
    // hex_core's signed record names another checksum than the file's.
    let signed = Oracle::fetch(
        &upstream.url(),
        "hexpm",
        &fixture_key("upstream.pub.pem"),
        "alpha",
    )
    .expect("the alpha record itself is honest");
    let served = fs::read(upstream.dir().join("tarballs/alpha-1.1.0.tar")).unwrap();
    let (_, recorded) = signed.iter().find(|(v, _)| v == "1.1.0").unwrap();
    assert_ne!(*recorded, hex::encode(Sha256::digest(&served)));

    let mirror = Mirror::new(&upstream, "");
    let out = mirror.sync();
    assert_eq!(out.code, Some(1), "{out}");
    assert_failure(&out.stdout, &out, "alpha 1.1.0", "outer checksum");
    assert_failure(
        &out.stdout,
        &out,
        "alpha 1.1.0",
        &format!("{}/tarballs/alpha-1.1.0.tar", upstream.url()),
    );
    // alpha's other tarballs were fine, but its record names 1.1.0, so none
    // of alpha is published.
    assert_package_absent(&mirror, &upstream, "alpha");
    assert_mirrored(&mirror, &upstream, &["beta", "gamma", "delta"]);
}

#[test]
fn tarball_changed_upstream_after_a_good_sync_is_not_refetched() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = Mirror::new(&upstream, "");
    let first = mirror.sync();
    assert!(first.ok(), "{first}");
    let good = fs::read(mirror.tree().join("tarballs/alpha-1.1.0.tar")).unwrap();

    // A new alpha release makes the mirror fetch alpha's record again; under
    // the same record, 1.1.0's tarball has changed upstream.
    rebuild_upstream(
        &upstream,
        &format!("{SPEC_SMALL}{{\"alpha\", \"1.2.0\", [], []}}.\n"),
    );
    swap_alpha_1_1_0_for_1_0_0(&upstream);
    upstream.clear_log();
    let out = mirror.sync();
    assert!(out.ok(), "{out}");
    assert!(
        upstream.count_path("/packages/alpha") > 0,
        "alpha not rechecked"
    );
    assert_eq!(
        upstream.count_path("/tarballs/alpha-1.1.0.tar"),
        0,
        "a verified blob is never downloaded again"
    );
    assert!(mirror.tree().join("tarballs/alpha-1.2.0.tar").is_file());
    assert!(
        fs::read(mirror.tree().join("tarballs/alpha-1.1.0.tar")).unwrap() == good,
        "the served alpha 1.1.0 is no longer the verified one"
    );
}

#[test]
fn consistently_signed_tarball_with_an_entry_escaping_the_package_is_refused() {
    assert_hostile_alpha_refused(
        b"3",
        &[
            Entry::File("src/alpha.erl", b"-module(alpha).\n"),
            Entry::File("../escape.txt", b"owned\n"),
        ],
        "contents.tar.gz entry `../escape.txt` escapes the package",
        HexCore::AcceptsInMemory,
    );
}

#[test]
fn consistently_signed_tarball_with_a_symlink_to_an_absolute_path_is_refused() {
    assert_hostile_alpha_refused(
        b"3",
        &[
            Entry::File("src/alpha.erl", b"-module(alpha).\n"),
            Entry::Symlink("priv/passwd", "/etc/passwd"),
        ],
        "contents.tar.gz link `priv/passwd` points to absolute path `/etc/passwd`",
        HexCore::AcceptsInMemory,
    );
}

#[test]
fn consistently_signed_tarball_of_format_version_2_is_refused() {
    assert_hostile_alpha_refused(
        b"2",
        &[Entry::File("src/alpha.erl", b"-module(alpha).\n")],
        r#"VERSION is "2", only "3" is supported"#,
        HexCore::Refuses("unsupported version"),
    );
}

// ---------------------------------------------------------------------------
// The quarantine
// ---------------------------------------------------------------------------

/// A package that fails is quarantined, not a reason to hold everything
/// back: the index and our re-signed repository move on without it, the
/// next sync asks for it again and exits 0 while nothing new failed, and
/// it leaves the quarantine as soon as the upstream serves it correctly.
#[test]
fn a_failing_package_is_quarantined_and_leaves_once_it_verifies() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let beta_record = fs::read(upstream.dir().join("packages/beta")).unwrap();
    corrupt_signature(&upstream.dir().join("packages/beta"));
    let repo = repositories_config(&fixture_key("other.pem"), &["name = \"acme\""]);
    let mirror = Mirror::new(&upstream, &repo);

    let out = mirror.sync();
    assert_eq!(out.code, Some(1), "a new failure fails the run: {out}");
    assert!(out.stdout.contains("quarantined: 1 packages"), "{out}");
    assert_mirrored(&mirror, &upstream, &["alpha", "gamma", "delta"]);
    assert!(mirror.tree().join("names").is_file(), "{out}");
    // Our repository is built from what was published: no beta anywhere.
    let tree = mirror.tree();
    assert!(tree.join("repos/acme/packages/alpha").is_file(), "{out}");
    assert!(!tree.join("repos/acme/packages/beta").exists(), "{out}");
    let names = hexmirror::registry::verify_names(
        &fs::read(tree.join("repos/acme/names")).unwrap(),
        &hexmirror::registry::PublicKey::from_pem(
            &fs::read_to_string(fixture_key("other.pub.pem")).unwrap(),
        )
        .unwrap(),
        "acme",
    )
    .unwrap()
    .into_inner();
    let listed: Vec<&str> = names.packages.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(listed, ["alpha", "delta", "gamma"]);
    mirror.assert_verifies();
    // /health and /metrics tell the operator.
    {
        let served = mirror.serve();
        let health = http("GET", &format!("{}/health", served.url()), &[]);
        let v: serde_json::Value = serde_json::from_slice(&health.body).unwrap();
        assert_eq!(v["status"], "degraded", "{v}");
        assert_eq!(v["quarantine"]["count"], 1, "{v}");
        assert_eq!(v["quarantine"]["first"][0], "beta", "{v}");
        let metrics = http("GET", &format!("{}/metrics", served.url()), &[]);
        let text = String::from_utf8_lossy(&metrics.body);
        assert!(text.contains("hexmirror_quarantined_packages 1"), "{text}");
        assert!(
            text.contains("hexmirror_quarantined_packages_by_kind{kind=\"signature\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("hexmirror_quarantine_oldest_age_seconds"),
            "{text}"
        );
    }

    // Still bad: asked again, only the known failure, so exit 0 with a warning.
    upstream.clear_log();
    let out = mirror.sync();
    assert_eq!(out.code, Some(0), "only an old failure: {out}");
    assert!(out.stdout.contains("failed: beta"), "{out}");
    assert!(
        out.stdout
            .contains("quarantined: 1 packages keep their last good state (0 newly failed)"),
        "{out}"
    );
    assert_eq!(upstream.count_path("/packages/beta"), 1, "retried once");
    // The others (this upstream's /names has no timestamps, so each is
    // asked conditionally) answer 304 and nothing is downloaded again.
    assert_eq!(
        upstream.count(|r| r.path.starts_with("/packages/") && r.status != 304),
        1,
        "only beta's record came in full"
    );
    assert_eq!(upstream.count(|r| r.path.starts_with("/tarballs/")), 0);
    let status = mirror.run(&["status"]);
    assert!(status.stdout.contains("tried 2 times"), "{status}");

    // Fixed upstream: beta verifies, leaves the quarantine, is published.
    fs::write(upstream.dir().join("packages/beta"), &beta_record).unwrap();
    let out = mirror.sync();
    assert_eq!(out.code, Some(0), "{out}");
    assert_mirrored(&mirror, &upstream, &["alpha", "beta", "gamma", "delta"]);
    assert!(
        mirror.tree().join("repos/acme/packages/beta").is_file(),
        "{out}"
    );
    let status = mirror.run(&["status"]);
    assert_eq!(status.code, Some(0), "{status}");
    assert!(
        status.stdout.contains("no package is quarantined"),
        "{status}"
    );
    mirror.assert_verifies();
    let served = mirror.serve();
    let metrics = http("GET", &format!("{}/metrics", served.url()), &[]);
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("hexmirror_quarantined_packages 0"), "{text}");
}

/// A package the operator skips is neither fetched nor a failure.
#[test]
fn a_skipped_package_is_neither_fetched_nor_a_failure() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    corrupt_signature(&upstream.dir().join("packages/beta"));
    let mirror = Mirror::new(&upstream, "skip = [\"beta\"]");
    let out = mirror.sync();
    assert_eq!(out.code, Some(0), "{out}");
    assert!(!out.stdout.contains("failed:"), "{out}");
    assert_eq!(upstream.count_path("/packages/beta"), 0, "never asked for");
    assert_package_absent(&mirror, &upstream, "beta");
    assert_mirrored(&mirror, &upstream, &["alpha", "gamma", "delta"]);
    let status = mirror.run(&["status"]);
    assert!(
        status.stdout.contains("no package is quarantined"),
        "{status}"
    );
    let bad = Mirror::new(&upstream, "skip = [\"Beta\"]");
    let out = bad.sync();
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("mirror.skip"), "{out}");
}

/// An old, validly signed index replayed (here: beta's newest release gone,
/// with the limit at zero) is refused as a whole; `--accept-rollback`
/// takes it once the operator has checked.
#[test]
fn a_rolled_back_index_is_refused_until_accepted() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = Mirror::new(&upstream, "rollback_max_backwards = 0");
    mirror.sync_ok();
    let before = snapshot(&mirror.tree());
    let older: String = SPEC_SMALL
        .lines()
        .filter(|l| !l.contains("\"beta\", \"0.2.1\""))
        .map(|l| format!("{l}\n"))
        .collect();
    rebuild_upstream(&upstream, &older);
    let out = mirror.sync();
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("looks rolled back"), "{out}");
    assert!(out.stderr.contains("beta 0.2.1 -> 0.2.0"), "{out}");
    assert!(out.stderr.contains("--accept-rollback"), "{out}");
    assert_eq!(snapshot(&mirror.tree()), before, "the tree did not move");

    let out = mirror.run(&["sync", "--accept-rollback"]);
    assert!(out.ok(), "{out}");
    assert!(!mirror.tree().join("tarballs/beta-0.2.1.tar").exists());
    mirror.assert_verifies();
}
