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

/// A writer mirror on the bucket: `sections` (other tables) first, then
/// `[storage]` with `storage_extra`.
fn writer(
    s3: &S3Server,
    upstream: &TestUpstream,
    dir: &Path,
    storage_extra: &str,
    sections: &str,
) -> Mirror {
    Mirror::new(
        upstream,
        &format!(
            "{sections}\n{}",
            s3.storage_section(dir, "writer", storage_extra)
        ),
    )
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
    // The object of a served path, as s3s-fs stores it.
    let object_of = |path: &str| {
        let sha = manifest["signed"]["files"][path]["sha256"]
            .as_str()
            .unwrap();
        s3.object_path(&format!("tree/blobs/sha256/{}/{sha}", &sha[..2]))
    };
    let object = object_of("tarballs/delta-1.0.0.tar");
    let mut bytes = std::fs::read(&object).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&object, &bytes).unwrap();
    let res = http("GET", &format!("{url}/tarballs/delta-1.0.0.tar"), &[]);
    assert_eq!(res.status, 502, "a damaged object was served");
    // A longer object than the manifest says is not even read whole.
    let object = object_of("tarballs/alpha-1.0.0.tar");
    let mut bytes = std::fs::read(&object).unwrap();
    bytes.extend_from_slice(&[0; 4096]);
    std::fs::write(&object, &bytes).unwrap();
    let res = http("GET", &format!("{url}/tarballs/alpha-1.0.0.tar"), &[]);
    assert_eq!(res.status, 502, "an oversized object was served");
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

/// The lease object's holder, as the writer wrote it.
fn lease_holder(s3: &S3Server) -> serde_json::Value {
    let lease: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s3.object_path("tree/lease.json")).unwrap()).unwrap();
    lease["holder"].clone()
}

#[test]
fn a_publish_reaches_the_read_only_node_and_a_second_writer_waits_for_the_lease() {
    let s3 = S3Server::start("mirror");
    let upstream = TestUpstream::build(SPEC_SMALL);
    let writer_dir = tempfile::TempDir::new().unwrap();
    let storage = s3.storage_section(
        writer_dir.path(),
        "writer",
        "lease_ttl_secs = 5\npoll_ms = 100",
    );
    let mirror = Mirror::hosting(
        &upstream,
        "name = \"acme\"\npackages = [\"beta\"]",
        &storage,
    );
    let token = mirror.token(&["--admin", "--name", "ci", "--user", "builder"]);
    let writer = mirror.serve();
    let reader_dir = tempfile::TempDir::new().unwrap();
    let config = reader_config(
        reader_dir.path(),
        &s3,
        &manifest_pub(&mirror),
        "[[repository]]\nname = \"acme\"\n",
    );
    let reader = Served::start(&config);

    // A hosted publish on the writer reaches the read-only node.
    let work = tempfile::TempDir::new().unwrap();
    let path = work.path().join("shiny-1.0.0.tar");
    Oracle::tarball("shiny", "1.0.0", &path, &[]);
    let (status, body) = Oracle::api(
        &format!("{}/api/repos/acme", writer.url()),
        &token,
        &["publish", &path.to_string_lossy()],
    );
    assert_eq!(status, 201, "{body}");
    let record = http(
        "GET",
        &format!("{}/repos/acme/packages/shiny", writer.url()),
        &[],
    );
    assert_eq!(record.status, 200);
    wait_for(
        "the publish on the read-only node",
        Duration::from_secs(15),
        || {
            http(
                "GET",
                &format!("{}/repos/acme/packages/shiny", reader.url()),
                &[],
            )
            .body
                == record.body
        },
    );
    // The writer's /health says which version it published; the reader serves it.
    wait_for(
        "the writer's health to name the version",
        Duration::from_secs(10),
        || {
            let w = health(&writer.url());
            !w["bucket"]["published_version"].is_null()
                && w["bucket"]["published_version"]
                    == health(&reader.url())["storage"]["generation"]
        },
    );
    let w = health(&writer.url());
    assert_eq!(w["status"], "ok", "{w}");
    assert!(w["bucket"]["lease_until"].is_string(), "{w}");
    // Its record verifies as the repository's, through the read-only node.
    let releases = Oracle::fetch(
        &format!("{}/repos/acme", reader.url()),
        "acme",
        &fixture_key("other.pub.pem"),
        "shiny",
    )
    .expect("hex_core reads the published record from the read-only node");
    assert_eq!(releases.len(), 1);

    // Downloads counted on the read-only node reach the writer's catalog.
    let tarball = http(
        "GET",
        &format!("{}/repos/acme/tarballs/beta-0.2.1.tar", reader.url()),
        &[],
    );
    assert_eq!(tarball.status, 200);
    wait_for(
        "the reader's download count in the writer's catalog",
        Duration::from_secs(15),
        || {
            let res = http(
                "GET",
                &format!("{}/api/packages/beta", writer.url()),
                &[("accept", "application/json")],
            );
            let body: serde_json::Value = serde_json::from_slice(&res.body).unwrap_or_default();
            body["downloads"]["all"] == 1
        },
    );
    // The writer counts a batch, then deletes it: the count can be seen
    // a moment before the batch is gone.
    wait_for(
        "the counted batch to leave the bucket",
        Duration::from_secs(15),
        || {
            let dir = s3.object_path("tree/downloads");
            !dir.exists() || std::fs::read_dir(dir).unwrap().next().is_none()
        },
    );
    // A second writer on another data directory is refused, naming the first.
    let holder = lease_holder(&s3);
    let second_dir = tempfile::TempDir::new().unwrap();
    let second = Mirror::new(
        &upstream,
        &s3.storage_section(
            second_dir.path(),
            "writer",
            "lease_ttl_secs = 5\npoll_ms = 100",
        ),
    );
    let refused = second.run(&["serve"]);
    assert_eq!(refused.code, Some(2), "{refused}");
    assert!(
        refused.stderr.contains("another writer holds the lease")
            && refused.stderr.contains(&format!("pid {}", writer.pid())),
        "{refused}"
    );
    let refused = second.sync();
    assert_eq!(refused.code, Some(2), "a sync is refused too: {refused}");

    // The first writer dies without releasing; once its lease lapses the
    // second takes over.
    drop(writer);
    let taken = Instant::now();
    let second_holds =
        || lease_holder(&s3)["data_dir"] == second.data_dir().display().to_string().as_str();
    // Each try runs the second writer until it exits (refused: the lease
    // is still live) or the lease names it.
    wait_for(
        "the second writer to take the lease",
        Duration::from_secs(20),
        || {
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hexmirror"))
                .args(["serve", "--config"])
                .arg(second.config())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let mut held = false;
            let give_up = Instant::now() + Duration::from_secs(10);
            while child.try_wait().unwrap().is_none() && Instant::now() < give_up {
                if second_holds() {
                    held = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            held
        },
    );
    assert!(
        taken.elapsed() >= Duration::from_secs(2),
        "took the lease before it lapsed"
    );
    assert_ne!(lease_holder(&s3)["data_dir"], holder["data_dir"]);
    // Nothing it could publish was older than the bucket's: the read-only
    // node still serves the publish.
    assert_eq!(
        http(
            "GET",
            &format!("{}/repos/acme/packages/shiny", reader.url()),
            &[]
        )
        .body,
        record.body
    );
}

#[test]
fn a_writer_killed_mid_publish_leaves_the_pointer_whole_and_the_next_run_completes() {
    let s3 = S3Server::start("mirror");
    let upstream = TestUpstream::build(SPEC_SMALL);
    let writer_dir = tempfile::TempDir::new().unwrap();
    let mirror = Mirror::new(
        &upstream,
        &s3.storage_section(writer_dir.path(), "writer", "lease_ttl_secs = 30"),
    );
    mirror.sync_ok();
    let reader_dir = tempfile::TempDir::new().unwrap();
    let config = reader_config(reader_dir.path(), &s3, &manifest_pub(&mirror), "");
    let reader = Served::start(&config);
    let url = reader.url();
    let names = http("GET", &format!("{url}/names"), &[]).body;
    let pointer = std::fs::read(s3.object_path("tree/current.json")).unwrap();

    rebuild_upstream(
        &upstream,
        &format!("{SPEC_SMALL}\n{{\"epsilon\", \"1.0.0\", [], []}}.\n"),
    );
    for point in ["blob", "pointer"] {
        let mut cmd = mirror.sync_command();
        cmd.env("HEXMIRROR_FAULT_BUCKET_KILL", point);
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), None, "not killed at {point}");
        assert_eq!(
            std::fs::read(s3.object_path("tree/current.json")).unwrap(),
            pointer,
            "the pointer moved after a kill at {point}"
        );
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(http("GET", &format!("{url}/names"), &[]).body, names);
        assert_eq!(
            http("GET", &format!("{url}/packages/epsilon"), &[]).status,
            404
        );
    }
    // The next run takes its own dead process's lease and finishes.
    let out = mirror.sync_ok();
    assert!(out.stdout.contains("now serves manifest version"), "{out}");
    wait_for(
        "the new generation on the read-only node",
        Duration::from_secs(10),
        || http("GET", &format!("{url}/packages/epsilon"), &[]).status == 200,
    );
    assert_ne!(http("GET", &format!("{url}/names"), &[]).body, names);
    let releases = Oracle::fetch(&url, "hexpm", &fixture_key("upstream.pub.pem"), "epsilon")
        .expect("the new record verifies through the read-only node");
    let tarball = http("GET", &format!("{url}/tarballs/epsilon-1.0.0.tar"), &[]);
    assert_eq!(tarball.status, 200);
    use sha2::Digest;
    assert_eq!(
        releases[0].1,
        hex::encode(sha2::Sha256::digest(&tarball.body))
    );
}

/// A proxy in front of the S3 server that drops `If-None-Match` and
/// `If-Match` from every request, as garage and `rclone serve s3` ignore
/// them. One request per connection (it sets `Connection: close`).
fn stripping_proxy(target: u16) -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut upstream = std::net::TcpStream::connect(("127.0.0.1", target)).unwrap();
                let mut reader = BufReader::new(client.try_clone().unwrap());
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let lower = line.to_ascii_lowercase();
                    if lower.starts_with("if-none-match:")
                        || lower.starts_with("if-match:")
                        || lower.starts_with("connection:")
                    {
                        continue;
                    }
                    if line == "\r\n" {
                        head.push_str("connection: close\r\n\r\n");
                        break;
                    }
                    head.push_str(&line);
                }
                upstream.write_all(head.as_bytes()).unwrap();
                let buffered = reader.buffer().to_vec();
                upstream.write_all(&buffered).unwrap();
                let mut to_upstream = upstream.try_clone().unwrap();
                let mut from_client = client.try_clone().unwrap();
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from_client, &mut to_upstream);
                });
                let mut to_client = client;
                let _ = std::io::copy(&mut upstream, &mut to_client);
            });
        }
    });
    port
}

#[test]
fn a_store_that_ignores_conditional_puts_is_refused_unless_told_lease_none() {
    // Without credentials s3s-fs checks no signature (the proxy's edits would
    // break one), so hexmirror sends none (AWS_SKIP_SIGNATURE, which
    // object_store reads); s3s-fs still honours the conditional headers.
    let s3 = S3Server::start_without_auth("mirror");
    let upstream = TestUpstream::build(SPEC_SMALL);
    let dir = tempfile::TempDir::new().unwrap();
    let mirror = Mirror::new(&upstream, &s3.storage_section(dir.path(), "writer", ""));
    let run = |config: &Path, args: &[&str]| {
        let mut cmd = hexmirror();
        cmd.args(args).arg("--config").arg(config);
        cmd.env("AWS_SKIP_SIGNATURE", "true");
        let out = run_with_input(cmd, Duration::from_secs(60), None);
        let text = format!(
            "exit {:?}\n{}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, out) = run(mirror.config(), &["sync"]);
    assert_eq!(code, Some(0), "the probe passes on s3s-fs itself: {out}");

    // The same writer through a proxy that strips the conditional headers.
    let proxy = format!("http://127.0.0.1:{}", stripping_proxy(s3.port()));
    let text = std::fs::read_to_string(mirror.config())
        .unwrap()
        .replace(&s3.endpoint(), &proxy);
    let stripped = dir.path().join("stripped.toml");
    std::fs::write(&stripped, &text).unwrap();
    let (code, out) = run(&stripped, &["serve"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("ignores If-None-Match on PUT"), "{out}");
    let (code, out) = run(&stripped, &["sync"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("ignores If-None-Match on PUT"), "{out}");
    // The operator's explicit choice: one writer by deployment only.
    let unleased = dir.path().join("unleased.toml");
    std::fs::write(&unleased, format!("{text}lease = \"none\"\n")).unwrap();
    let (code, out) = run(&unleased, &["sync"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("already serves manifest version"), "{out}");
}

#[test]
fn gc_in_the_bucket_removes_only_what_no_live_generation_references() {
    let s3 = S3Server::start("mirror");
    let upstream = TestUpstream::build(SPEC_SMALL);
    let writer_dir = tempfile::TempDir::new().unwrap();
    let mirror = writer(
        &s3,
        &upstream,
        writer_dir.path(),
        "",
        "\n[signing]\ngeneration_grace_secs = 0",
    );
    mirror.sync_ok();
    let gone = mirror.current_manifest().files["tarballs/delta-1.0.0.tar"]
        .sha256
        .clone();
    let gone_key = format!("tree/blobs/sha256/{}/{gone}", &gone[..2]);
    assert!(s3.object_path(&gone_key).is_file());
    // delta leaves the upstream, then three more generations follow: the
    // first one falls out of the three kept.
    let without_delta = SPEC_SMALL.replace("{\"delta\", \"1.0.0\", [], []}.", "");
    let mut spec = without_delta.clone();
    for extra in ["", "epsilon", "zeta"] {
        if !extra.is_empty() {
            spec.push_str(&format!("{{\"{extra}\", \"1.0.0\", [], []}}.\n"));
        }
        rebuild_upstream(&upstream, &spec);
        mirror.sync_ok();
    }
    let out = mirror.run(&["gc"]);
    assert!(out.ok(), "{out}");
    assert!(
        out.stdout
            .contains("bucket mirror/tree: removed 1 manifests and"),
        "{out}"
    );
    assert!(
        !s3.object_path(&gone_key).exists(),
        "an unreferenced blob stayed"
    );
    // Everything the served generation names is still there.
    for entry in mirror.current_manifest().files.values() {
        let key = format!("tree/blobs/sha256/{}/{}", &entry.sha256[..2], entry.sha256);
        assert!(
            s3.object_path(&key).is_file(),
            "gc removed a live blob {key}"
        );
    }
    let reader_dir = tempfile::TempDir::new().unwrap();
    let config = reader_config(reader_dir.path(), &s3, &manifest_pub(&mirror), "");
    let reader = Served::start(&config);
    assert_eq!(
        http(
            "GET",
            &format!("{}/tarballs/zeta-1.0.0.tar", reader.url()),
            &[]
        )
        .status,
        200
    );
    // A second run finds nothing more.
    let again = mirror.run(&["gc"]);
    assert!(
        again.stdout.contains("removed 0 manifests and 0 blobs"),
        "{again}"
    );
}

#[test]
fn the_writer_s_proxied_files_reach_the_read_only_node_and_gc_keeps_them() {
    let s3 = S3Server::start("mirror");
    let upstream = TestUpstream::build(SPEC_SMALL);
    let writer_dir = tempfile::TempDir::new().unwrap();
    let mirror = writer(
        &s3,
        &upstream,
        writer_dir.path(),
        "poll_ms = 100",
        "\n[proxy]\nenabled = true",
    );
    mirror.sync_ok();
    // A release the synced generation lacks: only the proxy can serve it.
    rebuild_upstream(
        &upstream,
        &format!("{SPEC_SMALL}{{\"epsilon\", \"1.0.0\", [], []}}.\n"),
    );
    let writer = mirror.serve();
    let reader_dir = tempfile::TempDir::new().unwrap();
    let reader = Served::start(&reader_config(
        reader_dir.path(),
        &s3,
        &manifest_pub(&mirror),
        "",
    ));
    assert_eq!(
        http("GET", &format!("{}/packages/epsilon", reader.url()), &[]).status,
        404,
        "not proxied yet"
    );
    let paths = ["packages/epsilon", "tarballs/epsilon-1.0.0.tar"];
    let from_writer: Vec<_> = paths
        .iter()
        .map(|p| http("GET", &format!("{}/{p}", writer.url()), &[]))
        .collect();
    assert!(from_writer.iter().all(|r| r.status == 200));
    wait_for(
        "the proxied files on the read-only node",
        Duration::from_secs(20),
        || {
            paths
                .iter()
                .all(|p| http("GET", &format!("{}/{p}", reader.url()), &[]).status == 200)
        },
    );
    for (path, theirs) in paths.iter().zip(&from_writer) {
        let ours = http("GET", &format!("{}/{path}", reader.url()), &[]);
        assert_eq!(ours.body, theirs.body, "{path}");
        assert_eq!(ours.header("etag"), theirs.header("etag"), "{path}");
    }
    // The upstream's signature still verifies, through the read-only node.
    let releases = Oracle::fetch(
        &reader.url(),
        "hexpm",
        &fixture_key("upstream.pub.pem"),
        "epsilon",
    )
    .expect("hex_core reads the proxied record from the read-only node");
    assert_eq!(releases.len(), 1);
    // Only the upstream's own paths: a repository path is not proxied.
    assert_eq!(
        http(
            "GET",
            &format!("{}/repos/hexpm/packages/epsilon", reader.url()),
            &[]
        )
        .status,
        404
    );
    let pointer = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(s3.object_path("tree/current.json")).unwrap())
            .unwrap()
    };
    let listed = pointer()["proxy"]["version"]
        .as_u64()
        .expect("the pointer names a proxy list");
    // A generation published after the list keeps naming it: the sync
    // (which now mirrors epsilon) leaves the bucket to the running `serve`.
    let before = pointer()["version"].as_u64().unwrap();
    let out = mirror.sync_ok();
    assert!(out.stdout.contains("that `serve` publishes"), "{out}");
    wait_for(
        "the next generation in the bucket",
        Duration::from_secs(20),
        || pointer()["version"].as_u64() > Some(before),
    );
    assert_eq!(pointer()["proxy"]["version"].as_u64(), Some(listed));
    assert!(health(&writer.url())["bucket"]["error"].is_null());

    // A restarted writer finds its files published: no new list.
    drop(writer);
    let writer = mirror.serve();
    // The published version shows once a whole round (the generation,
    // then the proxy's list) is done.
    wait_for(
        "the restarted writer's first round",
        Duration::from_secs(20),
        || !health(&writer.url())["bucket"]["published_version"].is_null(),
    );
    assert!(health(&writer.url())["bucket"]["error"].is_null());
    drop(writer);
    assert_eq!(pointer()["proxy"]["version"].as_u64(), Some(listed));
    // gc in the bucket keeps every blob the proxy list names.
    let out = mirror.run(&["gc"]);
    assert!(out.ok(), "{out}");
    use sha2::Digest;
    let tarball = &from_writer[1].body;
    let hex = hex::encode(sha2::Sha256::digest(tarball));
    assert!(
        s3.object_path(&format!("tree/blobs/sha256/{}/{hex}", &hex[..2]))
            .is_file(),
        "gc removed a proxied tarball"
    );
}
