//! The pull-through cache: `hexmirror serve` with `[proxy] enabled` and no
//! sync ever run fetches, verifies, stores and serves what clients ask for;
//! keeps serving it with the upstream gone; fetches a file once however many
//! ask at the same time; and refuses what does not verify.

mod common;

use std::fs;
use std::thread;

use common::*;

/// A never-synced mirror of `upstream` in proxy mode, serving.
fn proxy(upstream: &TestUpstream) -> (Mirror, Served) {
    let mirror = Mirror::new(
        upstream,
        "\n[proxy]\nenabled = true\nnegative_ttl_secs = 60\n",
    );
    let served = mirror.serve();
    (mirror, served)
}

#[test]
fn rebar3_builds_through_the_proxy_and_again_with_the_upstream_gone() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let (mirror, served) = proxy(&upstream);
    assert!(
        !mirror.tree().exists(),
        "nothing synced: every file comes through the proxy"
    );

    let project = Rebar3Project::new(&[("beta", "0.2.1")], &fixture_key("upstream.pub.pem"));
    let run = project.compile(&served.url());
    assert!(
        run.success,
        "rebar3 through the proxy failed:\n{}",
        run.output
    );
    assert!(project.has_beam("beta") && project.has_beam("alpha"));
    assert!(upstream.count_path("/tarballs/beta-0.2.1.tar") == 1);

    // The upstream goes away; a fresh client (empty rebar3 cache) still builds.
    drop(upstream);
    let again = Rebar3Project::new(&[("beta", "0.2.1")], &fixture_key("upstream.pub.pem"));
    let run = again.compile(&served.url());
    assert!(run.success, "rebar3 from the cache failed:\n{}", run.output);
    assert!(again.has_beam("beta"));

    // Something never fetched is a clear 502, not a hang or a 404.
    let res = http(
        "GET",
        &format!("{}/tarballs/delta-1.0.0.tar", served.url()),
        &[],
    );
    assert_eq!(res.status, 502, "{}", String::from_utf8_lossy(&res.body));
    let metrics = http("GET", &format!("{}/metrics", served.url()), &[]);
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("hexmirror_proxy_cache_hits_total"), "{text}");
    assert!(text.contains("hexmirror_upstream_errors_total"), "{text}");
}

#[test]
fn fifty_parallel_requests_for_one_tarball_cause_one_upstream_fetch() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    // Slow the tarball down so the requests really overlap.
    upstream.delay(
        "/tarballs/alpha-1.1.0.tar",
        std::time::Duration::from_millis(500),
    );
    let (_mirror, served) = proxy(&upstream);
    let url = format!("{}/tarballs/alpha-1.1.0.tar", served.url());
    let expected = fs::read(upstream.dir().join("tarballs/alpha-1.1.0.tar")).unwrap();
    let workers: Vec<_> = (0..50)
        .map(|_| {
            let url = url.clone();
            thread::spawn(move || http("GET", &url, &[]))
        })
        .collect();
    for w in workers {
        let res = w.join().unwrap();
        assert_eq!(res.status, 200);
        assert_eq!(res.body, expected);
        assert!(
            res.header("etag").is_some(),
            "rebar3 needs an ETag on tarballs"
        );
    }
    assert_eq!(upstream.count_path("/tarballs/alpha-1.1.0.tar"), 1);
    assert_eq!(
        upstream.count_path("/packages/alpha"),
        1,
        "the record is fetched once too"
    );
}

#[test]
fn what_does_not_verify_is_refused_and_not_cached() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let (mirror, served) = proxy(&upstream);
    // A tarball whose bytes no longer match the signed record.
    let path = upstream.dir().join("tarballs/gamma-3.0.0.tar");
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&path, bytes).unwrap();
    let res = http(
        "GET",
        &format!("{}/tarballs/gamma-3.0.0.tar", served.url()),
        &[],
    );
    assert_eq!(res.status, 502);
    assert!(
        !mirror
            .data_dir()
            .join("proxy/tarballs/gamma-3.0.0.tar")
            .exists()
    );
    let metrics = http("GET", &format!("{}/metrics", served.url()), &[]);
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("hexmirror_verification_failures_total{kind=\"tarball\"} 1"),
        "{text}"
    );
    // Asked again at once: the refusal is remembered (the negative TTL),
    // and the upstream is not asked for the file again.
    let asked = upstream.count_path("/tarballs/gamma-3.0.0.tar");
    let again = http(
        "GET",
        &format!("{}/tarballs/gamma-3.0.0.tar", served.url()),
        &[],
    );
    assert_eq!(again.status, 502);
    assert!(
        String::from_utf8_lossy(&again.body).contains("not asking again"),
        "{}",
        String::from_utf8_lossy(&again.body)
    );
    assert_eq!(upstream.count_path("/tarballs/gamma-3.0.0.tar"), asked);

    // A 404 upstream is a 404 here, remembered for the negative TTL.
    for _ in 0..3 {
        let res = http(
            "GET",
            &format!("{}/packages/nonexistent", served.url()),
            &[],
        );
        assert_eq!(res.status, 404);
    }
    assert_eq!(upstream.count_path("/packages/nonexistent"), 1);
    // Our own repositories are never proxied.
    let res = http("GET", &format!("{}/repos/acme/names", served.url()), &[]);
    assert_eq!(res.status, 404);
    assert_eq!(upstream.count_path("/repos/acme/names"), 0);
}

#[test]
fn prefetch_fetches_the_dependency_records_in_the_background() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = Mirror::new(&upstream, "\n[proxy]\nenabled = true\nprefetch = true\n");
    let served = mirror.serve();
    let res = http("GET", &format!("{}/packages/beta", served.url()), &[]);
    assert_eq!(res.status, 200);
    let cache = mirror.data_dir().join("proxy/packages");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !(cache.join("alpha").is_file() && cache.join("gamma").is_file()) {
        assert!(
            std::time::Instant::now() < deadline,
            "dependencies were not prefetched"
        );
        thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        !cache.join("delta").exists(),
        "only the closure is prefetched"
    );
    assert_eq!(upstream.count_path("/packages/alpha"), 1);
}
