//! The catalog and the read API over mirrored packages: stock mix's
//! `hex.info` and `hex.package search`, and hex_core's package, release
//! and search calls, against a mirror that hosts nothing of its own, with
//! the catalog filled by a sync and by `hexmirror catalog rebuild`.

mod common;

use common::mix::MixClient;
use common::*;

/// A synced pure mirror of [`SPEC_SMALL`], serving.
fn mirror() -> (TestUpstream, Mirror, Served) {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = Mirror::new(&upstream, "");
    mirror.sync_ok();
    let served = mirror.serve();
    (upstream, mirror, served)
}

#[test]
fn stock_mix_shows_and_searches_mirrored_packages() {
    require_tool("mix");
    let (_upstream, _mirror, served) = mirror();
    let api = format!("{}/api", served.url());
    let env = [("HEX_API_URL", api.as_str())];
    let mix = MixClient::new("client", "0.1.0");

    let out = mix.run_ok(&["hex.info", "beta"], &env);
    assert!(out.contains("hexmirror test package beta"), "{out}");
    assert!(out.contains(r#"Config: {:beta, "~> 0.2.1"}"#), "{out}");
    assert!(out.contains("Apache-2.0"), "{out}");
    assert!(out.contains("0.2.0 (retired)"), "{out}");
    assert!(out.contains("Licenses: Apache-2.0"), "{out}");

    let out = mix.run_ok(&["hex.info", "beta", "0.2.1"], &env);
    assert!(out.contains("alpha ~> 1.1"), "{out}");
    assert!(out.contains("gamma >= 0.0.0 (optional)"), "{out}");

    let out = mix.run_ok(&["hex.info", "beta", "0.2.0"], &env);
    assert!(
        out.contains("retired") && out.contains("use 0.2.1"),
        "{out}"
    );

    let out = mix.run_ok(&["hex.package", "search", "gamma"], &env);
    assert!(out.contains("gamma") && out.contains("3.0.0"), "{out}");
    assert!(!out.contains("alpha"), "{out}");
    // Free text matches descriptions too: every package is a "test package".
    let out = mix.run_ok(&["hex.package", "search", "package"], &env);
    for name in ["alpha", "beta", "delta", "gamma"] {
        assert!(out.contains(name), "{name}: {out}");
    }

    let run = mix.run(&["hex.info", "nosuch"], &env);
    assert!(
        run.output.contains("No package with name nosuch"),
        "{}",
        run.output
    );
}

#[test]
fn hex_core_reads_packages_releases_and_searches_with_hex_pm_syntax() {
    let (_upstream, mirror, served) = mirror();
    let api = format!("{}/api", served.url());
    let (status, body) = Oracle::api(&api, "", &["get-package", "alpha"]);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("<<\"latest_stable_version\">> => <<\"1.1.0\">>"),
        "{body}"
    );
    assert!(
        body.contains("<<\"latest_version\">> => <<\"2.0.0-rc.1\">>"),
        "{body}"
    );
    let (status, body) = Oracle::api(&api, "", &["get-release", "beta", "0.2.1"]);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("<<\"rebar3\">>"),
        "build tools from the tarball: {body}"
    );
    let (status, body) = Oracle::api(&api, "", &["search", "depends:alpha"]);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("<<\"beta\">>") && !body.contains("<<\"gamma\">>"),
        "{body}"
    );
    // The same under the upstream's repository name, as `mix hex.package
    // fetch` asks for it.
    let (status, body) = Oracle::api(&format!("{api}/repos/hexpm"), "", &["get-package", "gamma"]);
    assert_eq!(status, 200, "{body}");

    // The catalog is derived: thrown away, rebuilt from the tree, the same.
    let before = http("GET", &format!("{api}/packages/beta"), &[]);
    drop(served);
    for file in ["catalog.db", "catalog.db-wal", "catalog.db-shm"] {
        let _ = std::fs::remove_file(mirror.data_dir().join(file));
    }
    let _ = std::fs::remove_file(mirror.data_dir().join("catalog.db-wal"));
    let _ = std::fs::remove_file(mirror.data_dir().join("catalog.db-shm"));
    let out = mirror.run(&["catalog", "rebuild"]);
    assert!(out.ok() && out.stdout.contains("4 packages"), "{out}");
    let served = mirror.serve();
    let after = http("GET", &format!("{}/api/packages/beta", served.url()), &[]);
    let strip = |b: &[u8]| {
        let mut v: serde_json::Value = serde_json::from_slice(b).unwrap();
        // Local facts: when this mirror first saw it, and its address.
        v["hexmirror"].as_object_mut().unwrap().remove("first_seen");
        v.as_object_mut().unwrap().remove("url");
        v.as_object_mut().unwrap().remove("html_url");
        for r in v["releases"].as_array_mut().unwrap() {
            r.as_object_mut().unwrap().remove("url");
        }
        v
    };
    assert_eq!(strip(&before.body), strip(&after.body));
}

#[test]
fn a_sync_keeps_the_catalog_in_step_with_the_tree() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = Mirror::new(&upstream, "");
    mirror.sync_ok();
    rebuild_upstream(
        &upstream,
        &SPEC_SMALL
            .replace("{\"delta\", \"1.0.0\", [], []}.\n", "")
            .replace(
                "{\"gamma\", \"3.0.0\", [], []}.",
                "{\"gamma\", \"3.0.0\", [], []}.\n{\"gamma\", \"3.1.0\", [], []}.",
            ),
    );
    mirror.sync_ok();
    let served = mirror.serve();
    let api = format!("{}/api", served.url());
    let gamma: serde_json::Value =
        serde_json::from_slice(&http("GET", &format!("{api}/packages/gamma"), &[]).body).unwrap();
    assert_eq!(gamma["latest_version"], "3.1.0", "{gamma}");
    assert_eq!(
        gamma["meta"]["description"], "hexmirror test package gamma",
        "{gamma}"
    );
    let delta = http("GET", &format!("{api}/packages/delta"), &[]);
    assert_eq!(
        delta.status, 404,
        "a package that left the mirror leaves the catalog"
    );
    let all: serde_json::Value =
        serde_json::from_slice(&http("GET", &format!("{api}/packages"), &[]).body).unwrap();
    let names: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "beta", "gamma"]);
}

#[test]
fn what_the_proxy_fetches_the_catalog_shows() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = Mirror::new(&upstream, "\n[proxy]\nenabled = true\n");
    let served = mirror.serve();
    let url = served.url();
    assert_eq!(
        http("GET", &format!("{url}/api/packages/beta"), &[]).status,
        404
    );
    assert_eq!(
        http("GET", &format!("{url}/packages/beta"), &[]).status,
        200
    );
    let beta: serde_json::Value =
        serde_json::from_slice(&http("GET", &format!("{url}/api/packages/beta"), &[]).body)
            .unwrap();
    assert_eq!(beta["latest_version"], "0.2.1", "{beta}");
    assert_eq!(
        beta["hexmirror"]["metadata_held"], false,
        "no tarball fetched yet: {beta}"
    );
    assert_eq!(
        http("GET", &format!("{url}/tarballs/beta-0.2.1.tar"), &[]).status,
        200
    );
    let beta: serde_json::Value =
        serde_json::from_slice(&http("GET", &format!("{url}/api/packages/beta"), &[]).body)
            .unwrap();
    assert_eq!(
        beta["meta"]["description"], "hexmirror test package beta",
        "{beta}"
    );
}

#[test]
fn dependents_and_repositories_show_only_what_the_caller_may_know() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = Mirror::hosting(
        &upstream,
        "name = \"secret\"\nprivate = true\npackages = [\"beta\"]",
        "",
    );
    let token = mirror.token(&["--admin", "--name", "ci"]);
    let served = mirror.serve();
    let url = served.url();
    let json = |path: &str, auth: &[(&str, &str)]| {
        let got = http("GET", &format!("{url}{path}"), auth);
        (
            got.status,
            serde_json::from_slice::<serde_json::Value>(&got.body).unwrap(),
        )
    };
    let (status, body) = json("/api/repos/hexpm/packages/alpha/dependents", &[]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], 1, "{body}");
    assert_eq!(body["items"][0]["package"], "beta", "{body}");
    assert_eq!(
        body["items"][0]["versions"],
        serde_json::json!(["0.2.1", "0.2.0", "0.1.0"])
    );
    let (_, body) = json(
        "/api/repos/hexpm/packages/alpha/dependents?versions_per_package_limit=1",
        &[],
    );
    assert_eq!(
        body["items"][0]["versions"],
        serde_json::json!(["0.2.1"]),
        "{body}"
    );
    assert_eq!(body["items"][0]["total_versions"], 3, "{body}");
    let (status, body) = json("/api/repos/hexpm/packages/alpha/dependents?limit=0", &[]);
    assert_eq!(status, 400, "{body}");
    let (_, body) = json("/api/repos/hexpm/packages/delta/dependents", &[]);
    assert_eq!(body["total"], 0, "{body}");

    // The private repository is not listed, nor readable, without a key.
    let (_, body) = json("/api/repos", &[]);
    let names: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hexpm"], "{body}");
    assert_eq!(json("/api/repos/secret", &[]).0, 404);
    assert_eq!(
        json("/api/repos/secret/packages/alpha/dependents", &[]).0,
        401
    );
    // Regression: an unknown name answered 404 where the private one
    // answered 401, which told which private names exist. Both are
    // refused alike now, in the API and in the served tree.
    for path in [
        "/api/repos/{}/packages/alpha/dependents",
        "/api/repos/{}/packages",
        "/repos/{}/names",
        "/repos/{}/packages/alpha",
    ] {
        let secret = http(
            "GET",
            &format!("{url}{}", path.replace("{}", "secret")),
            &[],
        );
        let nosuch = http(
            "GET",
            &format!("{url}{}", path.replace("{}", "nosuch")),
            &[],
        );
        assert_eq!((secret.status, nosuch.status), (401, 401), "{path}");
        assert_eq!(
            String::from_utf8_lossy(&secret.body).replace("secret", "NAME"),
            String::from_utf8_lossy(&nosuch.body).replace("nosuch", "NAME"),
            "{path}"
        );
    }
    let auth = [("authorization", token.as_str())];
    let (_, body) = json("/api/repos", &auth);
    let names: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hexpm", "secret"], "{body}");
    let (status, body) = json("/api/repos/secret", &auth);
    assert_eq!(
        (status, body["public"].clone()),
        (200, serde_json::json!(false)),
        "{body}"
    );
    // Its curated view serves beta's closure, alpha included.
    let (status, body) = json("/api/repos/secret/packages/alpha", &auth);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["repository"], "secret", "{body}");
    // A version-limited key sees only the releases it may read.
    let limited = mirror.token(&["--name", "old", "--scope", "secret/alpha:read:< 1.1.0"]);
    let auth = [("authorization", limited.as_str())];
    let (status, body) = json("/api/repos/secret/packages/alpha", &auth);
    assert_eq!(status, 200, "{body}");
    let versions: Vec<&str> = body["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["1.0.0"], "{body}");
    assert_eq!(
        json("/api/repos/secret/packages/alpha/releases/1.1.0", &auth).0,
        404
    );
}

#[test]
fn the_read_gateway_answers_in_its_envelope() {
    let (_upstream, _mirror, served) = mirror();
    let get = |path: &str| {
        let got = http("GET", &format!("{}{path}", served.url()), &[]);
        let body: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
        (got.status, body)
    };
    let (status, body) = get("/v1/package?name=beta");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["success"].clone(), body["status"].clone()),
        (true.into(), "ok".into())
    );
    assert_eq!(
        body["meta"]["request_id"].as_str().unwrap().len(),
        32,
        "{body}"
    );
    let p = &body["data"]["package"];
    assert_eq!(p["latest_stable_version"], "0.2.1", "{body}");
    assert_eq!(p["version_count"], 3, "{body}");
    assert_eq!(p["description"], "hexmirror test package beta", "{body}");
    assert_eq!(p["downloads"]["all"], 0, "counted here, none yet: {body}");

    let (_, body) = get("/v1/releases?name=alpha&limit=2");
    let d = &body["data"];
    assert_eq!(
        (d["count"].clone(), d["total"].clone()),
        (2.into(), 3.into()),
        "{body}"
    );
    assert_eq!(d["latest"], "2.0.0-rc.1", "{body}");
    assert_eq!(d["releases"][1]["version"], "1.1.0", "{body}");

    let (_, body) = get("/v1/release?name=beta&version=0.2.1");
    let r = &body["data"]["release"];
    assert_eq!(r["build_tools"], serde_json::json!(["rebar3"]), "{body}");
    let deps: Vec<(String, bool)> = r["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap().to_owned(),
                d["optional"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        deps,
        [("alpha".to_owned(), false), ("gamma".to_owned(), true)],
        "{body}"
    );

    let (_, body) = get("/v1/search?q=package&limit=2&page=2");
    let names: Vec<&str> = body["data"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["delta", "gamma"], "page 2 of 2 by name: {body}");
    let (_, body) = get("/v1/meta");
    assert_eq!(
        body["data"]["endpoints"].as_array().unwrap().len(),
        5,
        "{body}"
    );

    let (status, body) = get("/v1/package");
    assert_eq!(
        (status, body["success"].clone()),
        (400, false.into()),
        "{body}"
    );
    let (status, _) = get("/v1/package?name=nosuch");
    assert_eq!(status, 404);
    let (status, _) = get("/v1/releases?name=alpha&limit=0");
    assert_eq!(status, 400);
    // Regression: a long search was a 500 (SQLite's LIKE pattern limit).
    let long = "a".repeat(60_000);
    let (status, body) = get(&format!("/v1/search?q={long}"));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("search"),
        "{body}"
    );
    let got = http(
        "GET",
        &format!("{}/api/packages?search={long}", served.url()),
        &[("accept", "application/json")],
    );
    assert_eq!(got.status, 400, "{}", String::from_utf8_lossy(&got.body));
    let words = "ab ".repeat(1000);
    let (status, _) = get(&format!("/v1/search?q={}", words.replace(' ', "+")));
    assert_eq!(status, 400);
}

#[test]
fn served_tarballs_count_as_downloads_and_sort_the_search() {
    let (_upstream, mirror, served) = mirror();
    let url = served.url();
    let tarball = format!("{url}/tarballs/beta-0.2.1.tar");
    let first = http("GET", &tarball, &[]);
    assert_eq!(first.status, 200);
    for _ in 0..2 {
        assert_eq!(http("GET", &tarball, &[]).status, 200);
    }
    // Neither a HEAD nor a 304 is a download.
    assert_eq!(http("HEAD", &tarball, &[]).status, 200);
    let etag = first.header("etag").unwrap().to_owned();
    assert_eq!(
        http("GET", &tarball, &[("if-none-match", etag.as_str())]).status,
        304
    );
    assert_eq!(
        http("GET", &format!("{url}/tarballs/gamma-3.0.0.tar"), &[]).status,
        200
    );
    // Counts are written in batches, and at shutdown.
    served.stop();
    let served = mirror.serve();
    let url = served.url();
    let json = |path: &str| -> serde_json::Value {
        serde_json::from_slice(&http("GET", &format!("{url}{path}"), &[]).body).unwrap()
    };
    let beta = json("/api/packages/beta");
    assert_eq!(beta["downloads"]["all"], 3, "{beta}");
    assert_eq!(beta["downloads"]["day"], 3, "{beta}");
    assert_eq!(json("/api/packages/beta/releases/0.2.1")["downloads"], 3);
    assert_eq!(json("/api/packages/beta/releases/0.2.0")["downloads"], 0);
    let sorted = json("/api/packages?sort=downloads");
    let names: Vec<&str> = sorted
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["beta", "gamma", "alpha", "delta"], "{sorted}");
    assert_eq!(
        json("/v1/package?name=beta")["data"]["package"]["downloads"]["all"],
        3
    );
    let stats = json("/api/stats");
    assert_eq!(stats["packages"], 4, "{stats}");
    assert_eq!(stats["releases"], 8, "{stats}");
    assert_eq!(
        stats["most_downloaded"][0],
        serde_json::json!({"name": "beta", "downloads": 3}),
        "{stats}"
    );
    assert_eq!(stats["newest"].as_array().unwrap().len(), 8, "{stats}");
    assert_eq!(stats["sync"]["lag_secs"], 0, "{stats}");

    // A tree served by nginx: its access log, imported once however often.
    let log = mirror.data_dir().join("access.log");
    std::fs::write(
        &log,
        "10.0.0.1 - - [04/Dec/2026:10:00:00 +0000] \"GET /tarballs/alpha-1.1.0.tar HTTP/1.1\" 200 10 \"-\" \"rebar3\"\n\
         10.0.0.1 - - [04/Dec/2026:10:00:01 +0000] \"GET /tarballs/alpha-1.1.0.tar HTTP/1.1\" 200 10 \"-\" \"rebar3\"\n\
         10.0.0.1 - - [04/Dec/2026:10:00:02 +0000] \"GET /packages/alpha HTTP/1.1\" 200 10 \"-\" \"rebar3\"\n",
    )
    .unwrap();
    let out = mirror.run(&["downloads", "import", log.to_str().unwrap()]);
    assert!(
        out.ok() && out.stdout.contains("2 tarball downloads counted"),
        "{out}"
    );
    let out = mirror.run(&["downloads", "import", log.to_str().unwrap()]);
    assert!(
        out.stdout
            .contains("0 tarball downloads counted, 2 already counted"),
        "{out}"
    );
    assert_eq!(json("/api/packages/alpha")["downloads"]["all"], 2);
}

/// GETs `path` as JSON with `token` (or none); the status and body.
fn api_get(url: &str, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut headers = vec![("accept", "application/json")];
    if let Some(t) = token {
        headers.push(("authorization", t));
    }
    let res = http("GET", &format!("{url}{path}"), &headers);
    let body = serde_json::from_slice(&res.body).unwrap_or(serde_json::Value::Null);
    (res.status, body)
}

fn names_of(list: &serde_json::Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_private_repository_searches_its_hosted_and_curated_packages_and_lists_dependents() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = Mirror::hosting(
        &upstream,
        "name = \"acme\"\nprivate = true\npackages = [\"beta\"]\nreserved = [\"acme_*\"]\n\
         deny = [\"beta < 0.2.1\"]",
        "",
    );
    let admin = mirror.token(&["--admin"]);
    let lib_only = mirror.token(&["--name", "lib", "--scope", "acme/acme_lib:read"]);
    let served = mirror.serve();
    let url = served.url();
    let api = format!("{url}/api/repos/acme");
    let work = tempfile::TempDir::new().unwrap();
    for (name, deps) in [
        ("acme_lib", vec![]),
        ("acme_app", vec![("acme_lib", "~> 1.0")]),
    ] {
        let path = work.path().join(format!("{name}-1.0.0.tar"));
        Oracle::tarball(name, "1.0.0", &path, &deps);
        let (status, body) = Oracle::api(&api, &admin, &["publish", path.to_str().unwrap()]);
        assert_eq!(status, 201, "publish {name}: {body}");
    }

    // Hosted packages and the mirror's packages the curated tree serves
    // (beta and its closure), not the rest of the mirror.
    let (status, all) = api_get(&url, "/api/repos/acme/packages", Some(&admin));
    assert_eq!(status, 200, "{all}");
    let names = names_of(&all);
    for name in ["acme_app", "acme_lib", "alpha", "beta"] {
        assert!(names.contains(&name.to_owned()), "{name}: {names:?}");
    }
    assert!(!names.contains(&"delta".to_owned()), "{names:?}");
    let hosted = all
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "acme_app")
        .unwrap();
    assert_eq!(hosted["repository"], "acme", "{hosted}");
    // hex.pm's syntax over hosted packages.
    let (_, found) = api_get(
        &url,
        "/api/repos/acme/packages?search=depends:acme_lib",
        Some(&admin),
    );
    assert_eq!(names_of(&found), ["acme_app"]);
    let (_, found) = api_get(
        &url,
        "/api/repos/acme/packages?search=name:acme_*",
        Some(&admin),
    );
    assert_eq!(names_of(&found), ["acme_app", "acme_lib"]);
    // Dependents of a hosted package, and of a mirrored one served here.
    let (status, deps) = api_get(
        &url,
        "/api/repos/acme/packages/acme_lib/dependents",
        Some(&admin),
    );
    assert_eq!(status, 200, "{deps}");
    assert_eq!(deps["total"], 1, "{deps}");
    assert_eq!(deps["items"][0]["package"], "acme_app", "{deps}");
    let (_, deps) = api_get(
        &url,
        "/api/repos/acme/packages/alpha/dependents",
        Some(&admin),
    );
    assert_eq!(deps["items"][0]["package"], "beta", "{deps}");

    // The repository's view: what its curation serves, not all the mirror has.
    let (_, beta) = api_get(&url, "/api/repos/acme/packages/beta", Some(&admin));
    let versions: Vec<&str> = beta["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["0.2.1"], "{beta}");
    let (_, found) = api_get(
        &url,
        "/api/repos/acme/packages?search=name:beta",
        Some(&admin),
    );
    assert_eq!(found[0]["releases"].as_array().unwrap().len(), 1, "{found}");

    // Nothing of it without a key; a key limited to acme_lib learns of no other.
    assert_eq!(api_get(&url, "/api/repos/acme/packages", None).0, 401);
    assert_eq!(
        api_get(&url, "/api/repos/acme/packages/acme_lib/dependents", None).0,
        401
    );
    let (status, deps) = api_get(
        &url,
        "/api/repos/acme/packages/acme_lib/dependents",
        Some(&lib_only),
    );
    assert_eq!(status, 200, "{deps}");
    assert_eq!(
        deps["total"], 0,
        "a package-limited key sees another: {deps}"
    );
    // The mirror's own listing does not show hosted packages.
    let (_, mirror_list) = api_get(&url, "/api/repos/hexpm/packages?search=acme", None);
    assert_eq!(names_of(&mirror_list), Vec::<String>::new());

    // The catalog follows a revert, and a rebuild keeps hosted packages.
    let (status, body) = Oracle::api(&api, &admin, &["revert", "acme_app", "1.0.0"]);
    assert!((200..300).contains(&status), "revert: {body}");
    let (_, deps) = api_get(
        &url,
        "/api/repos/acme/packages/acme_lib/dependents",
        Some(&admin),
    );
    assert_eq!(deps["total"], 0, "{deps}");
    let out = mirror.run(&["catalog", "rebuild"]);
    assert!(
        out.ok() && out.stdout.contains("1 hosted packages"),
        "{out}"
    );
    let (_, found) = api_get(
        &url,
        "/api/repos/acme/packages?search=name:acme_*",
        Some(&admin),
    );
    assert_eq!(names_of(&found), ["acme_lib"]);
}

#[test]
fn a_private_repository_named_as_the_upstream_keeps_its_packages_out_of_the_mirrors_answers() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    // No name: `hexpm`, which is the upstream's name too. `delta` is
    // reserved, so ours replaces the upstream's in this repository.
    let mirror = Mirror::hosting(
        &upstream,
        "private = true\npackages = [\"beta\"]\nreserved = [\"delta\", \"inhouse\"]",
        "",
    );
    let admin = mirror.token(&["--admin"]);
    let served = mirror.serve();
    let url = served.url();
    let api = format!("{url}/api/repos/hexpm");
    let work = tempfile::TempDir::new().unwrap();
    for (name, version) in [("inhouse", "1.0.0"), ("delta", "9.0.0")] {
        let path = work.path().join(format!("{name}-{version}.tar"));
        Oracle::tarball(name, version, &path, &[]);
        let (status, body) = Oracle::api(&api, &admin, &["publish", path.to_str().unwrap()]);
        assert_eq!(status, 201, "publish {name}: {body}");
    }
    let check = |url: &str| {
        // The mirror's answers (the gateway reads the upstream's mirror) know
        // nothing of the private packages.
        let (status, body) = api_get(url, "/v1/search?q=inhouse", None);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["results"], serde_json::json!([]), "{body}");
        assert_eq!(api_get(url, "/v1/package?name=inhouse", None).0, 404);
        let (status, body) = api_get(url, "/v1/package?name=delta", None);
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["data"]["package"]["latest_version"], "1.0.0",
            "the upstream's delta: {body}"
        );
        // The private repository: nothing without a key; with one, its
        // hosted packages, and delta once, as published here.
        assert_eq!(api_get(url, "/api/repos/hexpm/packages", None).0, 401);
        let (status, all) = api_get(url, "/api/repos/hexpm/packages", Some(&admin));
        assert_eq!(status, 200, "{all}");
        let names = names_of(&all);
        assert_eq!(
            names,
            ["alpha", "beta", "delta", "gamma", "inhouse"],
            "{all}"
        );
        let delta = &all[2];
        let versions: Vec<&str> = delta["releases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["version"].as_str().unwrap())
            .collect();
        assert_eq!(versions, ["9.0.0"], "{delta}");
    };
    check(&url);
    // A rebuild keeps the two apart too.
    let out = mirror.run(&["catalog", "rebuild"]);
    assert!(out.ok(), "{out}");
    check(&url);
    // So does `serve` filling a catalog that lost its file, at start.
    drop(served);
    for file in ["catalog.db", "catalog.db-wal", "catalog.db-shm"] {
        let _ = std::fs::remove_file(mirror.data_dir().join(file));
    }
    let served = mirror.serve();
    check(&served.url());
}
