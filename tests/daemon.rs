//! `hexmirror serve` as the one long-running process: syncs on a cron
//! schedule (never two at once, also with `hexmirror sync` run beside it)
//! and JSON logs when configured.

mod common;

use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn serve_syncs_on_its_schedule_and_never_two_syncs_overlap() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    // Every two seconds: six fields, seconds first.
    let mirror = Mirror::new(&upstream, "\n[schedule]\nsync = \"*/2 * * * * *\"\n");
    let served = mirror.serve();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !mirror.tree().join("names").is_file() {
        assert!(
            Instant::now() < deadline,
            "no scheduled sync published a tree"
        );
        sleep(Duration::from_millis(100));
    }
    // A manual sync beside the daemon's: it runs or is told one is running.
    for _ in 0..5 {
        let out = mirror.sync();
        assert!(
            out.ok() || out.stderr.contains("another") || out.stderr.contains("lock"),
            "{out}"
        );
    }
    sleep(Duration::from_secs(3));
    drop(served);
    let db = rusqlite::Connection::open(mirror.data_dir().join("hexmirror.db")).unwrap();
    let mut stmt = db
        .prepare("SELECT started_at, finished_at FROM syncs ORDER BY id")
        .unwrap();
    let runs: Vec<(i64, Option<i64>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(runs.len() >= 2, "the schedule ran more than once: {runs:?}");
    for pair in runs.windows(2) {
        let (prev_end, next_start) = (pair[0].1.expect("finished"), pair[1].0);
        assert!(next_start >= prev_end, "two syncs overlapped: {runs:?}");
    }
    mirror.assert_verifies();
}

#[test]
fn logs_are_json_when_configured() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = Mirror::new(&upstream, "\n[log]\nformat = \"json\"\n");
    let out = mirror.sync();
    assert!(out.ok(), "{out}");
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(!lines.is_empty());
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v.get("level").is_some() && v.get("message").is_some(),
            "{line}"
        );
    }
    let bad = Mirror::new(&upstream, "\n[schedule]\nsync = \"every hour\"\n");
    let out = bad.sync();
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr.contains("schedule.sync") && out.stderr.contains("six fields"),
        "{out}"
    );
}

#[test]
fn sigterm_stops_a_running_scheduled_sync_and_exits_cleanly() {
    use std::io::Read;
    use std::process::Stdio;
    let upstream = TestUpstream::build(SPEC_SMALL);
    // Every second, and every tarball takes a minute: a sync is always
    // running when the signal comes.
    upstream.delay("/tarballs/", Duration::from_secs(60));
    let mirror = Mirror::new(&upstream, "\n[schedule]\nsync = \"* * * * * *\"\n");
    let mut child = hexmirror()
        .arg("serve")
        .arg("--config")
        .arg(mirror.config())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    // Records are answered at once; the tarballs that follow them hang.
    while upstream.count(|r| r.path.starts_with("/packages/")) == 0 {
        assert!(Instant::now() < deadline, "no scheduled sync started");
        sleep(Duration::from_millis(50));
    }
    sleep(Duration::from_millis(300));
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve did not exit within 10 s of SIGTERM");
        }
        sleep(Duration::from_millis(50));
    };
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(status.success(), "exit {status:?}\n{logs}");
    assert!(
        logs.contains("scheduled sync stopped by shutdown"),
        "the running sync was stopped and joined:\n{logs}"
    );
    assert!(!mirror.tree().exists(), "nothing half-synced was published");
}
