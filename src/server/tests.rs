use std::path::Path;
use std::time::Duration;

use axum::body::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const PACKAGE: &[u8] = b"\x1f\x8b gzip body of packages/foo";
const SECRET: &[u8] = b"TOP SECRET outside the root";

/// A served tree at `<tmp>/root` with a file planted next to it at `<tmp>/secret`.
struct Tree {
    dir: tempfile::TempDir,
    state: Arc<ServerState>,
}

impl Tree {
    fn new() -> Self {
        Self::with_public_repos(&[])
    }

    fn with_public_repos(public: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let tree = Self {
            state: Arc::new(ServerState {
                bucket: None,
                bucket_writer: None,
                root: root.clone(),
                etags: EtagCache::default(),
                cache: Arc::new(ResponseCache::new(root.clone(), cache::DEFAULT_BUDGET)),
                public_repos: PublicRepos::new(public.iter().map(|s| s.to_string()).collect()),
                data_dir: None,
                metrics: Default::default(),
                api: None,
                proxy: None,
                downloads: None,
            }),
            dir,
        };
        std::fs::write(tree.dir.path().join("secret"), SECRET).unwrap();
        std::fs::write(tree.dir.path().join("root.tar"), SECRET).unwrap();
        for (rel, bytes) in [
            ("names", &b"names body"[..]),
            ("versions", b"versions body"),
            ("public_key", b"-----BEGIN PUBLIC KEY-----\n"),
            ("packages/foo", PACKAGE),
            ("tarballs/foo-1.0.0.tar", &big_tarball()),
            ("tarballs/foo-1.0.0+build.1.tar", b"plus build"),
            ("docs/foo-1.0.0.tar.gz", b"docs body"),
            ("repos/acme/names", b"acme names"),
            ("repos/acme/versions", b"acme versions"),
            ("repos/acme/public_key", b"acme key"),
            ("repos/acme/packages/foo", b"acme foo"),
            ("repos/acme/tarballs/foo-1.0.0.tar", b"acme tarball"),
            ("repos/acme/docs/foo-1.0.0.tar.gz", b"acme docs"),
        ] {
            tree.write(rel, bytes);
        }
        tree
    }

    fn root(&self) -> &Path {
        &self.state.root
    }

    /// Writes like the store does: a temp file, then a rename into place.
    fn write(&self, rel: &str, bytes: &[u8]) {
        let path = self.root().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let tmp = self.dir.path().join("tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }

    async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let res = respond(&self.state, &method, path, &map, None, None).await;
        let status = res.status();
        let headers = res.headers().clone();
        let body = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[]).await
    }
}

fn big_tarball() -> Vec<u8> {
    // Larger than several stream chunks, with no repeating period that could
    // hide an offset bug.
    (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect()
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn etag(&self) -> &str {
        self.header("etag").expect("etag header")
    }
}

#[tokio::test]
async fn get_package_serves_bytes_with_content_etag() {
    let tree = Tree::new();
    let first = tree.get("/packages/foo").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(&first.body[..], PACKAGE);
    assert_eq!(
        first.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(
        first.header("content-length"),
        Some(&*PACKAGE.len().to_string())
    );
    assert_eq!(first.header("accept-ranges"), Some("bytes"));
    assert!(first.header("last-modified").is_some());
    assert_eq!(first.header("content-encoding"), None);

    let etag = first.etag().to_owned();
    assert_eq!(etag.len(), 34);
    assert!(etag.starts_with('"') && etag.ends_with('"'));
    assert!(
        etag[1..33]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );

    assert_eq!(tree.get("/packages/foo").await.etag(), etag);
    tree.write("packages/foo", PACKAGE);
    assert_eq!(tree.get("/packages/foo").await.etag(), etag);
    tree.write("packages/foo", b"different bytes");
    let changed = tree.get("/packages/foo").await;
    assert_ne!(changed.etag(), etag);
    assert_eq!(&changed.body[..], b"different bytes");
}

#[tokio::test]
async fn large_tarball_streams_identical_bytes() {
    let tree = Tree::new();
    let reply = tree.get("/tarballs/foo-1.0.0.tar").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(&reply.body[..], &big_tarball()[..]);
    assert_eq!(reply.header("content-length"), Some("300000"));
}

#[tokio::test]
async fn if_none_match_gives_304() {
    let tree = Tree::new();
    let etag = tree.get("/packages/foo").await.etag().to_owned();
    for inm in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"x\", {etag}"),
        "*".into(),
    ] {
        let reply = tree
            .request("GET", "/packages/foo", &[("if-none-match", &inm)])
            .await;
        assert_eq!(reply.status, StatusCode::NOT_MODIFIED, "{inm}");
        assert!(reply.body.is_empty());
        assert_eq!(reply.etag(), etag);
        assert_eq!(reply.header("cache-control"), Some("public, max-age=3600"));
        assert!(reply.header("last-modified").is_some());
        assert_eq!(reply.header("content-encoding"), None);
    }
    let stale = tree
        .request("GET", "/packages/foo", &[("if-none-match", "\"stale\"")])
        .await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(&stale.body[..], PACKAGE);
}

#[tokio::test]
async fn if_modified_since_gives_304() {
    let tree = Tree::new();
    let first = tree.get("/names").await;
    let lm = first.header("last-modified").unwrap().to_owned();
    let reply = tree
        .request("GET", "/names", &[("if-modified-since", &lm)])
        .await;
    assert_eq!(reply.status, StatusCode::NOT_MODIFIED);
    assert!(reply.body.is_empty());

    let old = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(1));
    let reply = tree
        .request("GET", "/names", &[("if-modified-since", &old)])
        .await;
    assert_eq!(reply.status, StatusCode::OK);

    // If-None-Match takes precedence over If-Modified-Since.
    let reply = tree
        .request(
            "GET",
            "/names",
            &[("if-modified-since", &lm), ("if-none-match", "\"stale\"")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn head_has_get_headers_and_no_body() {
    let tree = Tree::new();
    let get = tree.get("/tarballs/foo-1.0.0.tar").await;
    let head = tree.request("HEAD", "/tarballs/foo-1.0.0.tar", &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    for name in [
        "etag",
        "content-length",
        "content-type",
        "cache-control",
        "last-modified",
        "accept-ranges",
    ] {
        assert_eq!(head.header(name), get.header(name), "{name}");
    }
    // Range is defined for GET only.
    let ranged = tree
        .request("HEAD", "/tarballs/foo-1.0.0.tar", &[("range", "bytes=0-9")])
        .await;
    assert_eq!(ranged.status, StatusCode::OK);
}

#[tokio::test]
async fn ranges() {
    let tree = Tree::new();
    let full = big_tarball();
    let path = "/tarballs/foo-1.0.0.tar";
    let t = &tree;
    let range = |r: &'static str| async move { t.request("GET", path, &[("range", r)]).await };

    let reply = range("bytes=100000-100009").await;
    assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        reply.header("content-range"),
        Some("bytes 100000-100009/300000")
    );
    assert_eq!(reply.header("content-length"), Some("10"));
    assert_eq!(&reply.body[..], &full[100_000..100_010]);

    let reply = range("bytes=299990-").await;
    assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&reply.body[..], &full[299_990..]);

    let reply = range("bytes=-5").await;
    assert_eq!(
        reply.header("content-range"),
        Some("bytes 299995-299999/300000")
    );
    assert_eq!(&reply.body[..], &full[299_995..]);

    let reply = range("bytes=300000-").await;
    assert_eq!(reply.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(reply.header("content-range"), Some("bytes */300000"));

    let reply = range("bytes=0-1,5-6").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.len(), full.len());
    assert_eq!(reply.header("content-range"), None);

    let etag = tree.get(path).await.etag().to_owned();
    let reply = tree
        .request("GET", path, &[("range", "bytes=0-0"), ("if-range", &etag)])
        .await;
    assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&reply.body[..], &full[..1]);
    let reply = tree
        .request(
            "GET",
            path,
            &[("range", "bytes=0-0"), ("if-range", "\"old\"")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.len(), full.len());
}

#[tokio::test]
async fn cache_control_and_content_type_per_route() {
    let tree = Tree::new();
    let octet = "application/octet-stream";
    for (path, cache, ctype) in [
        ("/names", "public, max-age=3600", octet),
        ("/versions", "public, max-age=3600", octet),
        ("/packages/foo", "public, max-age=3600", octet),
        ("/tarballs/foo-1.0.0.tar", "public, max-age=604800", octet),
        ("/docs/foo-1.0.0.tar.gz", "public, max-age=86400", octet),
        (
            "/public_key",
            "public, max-age=3600",
            "text/plain; charset=utf-8",
        ),
        ("/repos/acme/names", "private, max-age=3600", octet),
        ("/repos/acme/versions", "private, max-age=3600", octet),
        ("/repos/acme/packages/foo", "private, max-age=3600", octet),
        (
            "/repos/acme/tarballs/foo-1.0.0.tar",
            "private, max-age=86400",
            octet,
        ),
        (
            "/repos/acme/docs/foo-1.0.0.tar.gz",
            "private, max-age=86400",
            octet,
        ),
        (
            "/repos/acme/public_key",
            "private, max-age=3600",
            "text/plain; charset=utf-8",
        ),
    ] {
        let reply = tree.get(path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert_eq!(reply.header("cache-control"), Some(cache), "{path}");
        assert_eq!(reply.header("content-type"), Some(ctype), "{path}");
        assert_eq!(reply.header("content-encoding"), None, "{path}");
        assert!(reply.header("etag").is_some(), "{path}");
    }
    assert_eq!(
        &tree.get("/repos/acme/packages/foo").await.body[..],
        b"acme foo"
    );
}

#[tokio::test]
async fn plus_in_tarball_version() {
    let tree = Tree::new();
    let reply = tree.get("/tarballs/foo-1.0.0+build.1.tar").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(&reply.body[..], b"plus build");
    let encoded = tree.get("/tarballs/foo-1.0.0%2Bbuild.1.tar").await;
    assert_eq!(&encoded.body[..], b"plus build");
    // A plus is not a space.
    assert_eq!(
        tree.get("/tarballs/foo-1.0.0 build.1.tar").await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn traversal_never_reaches_outside_the_root() {
    let tree = Tree::new();
    for path in [
        "/../secret",
        "/packages/../../secret",
        "/%2e%2e/secret",
        "/packages/%2e%2e%2f%2e%2e%2fsecret",
        "/packages/..%2F..%2Fsecret",
        "/packages/%2E%2E",
        "/packages/foo%00",
        "/packages/..\\..\\secret",
        "/repos/..%2F..%2F/names",
        "/tarballs/..%2F..%2Froot.tar",
        "//secret",
    ] {
        let reply = tree.get(path).await;
        assert!(
            matches!(
                reply.status,
                StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND
            ),
            "{path}: {}",
            reply.status
        );
        assert_ne!(&reply.body[..], SECRET, "{path}");
        assert_eq!(reply.header("etag"), None, "{path}");
    }
}

#[tokio::test]
async fn missing_unknown_and_wrong_method() {
    let tree = Tree::new();
    let missing = tree.get("/packages/nope").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        missing.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(
        tree.get("/tarballs/nope-1.0.0.tar").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        tree.get("/repos/other/names").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(tree.get("/index.html").await.status, StatusCode::NOT_FOUND);
    // A directory where a file is expected.
    std::fs::create_dir_all(tree.root().join("packages/dir")).unwrap();
    assert_eq!(
        tree.get("/packages/dir").await.status,
        StatusCode::NOT_FOUND
    );
    // A file where a directory is expected.
    assert_eq!(tree.get("/repos/acme/names").await.status, StatusCode::OK);
    std::fs::write(tree.root().join("repos/flat"), b"x").unwrap();
    assert_eq!(
        tree.get("/repos/flat/names").await.status,
        StatusCode::NOT_FOUND
    );

    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let reply = tree.request(method, "/packages/foo", &[]).await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(reply.header("allow"), Some("GET, HEAD"));
    }
    assert_eq!(
        tree.get("/packages/Foo").await.status,
        StatusCode::BAD_REQUEST
    );

    let home = tree.get("/").await;
    assert_eq!(home.status, StatusCode::OK);
    assert!(
        std::str::from_utf8(&home.body)
            .unwrap()
            .contains("hexmirror")
    );
}

#[cfg(unix)]
#[tokio::test]
async fn root_symlink_switch_is_seen_after_the_recheck_interval() {
    let dir = tempfile::tempdir().unwrap();
    for (generation, body) in [("gen1", b"first"), ("gen2", b"secnd")] {
        let packages = dir.path().join(generation).join("packages");
        std::fs::create_dir_all(&packages).unwrap();
        std::fs::write(packages.join("foo"), body).unwrap();
        std::fs::write(
            dir.path()
                .join(generation)
                .join(crate::manifest::MANIFEST_FILE),
            generation,
        )
        .unwrap();
    }
    let current = dir.path().join("current");
    std::os::unix::fs::symlink("gen1", &current).unwrap();
    let state = Arc::new(ServerState {
        bucket: None,
        bucket_writer: None,
        root: current.clone(),
        etags: EtagCache::default(),
        cache: Arc::new(
            ResponseCache::new(current.clone(), cache::DEFAULT_BUDGET)
                .with_clock(cache::test_clock::test_clock),
        ),
        public_repos: Default::default(),
        data_dir: None,
        metrics: Default::default(),
        api: None,
        proxy: None,
        downloads: None,
    });
    let get = |state: Arc<ServerState>, path: &'static str| async move {
        let res = respond(&state, &Method::GET, path, &HeaderMap::new(), None, None).await;
        axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap()
    };
    let body = |state: Arc<ServerState>| get(state, "/packages/foo");
    let manifest = |state: Arc<ServerState>| get(state, "/hexmirror-manifest.json");
    assert_eq!(&body(Arc::clone(&state)).await[..], b"first");
    // Again, from memory this time.
    assert_eq!(&body(Arc::clone(&state)).await[..], b"first");
    assert_eq!(state.cache.stats().0, 1, "one hit");
    let next = dir.path().join("next");
    std::os::unix::fs::symlink("gen2", &next).unwrap();
    std::fs::rename(&next, &current).unwrap();
    // Within RECHECK of the last read of the link, the old generation,
    // whole (the manifest too, which is never kept); after it, the new one.
    assert_eq!(&body(Arc::clone(&state)).await[..], b"first");
    assert_eq!(&manifest(Arc::clone(&state)).await[..], b"gen1");
    cache::test_clock::advance(cache::RECHECK);
    assert_eq!(&body(Arc::clone(&state)).await[..], b"secnd");
    assert_eq!(&manifest(state).await[..], b"gen2");
}

/// One HTTP/1.1 exchange over a fresh connection; returns status, lower-cased
/// headers and the body. Written by hand so request paths reach the server raw.
async fn raw_exchange(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    extra: &str,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        raw
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("server answered in time");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, raw[split + 4..].to_vec())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn real_socket_round_trip() {
    let tree = Tree::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let limits = Limits {
        max_connections: 64,
        header_timeout: std::time::Duration::from_secs(30),
        workers: 1,
    };
    let server = tokio::spawn(run(
        listener,
        router(tree.root().to_owned()),
        limits,
        async move {
            let _ = stopped.await;
        },
    ));

    let (status, headers, body) = raw_exchange(addr, "GET", "/packages/foo", "").await;
    assert_eq!(status, 200);
    assert_eq!(body, PACKAGE);
    assert_eq!(header(&headers, "content-encoding"), None);
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/octet-stream")
    );
    let etag = header(&headers, "etag").unwrap().to_owned();

    let (status, headers, body) = raw_exchange(addr, "HEAD", "/packages/foo", "").await;
    assert_eq!(status, 200);
    assert!(body.is_empty());
    assert_eq!(
        header(&headers, "content-length"),
        Some(&*PACKAGE.len().to_string())
    );

    let inm = format!("If-None-Match: {etag}\r\n");
    let (status, headers, body) = raw_exchange(addr, "GET", "/packages/foo", &inm).await;
    assert_eq!(status, 304);
    assert!(body.is_empty());
    assert_eq!(header(&headers, "etag"), Some(&*etag));

    let (status, _, body) = raw_exchange(addr, "GET", "/tarballs/foo-1.0.0+build.1.tar", "").await;
    assert_eq!(status, 200);
    assert_eq!(body, b"plus build");

    let (status, _, body) = raw_exchange(
        addr,
        "GET",
        "/tarballs/foo-1.0.0.tar",
        "Range: bytes=-3\r\n",
    )
    .await;
    assert_eq!(status, 206);
    assert_eq!(body, &big_tarball()[299_997..]);

    for path in [
        "/../secret",
        "/packages/../../secret",
        "/%2e%2e/secret",
        "/packages/%2e%2e%2fsecret",
        "/packages/..%2F..%2Fsecret",
        "/packages/foo%00",
        "/packages/..\\..\\secret",
    ] {
        let (status, _, body) = raw_exchange(addr, "GET", path, "").await;
        assert!(matches!(status, 400 | 404), "{path}: {status}");
        assert_ne!(body, SECRET, "{path}");
    }

    let (status, headers, _) =
        raw_exchange(addr, "POST", "/packages/foo", "Content-Length: 0\r\n").await;
    assert_eq!(status, 405);
    assert_eq!(header(&headers, "allow"), Some("GET, HEAD"));

    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stopped in time")
        .unwrap();
    assert!(result.is_ok());
}

#[tokio::test]
async fn our_own_repositories_are_cached_publicly_and_others_privately() {
    let tree = Tree::with_public_repos(&["acme"]);
    let reply = tree.get("/repos/acme/packages/foo").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("cache-control"), Some("public, max-age=3600"));
    let reply = tree.get("/repos/acme/tarballs/foo-1.0.0.tar").await;
    assert_eq!(
        reply.header("cache-control"),
        Some("public, max-age=604800")
    );
}

#[test]
fn the_fast_path_takes_only_what_the_router_hands_its_fallback() {
    for (method, path, taken) in [
        (Method::GET, "/names", true),
        (Method::HEAD, "/tarballs/a-1.0.0.tar", true),
        (Method::GET, "/repos/acme/packages/a", true),
        (Method::GET, "/hexmirror-manifest.json", true),
        (Method::GET, "/packages", true),
        (Method::POST, "/names", false),
        (Method::GET, "/", false),
        (Method::GET, "/health", false),
        (Method::GET, "/metrics", false),
        (Method::GET, "/api/packages/a", false),
        (Method::GET, "/v1/package", false),
        (Method::GET, "/ui/packages/a", false),
        (Method::GET, "/%6Eames", false),
        (Method::GET, "", false),
    ] {
        assert_eq!(super::Tree::takes(&method, path), taken, "{method} {path}");
    }
    // No UI prefix may take a name the fast path answers.
    for top in crate::config::TREE_TOP.iter().filter(|t| !t.contains('.')) {
        assert!(
            crate::config::ui_prefix(&format!("/{top}")).is_err(),
            "ui_prefix /{top} was accepted"
        );
    }
}

#[test]
fn a_detached_head_keeps_no_byte_of_the_read_buffer() {
    // hyper's header values and URI are slices of its read buffer, as these are.
    let buffer = Bytes::from_static(b"/tarballs/a-1.0.0.tar\"tag\"Basic c2VjcmV0");
    let within = |p: *const u8| buffer.as_ptr_range().contains(&p);
    let mut req = axum::http::Request::builder()
        .method(Method::HEAD)
        .uri(axum::http::Uri::from_maybe_shared(buffer.slice(..21)).unwrap())
        .body(())
        .unwrap();
    let headers = req.headers_mut();
    let etag = HeaderValue::from_maybe_shared(buffer.slice(21..26)).unwrap();
    headers.append(header::IF_NONE_MATCH, etag.clone());
    headers.append(header::IF_NONE_MATCH, etag);
    let mut auth = HeaderValue::from_maybe_shared(buffer.slice(26..)).unwrap();
    auth.set_sensitive(true);
    headers.insert(header::AUTHORIZATION, auth);
    assert!(within(
        req.headers()[header::AUTHORIZATION].as_bytes().as_ptr()
    ));

    let head = Head::detach(req);
    assert_eq!(head.method, Method::HEAD);
    assert_eq!(head.path, "/tarballs/a-1.0.0.tar");
    assert!(!within(head.path.as_ptr()));
    let tags: Vec<_> = head.headers.get_all(header::IF_NONE_MATCH).iter().collect();
    assert_eq!(
        tags,
        ["\"tag\"", "\"tag\""],
        "repeated fields stay repeated"
    );
    let auth = &head.headers[header::AUTHORIZATION];
    assert_eq!(auth, "Basic c2VjcmV0");
    assert!(auth.is_sensitive());
    for value in head.headers.values() {
        assert!(
            !within(value.as_bytes().as_ptr()),
            "{value:?} shares the buffer"
        );
    }
}
