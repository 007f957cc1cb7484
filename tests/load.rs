//! Readers under load while the tree changes: concurrent clients read
//! registry files and tarballs from `serve` while syncs switch generations
//! and publishes patch the current one. Every body a client gets must be a
//! whole stored blob (its SHA-256 names a file in the blob store): no torn
//! or mixed read, ever. Only wrong bodies and connection errors count as
//! failures; latency does not (this machine has 2 cores). `wrk` at 512
//! connections, for speed, is in bench/run.sh.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use sha2::{Digest, Sha256};

/// Concurrent readers.
const READERS: usize = 16;

#[test]
fn readers_only_get_whole_files_while_syncs_and_publishes_change_the_tree() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = Mirror::hosting(&upstream, "name = \"acme\"\nreserved = [\"acme_*\"]", "");
    let token = mirror.token(&["--admin", "--name", "load"]);
    let served = mirror.serve();
    let work = tempfile::TempDir::new().unwrap();
    let tarballs: Vec<String> = (1..=3)
        .map(|i| {
            let path = work.path().join(format!("acme_p{i}-1.0.0.tar"));
            Oracle::tarball(&format!("acme_p{i}"), "1.0.0", &path, &[]);
            path.to_string_lossy().into_owned()
        })
        .collect();
    let mut paths: Vec<String> = [
        "names",
        "versions",
        "packages/alpha",
        "packages/beta",
        "packages/gamma",
        "tarballs/alpha-1.0.0.tar",
        "tarballs/beta-0.2.1.tar",
        "repos/acme/names",
        "repos/acme/versions",
        "repos/acme/packages/alpha",
    ]
    .iter()
    .map(|p| p.to_string())
    .collect();
    paths.extend((1..=3).map(|i| format!("repos/acme/packages/acme_p{i}")));
    paths.push("packages/epsilon".into());

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let blobs = mirror.data_dir().join("blobs/sha256");
    let loader = {
        let (stop, counts, url) = (Arc::clone(&stop), Arc::clone(&counts), served.url());
        std::thread::spawn(move || load(&url, &paths, &blobs, stop, counts))
    };

    // The writer side: three upstream changes synced, three publishes.
    let grown = format!("{SPEC_SMALL}{{\"epsilon\", \"0.1.0\", [], []}}.\n");
    let api = format!("{}/api/repos/acme", served.url());
    for (round, tarball) in tarballs.iter().enumerate() {
        let spec = if round % 2 == 0 { &grown } else { SPEC_SMALL };
        rebuild_upstream(&upstream, spec);
        let out = mirror.sync();
        assert!(out.ok(), "sync {round}: {out}");
        let (status, body) = Oracle::api(&api, &token, &["publish", tarball]);
        assert_eq!(status, 201, "publish {round}: {body}");
    }
    // Let the readers see the last state too.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let wrong = loader.join().expect("loader");
    let [ok, errors, absent] = [0, 1, 2].map(|i| counts[i].load(Ordering::SeqCst));
    eprintln!("load: {ok} whole bodies, {absent} 404s, {errors} connection errors");
    assert!(
        wrong.is_empty(),
        "bodies that are no stored blob: {wrong:?}"
    );
    assert_eq!(
        errors, 0,
        "connection errors ({ok} whole bodies, {absent} 404s)"
    );
    assert!(ok > 200, "too few reads to mean anything: {ok}");
    mirror.assert_verifies();
}

/// Reads `paths` round and round with [`READERS`] clients until `stop`;
/// counts whole bodies, connection errors and 404s in `counts`, and returns
/// the paths whose body was no stored blob.
fn load(
    url: &str,
    paths: &[String],
    blobs: &std::path::Path,
    stop: Arc<AtomicBool>,
    counts: Arc<[AtomicU64; 3]>,
) -> BTreeSet<String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for reader in 0..READERS {
            let (client, url, paths) = (client.clone(), url.to_owned(), paths.to_vec());
            let (blobs, stop, counts) = (blobs.to_owned(), Arc::clone(&stop), Arc::clone(&counts));
            tasks.spawn(async move {
                let mut wrong = BTreeSet::new();
                let mut i = reader;
                while !stop.load(Ordering::SeqCst) {
                    let path = &paths[i % paths.len()];
                    i += 1;
                    let response = match client.get(format!("{url}/{path}")).send().await {
                        Ok(r) => r,
                        Err(_) => {
                            counts[1].fetch_add(1, Ordering::SeqCst);
                            continue;
                        }
                    };
                    match response.status().as_u16() {
                        200 => {}
                        404 => {
                            counts[2].fetch_add(1, Ordering::SeqCst);
                            continue;
                        }
                        _ => {
                            wrong.insert(format!("{path} answered {}", response.status()));
                            continue;
                        }
                    }
                    let Ok(body) = response.bytes().await else {
                        counts[1].fetch_add(1, Ordering::SeqCst);
                        continue;
                    };
                    let hex = hex::encode(Sha256::digest(&body));
                    if blobs.join(&hex[..2]).join(&hex).is_file() {
                        counts[0].fetch_add(1, Ordering::SeqCst);
                    } else {
                        wrong.insert(path.clone());
                    }
                }
                wrong
            });
        }
        let mut wrong = BTreeSet::new();
        while let Some(done) = tasks.join_next().await {
            wrong.extend(done.unwrap());
        }
        wrong
    })
}
