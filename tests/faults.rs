//! The fault suite: an upstream that stalls, trickles, cuts, never ends,
//! redirects in circles or sends a gzip bomb, one package at a time. For
//! every mode the sync ends within a bound, the faulty package is
//! quarantined and absent, every other package is published with the index,
//! and the sync's memory stays bounded.

mod common;

use std::fs;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// Tight pacing, so each fault is given up quickly.
const PACING: &str = "timeout_secs = 20\nretries = 1\nheader_timeout_secs = 2\n\
                      min_bytes_per_sec = 20000\nrate_window_secs = 1";

/// Runs a sync, sampling its peak RSS (`VmHWM`, which only grows) until it
/// exits. Returns what it printed, its exit code, wall time and peak KiB.
fn measured_sync(mirror: &Mirror) -> (String, Option<i32>, Duration, u64) {
    let started = Instant::now();
    let mut child = mirror
        .sync_command()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sync");
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let status = loop {
        if let Ok(text) = fs::read_to_string(&status_file)
            && let Some(kb) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak = peak.max(kb);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the sync did not end within 90 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (text, status.code(), started.elapsed(), peak)
}

/// Syncs against `upstream` with `fault` applied and checks the bounds:
/// `package` is quarantined for `kind` and absent, the others and the
/// index are published, within `bound` and 160 MB of memory.
fn assert_survives(upstream: &TestUpstream, package: &str, kind: &str, bound: Duration) -> String {
    let mirror = Mirror::with_upstream_keys(upstream, PACING, "");
    let (out, code, took, peak_kb) = measured_sync(&mirror);
    assert_eq!(code, Some(1), "{out}");
    assert!(took < bound, "took {took:?}, bound {bound:?}\n{out}");
    assert!(peak_kb > 0, "the sync's memory was never sampled");
    assert!(peak_kb < 160 * 1024, "peak RSS {peak_kb} KiB\n{out}");
    let tree = mirror.tree();
    assert!(
        tree.join("names").is_file() && tree.join("versions").is_file(),
        "{out}"
    );
    assert!(!tree.join(format!("packages/{package}")).exists(), "{out}");
    for other in ["alpha", "beta", "gamma", "delta"] {
        if other != package {
            assert!(
                tree.join(format!("packages/{other}")).is_file(),
                "{other}\n{out}"
            );
        }
    }
    let status = mirror.run(&["status"]);
    assert!(
        status.stdout.contains(&format!("{package} [{kind}]")),
        "{status}\n{out}"
    );
    mirror.assert_verifies();
    out
}

#[test]
fn a_stalled_record_is_given_up_after_the_header_timeout() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    upstream.delay("/packages/gamma", Duration::from_secs(60));
    let out = assert_survives(&upstream, "gamma", "transport", Duration::from_secs(20));
    assert!(out.contains("no response headers within 2s"), "{out}");
}

#[test]
fn a_trickling_tarball_is_given_up_below_the_minimum_rate() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let every = Duration::from_millis(100);
    upstream.shape(
        "/tarballs/delta-1.0.0.tar",
        Shape::Trickle { bytes: 10, every },
    );
    let out = assert_survives(&upstream, "delta", "transport", Duration::from_secs(20));
    assert!(out.contains("below the minimum"), "{out}");
}

#[test]
fn a_cut_record_is_retried_then_quarantined() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    upstream.shape("/packages/beta", Shape::Cut);
    assert_survives(&upstream, "beta", "transport", Duration::from_secs(20));
    assert_eq!(upstream.count_path("/packages/beta"), 2, "tried twice");
}

#[test]
fn an_endless_tarball_stops_at_its_size_limit() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    upstream.shape("/tarballs/gamma-3.0.0.tar", Shape::Endless);
    let out = assert_survives(&upstream, "gamma", "size", Duration::from_secs(30));
    assert!(out.contains("larger than"), "{out}");
}

#[test]
fn a_redirect_loop_ends_with_a_clear_error() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    upstream.shape("/packages/delta", Shape::Redirect("/packages/delta".into()));
    let out = assert_survives(&upstream, "delta", "transport", Duration::from_secs(20));
    assert!(out.contains("redirect loop"), "{out}");
    assert_eq!(
        upstream.count_path("/packages/delta"),
        1,
        "a loop is not retried"
    );
}

#[test]
fn a_gzip_bomb_in_a_record_is_refused_within_bounded_memory() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    // 512 MiB of zeros: about half a megabyte on the wire.
    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..512 {
        bomb.write_all(&zeros).unwrap();
    }
    fs::write(
        upstream.dir().join("packages/alpha"),
        bomb.finish().unwrap(),
    )
    .unwrap();
    let out = assert_survives(&upstream, "alpha", "size", Duration::from_secs(30));
    assert!(out.contains("gunzipped body is larger than"), "{out}");
}

/// `bytes`, gzipped (what a registry file's body is).
fn gzipped(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

#[test]
fn a_record_that_is_not_gzip_or_not_protobuf_is_quarantined_as_structure() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    fs::write(upstream.dir().join("packages/beta"), b"not gzip at all").unwrap();
    let out = assert_survives(&upstream, "beta", "structure", Duration::from_secs(20));
    assert!(out.contains("failed: beta"), "{out}");

    let upstream = TestUpstream::build(SPEC_SMALL);
    let garbage = gzipped(&[0xff; 300]);
    fs::write(upstream.dir().join("packages/gamma"), garbage).unwrap();
    assert_survives(&upstream, "gamma", "structure", Duration::from_secs(20));
}

/// A bomb in `/names` or `/versions` refuses the sync as a whole (the index
/// itself is bad), keeps the served tree, and stays within bounded memory.
#[test]
fn a_gzip_bomb_in_the_index_refuses_the_sync_within_bounded_memory() {
    for file in ["names", "versions"] {
        let upstream = TestUpstream::build(SPEC_SMALL);
        let mirror = Mirror::with_upstream_keys(&upstream, PACING, "");
        let (out, code, _, _) = measured_sync(&mirror);
        assert_eq!(code, Some(0), "{out}");
        let before = fs::read(mirror.tree().join(file)).unwrap();
        let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..512 {
            bomb.write_all(&zeros).unwrap();
        }
        fs::write(upstream.dir().join(file), bomb.finish().unwrap()).unwrap();
        let (out, code, took, peak_kb) = measured_sync(&mirror);
        assert_eq!(code, Some(2), "{file}: {out}");
        assert!(
            out.contains("gunzipped body is larger than"),
            "{file}: {out}"
        );
        assert!(took < Duration::from_secs(20), "{file}: {took:?}");
        assert!(
            peak_kb > 0 && peak_kb < 160 * 1024,
            "{file}: peak RSS {peak_kb} KiB"
        );
        assert_eq!(
            fs::read(mirror.tree().join(file)).unwrap(),
            before,
            "{file} kept"
        );
    }
}

/// The gunzipped cap is the operator's: `[upstream] max_registry_mb`.
#[test]
fn the_registry_size_cap_is_configurable() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    fs::write(
        upstream.dir().join("packages/delta"),
        gzipped(&vec![0u8; 2 << 20]),
    )
    .unwrap();
    let mirror = Mirror::with_upstream_keys(&upstream, "max_registry_mb = 1", "");
    let out = mirror.sync();
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stdout
            .contains("gunzipped body is larger than 1048576 bytes"),
        "{out}"
    );
    let status = mirror.run(&["status"]);
    assert!(status.stdout.contains("delta [size]"), "{status}");
}
