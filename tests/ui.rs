//! The web UI: pages over real HTTP (escaping, the read gate, the session
//! cookie, `/` for browsers), and a real headless Chromium that searches,
//! opens a package, follows a dependency link and signs in to see a private
//! package whose description holds `<script>`.
//!
//! `HEXMIRROR_SCREENSHOTS=DIR` keeps the browser test's screenshots in DIR
//! (`docs/screenshots` holds the README's).

mod common;

use std::time::Duration;

use common::browser::Driver;
use common::tarballs::{Entry, hex_tarball, metadata};
use common::*;
use fantoccini::{Client, Locator};

/// The private repository of the site.
const REPO: &str = "acme";
/// The hosted package's description: upstream-style input that must stay text.
const HOSTILE: &str = "<script>alert('pwned')</script> in-house app";

/// A synced mirror of [`SPEC_SMALL`] hosting the private repository `acme`
/// with `acme_app` 1.0.0 published, serving; an admin key and a key that
/// may read `acme`.
struct Site {
    _upstream: TestUpstream,
    mirror: Mirror,
    served: Served,
    reader: String,
}

fn site() -> Site {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = Mirror::hosting(
        &upstream,
        &format!("name = \"{REPO}\"\nprivate = true\nreserved = [\"acme_*\"]"),
        "",
    );
    let admin = mirror.token(&["--admin", "--name", "admin", "--user", "alice"]);
    let reader = mirror.token(&[
        "--name",
        "reader",
        "--user",
        "rita",
        "--scope",
        "acme/*:read",
    ]);
    let served = mirror.serve();
    let meta = metadata("acme_app", "1.0.0").replace(
        "{<<\"description\">>,<<\"acme_app\">>}.",
        &format!(
            "{{<<\"description\">>,<<\"{HOSTILE}\">>}}.\n\
             {{<<\"links\">>,[{{<<\"Evil\">>,<<\"javascript:alert(1)\">>}},{{<<\"Home\">>,<<\"https://example.com/acme\">>}}]}}."
        ),
    );
    let (tarball, _) = hex_tarball(
        b"3",
        &meta,
        &[Entry::File("src/acme_app.erl", b"-module(acme_app).\n")],
    );
    let res = http_body(
        "POST",
        &format!("{}/api/repos/{REPO}/publish", served.url()),
        &[
            ("authorization", &admin),
            ("content-type", "application/octet-stream"),
            ("accept", "application/json"),
        ],
        tarball,
    );
    assert_eq!(
        res.status,
        201,
        "publish acme_app: {}",
        String::from_utf8_lossy(&res.body)
    );
    Site {
        _upstream: upstream,
        mirror,
        served,
        reader,
    }
}

/// The page's HTML, with the `/` that the templates escape in attributes
/// (`&#x2f;`) put back, so links read as written.
fn page(res: &HttpResponse) -> String {
    String::from_utf8_lossy(&res.body).replace("&#x2f;", "/")
}

fn get(url: &str, cookie: Option<&str>) -> HttpResponse {
    let mut headers = vec![("accept", "text/html")];
    if let Some(c) = cookie {
        headers.push(("cookie", c));
    }
    http("GET", url, &headers)
}

/// Signs in with `token` through the form; the `name=value` of the cookie.
fn sign_in(base: &str, token: &str) -> HttpResponse {
    let host = base.trim_start_matches("http://");
    http_body(
        "POST",
        &format!("{base}/ui/login"),
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("origin", &format!("http://{host}")),
        ],
        format!("token={token}").into_bytes(),
    )
}

#[test]
fn pages_escape_gate_private_packages_and_keep_the_key_out_of_the_browser() {
    let site = site();
    let base = site.served.url();

    // Browsers asking for `/` go to the UI; other clients get the tree's answer.
    let res = get(&format!("{base}/"), None);
    assert_eq!(res.status, 303);
    assert_eq!(res.header("location"), Some("/ui/"));
    assert_ne!(http("GET", &format!("{base}/"), &[]).status, 303);

    // The list: every mirrored package, with the security headers.
    let res = get(&format!("{base}/ui/"), None);
    assert_eq!(res.status, 200, "{}", page(&res));
    let csp = res.header("content-security-policy").unwrap_or("");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert_eq!(res.header("cache-control"), Some("no-store"));
    let body = page(&res);
    for name in ["alpha", "beta", "gamma", "delta"] {
        assert!(
            body.contains(&format!("/ui/packages/{name}\"")),
            "{name}: {body}"
        );
    }
    assert!(
        !body.contains("acme"),
        "a private repository shows before sign-in: {body}"
    );
    let body = page(&get(&format!("{base}/ui/?q=depends%3Aalpha"), None));
    assert!(body.contains("/ui/packages/beta\""), "{body}");
    assert!(!body.contains("/ui/packages/delta\""), "{body}");

    // The package page: a dependency link, a retired version, the checksum
    // clients check (the API's), and its dependents.
    let body = page(&get(&format!("{base}/ui/packages/beta"), None));
    assert!(body.contains("href=\"/ui/packages/alpha\""), "{body}");
    assert!(body.contains("retired: security"), "{body}");
    let api = http(
        "GET",
        &format!("{base}/api/repos/hexpm/packages/beta/releases/0.2.1"),
        &[("accept", "application/json")],
    );
    let release: serde_json::Value = serde_json::from_slice(&api.body).unwrap();
    let checksum = release["checksum"].as_str().unwrap();
    assert!(
        body.contains(checksum),
        "checksum {checksum} missing: {body}"
    );
    assert!(body.contains("{:beta, &quot;~&gt; 0.2.1&quot;}"), "{body}");
    let body = page(&get(&format!("{base}/ui/packages/alpha"), None));
    assert!(
        body.contains("class=\"dependent\" href=\"/ui/packages/beta\""),
        "{body}"
    );
    let res = get(&format!("{base}/ui/packages/beta/0.2.0"), None);
    assert!(page(&res).contains("use 0.2.1"), "{}", page(&res));
    let res = get(&format!("{base}/ui/packages/nosuch"), None);
    assert_eq!(res.status, 404);
    let res = get(&format!("{base}/ui/packages/..%2F..%2Fetc"), None);
    assert_eq!(res.status, 404);

    // The private package is not there without a key.
    let private = format!("{base}/ui/packages/acme_app?repo={REPO}");
    let res = get(&private, None);
    assert_eq!(res.status, 401, "{}", page(&res));
    assert!(!page(&res).contains("in-house"), "{}", page(&res));

    // A bad key, and a form posted from another site, open no session.
    let res = sign_in(&base, "hxm_nope_nope");
    assert_eq!(res.status, 401);
    assert!(res.header("set-cookie").is_none());
    let res = http_body(
        "POST",
        &format!("{base}/ui/login"),
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("origin", "http://evil.example"),
        ],
        format!("token={}", site.reader).into_bytes(),
    );
    assert_eq!(res.status, 403);
    assert!(res.header("set-cookie").is_none());

    // Signing in: an HttpOnly, SameSite cookie holding a session id, never the key.
    let res = sign_in(&base, &site.reader);
    assert_eq!(res.status, 303, "{}", page(&res));
    let set = res.header("set-cookie").unwrap().to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(set.contains("Path=/ui"), "{set}");
    // The secret is the token's last 43 characters; it may hold `_` itself
    // (base64url), so splitting on `_` could leave a fragment short enough
    // to turn up in the hex session id by chance.
    let secret = &site.reader[site.reader.len() - hexmirror::auth::token::SECRET_LEN..];
    assert!(!set.contains(secret), "the key is in the cookie: {set}");
    let cookie = set.split(';').next().unwrap().to_owned();

    // Signed in: the private repository and its package, the description as text.
    let body = page(&get(&format!("{base}/ui/"), Some(&cookie)));
    assert!(body.contains("?repo=acme"), "{body}");
    let res = get(&private, Some(&cookie));
    assert_eq!(res.status, 200, "{}", page(&res));
    let body = page(&res);
    assert!(!body.contains("<script>"), "unescaped: {body}");
    assert!(
        body.contains("&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt; in-house app"),
        "{body}"
    );
    assert!(body.contains("href=\"https://example.com/acme\""), "{body}");
    assert!(!body.contains("href=\"javascript:"), "{body}");
    assert!(body.contains("mix hex.repo add acme"), "{body}");
    assert!(body.contains("--fetch-public-key SHA256:"), "{body}");
    let body = page(&get(
        &format!("{base}/ui/?repo={REPO}&q=app"),
        Some(&cookie),
    ));
    assert!(body.contains("/ui/packages/acme_app?repo=acme"), "{body}");

    // The status page.
    let body = page(&get(&format!("{base}/ui/status"), Some(&cookie)));
    assert!(
        body.contains("Sync history") && body.contains("<td>ok</td>"),
        "{body}"
    );
    assert!(body.contains("quarantine-empty"), "{body}");
    assert!(
        body.contains("4 packages, 8 releases"),
        "the catalog's counts: {body}"
    );

    // Revoking the key ends its sessions; signing out ends the session.
    let out = site.mirror.run(&["token", "revoke", "reader"]);
    assert!(out.ok(), "{out}");
    let res = get(&private, Some(&cookie));
    assert_eq!(res.status, 401, "a revoked key still reads: {}", page(&res));
    let res = sign_in(&base, &site.reader);
    assert_eq!(res.status, 401, "{}", page(&res));
}

#[test]
fn signing_out_ends_the_session() {
    let site = site();
    let base = site.served.url();
    let res = sign_in(&base, &site.reader);
    let cookie = res
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let private = format!("{base}/ui/packages/acme_app?repo={REPO}");
    assert_eq!(get(&private, Some(&cookie)).status, 200);
    let res = http("POST", &format!("{base}/ui/logout"), &[("cookie", &cookie)]);
    assert_eq!(res.status, 303);
    assert!(res.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(get(&private, Some(&cookie)).status, 401);
}

/// Waits for `css` and returns its text.
async fn text(c: &Client, css: &str) -> String {
    let el = c
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"));
    el.text().await.expect("element text")
}

async fn click(c: &Client, css: &str) {
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

/// Saves a screenshot of the page as `name`.png (in `HEXMIRROR_SCREENSHOTS`,
/// or a temporary directory), and checks it is a PNG.
async fn screenshot(c: &Client, dir: &std::path::Path, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
}

#[test]
fn a_browser_searches_follows_a_dependency_and_signs_in_to_a_private_package() {
    let site = site();
    let base = site.served.url();
    let driver = Driver::start();
    let scratch = tempfile::TempDir::new().unwrap();
    let shots = std::env::var_os("HEXMIRROR_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| scratch.path().to_owned());
    std::fs::create_dir_all(&shots).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = driver.session().await;
        // `/` in a browser lands on the list.
        c.goto(&format!("{base}/")).await.unwrap();
        assert_eq!(c.current_url().await.unwrap().path(), "/ui/");
        screenshot(&c, &shots, "packages").await;

        // Search.
        c.find(Locator::Css("#search"))
            .await
            .unwrap()
            .send_keys("gamma")
            .await
            .unwrap();
        click(&c, "#search-button").await;
        wait_for_query(&c, "q=gamma").await;
        let found: Vec<String> = {
            let mut names = vec![];
            for el in c.find_all(Locator::Css("a.package-link")).await.unwrap() {
                names.push(el.text().await.unwrap());
            }
            names
        };
        assert_eq!(found, ["gamma"], "search for gamma");

        // Open beta from the list, then follow its dependency on alpha.
        c.goto(&format!("{base}/ui/")).await.unwrap();
        click(&c, "a.package-link[href='/ui/packages/beta']").await;
        assert_eq!(text(&c, "#package-name").await, "beta 0.2.1");
        screenshot(&c, &shots, "package").await;
        click(&c, "a.dependency[href='/ui/packages/alpha']").await;
        assert_eq!(text(&c, "#package-name").await, "alpha 1.1.0");
        assert_eq!(text(&c, "a.dependent").await, "beta");
        click(&c, "a.version-link[href='/ui/packages/alpha/1.0.0']").await;
        assert_eq!(text(&c, "#release-name").await, "alpha 1.0.0");
        screenshot(&c, &shots, "release").await;
        c.goto(&format!("{base}/ui/status")).await.unwrap();
        assert_eq!(text(&c, "#status").await, "ok");
        screenshot(&c, &shots, "status").await;

        // The private package needs a session.
        let private = format!("{base}/ui/packages/acme_app?repo={REPO}");
        c.goto(&private).await.unwrap();
        assert!(text(&c, "#error-message").await.contains("API key"));
        click(&c, "#sign-in").await;
        c.find(Locator::Css("#token"))
            .await
            .unwrap()
            .send_keys(&site.reader)
            .await
            .unwrap();
        click(&c, "#login-button").await;
        c.wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css("#sign-out"))
            .await
            .unwrap();
        // HttpOnly: page scripts cannot read the session.
        let cookies = c.execute("return document.cookie", vec![]).await.unwrap();
        assert_eq!(cookies, serde_json::json!(""));
        c.goto(&private).await.unwrap();
        assert_eq!(text(&c, "#description").await, HOSTILE);
        screenshot(&c, &shots, "private-package").await;
        // The description's script did not run: no alert is open.
        assert!(c.get_alert_text().await.is_err(), "an alert opened");

        click(&c, "#sign-out").await;
        c.wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css("#sign-in"))
            .await
            .unwrap();
        c.goto(&private).await.unwrap();
        assert!(text(&c, "#error-message").await.contains("API key"));
        c.close().await.unwrap();
    });
}

/// Waits until the page's URL carries `query`.
async fn wait_for_query(c: &Client, query: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let url = c.current_url().await.unwrap();
        if url.query() == Some(query) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still at {url}, waiting for ?{query}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
