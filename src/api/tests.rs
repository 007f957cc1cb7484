//! The API router in-process (`oneshot`, no socket): error shapes, token
//! checks, the repository-prefixed account routes, and where uploads are
//! checked. The real binary and stock clients are driven in `tests/`.

use std::path::Path;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use tower::ServiceExt;

use super::*;
use crate::hosted::service::Publisher;

/// An API over a temp data directory with repository `acme`, and a token
/// with full rights on it.
struct Site {
    _tmp: tempfile::TempDir,
    router: Router,
    token: String,
}

impl Site {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let key = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys/other.pem");
        let text = format!(
            "data_dir = \"data\"\n[signing]\nkey = {:?}\n\
             [[repository]]\nname = \"acme\"\nreserved = [\"*\"]\n",
            key.display().to_string()
        );
        let config = Config::parse(&text, &tmp.path().join("hexmirror.toml")).unwrap();
        std::fs::create_dir_all(&config.data_dir).unwrap();
        let publisher = Publisher::open(config).unwrap();
        let (token, _) = publisher
            .db()
            .call_blocking(|c| {
                Ok(create_token(
                    c,
                    "ci",
                    "ann",
                    auth::admin_scopes(),
                    None,
                    None,
                ))
            })
            .unwrap()
            .unwrap();
        Self {
            router: router(ApiState::new(
                publisher.config().as_ref().clone(),
                Some(publisher),
                None,
            )),
            _tmp: tmp,
            token,
        }
    }

    async fn send(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (StatusCode, String, Vec<u8>) {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = self
            .router
            .clone()
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let kind = res
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        (status, kind, body)
    }

    fn auth(&self) -> (&'static str, &str) {
        ("authorization", self.token.as_str())
    }
}

#[tokio::test]
async fn unknown_routes_answer_in_the_api_error_shape() {
    let site = Site::new();
    let (status, kind, body) = site
        .send(
            "GET",
            "/api/nope",
            &[("accept", "application/json")],
            vec![],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(kind.starts_with("application/json"), "{kind}");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["status"], 404);
    assert!(v["message"].as_str().unwrap().contains("/api/nope"), "{v}");
    // Hex asks for Erlang terms: the same body, in ETF.
    let (status, kind, body) = site
        .send(
            "GET",
            "/api/repos/acme/nope",
            &[("accept", "application/vnd.hex+erlang")],
            vec![],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(kind.starts_with("application/vnd.hex+erlang"), "{kind}");
    let v = etf::decode(&body).unwrap();
    assert_eq!(v["status"], 404);
}

#[tokio::test]
async fn writes_need_a_valid_token() {
    let site = Site::new();
    let (status, _, _) = site
        .send("POST", "/api/repos/acme/publish", &[], b"x".to_vec())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let forged = format!("{}x", site.token);
    let (status, _, _) = site
        .send(
            "POST",
            "/api/repos/acme/publish",
            &[("authorization", &forged)],
            b"x".to_vec(),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn account_routes_answer_under_the_repository_prefix() {
    let site = Site::new();
    for uri in ["/api/users/me", "/api/repos/acme/users/me"] {
        let (status, _, body) = site
            .send(
                "GET",
                uri,
                &[site.auth(), ("accept", "application/json")],
                vec![],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["username"], "ann", "{uri}: {v}");
        assert!(v["packages"].is_array(), "{uri}: {v}");
    }
    let (status, _, _) = site
        .send("GET", "/api/repos/acme/auth", &[site.auth()], vec![])
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_docs_tarball_is_checked_before_the_change_reaches_the_writer() {
    // The release does not exist: had the writer looked first, this would
    // be a 404. The upload is refused before that, off the writer's lock.
    let site = Site::new();
    let (status, _, body) = site
        .send(
            "POST",
            "/api/repos/acme/packages/acme_app/releases/1.0.0/docs",
            &[site.auth(), ("accept", "application/json")],
            b"not a gzipped tarball".to_vec(),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        v["message"].as_str().unwrap().contains("docs tarball"),
        "{v}"
    );
}
