//! Object storage (`[storage] kind = "s3"`) against a real S3 server,
//! s3s-fs: a writer syncs and publishes into the bucket; a read-only node
//! whose only storage is the bucket serves stock rebar3 with the upstream
//! and the writer gone; the lease keeps a second writer out until it lapses;
//! a writer killed mid-publish leaves the pointer whole; a store that
//! ignores conditional puts is refused.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::s3::S3Server;
use common::*;

/// A read-only node's config: its own data directory, the bucket, the
/// writer's manifest public key, and `extra` (e.g. `[[repository]]`).
fn reader_config(
    dir: &Path,
    s3: &S3Server,
    manifest_pub: &Path,
    extra: &str,
) -> std::path::PathBuf {
    let text = format!(
        "data_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n{extra}\n{}",
        dir.join("data").display(),
        s3.storage_section(
            dir,
            "reader",
            &format!(
                "poll_ms = 100\nmanifest_public_key = \"{}\"",
                manifest_pub.display()
            )
        )
    );
    let path = dir.join("reader.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The writer's manifest public key, written next to its data directory.
fn manifest_pub(mirror: &Mirror) -> std::path::PathBuf {
    let path = mirror.data_dir().join("manifest.pub.pem");
    std::fs::write(&path, mirror.manifest_key().public().to_pem()).unwrap();
    path
}

/// The ETag `serve` gives `bytes` (content-derived, the same on every node).
fn etag_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("\"{}\"", hex::encode(&sha2::Sha256::digest(bytes)[..16]))
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn health(url: &str) -> serde_json::Value {
    serde_json::from_slice(&http("GET", &format!("{url}/health"), &[]).body).unwrap()
}

#[test]
fn a_read_only_node_serves_rebar3_from_the_bucket_alone_and_checks_every_object() {
    require_tool("rebar3");
    let mut s3 = S3Server::start("mirror");
    let upstream = TestUpstream::build(SPEC_SMALL);
    let writer_dir = tempfile::TempDir::new().unwrap();
    let mirror = Mirror::new(
        &upstream,
        &s3.storage_section(writer_dir.path(), "writer", "lease_ttl_secs = 5"),
    );
    let out = mirror.sync_ok();
    assert!(out.stdout.contains("now serves manifest version"), "{out}");
    // A second sync finds nothing new: the bucket already has it.
    let again = mirror.sync_ok();
    assert!(
        again.stdout.contains("already serves manifest version"),
        "{again}"
    );
    // The pointer is the one object that moves; blobs are by hash.
    assert!(s3.object_path("tree/current.json").is_file());
    let names = std::fs::read(mirror.tree().join("names")).unwrap();
    drop(upstream);

    let reader_dir = tempfile::TempDir::new().unwrap();
    let config = reader_config(reader_dir.path(), &s3, &manifest_pub(&mirror), "");
    let reader = Served::start(&config);
    let url = reader.url();
    let h = health(&url);
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["role"], "reader", "{h}");

    // Same bytes and the same ETag as the writer's own tree.
    let res = http("GET", &format!("{url}/names"), &[]);
    assert_eq!(res.status, 200);
    assert_eq!(res.body, names);
    assert_eq!(res.header("etag"), Some(etag_of(&names).as_str()));
    assert!(res.header("content-encoding").is_none());
    let not_modified = http(
        "GET",
        &format!("{url}/names"),
        &[("if-none-match", &etag_of(&names))],
    );
    assert_eq!(not_modified.status, 304);
    let ranged = http("GET", &format!("{url}/names"), &[("range", "bytes=0-9")]);
    assert_eq!(ranged.status, 206);
    assert_eq!(ranged.body, names[..10]);

    // Stock rebar3 through the read-only node: upstream and writer both gone.
    drop(mirror);
    let project = Rebar3Project::new(&[("beta", "0.2.1")], &fixture_key("upstream.pub.pem"));
    let run = project.compile(&url);
    assert!(
        run.success,
        "rebar3 through the read-only node:\n{}",
        run.output
    );
    assert!(project.has_beam("alpha") && project.has_beam("beta"));

    // The bucket is not trusted: an object whose bytes differ from the
    // manifest's hash is never served (delta's tarball was never fetched).
    let manifest: serde_json::Value =
        serde_json::from_slice(&http("GET", &format!("{url}/hexmirror-manifest.json"), &[]).body)
            .unwrap();
    let sha = manifest["signed"]["files"]["tarballs/delta-1.0.0.tar"]["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let object = s3.object_path(&format!("tree/blobs/sha256/{}/{sha}", &sha[..2]));
    let mut bytes = std::fs::read(&object).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&object, &bytes).unwrap();
    let res = http("GET", &format!("{url}/tarballs/delta-1.0.0.tar"), &[]);
    assert_eq!(res.status, 502, "a damaged object was served");
    assert!(health(&url)["status"] == "degraded");

    // The bucket down: what was fetched is still served, the rest is 503.
    s3.stop();
    let res = http("GET", &format!("{url}/tarballs/beta-0.2.1.tar"), &[]);
    assert_eq!(res.status, 200, "a cached tarball must survive the bucket");
    let res = http("GET", &format!("{url}/tarballs/beta-0.1.0.tar"), &[]);
    assert_eq!(res.status, 503);
    assert!(res.header("retry-after").is_some());
    wait_for("degraded health", Duration::from_secs(10), || {
        health(&url)["status"] == "degraded"
    });
    s3.restart();
    wait_for(
        "the bucket to be reached again",
        Duration::from_secs(10),
        || health(&url)["storage"]["error"].is_null(),
    );
    assert_eq!(
        http("GET", &format!("{url}/tarballs/beta-0.1.0.tar"), &[]).status,
        200
    );
}
