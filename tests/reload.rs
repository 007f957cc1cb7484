//! SIGHUP reloads the configuration of `hexmirror serve`; a broken new
//! configuration is refused and the running one keeps serving.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

#[test]
fn sighup_with_a_broken_config_keeps_serving_and_a_good_one_is_applied() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = Mirror::new(&upstream, "");
    mirror.sync_ok();
    let mut child = hexmirror()
        .args(["serve", "--config"])
        .arg(mirror.config())
        .env("HEXMIRROR_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let url = first.trim().rsplit(" on ").next().unwrap().to_owned();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_for = |needle: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(_) => panic!("serve never logged {needle:?}"),
            }
        }
    };
    let hup = || {
        Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
    };

    // Regression: the SIGHUP handler was installed after the address was
    // printed (and READY sent), so a reload right then killed the server.
    hup();
    wait_for("configuration reloaded");

    let good = fs::read_to_string(mirror.config()).unwrap();
    fs::write(mirror.config(), format!("{good}\nthis is not toml\n")).unwrap();
    hup();
    let line = wait_for("new configuration refused");
    assert!(line.contains("keeping the running one"), "{line}");
    assert!(
        line.contains(&mirror.config().display().to_string()),
        "says which file: {line}"
    );
    let got = http("GET", &format!("{url}/packages/beta"), &[]);
    assert_eq!(got.status, 200, "serving stopped after a bad reload");

    fs::write(mirror.config(), good).unwrap();
    hup();
    wait_for("configuration reloaded");
    assert_eq!(
        http("GET", &format!("{url}/packages/beta"), &[]).status,
        200
    );
    assert!(child.try_wait().unwrap().is_none(), "serve exited");
    child.kill().unwrap();
    child.wait().unwrap();
}
