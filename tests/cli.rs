//! The command line refuses bad configurations with one line that says
//! where the problem is, and exit status 2, before touching anything.

mod common;

use std::fs;

use common::*;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = hexmirror().args(args).output().expect("run hexmirror");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn config_file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    fs::write(&path, text).unwrap();
    let path = path.to_string_lossy().into_owned();
    (dir, path)
}

fn assert_one_line_error(stderr: &str, needles: &[&str]) {
    let lines: Vec<_> = stderr
        .lines()
        .filter(|l| l.starts_with("hexmirror:"))
        .collect();
    assert_eq!(lines.len(), 1, "exactly one error line expected:\n{stderr}");
    for needle in needles {
        assert!(lines[0].contains(needle), "{needle:?} not in: {}", lines[0]);
    }
}

#[test]
fn unknown_key_is_refused_with_file_line_and_key() {
    let (_dir, path) = config_file("data_dir = \"d\"\n\n[mirror]\nconcurency = 4\n");
    for cmd in ["sync", "serve"] {
        let (code, stderr) = run(&[cmd, "--config", &path]);
        assert_eq!(code, Some(2), "{cmd}: {stderr}");
        assert_one_line_error(&stderr, &[&path, "line 4", "unknown field `concurency`"]);
    }
}

#[test]
fn missing_key_file_is_refused_naming_the_key_and_the_file() {
    let (dir, path) = config_file("[upstream]\npublic_key = \"nope.pem\"\n");
    let (code, stderr) = run(&["sync", "--config", &path]);
    assert_eq!(code, Some(2), "{stderr}");
    let key = dir.path().join("nope.pem");
    assert_one_line_error(&stderr, &["`upstream.public_key`", &key.to_string_lossy()]);
    assert!(
        !dir.path().join("hexmirror-data").exists(),
        "nothing may be created"
    );
}

#[test]
fn a_key_file_that_is_not_a_public_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    fs::write(
        &path,
        format!(
            "[upstream]\npublic_key = {:?}\n",
            fixture_key("upstream.pem").to_string_lossy()
        ),
    )
    .unwrap();
    let (code, stderr) = run(&["sync", "--config", &path.to_string_lossy()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_one_line_error(&stderr, &["not an RSA public key"]);
}

#[test]
fn unusable_data_dir_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("file"), b"not a directory").unwrap();
    let path = dir.path().join("c.toml");
    fs::write(
        &path,
        "data_dir = \"file/data\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    let (code, stderr) = run(&["sync", "--config", &path.to_string_lossy()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_one_line_error(&stderr, &[&dir.path().join("file").to_string_lossy()]);
}

#[test]
fn unreadable_config_file_is_refused() {
    let (code, stderr) = run(&["sync", "--config", "/nonexistent/hexmirror.toml"]);
    assert_eq!(code, Some(2));
    assert_one_line_error(
        &stderr,
        &["cannot read config file /nonexistent/hexmirror.toml"],
    );
}

#[test]
fn an_unreachable_upstream_fails_the_sync_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    // Port 9 (discard) on loopback: nothing listens, connections are refused.
    fs::write(
        &path,
        "[upstream]\nurl = \"http://127.0.0.1:9\"\nretries = 1\n",
    )
    .unwrap();
    let (code, stderr) = run(&["sync", "--config", &path.to_string_lossy()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_one_line_error(
        &stderr,
        &["http://127.0.0.1:9/", "served tree was left as it was"],
    );
}

#[test]
fn keygen_writes_private_keys_0600_prints_the_fingerprint_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("keys");
    let out_arg = out_dir.to_string_lossy().into_owned();
    let first = hexmirror()
        .args(["keygen", "--out", &out_arg, "--bits", "2048"])
        .output()
        .unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let stdout = String::from_utf8_lossy(&first.stdout);
    for (file, mode) in [
        ("hexmirror.pem", 0o600),
        ("manifest.pem", 0o600),
        ("hexmirror.pub.pem", 0o644),
        ("manifest.pub.pem", 0o644),
    ] {
        let meta = fs::metadata(out_dir.join(file)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
    }
    // The fingerprint line is what `mix hex.repo add --fetch-public-key` takes,
    // and it is the public key's, as the library computes it.
    let public = hexmirror::registry::PublicKey::from_pem(
        &fs::read_to_string(out_dir.join("hexmirror.pub.pem")).unwrap(),
    )
    .unwrap();
    assert!(
        stdout.contains(&format!("fingerprint {}", public.fingerprint())),
        "{stdout}"
    );
    assert!(public.fingerprint().starts_with("SHA256:") && !public.fingerprint().ends_with('='));
    assert!(
        fs::read_to_string(out_dir.join("hexmirror.pem"))
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----"),
        "PKCS#8"
    );

    let before = fs::read(out_dir.join("hexmirror.pem")).unwrap();
    let (code, stderr) = run(&["keygen", "--out", &out_arg, "--bits", "2048"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_one_line_error(&stderr, &["already exists", "refusing to overwrite"]);
    assert_eq!(fs::read(out_dir.join("hexmirror.pem")).unwrap(), before);

    // The air-gap exporter's bundle key pair: Ed25519, private 0600, never
    // overwritten either.
    let (code, stderr) = run(&["keygen", "--bundle", "--out", &out_arg]);
    assert_eq!(code, Some(0), "{stderr}");
    let secret = fs::read_to_string(out_dir.join("bundle.pem")).unwrap();
    let key = hexmirror::manifest::ManifestKey::from_pem(&secret).expect("an Ed25519 key");
    let public = fs::read_to_string(out_dir.join("bundle.pub.pem")).unwrap();
    assert_eq!(
        hexmirror::manifest::ManifestPublicKey::from_pem(&public)
            .unwrap()
            .keyid(),
        key.public().keyid()
    );
    let mode = fs::metadata(out_dir.join("bundle.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let (code, stderr) = run(&["keygen", "--bundle", "--out", &out_arg]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_one_line_error(&stderr, &["already exists", "refusing to overwrite"]);
    assert_eq!(
        fs::read_to_string(out_dir.join("bundle.pem")).unwrap(),
        secret
    );
}
