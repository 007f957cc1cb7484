//! `GET /health` and `GET /metrics` on a real `hexmirror serve`.

mod common;

use common::*;

#[test]
fn health_is_503_before_the_first_sync_and_ok_after() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = Mirror::new(&upstream, "");
    {
        let server = mirror.serve();
        let got = http("GET", &format!("{}/health", server.url()), &[]);
        assert_eq!(got.status, 503, "{}", String::from_utf8_lossy(&got.body));
        let body: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(body["status"], "unavailable");
    }
    mirror.sync_ok();
    let server = mirror.serve();
    let got = http("GET", &format!("{}/health", server.url()), &[]);
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(body["storage"]["generation"], 1);
    assert_eq!(body["database"]["ok"], true);
    assert_eq!(body["last_sync"]["status"], "ok");
    assert_eq!(body["last_sync"]["failures"], 0);
}

#[test]
fn metrics_count_requests_by_route_and_status_and_report_sync_state() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = Mirror::new(&upstream, "");
    mirror.sync_ok();
    let server = mirror.serve();
    let url = server.url();
    let first = http("GET", &format!("{url}/packages/beta"), &[]);
    let etag = first.header("etag").unwrap().to_owned();
    let again = http(
        "GET",
        &format!("{url}/packages/beta"),
        &[("if-none-match", &etag)],
    );
    assert_eq!(again.status, 304);
    let tarball = http("GET", &format!("{url}/tarballs/beta-0.2.1.tar"), &[]);
    assert_eq!(
        http("GET", &format!("{url}/packages/nope"), &[]).status,
        404
    );

    let got = http("GET", &format!("{url}/metrics"), &[]);
    assert_eq!(got.status, 200);
    let text = String::from_utf8(got.body).unwrap();
    for line in [
        "hexmirror_http_requests_total{route=\"registry\",status=\"200\"} 1".to_string(),
        "hexmirror_http_requests_total{route=\"registry\",status=\"304\"} 1".to_string(),
        "hexmirror_http_requests_total{route=\"registry\",status=\"404\"} 1".to_string(),
        "hexmirror_http_requests_total{route=\"tarball\",status=\"200\"} 1".to_string(),
        format!(
            "hexmirror_http_response_bytes_total{{route=\"tarball\"}} {}",
            tarball.body.len()
        ),
        "hexmirror_generation 1".to_string(),
        "hexmirror_last_sync_failures 0".to_string(),
        // Everything seen upstream is published: no lag.
        "hexmirror_upstream_lag_seconds 0".to_string(),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    assert!(text.contains("# TYPE hexmirror_manifest_expiry_timestamp_seconds gauge"));
    assert!(text.contains("hexmirror_last_successful_sync_age_seconds "));
}

/// A newcomer's first `hexmirror serve`: a caching proxy (the embedded
/// default) over a data directory that does not exist yet. It can serve, so
/// it is healthy; what it has not made yet (no generation, perhaps no
/// database) is reported as information, not as a fault.
#[test]
fn a_fresh_proxy_is_healthy_before_its_first_request() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let dir = tempfile::TempDir::new().unwrap();
    let data = dir.path().join("not-yet-created");
    let config = write_config(
        dir.path(),
        &upstream.url(),
        &fixture_key("upstream.pub.pem"),
        &data,
        "\n[proxy]\nenabled = true\n",
    );
    let server = Served::start(&config);
    let got = http("GET", &format!("{}/health", server.url()), &[]);
    let body: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(got.status, 200, "{body}");
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(body["storage"]["ok"], true, "{body}");
    assert_eq!(body["storage"]["published"], false, "{body}");
    assert!(body["storage"]["error"].is_null(), "{body}");
    assert!(
        body["storage"]["note"]
            .as_str()
            .is_some_and(|n| n.contains("fetched from the upstream on request")),
        "{body}"
    );
    assert_eq!(body["database"]["ok"], true, "{body}");
    assert!(body["database"]["error"].is_null(), "{body}");
    assert_eq!(body["proxy"]["enabled"], true, "{body}");

    // And it does serve: a record comes through the proxy.
    let record = http("GET", &format!("{}/packages/beta", server.url()), &[]);
    assert_eq!(record.status, 200);
}
