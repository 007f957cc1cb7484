//! Generations of the served tree: readers never see a mixed or broken
//! generation while syncs switch `current`, old generations are pruned after
//! their grace period and `gc` collects what nothing links to, and a sync
//! publishes a generation only when the tree changed or the manifest is due
//! for re-signing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use common::*;
use hexmirror::manifest::{self, Manifest, ManifestPublicKey};
use hexmirror::registry::{PublicKey, verify_package, verify_versions};
use hexmirror::store::MANIFEST_FILE;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// SPEC_SMALL plus `extra` (one release line in the spec format).
fn spec_with(extra: &str) -> String {
    format!("{SPEC_SMALL}{extra}\n")
}

/// A new delta release: it changes `/versions`, `packages/delta` and adds a
/// tarball, but leaves `packages/beta` byte for byte as it is.
const DELTA_1_1: &str = r#"{"delta", "1.1.0", [], []}."#;
/// Another change that leaves delta alone.
const GAMMA_3_1: &str = r#"{"gamma", "3.1.0", [], []}."#;

/// The mirror's config for a given grace period, in seconds.
fn grace(secs: u64) -> String {
    format!("[signing]\ngeneration_grace_secs = {secs}")
}

/// A complete upstream tree built by the oracle, kept aside so a test can
/// switch the served upstream to it without running the oracle again.
fn prepared(spec: &str) -> TempDir {
    let dir = TempDir::new().unwrap();
    Oracle::build_upstream(dir.path(), "hexpm", &fixture_key("upstream.pem"), spec);
    dir
}

/// A copy of the tree `upstream` serves now.
fn snapshot(upstream: &TestUpstream) -> TempDir {
    let dir = TempDir::new().unwrap();
    copy_tree(upstream.dir(), dir.path());
    dir
}

/// Makes `upstream` serve exactly the files of `tree` (TestUpstream reads
/// its directory on every request). Cheap: a handful of small files.
fn serve_tree(upstream: &TestUpstream, tree: &Path) {
    for sub in ["packages", "tarballs"] {
        let dir = upstream.dir().join(sub);
        for entry in fs::read_dir(&dir).unwrap() {
            fs::remove_file(entry.unwrap().path()).unwrap();
        }
    }
    copy_tree(tree, upstream.dir());
}

fn copy_tree(from: &Path, to: &Path) {
    for (rel, _) in list_files(from) {
        let target = to.join(&rel);
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        fs::copy(from.join(&rel), target).unwrap();
    }
}

/// Every file under `root` by relative path, with its SHA-256 (hex) and size.
fn list_files(root: &Path) -> BTreeMap<String, (String, u64)> {
    try_list_files(root).unwrap_or_else(|e| panic!("list {}: {e}", root.display()))
}

/// [`list_files`] for readers, which report a failure instead of panicking.
fn try_list_files(root: &Path) -> std::io::Result<BTreeMap<String, (String, u64)>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let bytes = fs::read(&path)?;
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.insert(
                rel,
                (hex::encode(Sha256::digest(&bytes)), bytes.len() as u64),
            );
        }
    }
    Ok(out)
}

fn sync_ok(mirror: &Mirror) -> String {
    let out = mirror.sync();
    assert!(out.ok(), "{out}");
    out.stdout
}

/// Names of the generation directories, sorted (oldest first).
fn generation_dirs(mirror: &Mirror) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(mirror.data_dir().join("generations"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// SHA-256s (hex) of every stored blob.
fn stored_blobs(mirror: &Mirror) -> BTreeSet<String> {
    list_files(&mirror.data_dir().join("blobs/sha256"))
        .into_keys()
        .map(|rel| rel.rsplit('/').next().unwrap().to_owned())
        .collect()
}

fn upstream_key() -> PublicKey {
    PublicKey::from_pem(&fs::read_to_string(fixture_key("upstream.pub.pem")).unwrap()).unwrap()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------------------
// Readers during generation switches
// ---------------------------------------------------------------------------

/// What a reader thread saw.
#[derive(Default)]
struct ReaderLog {
    iterations: u64,
    inconsistencies: Vec<String>,
    /// Generation ids seen (the filesystem reader only).
    generations: BTreeSet<u64>,
}

/// Runs `check` until `stop`, counting iterations and collecting failures
/// (at most a few: one broken generation tends to fail every iteration).
fn read_until(
    stop: &AtomicBool,
    mut check: impl FnMut(&mut ReaderLog) -> Result<(), String>,
) -> ReaderLog {
    let mut log = ReaderLog::default();
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = check(&mut log)
            && log.inconsistencies.len() < 10
        {
            log.inconsistencies.push(e);
        }
        log.iterations += 1;
    }
    log
}

/// One pass of a reader like nginx: resolve `current` once, then read the
/// whole generation through that one directory. Returns its id.
///
/// Every file must match the manifest of *that* generation (so nothing comes
/// from another one), no file may be missing or extra, and every index file
/// must name only records and tarballs present in that generation. Nothing
/// is tolerated: the test's grace period keeps every generation on disk, so
/// even a reader that resolved `current` just before a switch must find its
/// generation whole.
fn check_generation_on_disk(
    data_dir: &Path,
    manifest_key: &ManifestPublicKey,
    upstream_key: &PublicKey,
) -> Result<u64, String> {
    let target =
        fs::read_link(data_dir.join("current")).map_err(|e| format!("readlink current: {e}"))?;
    let dir_name = target.file_name().unwrap().to_string_lossy().into_owned();
    let root = data_dir.join(&target);
    let manifest_bytes =
        fs::read(root.join(MANIFEST_FILE)).map_err(|e| format!("{dir_name}: manifest: {e}"))?;
    let manifest = manifest::verify(&manifest_bytes, manifest_key, unix_now(), None)
        .map_err(|e| format!("{dir_name}: manifest refused: {e}"))?;
    if manifest.generation != dir_name {
        return Err(format!(
            "{dir_name} holds the manifest of {}",
            manifest.generation
        ));
    }
    let mut on_disk = try_list_files(&root).map_err(|e| format!("{dir_name}: listing: {e}"))?;
    on_disk.remove(MANIFEST_FILE);
    let listed: BTreeMap<String, (String, u64)> = manifest
        .files
        .iter()
        .map(|(p, f)| (p.clone(), (f.sha256.clone(), f.size)))
        .collect();
    if on_disk != listed {
        return Err(format!(
            "{dir_name}: files differ from its manifest: {}",
            describe_diff(&listed, &on_disk)
        ));
    }
    let read = |rel: &str| fs::read(root.join(rel)).map_err(|e| format!("{dir_name}/{rel}: {e}"));
    // The signed files name only what this very generation holds.
    let versions = verify_versions(&read("versions")?, upstream_key, "hexpm")
        .map_err(|e| format!("{dir_name}/versions: {e}"))?;
    for package in &versions.packages {
        for version in &package.versions {
            let tarball = format!("tarballs/{}-{version}.tar", package.name);
            if !listed.contains_key(&tarball) {
                return Err(format!(
                    "{dir_name}/versions names {tarball}, not in the generation"
                ));
            }
        }
    }
    for path in listed.keys().filter(|p| p.starts_with("packages/")) {
        let name = &path["packages/".len()..];
        let record = verify_package(&read(path)?, upstream_key, "hexpm", name)
            .map_err(|e| format!("{dir_name}/{path}: {e}"))?;
        for release in &record.releases {
            let tarball = format!("tarballs/{name}-{}.tar", release.version);
            let outer = hex::encode(release.outer_checksum.as_deref().unwrap_or_default());
            match listed.get(&tarball) {
                Some((sha, _)) if *sha == outer => {}
                Some(_) => {
                    return Err(format!(
                        "{dir_name}/{tarball}: not the tarball {path} signs"
                    ));
                }
                None => {
                    return Err(format!(
                        "{dir_name}/{path} names {tarball}, not in the generation"
                    ));
                }
            }
        }
    }
    Ok(manifest.version)
}

fn describe_diff(
    want: &BTreeMap<String, (String, u64)>,
    got: &BTreeMap<String, (String, u64)>,
) -> String {
    let mut out = Vec::new();
    for (path, entry) in want {
        match got.get(path) {
            None => out.push(format!("missing {path}")),
            Some(e) if e != entry => out.push(format!("wrong content {path}")),
            Some(_) => {}
        }
    }
    out.extend(
        got.keys()
            .filter(|p| !want.contains_key(*p))
            .map(|p| format!("extra {p}")),
    );
    out.join(", ")
}

/// One pass of an HTTP client against `hexmirror serve`: `/versions` and
/// `/packages/beta` are complete, verified files and every tarball the record
/// names is served with the signed checksum. (Each request resolves
/// `current` anew, so consecutive requests may hit different generations;
/// beta is the same in all of them, so its tarballs must always be there.)
async fn check_over_http(
    client: &reqwest::Client,
    base: &str,
    manifest_key: &ManifestPublicKey,
    upstream_key: &PublicKey,
) -> Result<(), String> {
    let get = async |path: &str| -> Result<Vec<u8>, String> {
        let res = client
            .get(format!("{base}/{path}"))
            .send()
            .await
            .map_err(|e| format!("GET /{path}: {e}"))?;
        let status = res.status();
        let body = res
            .bytes()
            .await
            .map_err(|e| format!("GET /{path}: body: {e}"))?;
        if status != 200 {
            return Err(format!("GET /{path}: {status}"));
        }
        Ok(body.to_vec())
    };
    let manifest_bytes = get(MANIFEST_FILE).await?;
    manifest::verify(&manifest_bytes, manifest_key, unix_now(), None)
        .map_err(|e| format!("GET /{MANIFEST_FILE}: {e}"))?;
    verify_versions(&get("versions").await?, upstream_key, "hexpm")
        .map_err(|e| format!("GET /versions: {e}"))?;
    let record = verify_package(&get("packages/beta").await?, upstream_key, "hexpm", "beta")
        .map_err(|e| format!("GET /packages/beta: {e}"))?;
    for release in &record.releases {
        let path = format!("tarballs/beta-{}.tar", release.version);
        let body = get(&path).await?;
        if Sha256::digest(&body).as_slice() != release.outer_checksum.as_deref().unwrap_or_default()
        {
            return Err(format!("GET /{path}: not the tarball the record signs"));
        }
    }
    Ok(())
}

#[test]
fn readers_see_whole_generations_through_50_switches() {
    const SWITCHES: u64 = 50;
    let upstream = TestUpstream::build(SPEC_SMALL);
    let small = snapshot(&upstream);
    let with_delta = prepared(&spec_with(DELTA_1_1));
    // An hour of grace: no generation disappears under a reader in this test.
    let mirror = Mirror::new(&upstream, &grace(3600));
    sync_ok(&mirror);
    let first = mirror.current_manifest().version;
    let manifest_key = mirror.manifest_key().public();
    let served = mirror.serve();
    let stop = Arc::new(AtomicBool::new(false));

    let disk_reader = {
        let (stop, data_dir, key) = (Arc::clone(&stop), mirror.data_dir(), manifest_key.clone());
        thread::spawn(move || {
            let upstream_key = upstream_key();
            read_until(&stop, |log| {
                let id = check_generation_on_disk(&data_dir, &key, &upstream_key)?;
                log.generations.insert(id);
                Ok(())
            })
        })
    };
    let http_reader = {
        let (stop, base, key) = (Arc::clone(&stop), served.url(), manifest_key.clone());
        thread::spawn(move || {
            let upstream_key = upstream_key();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            read_until(&stop, |_| {
                rt.block_on(check_over_http(&client, &base, &key, &upstream_key))
            })
        })
    };

    for i in 0..SWITCHES {
        let tree = if i % 2 == 0 { &with_delta } else { &small };
        serve_tree(&upstream, tree.path());
        let stdout = sync_ok(&mirror);
        assert!(
            stdout.contains("published generation"),
            "sync {i} published nothing:\n{stdout}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let disk = disk_reader.join().expect("filesystem reader panicked");
    let http = http_reader.join().expect("HTTP reader panicked");

    // Shown with --nocapture: how much reading the switches were checked against.
    eprintln!(
        "filesystem reader: {} passes over {} generations; HTTP reader: {} passes",
        disk.iterations,
        disk.generations.len(),
        http.iterations
    );
    assert!(
        disk.iterations > 0 && http.iterations > 0,
        "a reader never ran"
    );
    assert!(
        disk.inconsistencies.is_empty(),
        "filesystem reader after {} passes: {:#?}",
        disk.iterations,
        disk.inconsistencies
    );
    assert!(
        http.inconsistencies.is_empty(),
        "HTTP reader after {} passes: {:#?}",
        http.iterations,
        http.inconsistencies
    );
    // The readers really ran across switches, not only before or after them.
    assert!(
        disk.generations.len() > 1,
        "the filesystem reader saw only {:?}",
        disk.generations
    );
    assert_eq!(mirror.current_manifest().version, first + SWITCHES);
    // Nothing was pruned within the grace period.
    assert_eq!(generation_dirs(&mirror).len() as u64, first + SWITCHES);
}

// ---------------------------------------------------------------------------
// Pruning and garbage collection
// ---------------------------------------------------------------------------

/// SHA-256s (hex) of every file of every generation on disk.
fn referenced_blobs(mirror: &Mirror) -> BTreeSet<String> {
    generation_dirs(mirror)
        .iter()
        .flat_map(|g| list_files(&mirror.data_dir().join("generations").join(g)))
        .filter(|(rel, _)| rel != MANIFEST_FILE)
        .map(|(_, (sha, _))| sha)
        .collect()
}

#[test]
fn old_generations_are_pruned_and_gc_removes_blobs_nothing_links_to() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let small = snapshot(&upstream);
    let with_delta = prepared(&spec_with(DELTA_1_1));
    let with_gamma = prepared(&spec_with(GAMMA_3_1));
    let mirror = Mirror::new(&upstream, &grace(0));

    // Generation 1 is the only one ever to hold delta 1.1.0.
    serve_tree(&upstream, with_delta.path());
    sync_ok(&mirror);
    let delta_tarball = list_files(with_delta.path())["tarballs/delta-1.1.0.tar"]
        .0
        .clone();
    for tree in [&small, &with_gamma, &small, &with_gamma] {
        serve_tree(&upstream, tree.path());
        sync_ok(&mirror);
    }
    // No grace: every sync prunes down to the three newest generations.
    assert_eq!(
        generation_dirs(&mirror),
        ["g000000000003", "g000000000004", "g000000000005"]
    );
    assert_eq!(mirror.current_manifest().generation, "g000000000005");
    // Syncs never delete blobs: that is gc's job, under the writer lock.
    let before = stored_blobs(&mirror);
    assert!(before.contains(&delta_tarball));

    let referenced = referenced_blobs(&mirror);
    let unused: BTreeSet<String> = before.difference(&referenced).cloned().collect();
    assert!(
        unused.contains(&delta_tarball),
        "delta 1.1.0 is still linked somewhere"
    );
    let out = mirror.run(&["gc"]);
    assert!(out.ok(), "{out}");
    assert!(
        out.stdout.contains(&format!(
            "removed 0 old generations and {} unused blobs",
            unused.len()
        )),
        "{out}"
    );
    // Exactly the unlinked blobs went; everything a generation uses stayed.
    assert_eq!(stored_blobs(&mirror), &before - &unused);

    let again = mirror.run(&["gc"]);
    assert!(
        again
            .stdout
            .contains("removed 0 old generations and 0 unused blobs"),
        "{again}"
    );
    let verify = mirror.run(&["verify"]);
    assert!(verify.ok(), "{verify}");
}

// ---------------------------------------------------------------------------
// When a sync publishes
// ---------------------------------------------------------------------------

#[test]
fn a_generation_is_published_only_for_a_change_or_a_manifest_due_for_resigning() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    // One day of validity: re-signing is due once less than 12 hours remain.
    let mirror = Mirror::new(&upstream, "[signing]\nmanifest_expiry_days = 1");
    sync_ok(&mirror);
    let manifest_path = mirror.tree().join(MANIFEST_FILE);
    let first = mirror.current_manifest();
    let first_bytes = fs::read(&manifest_path).unwrap();

    // Nothing changed upstream and the manifest is fresh: nothing published.
    let stdout = sync_ok(&mirror);
    assert!(stdout.starts_with("up to date"), "{stdout}");
    assert_eq!(fs::read(&manifest_path).unwrap(), first_bytes);
    assert_eq!(generation_dirs(&mirror).len(), 1);

    // Make re-signing due without waiting 12 hours: the current manifest,
    // re-signed by the mirror's own key, now expires in an hour.
    let soon = unix_now() + 3600;
    mirror.replace_current_manifest(&mirror.manifest_key(), |m| m.expires_at = soon);
    let stdout = sync_ok(&mirror);
    let resigned = mirror.current_manifest();
    assert_eq!(resigned.version, first.version + 1, "{stdout}");
    assert_eq!(
        resigned.files, first.files,
        "re-signing changed the file list"
    );
    assert!(
        resigned.expires_at >= unix_now() + 86_400 - 60,
        "not extended: {resigned:?}"
    );
    assert!(
        stdout.contains(&format!("published generation {}", resigned.version)),
        "{stdout}"
    );

    // Fresh again: the next unchanged sync publishes nothing.
    let stdout = sync_ok(&mirror);
    assert!(stdout.starts_with("up to date"), "{stdout}");
    assert_eq!(mirror.current_manifest(), resigned);

    // No current generation at all: the sync rebuilds one, and its version
    // continues upwards (verifiers would refuse a restart at 1 as a rollback).
    fs::remove_file(mirror.data_dir().join("current")).unwrap();
    sync_ok(&mirror);
    let rebuilt: Manifest = mirror.current_manifest();
    assert_eq!(rebuilt.version, resigned.version + 1);
    assert_eq!(rebuilt.files, first.files);
}

#[test]
fn files_answered_from_memory_follow_a_switch_at_the_next_request() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let with_delta = prepared(&spec_with(DELTA_1_1));
    let mirror = Mirror::new(&upstream, &grace(3600));
    sync_ok(&mirror);
    let served = mirror.serve();
    let url = served.url();
    let get = |path: &str| http("GET", &format!("{url}{path}"), &[]);
    let before = get("/versions");
    assert_eq!(before.status, 200);
    // The second answer comes from memory, byte for byte the same.
    assert_eq!(get("/versions").body, before.body);
    let metrics = String::from_utf8(get("/metrics").body).unwrap();
    let hits: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hexmirror_cache_hits_total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no cache hits counted:\n{metrics}"));
    assert!(hits >= 1, "{metrics}");

    // A sync by another process switches `current`: the very next request
    // gets the new generation's file, not the one held in memory.
    serve_tree(&upstream, with_delta.path());
    assert!(sync_ok(&mirror).contains("published generation"));
    let after = get("/versions");
    assert_eq!(
        after.body,
        fs::read(mirror.tree().join("versions")).unwrap()
    );
    assert_ne!(after.body, before.body);
    assert_ne!(after.header("etag"), before.header("etag"));
    let record = get("/packages/delta");
    assert_eq!(
        record.body,
        fs::read(mirror.tree().join("packages/delta")).unwrap()
    );
}

/// One kept-alive HTTP/1.1 connection: requests one after another, each
/// answer read by its `Content-Length`, as a client reuses a connection.
struct KeptAlive(std::io::BufReader<std::net::TcpStream>);

impl KeptAlive {
    fn open(url: &str) -> Self {
        let addr = url.trim_start_matches("http://").trim_end_matches('/');
        let stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Self(std::io::BufReader::new(stream))
    }

    /// Status, headers (lower-cased names) and body of one request.
    fn ask(&mut self, method: &str, path: &str, extra: &str) -> (u16, String, Vec<u8>) {
        use std::io::{BufRead, Read, Write};
        let request = format!("{method} {path} HTTP/1.1\r\nhost: test\r\n{extra}\r\n");
        self.0.get_mut().write_all(request.as_bytes()).unwrap();
        let mut head = String::new();
        loop {
            let mut line = String::new();
            assert!(
                self.0.read_line(&mut line).unwrap() > 0,
                "connection closed"
            );
            if line == "\r\n" {
                break;
            }
            head.push_str(&line.to_ascii_lowercase());
        }
        let status = head[9..12].parse().unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |n| n.trim().parse().unwrap());
        let mut body = vec![
            0;
            if method == "HEAD" || status == 304 {
                0
            } else {
                len
            }
        ];
        self.0.read_exact(&mut body).unwrap();
        (status, head, body)
    }
}

#[test]
fn tarballs_sent_from_the_page_cache_are_exact_on_a_kept_alive_connection() {
    // Hex digits compress to about half: a tarball well above the lane's
    // 16 KiB threshold.
    let blob: String = (0..900u32)
        .map(|i| hex::encode(Sha256::digest(i.to_be_bytes())))
        .collect();
    let spec = format!(
        "{SPEC_SMALL}{{\"big\", \"1.0.0\", [], [{{files, [{{\"priv/blob.txt\", \"{blob}\"}}]}}]}}.\n"
    );
    let upstream = TestUpstream::build(&spec);
    let mirror = Mirror::new(&upstream, "");
    sync_ok(&mirror);
    let tarball = fs::read(mirror.tree().join("tarballs/big-1.0.0.tar")).unwrap();
    assert!(tarball.len() > 20_000, "{} bytes", tarball.len());
    let names = fs::read(mirror.tree().join("names")).unwrap();
    let served = mirror.serve();
    let mut conn = KeptAlive::open(&served.url());
    let path = "/tarballs/big-1.0.0.tar";

    // A miss (read from disk), a HEAD that sends no body, a hit from
    // memory, a range, a small file, a 304 and a hit again, all on one
    // connection: each answer carries exactly its own bytes.
    let (status, head, body) = conn.ask("GET", path, "");
    assert_eq!((status, body.len()), (200, tarball.len()));
    assert!(body == tarball, "the first answer is the file");
    let etag = head
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .unwrap()
        .trim()
        .to_owned();
    let (status, _, body) = conn.ask("HEAD", path, "");
    assert_eq!((status, body.len()), (200, 0));
    let (status, _, body) = conn.ask("GET", path, "");
    assert!(
        status == 200 && body == tarball,
        "the answer from memory is the file"
    );
    let (status, head, body) = conn.ask("GET", path, "range: bytes=100-20099\r\n");
    assert_eq!(status, 206, "{head}");
    assert!(body == tarball[100..20_100], "the range is the file's");
    let (status, _, body) = conn.ask("GET", "/names", "");
    assert!(
        status == 200 && body == names,
        "a small file after a sent tarball"
    );
    let (status, _, body) = conn.ask("GET", path, &format!("if-none-match: {etag}\r\n"));
    assert_eq!((status, body.len()), (304, 0));
    let (status, _, body) = conn.ask("GET", path, "");
    assert!(
        status == 200 && body == tarball,
        "the last answer is the file"
    );

    // The lane took them: bytes went from the page cache, not from memory.
    let metrics =
        String::from_utf8(http("GET", &format!("{}/metrics", served.url()), &[]).body).unwrap();
    let sent: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hexmirror_sendfile_bytes_total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no sendfile counter:\n{metrics}"));
    let most = 3 * tarball.len() as u64 + 20_000;
    assert!(
        sent >= tarball.len() as u64 && sent <= most,
        "sent {sent} bytes with sendfile, expected up to {most}"
    );
}
