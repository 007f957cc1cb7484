//! Organizations: private repositories of ours held in the state database,
//! with members and roles, organization keys, and the OAuth exchange stock
//! Hex does before fetching from one (`client_credentials`). Shown with the
//! stock Hex 2.5.1 client (`mix hex.organization key ... generate`, `mix
//! hex.organization auth`, `mix deps.get` of an organization's package) and
//! over HTTP for every role.

mod common;

use std::fs;

use common::mix::MixClient;
use common::*;
use serde_json::{Value, json};

const ORG: &str = "team";

/// A synced mirror with users alice (admin of `team`) and bob (no
/// member), each with a token that acts through their memberships, and a
/// server admin token.
struct Setup {
    _upstream: TestUpstream,
    mirror: Mirror,
    admin: String,
    alice: String,
    bob: String,
}

fn setup() -> Setup {
    setup_with("name = \"acme\"\npackages = [\"beta\"]")
}

/// [`setup`] with `repository` as the configured `[[repository]]`.
fn setup_with(repository: &str) -> Setup {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = Mirror::hosting(&upstream, repository, "");
    for args in [
        &["user", "create", "alice"][..],
        &["user", "create", "bob"],
        &["org", "create", ORG, "--admin", "alice"],
    ] {
        let out = mirror.run(args);
        assert!(out.ok(), "{args:?}: {out}");
    }
    let admin = mirror.token(&["--admin", "--name", "root", "--user", "root"]);
    let alice = mirror.token(&[
        "--name",
        "alice",
        "--user",
        "alice",
        "--scope",
        "@member/*:admin",
    ]);
    let bob = mirror.token(&[
        "--name",
        "bob",
        "--user",
        "bob",
        "--scope",
        "@member/*:admin",
    ]);
    Setup {
        _upstream: upstream,
        mirror,
        admin,
        alice,
        bob,
    }
}

fn call(url: &str, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let mut headers = vec![
        ("accept", "application/json"),
        ("content-type", "application/json"),
    ];
    if !token.is_empty() {
        headers.push(("authorization", token));
    }
    let res = http_body(
        method,
        &format!("{url}{path}"),
        &headers,
        body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
    );
    let value = serde_json::from_slice(&res.body).unwrap_or(Value::Null);
    (res.status, value)
}

/// Starts the OAuth device flow for `scope`: the device authorization.
fn start_device(url: &str, scope: &str) -> Value {
    let (status, dev) = call(
        url,
        "POST",
        "/api/oauth/device_authorization",
        "",
        Some(json!({"client_id": "x", "scope": scope})),
    );
    assert_eq!(status, 200, "{dev}");
    dev
}

fn publish(url: &str, token: &str, name: &str, version: &str) -> (u16, String) {
    let work = tempfile::TempDir::new().unwrap();
    let path = work.path().join(format!("{name}-{version}.tar"));
    Oracle::tarball(name, version, &path, &[]);
    Oracle::api(
        &format!("{url}/api/repos/{ORG}"),
        token,
        &["publish", &path.to_string_lossy()],
    )
}

#[test]
fn members_roles_and_keys_decide_who_reads_and_writes_an_organization() {
    let s = setup();
    let served = s.mirror.serve();
    let url = served.url();
    let (status, body) = publish(&url, &s.alice, "team_lib", "1.0.0");
    assert_eq!(status, 201, "{body}");

    // bob is no member: the organization does not exist for him.
    assert_eq!(call(&url, "GET", "/api/orgs/team", &s.bob, None).0, 404);
    assert_eq!(call(&url, "GET", "/api/orgs", &s.bob, None).1, json!([]));
    assert_eq!(
        http(
            "GET",
            &format!("{url}/repos/team/names"),
            &[("authorization", &s.bob)]
        )
        .status,
        403
    );
    let (status, _) = publish(&url, &s.bob, "team_other", "1.0.0");
    assert_eq!(status, 403);
    // Publishing to a name that is no repository answers the same, so
    // publish does not tell which organizations exist.
    let work = tempfile::TempDir::new().unwrap();
    let path = work.path().join("x-1.0.0.tar");
    Oracle::tarball("x", "1.0.0", &path, &[]);
    let (status, _) = Oracle::api(
        &format!("{url}/api/repos/nosuch"),
        &s.bob,
        &["publish", &path.to_string_lossy()],
    );
    assert_eq!(status, 403);
    // Only an admin manages members.
    let add_bob = json!({"name": "bob", "role": "read"});
    assert_eq!(
        call(
            &url,
            "POST",
            "/api/orgs/team/members",
            &s.bob,
            Some(add_bob.clone())
        )
        .0,
        404
    );
    let (status, body) = call(
        &url,
        "POST",
        "/api/orgs/team/members",
        &s.alice,
        Some(add_bob),
    );
    assert_eq!(
        (status, body["role"].clone()),
        (200, json!("read")),
        "{body}"
    );

    // A read member reads, and is refused writes with a message that says why.
    assert_eq!(
        http(
            "GET",
            &format!("{url}/repos/team/names"),
            &[("authorization", &s.bob)]
        )
        .status,
        200
    );
    let (_, orgs) = call(&url, "GET", "/api/orgs", &s.bob, None);
    assert_eq!(orgs[0]["name"], ORG, "{orgs}");
    let (status, body) = publish(&url, &s.bob, "team_other", "1.0.0");
    assert_eq!(status, 403, "{body}");
    let (status, body) = call(
        &url,
        "POST",
        "/api/orgs/team/keys",
        &s.bob,
        Some(json!({"name": "k"})),
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("write role"),
        "{body}"
    );
    let (_, members) = call(&url, "GET", "/api/orgs/team/members", &s.bob, None);
    assert_eq!(
        members,
        json!([
            {"username": "alice", "role": "admin", "url": format!("{url}/api/users/alice"),
             "inserted_at": members[0]["inserted_at"], "updated_at": members[0]["updated_at"]},
            {"username": "bob", "role": "read", "url": format!("{url}/api/users/bob"),
             "inserted_at": members[1]["inserted_at"], "updated_at": members[1]["updated_at"]},
        ])
    );

    // An organization key, shown once, reads the organization only.
    let (status, key) = call(
        &url,
        "POST",
        "/api/orgs/team/keys",
        &s.alice,
        Some(json!({"name": "ci"})),
    );
    assert_eq!(status, 201, "{key}");
    let secret = key["secret"].as_str().unwrap().to_owned();
    assert_eq!(
        key["permissions"],
        json!([{"domain": "repository", "resource": "team"}]),
        "{key}"
    );
    assert_eq!(
        http(
            "GET",
            &format!("{url}/repos/team/names"),
            &[("authorization", &secret)]
        )
        .status,
        200
    );
    assert_eq!(
        publish(&url, &secret, "team_other", "1.0.0").0,
        403,
        "a read key publishes"
    );
    let (_, keys) = call(&url, "GET", "/api/orgs/team/keys", &s.alice, None);
    assert!(keys[0]["secret"].is_null(), "{keys}");

    // The OAuth exchange: a short-lived token that reads as the key does.
    let form = json!({"grant_type": "client_credentials", "client_secret": secret, "scope": "repositories"});
    let (status, tok) = call(&url, "POST", "/api/oauth/token", "", Some(form));
    assert_eq!(status, 200, "{tok}");
    assert_eq!(
        (tok["token_type"].clone(), tok["scope"].clone()),
        (json!("bearer"), json!("repositories"))
    );
    assert!(tok["expires_in"].as_i64().unwrap() <= 3600, "{tok}");
    let bearer = format!("Bearer {}", tok["access_token"].as_str().unwrap());
    assert_eq!(
        http(
            "GET",
            &format!("{url}/repos/team/packages/team_lib"),
            &[("authorization", &bearer)]
        )
        .status,
        200
    );
    // Revoking the key ends its access token at once.
    assert_eq!(
        call(&url, "DELETE", "/api/orgs/team/keys/ci", &s.alice, None).0,
        200
    );
    assert_eq!(
        http(
            "GET",
            &format!("{url}/repos/team/names"),
            &[("authorization", &bearer)]
        )
        .status,
        401
    );
    let bad = json!({"grant_type": "client_credentials", "client_secret": "nope"});
    assert_eq!(call(&url, "POST", "/api/oauth/token", "", Some(bad)).0, 401);
    let grant = json!({"grant_type": "password"});
    assert_eq!(
        call(&url, "POST", "/api/oauth/token", "", Some(grant)).1["error"],
        "unsupported_grant_type"
    );

    // A key bob makes (POST /api/keys) acts through his memberships too.
    let (status, child) = call(
        &url,
        "POST",
        "/api/keys",
        &s.bob,
        Some(json!({"name": "bob-ci"})),
    );
    assert_eq!(status, 201, "{child}");
    let child = child["secret"].as_str().unwrap().to_owned();
    let names = format!("{url}/repos/team/names");
    assert_eq!(
        http("GET", &names, &[("authorization", &child)]).status,
        200
    );
    // Removing a member takes effect on the next request, for the keys he
    // made too.
    assert_eq!(
        call(&url, "DELETE", "/api/orgs/team/members/bob", &s.alice, None).0,
        204
    );
    assert_eq!(
        http("GET", &names, &[("authorization", &child)]).status,
        403
    );
    assert_eq!(
        http(
            "GET",
            &format!("{url}/repos/team/names"),
            &[("authorization", &s.bob)]
        )
        .status,
        403
    );
    // The last admin stays.
    let (status, body) = call(
        &url,
        "DELETE",
        "/api/orgs/team/members/alice",
        &s.alice,
        None,
    );
    assert_eq!(status, 422, "{body}");

    // Creating and deleting organizations is a server admin's; a new one
    // is served at once, and one with packages cannot be deleted.
    let new = json!({"name": "other", "admin": "bob"});
    assert_eq!(
        call(&url, "POST", "/api/orgs", &s.alice, Some(new.clone())).0,
        403
    );
    let (status, body) = call(&url, "POST", "/api/orgs", &s.admin, Some(new));
    assert_eq!(status, 201, "{body}");
    let (status, _) = call(
        &url,
        "POST",
        "/api/orgs",
        &s.admin,
        Some(json!({"name": "acme"})),
    );
    assert_eq!(status, 422, "a configured repository's name");
    assert_eq!(
        call(&url, "DELETE", "/api/orgs/team", &s.admin, None).0,
        422
    );
    assert_eq!(
        call(&url, "DELETE", "/api/orgs/other", &s.admin, None).0,
        204
    );
    assert_eq!(call(&url, "GET", "/api/orgs/other", &s.admin, None).0, 404);

    // Users: /users/me lists the caller's organizations; /users/NAME.
    let (_, me) = call(&url, "GET", "/api/users/me", &s.alice, None);
    assert_eq!(
        me["organizations"],
        json!([{"name": "team", "role": "admin"}]),
        "{me}"
    );
    assert_eq!(
        call(&url, "GET", "/api/users/bob", &s.alice, None).1["username"],
        "bob"
    );
    assert_eq!(
        call(&url, "GET", "/api/users/nobody", &s.alice, None).0,
        404
    );
    // A token's user from before accounts (`token create --user root`,
    // never `user create`) is a user.
    assert_eq!(call(&url, "GET", "/api/users/root", &s.alice, None).0, 200);
    // Audit logs: the user's own, and the organization's for its admins.
    let actions = |log: &Value| -> Vec<String> {
        log.as_array()
            .unwrap_or_else(|| panic!("not a list: {log}"))
            .iter()
            .map(|e| e["action"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, mine) = call(&url, "GET", "/api/users/me/audit-logs", &s.alice, None);
    assert!(
        actions(&mine).contains(&"org.member.set".to_owned()),
        "{mine}"
    );
    assert!(
        mine.as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"] == "alice"),
        "{mine}"
    );
    let (status, team) = call(&url, "GET", "/api/orgs/team/audit-logs", &s.alice, None);
    assert_eq!(status, 200, "{team}");
    let team_actions = actions(&team);
    for action in ["release.publish", "org.member.set", "org.key.generate"] {
        assert!(
            team_actions.contains(&action.to_owned()),
            "{action}: {team}"
        );
    }
    assert!(
        team.as_array()
            .unwrap()
            .iter()
            .all(|e| e["target"].as_str().unwrap().starts_with("team")),
        "{team}"
    );

    // Every access change is in the audit log.
    let (_, log) = call(&url, "GET", "/api/audit-logs", &s.admin, None);
    let actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in [
        "org.create",
        "org.delete",
        "org.member.set",
        "org.member.remove",
        "org.key.generate",
        "org.key.revoke",
    ] {
        assert!(actions.contains(&action), "{action} not in {actions:?}");
    }
}

#[test]
fn stock_mix_generates_an_org_key_authenticates_with_it_and_fetches_an_org_package() {
    let s = setup();
    let served = s.mirror.serve();
    let url = served.url();
    let (status, body) = publish(&url, &s.alice, "team_lib", "1.0.0");
    assert_eq!(status, 201, "{body}");

    let mix = MixClient::new("client", "0.1.0");
    let api = format!("{url}/api");
    // alice makes a key for the organization, as a CI setup would.
    let out = mix.run_ok(
        &[
            "hex.organization",
            "key",
            ORG,
            "generate",
            "--key-name",
            "ci",
        ],
        &[("HEX_API_URL", &api), ("HEX_API_KEY", &s.alice)],
    );
    let key = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("hxm_"))
        .unwrap_or_else(|| panic!("no key in:\n{out}"))
        .to_owned();
    // The client: hexpm is the mirror's root (its key is the upstream's),
    // and the organization's files are signed with ours.
    let upstream_key = fixture_key("upstream.pub.pem");
    let ours = fixture_key("other.pub.pem");
    mix.run_ok(
        &[
            "hex.repo",
            "set",
            "hexpm",
            "--url",
            &url,
            "--public-key",
            &upstream_key.to_string_lossy(),
        ],
        &[],
    );
    let out = mix.run_ok(
        &["hex.organization", "auth", ORG, "--key", &key],
        &[("HEX_API_URL", &api)],
    );
    assert!(!out.contains("rror"), "{out}");
    mix.run_ok(
        &[
            "hex.repo",
            "set",
            &format!("hexpm:{ORG}"),
            "--public-key",
            &ours.to_string_lossy(),
        ],
        &[],
    );
    fs::write(
        mix.project().join("mix.exs"),
        "defmodule Client.MixProject do\n  use Mix.Project\n  def project do\n    \
         [app: :client, version: \"0.1.0\", deps: [{:team_lib, \"~> 1.0\", organization: \"team\"}]]\n  \
         end\nend\n",
    )
    .unwrap();
    let out = mix.run_ok(&["deps.get"], &[("HEX_API_URL", &api)]);
    assert!(out.contains("team_lib"), "{out}");
    assert!(
        mix.project()
            .join("deps/team_lib/hex_metadata.config")
            .exists(),
        "{out}"
    );
    // It exchanged the key for an access token, as Hex does by default.
    let tokens = s.mirror.run(&["token", "list"]);
    assert!(
        tokens.stdout.contains("oauth."),
        "no access token was made:\n{tokens}"
    );
}

#[test]
fn stock_mix_publishes_into_an_organization_and_a_read_member_is_told_why_not() {
    let s = setup();
    let served = s.mirror.serve();
    let url = served.url();
    let (status, body) = call(
        &url,
        "POST",
        "/api/orgs/team/members",
        &s.alice,
        Some(json!({"name": "bob", "role": "read"})),
    );
    assert_eq!(status, 200, "{body}");
    let api = format!("{url}/api");
    let mix = MixClient::new("team_app", "1.0.0");
    let publish = |key: &str| {
        mix.run(
            &["hex.publish", "package", "--organization", ORG, "--yes"],
            &[("HEX_API_URL", &api), ("HEX_API_KEY", key)],
        )
    };
    let refused = publish(&s.bob);
    assert!(!refused.success, "{}", refused.output);
    assert!(
        refused.output.contains("no write access to team/team_app"),
        "{}",
        refused.output
    );
    let published = publish(&s.alice);
    assert!(published.success, "{}", published.output);
    let got = http(
        "GET",
        &format!("{url}/repos/team/packages/team_app"),
        &[("authorization", &s.bob)],
    );
    assert_eq!(got.status, 200);
    // hex_core accepts it as repository `team`'s, signed with our key.
    let work = tempfile::TempDir::new().unwrap();
    let file = work.path().join("team_app");
    fs::write(&file, &got.body).unwrap();
    Oracle::verify_file(
        &file,
        RegistryFile::Package("team_app"),
        ORG,
        &fixture_key("other.pub.pem"),
    )
    .unwrap();
}

/// A matrix row's request body for column `i`: content type and bytes.
type Body = Box<dyn Fn(usize) -> (Option<&'static str>, Vec<u8>)>;

/// No body (a GET).
fn no_body() -> Body {
    Box::new(|_| (None, Vec::new()))
}

/// The columns of the organization matrix.
const COLUMNS: [&str; 9] = [
    "none",
    "non-member",
    "read",
    "write",
    "org-admin",
    "org-key",
    "expired",
    "revoked",
    "server-admin",
];

#[test]
fn the_organization_permission_matrix() {
    let s = setup();
    for user in ["rita", "walt", "carl"] {
        let out = s.mirror.run(&["user", "create", user]);
        assert!(out.ok(), "{out}");
    }
    for (user, role) in [("rita", "read"), ("walt", "write")] {
        let out = s.mirror.run(&["org", "member", ORG, user, "--role", role]);
        assert!(out.ok(), "{out}");
    }
    let member = |name: &str, extra: &[&str]| {
        let mut args = vec!["--name", name, "--user", name, "--scope", "@member/*:admin"];
        args.extend_from_slice(extra);
        s.mirror.token(&args)
    };
    let rita = member("rita", &[]);
    let walt = member("walt", &[]);
    let expired = s.mirror.token(&[
        "--name",
        "alice-old",
        "--user",
        "alice",
        "--scope",
        "@member/*:admin",
        "--expires-days",
        "0",
    ]);
    let revoked = s.mirror.token(&[
        "--name",
        "alice-gone",
        "--user",
        "alice",
        "--scope",
        "@member/*:admin",
    ]);
    let out = s.mirror.run(&["token", "revoke", "alice-gone"]);
    assert!(out.ok(), "{out}");
    let served = s.mirror.serve();
    let url = served.url();
    let (status, body) = publish(&url, &s.alice, "team_lib", "1.0.0");
    assert_eq!(status, 201, "{body}");
    let (status, key) = call(
        &url,
        "POST",
        "/api/orgs/team/keys",
        &s.alice,
        Some(json!({"name": "ci"})),
    );
    assert_eq!(status, 201, "{key}");
    let org_key = key["secret"].as_str().unwrap().to_owned();
    let tokens: [Option<&str>; 9] = [
        None,
        Some(&s.bob),
        Some(&rita),
        Some(&walt),
        Some(&s.alice),
        Some(&org_key),
        Some(&expired),
        Some(&revoked),
        Some(&s.admin),
    ];
    let work = tempfile::TempDir::new().unwrap();

    // (label, method, path, body for column i, wanted statuses)
    let json_body = |v: Value| -> Body {
        Box::new(move |_| (Some("application/json"), v.to_string().into_bytes()))
    };
    let key_body: Body = Box::new(|i| {
        (
            Some("application/json"),
            json!({"name": format!("k{i}")}).to_string().into_bytes(),
        )
    });
    let dir = work.path().to_owned();
    let tarball: Body = Box::new(move |i| {
        let path = dir.join(format!("team_lib-2.0.{i}.tar"));
        Oracle::tarball("team_lib", &format!("2.0.{i}"), &path, &[]);
        (Some("application/octet-stream"), fs::read(&path).unwrap())
    });
    let read_files = [401, 403, 200, 200, 200, 200, 401, 401, 200];
    let org_read = [401, 404, 200, 200, 200, 200, 401, 401, 200];
    let rows: Vec<(&str, &str, String, Body, [u16; 9])> = vec![
        (
            "names",
            "GET",
            "/repos/team/names".into(),
            no_body(),
            read_files,
        ),
        (
            "versions",
            "GET",
            "/repos/team/versions".into(),
            no_body(),
            read_files,
        ),
        (
            "record",
            "GET",
            "/repos/team/packages/team_lib".into(),
            no_body(),
            read_files,
        ),
        (
            "tarball",
            "GET",
            "/repos/team/tarballs/team_lib-1.0.0.tar".into(),
            no_body(),
            read_files,
        ),
        ("org", "GET", "/api/orgs/team".into(), no_body(), org_read),
        (
            "members",
            "GET",
            "/api/orgs/team/members".into(),
            no_body(),
            org_read,
        ),
        (
            "member",
            "GET",
            "/api/orgs/team/members/alice".into(),
            no_body(),
            org_read,
        ),
        (
            "add member",
            "POST",
            "/api/orgs/team/members".into(),
            json_body(json!({"name": "carl", "role": "read"})),
            [401, 404, 403, 403, 200, 403, 401, 401, 200],
        ),
        (
            "keys",
            "GET",
            "/api/orgs/team/keys".into(),
            no_body(),
            [401, 404, 403, 200, 200, 403, 401, 401, 200],
        ),
        (
            "new key",
            "POST",
            "/api/orgs/team/keys".into(),
            key_body,
            [401, 404, 403, 201, 201, 403, 401, 401, 201],
        ),
        (
            "audit",
            "GET",
            "/api/orgs/team/audit-logs".into(),
            no_body(),
            [401, 404, 403, 403, 200, 403, 401, 401, 200],
        ),
        (
            "key",
            "GET",
            "/api/orgs/team/keys/ci".into(),
            no_body(),
            [401, 404, 403, 200, 200, 403, 401, 401, 200],
        ),
        (
            "update org",
            "POST",
            "/api/orgs/team".into(),
            json_body(json!({"billing_email": "pay@team.example"})),
            [401, 404, 403, 403, 200, 403, 401, 401, 200],
        ),
        (
            // Only a server admin renames; a taken name then changes nothing.
            "rename org",
            "POST",
            "/api/orgs/team".into(),
            json_body(json!({"name": "acme"})),
            [401, 404, 403, 403, 403, 403, 401, 401, 422],
        ),
        (
            "publish",
            "POST",
            "/api/repos/team/publish".into(),
            tarball,
            [401, 403, 403, 201, 201, 403, 401, 401, 201],
        ),
        (
            "package",
            "GET",
            "/api/repos/team/packages/team_lib".into(),
            no_body(),
            [401, 403, 200, 200, 200, 200, 401, 401, 200],
        ),
        (
            "release",
            "GET",
            "/api/repos/team/packages/team_lib/releases/1.0.0".into(),
            no_body(),
            [401, 403, 200, 200, 200, 200, 401, 401, 200],
        ),
        (
            "search",
            "GET",
            "/api/repos/team/packages?search=team".into(),
            no_body(),
            [401, 403, 200, 200, 200, 200, 401, 401, 200],
        ),
        (
            "retire",
            "POST",
            "/api/repos/team/packages/team_lib/releases/1.0.0/retire".into(),
            json_body(json!({"reason": "other", "message": "matrix"})),
            [401, 403, 403, 204, 204, 403, 401, 401, 204],
        ),
        (
            "create org",
            "POST",
            "/api/orgs".into(),
            Box::new(|i| {
                (
                    Some("application/json"),
                    json!({"name": format!("o{i}")}).to_string().into_bytes(),
                )
            }),
            [401, 403, 403, 403, 403, 403, 401, 401, 201],
        ),
        (
            // Last: walt's call revokes every key of the organization, the
            // organization key's column included.
            "revoke all keys",
            "DELETE",
            "/api/orgs/team/keys".into(),
            no_body(),
            [401, 404, 403, 200, 200, 401, 401, 401, 200],
        ),
    ];
    // A revoked key is a failed authentication, and a server blocks a
    // client after 10 within 5 minutes: the revoked column goes to fresh
    // `serve` processes (each has its own limiter), 9 cells each.
    let mut revoked_servers: Vec<Served> = Vec::new();
    let mut revoked_cells = 0;
    let mut wrong = String::new();
    for (label, method, path, body, want) in &rows {
        for (i, token) in tokens.iter().enumerate() {
            let url = if COLUMNS[i] == "revoked" {
                if revoked_cells % 9 == 0 {
                    revoked_servers.push(s.mirror.serve());
                }
                revoked_cells += 1;
                revoked_servers.last().unwrap().url()
            } else {
                url.clone()
            };
            let (ctype, bytes) = body(i);
            let mut headers = vec![("accept", "application/json")];
            if let Some(t) = token {
                headers.push(("authorization", t));
            }
            if let Some(c) = ctype {
                headers.push(("content-type", c));
            }
            let got = http_body(method, &format!("{url}{path}"), &headers, bytes);
            if got.status != want[i] {
                wrong.push_str(&format!(
                    "{label} ({method} {path}) as {}: {} (wanted {}) {}\n",
                    COLUMNS[i],
                    got.status,
                    want[i],
                    String::from_utf8_lossy(&got.body)
                        .chars()
                        .take(160)
                        .collect::<String>()
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "wrong cells:\n{wrong}");
}

#[test]
fn stock_mix_user_auth_runs_the_device_flow_approved_on_the_web_page() {
    let s = setup();
    let served = s.mirror.serve();
    let url = served.url();
    let api = format!("{url}/api");
    let mix = MixClient::new("client", "0.1.0");
    let (child, log) = mix.spawn(&["hex.user", "auth"], &[("HEX_API_URL", &api)]);
    // The code the terminal shows, as `ABCD-EFGH`.
    let mut code = None;
    for _ in 0..200 {
        let out = fs::read_to_string(&log).unwrap_or_default();
        code = out
            .lines()
            .skip_while(|l| !l.contains("Your verification code"))
            .map(str::trim)
            .find(|l| l.len() == 9 && l.as_bytes()[4] == b'-')
            .map(str::to_owned);
        if code.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let code = code.unwrap_or_else(|| {
        panic!(
            "no code in:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        )
    });
    // alice signs in on the web UI and approves it there.
    let login = http_body(
        "POST",
        &format!("{url}/ui/login"),
        &[("content-type", "application/x-www-form-urlencoded")],
        format!("token={}", s.alice).into_bytes(),
    );
    let cookie = login
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no session: {}", login.status))
        .to_owned();
    let page = http(
        "GET",
        &format!("{url}/ui/device?user_code={code}"),
        &[("cookie", &cookie)],
    );
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("api repositories"));
    let wrong = http(
        "GET",
        &format!("{url}/ui/device?user_code=BBBB-BBBB"),
        &[("cookie", &cookie)],
    );
    assert_eq!(wrong.status, 404);
    let decided = http_body(
        "POST",
        &format!("{url}/ui/device"),
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("cookie", &cookie),
        ],
        format!("user_code={code}&decision=approve").into_bytes(),
    );
    assert_eq!(
        decided.status,
        200,
        "{}",
        String::from_utf8_lossy(&decided.body)
    );
    let run = mix.wait(child, &log);
    assert!(
        run.success && run.output.contains("You are authenticated"),
        "{}",
        run.output
    );
    // The client now acts as alice, with an access token.
    let out = mix.run_ok(&["hex.user", "whoami"], &[("HEX_API_URL", &api)]);
    assert!(out.contains("alice"), "{out}");
    // The code was single-use.
    let again = http_body(
        "POST",
        &format!("{url}/api/oauth/device"),
        &[
            ("content-type", "application/json"),
            ("authorization", &s.alice),
        ],
        json!({"user_code": code, "approve": true})
            .to_string()
            .into_bytes(),
    );
    assert_eq!(again.status, 404);
}

#[test]
fn refresh_tokens_rotate_and_revoke_over_http() {
    let s = setup();
    let served = s.mirror.serve();
    let url = served.url();
    let dev = start_device(&url, "api repositories");
    let device = json!({"grant_type": "urn:ietf:params:oauth:grant-type:device_code", "device_code": dev["device_code"]});
    let (status, pending) = call(&url, "POST", "/api/oauth/token", "", Some(device.clone()));
    assert_eq!(
        (status, pending["error"].clone()),
        (400, json!("authorization_pending"))
    );
    // Polled again at once: slow down.
    let (_, slow) = call(&url, "POST", "/api/oauth/token", "", Some(device.clone()));
    assert_eq!(slow["error"], "slow_down", "{slow}");
    let (status, _) = call(
        &url,
        "POST",
        "/api/oauth/device",
        &s.alice,
        Some(json!({"user_code": dev["user_code"], "approve": true})),
    );
    assert_eq!(status, 204);
    let (status, tokens) = call(&url, "POST", "/api/oauth/token", "", Some(device.clone()));
    assert_eq!(status, 200, "{tokens}");
    let access = format!("Bearer {}", tokens["access_token"].as_str().unwrap());
    assert_eq!(
        call(&url, "GET", "/api/users/me", &access, None).1["username"],
        "alice"
    );
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    // A refresh token is no API key.
    assert_eq!(call(&url, "GET", "/api/users/me", &refresh, None).0, 401);
    let grant = json!({"grant_type": "refresh_token", "refresh_token": refresh});
    let (status, renewed) = call(&url, "POST", "/api/oauth/token", "", Some(grant.clone()));
    assert_eq!(status, 200, "{renewed}");
    // Rotated: the old one is spent.
    assert_eq!(
        call(&url, "POST", "/api/oauth/token", "", Some(grant)).1["error"],
        "invalid_grant"
    );
    // Revoking the new access token ends it; revoking is 200 whatever.
    let new_access = renewed["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        call(
            &url,
            "POST",
            "/api/oauth/revoke",
            "",
            Some(json!({"token": new_access}))
        )
        .0,
        200
    );
    assert_eq!(
        call(
            &url,
            "GET",
            "/api/users/me",
            &format!("Bearer {new_access}"),
            None
        )
        .0,
        401
    );
    assert_eq!(
        call(
            &url,
            "POST",
            "/api/oauth/revoke",
            "",
            Some(json!({"token": "nonsense"}))
        )
        .0,
        200
    );
    // Revoking the key that approved the device ends its refresh tokens.
    let out = s.mirror.run(&["token", "revoke", "alice"]);
    assert!(out.ok(), "{out}");
    let grant = json!({"grant_type": "refresh_token", "refresh_token": renewed["refresh_token"]});
    assert_eq!(
        call(&url, "POST", "/api/oauth/token", "", Some(grant)).1["error"],
        "invalid_grant"
    );
    assert_eq!(call(&url, "GET", "/api/users/me", &access, None).0, 401);
}

#[test]
fn an_invitation_makes_a_member_only_when_the_user_accepts() {
    let s = setup();
    let out = s.mirror.run(&["user", "create", "carl"]);
    assert!(out.ok(), "{out}");
    let carl = s.mirror.token(&[
        "--name",
        "carl",
        "--user",
        "carl",
        "--scope",
        "@member/*:admin",
    ]);
    let bob_ci = s.mirror.token(&[
        "--name",
        "bob-ci",
        "--user",
        "bob",
        "--scope",
        "acme/*:read",
    ]);
    let served = s.mirror.serve();
    let url = served.url();
    let invite = |who: &str| json!({"name": who, "role": "write"});
    assert_eq!(
        call(
            &url,
            "POST",
            "/api/orgs/team/invites",
            &s.bob,
            Some(invite("carl"))
        )
        .0,
        404
    );
    let (status, inv) = call(
        &url,
        "POST",
        "/api/orgs/team/invites",
        &s.alice,
        Some(invite("bob")),
    );
    assert_eq!(status, 201, "{inv}");
    assert_eq!(
        call(
            &url,
            "POST",
            "/api/orgs/team/invites",
            &s.alice,
            Some(invite("alice"))
        )
        .0,
        422
    );
    let (_, mine) = call(&url, "GET", "/api/users/me/invites", &s.bob, None);
    assert_eq!(mine[0]["organization"], ORG, "{mine}");
    // Invited is not a member yet.
    assert_eq!(call(&url, "GET", "/api/orgs/team", &s.bob, None).0, 404);
    // Only a key that acts for bob in organizations may answer.
    let (status, body) = call(&url, "POST", "/api/users/me/invites/team", &bob_ci, None);
    assert_eq!(status, 403, "{body}");
    let (status, m) = call(&url, "POST", "/api/users/me/invites/team", &s.bob, None);
    assert_eq!((status, m["role"].clone()), (200, json!("write")), "{m}");
    assert_eq!(call(&url, "GET", "/api/orgs/team", &s.bob, None).0, 200);
    assert_eq!(
        call(&url, "POST", "/api/users/me/invites/team", &s.bob, None).0,
        404,
        "used"
    );
    // Declined and withdrawn invitations leave no member.
    call(
        &url,
        "POST",
        "/api/orgs/team/invites",
        &s.alice,
        Some(invite("carl")),
    );
    assert_eq!(
        call(&url, "DELETE", "/api/users/me/invites/team", &carl, None).0,
        204
    );
    assert_eq!(call(&url, "GET", "/api/orgs/team", &carl, None).0, 404);
    call(
        &url,
        "POST",
        "/api/orgs/team/invites",
        &s.alice,
        Some(invite("carl")),
    );
    let (_, waiting) = call(&url, "GET", "/api/orgs/team/invites", &s.alice, None);
    assert_eq!(waiting.as_array().unwrap().len(), 1, "{waiting}");
    assert_eq!(
        call(
            &url,
            "DELETE",
            "/api/orgs/team/invites/carl",
            &s.alice,
            None
        )
        .0,
        204
    );
    assert_eq!(
        call(&url, "POST", "/api/users/me/invites/team", &carl, None).0,
        404
    );
    let (_, log) = call(&url, "GET", "/api/orgs/team/audit-logs", &s.alice, None);
    let actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in [
        "org.invite",
        "org.invite.accept",
        "org.invite.decline",
        "org.invite.cancel",
    ] {
        assert!(actions.contains(&a), "{a}: {actions:?}");
    }
}

#[test]
fn a_user_signs_in_to_the_web_ui_with_a_password_that_is_stored_hashed() {
    let s = setup();
    let out = s.mirror.run_with_stdin(
        &["user", "create", "pat", "--password-stdin"],
        Some("a long enough password\n"),
    );
    assert!(out.ok(), "{out}");
    let out = s
        .mirror
        .run_with_stdin(&["user", "password", "pat"], Some("short\n"));
    assert!(!out.ok() && out.stderr.contains("at least 12"), "{out}");
    let out = s
        .mirror
        .run(&["org", "member", ORG, "pat", "--role", "read"]);
    assert!(out.ok(), "{out}");
    // At rest: an argon2id hash, not the password.
    // The database and its write-ahead log, wherever the row is now.
    let mut db = fs::read(s.mirror.data_dir().join("hexmirror.db")).unwrap();
    db.extend(fs::read(s.mirror.data_dir().join("hexmirror.db-wal")).unwrap_or_default());
    let text = String::from_utf8_lossy(&db);
    assert!(text.contains("$argon2id$"));
    assert!(!text.contains("a long enough password"));
    let served = s.mirror.serve();
    let url = served.url();
    let sign_in = |user: &str, password: &str| {
        http_body(
            "POST",
            &format!("{url}/ui/login"),
            &[("content-type", "application/x-www-form-urlencoded")],
            format!("username={user}&password={}", password.replace(' ', "+")).into_bytes(),
        )
    };
    assert_eq!(sign_in("pat", "not the password!").status, 401);
    assert_eq!(sign_in("nobody", "a long enough password").status, 401);
    let ok = sign_in("pat", "a long enough password");
    assert_eq!(ok.status, 303);
    let cookie = ok
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    // The session reads what pat's membership allows: team's package list.
    let (status, body) = publish(&url, &s.alice, "team_lib", "1.0.0");
    assert_eq!(status, 201, "{body}");
    let page = http(
        "GET",
        &format!("{url}/ui/?repo=team"),
        &[("cookie", &cookie)],
    );
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("team_lib"));
    let live = s.mirror.run(&["token", "list"]);
    assert!(live.stdout.contains("session."), "{live}");
    // Signing out revokes the key the password made.
    let out = http("POST", &format!("{url}/ui/logout"), &[("cookie", &cookie)]);
    assert_eq!(out.status, 303);
    let live = s.mirror.run(&["token", "list"]);
    assert!(!live.stdout.contains("session."), "{live}");
    // Guessing is limited like keys are.
    for _ in 0..10 {
        sign_in("pat", "wrong wrong wrong");
    }
    assert_eq!(sign_in("pat", "a long enough password").status, 429);
}

#[test]
fn stock_mix_fetches_an_org_package_with_hexpm_at_a_repository_of_ours() {
    // hexpm is our re-signed `/repos/hexpm`: Hex asks for the organization
    // at /repos/hexpm/repos/team/..., with hexpm's key, which is ours.
    let s = setup_with("name = \"hexpm\"\npackages = [\"beta\"]");
    let served = s.mirror.serve();
    let url = served.url();
    let (status, body) = publish(&url, &s.alice, "team_lib", "1.0.0");
    assert_eq!(status, 201, "{body}");
    let (status, key) = call(
        &url,
        "POST",
        "/api/orgs/team/keys",
        &s.alice,
        Some(json!({"name": "ci"})),
    );
    assert_eq!(status, 201, "{key}");
    let key = key["secret"].as_str().unwrap().to_owned();
    let mix = MixClient::new("client", "0.1.0");
    let api = format!("{url}/api");
    let ours = fixture_key("other.pub.pem");
    mix.run_ok(
        &[
            "hex.repo",
            "set",
            "hexpm",
            "--url",
            &format!("{url}/repos/hexpm"),
            "--public-key",
            &ours.to_string_lossy(),
        ],
        &[],
    );
    mix.run_ok(
        &["hex.organization", "auth", ORG, "--key", &key],
        &[("HEX_API_URL", &api)],
    );
    fs::write(
        mix.project().join("mix.exs"),
        "defmodule Client.MixProject do\n  use Mix.Project\n  def project do\n    \
         [app: :client, version: \"0.1.0\", deps: [{:team_lib, \"~> 1.0\", organization: \"team\"}]]\n  \
         end\nend\n",
    )
    .unwrap();
    let out = mix.run_ok(&["deps.get"], &[("HEX_API_URL", &api)]);
    assert!(
        mix.project()
            .join("deps/team_lib/hex_metadata.config")
            .exists(),
        "{out}"
    );
    // Without a key the nested path is as private as the direct one.
    let got = http("GET", &format!("{url}/repos/hexpm/repos/team/names"), &[]);
    assert_eq!(got.status, 401);
}

/// Carl's key: read 9.x of `team/team_lib`, nothing else (seed 003).
fn consumer_key() -> Value {
    json!({
        "name": "carl-ci",
        "username": "carl",
        "permissions": [{"domain": "package", "resource": "team/team_lib", "access": "read", "versions": "~> 9.0"}],
    })
}

#[test]
fn a_version_limited_key_sees_the_downloads_of_what_it_may_read() {
    let s = setup();
    assert!(s.mirror.run(&["user", "create", "carl"]).ok());
    let served = s.mirror.serve();
    let url = served.url();
    for version in ["1.0.0", "9.1.0"] {
        let (status, body) = publish(&url, &s.alice, "team_lib", version);
        assert_eq!(status, 201, "{body}");
    }
    let (status, key) = call(&url, "POST", "/api/keys", &s.admin, Some(consumer_key()));
    assert_eq!(status, 201, "{key}");
    let carl = key["secret"].as_str().unwrap().to_owned();
    let download = |key: &str, version: &str| {
        let path = format!("{url}/repos/{ORG}/tarballs/team_lib-{version}.tar");
        assert_eq!(http("GET", &path, &[("authorization", key)]).status, 200);
    };
    download(&s.alice, "1.0.0");
    download(&s.alice, "1.0.0");
    download(&carl, "9.1.0");
    // Counts are written in batches, and at shutdown.
    served.stop();
    let served = s.mirror.serve();
    let url = served.url();
    let all = |key: &str, path: &str| -> Value {
        let (status, body) = call(&url, "GET", path, key, None);
        assert_eq!(status, 200, "{body}");
        body
    };
    let package = format!("/api/repos/{ORG}/packages/team_lib");
    assert_eq!(all(&s.alice, &package)["downloads"]["all"], 3);
    assert_eq!(
        all(&carl, &package)["downloads"]["all"],
        1,
        "1.0.0's are not carl's to know"
    );
    let found = all(&carl, &format!("/api/repos/{ORG}/packages?search=team"));
    assert_eq!(found[0]["downloads"]["all"], 1, "{found}");
}

#[test]
fn an_admin_registers_a_consumer_key_limited_to_a_package_and_its_major_version() {
    // Seed 002 (register, fetch, prune a token for someone) and seed 003 (a
    // consumer allowed `9.*` of one package), as hexmirror answers them.
    let s = setup();
    let out = s.mirror.run(&["user", "create", "carl"]);
    assert!(out.ok(), "{out}");
    let served = s.mirror.serve();
    let url = served.url();
    // 1.0.0, hidden from carl below, is the only one that needs `team_dep`.
    let (status, body) = publish(&url, &s.alice, "team_dep", "1.0.0");
    assert_eq!(status, 201, "{body}");
    let work = tempfile::TempDir::new().unwrap();
    let old = work.path().join("team_lib-1.0.0.tar");
    Oracle::tarball("team_lib", "1.0.0", &old, &[("team_dep", "~> 1.0")]);
    let (status, body) = Oracle::api(
        &format!("{url}/api/repos/{ORG}"),
        &s.alice,
        &["publish", &old.to_string_lossy()],
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = publish(&url, &s.alice, "team_lib", "9.1.0");
    assert_eq!(status, 201, "{body}");
    let consumer = consumer_key();
    // Only a server admin registers keys for others, and only for users.
    assert_eq!(
        call(&url, "POST", "/api/keys", &s.alice, Some(consumer.clone())).0,
        403
    );
    let mut nobody = consumer.clone();
    nobody["username"] = json!("nobody");
    assert_eq!(
        call(&url, "POST", "/api/keys", &s.admin, Some(nobody)).0,
        404
    );
    let (status, key) = call(&url, "POST", "/api/keys", &s.admin, Some(consumer));
    assert_eq!(status, 201, "{key}");
    assert_eq!(key["username"], "carl", "{key}");
    let secret = key["secret"].as_str().unwrap().to_owned();
    // carl reads 9.x of team_lib, and nothing else.
    let (_, pkg) = call(
        &url,
        "GET",
        "/api/repos/team/packages/team_lib",
        &secret,
        None,
    );
    let versions: Vec<&str> = pkg["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["9.1.0"], "{pkg}");
    // Search matches on what carl may read only: a hidden release's
    // requirements find nothing for him.
    let search = |key: &str, q: &str| -> Vec<String> {
        let (status, found) = call(
            &url,
            "GET",
            &format!("/api/repos/{ORG}/packages?search={q}"),
            key,
            None,
        );
        assert_eq!(status, 200, "{found}");
        found
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(search(&s.alice, "depends:team_dep"), ["team_lib"]);
    assert_eq!(search(&secret, "depends:team_dep"), Vec::<String>::new());
    assert_eq!(search(&secret, "team"), ["team_lib"]);
    let tarball = |v: &str| {
        http(
            "GET",
            &format!("{url}/repos/team/tarballs/team_lib-{v}.tar"),
            &[("authorization", &secret)],
        )
        .status
    };
    assert_eq!(tarball("9.1.0"), 200);
    assert_ne!(tarball("1.0.0"), 200);
    // Fetch and prune, by the admin.
    let (status, fetched) = call(&url, "GET", "/api/keys/carl-ci", &s.admin, None);
    assert_eq!(
        (status, fetched["secret"].clone()),
        (200, Value::Null),
        "{fetched}"
    );
    assert_eq!(
        call(&url, "DELETE", "/api/keys/carl-ci", &s.admin, None).0,
        200
    );
    assert_eq!(tarball("9.1.0"), 401);
}

#[test]
fn hex_core_manages_org_keys_reads_the_organization_and_fetches_its_repository() {
    // Issue 16: the requests the stock mix tests above make, from Erlang,
    // through the hex_core inside Debian's rebar3 (see hexcore.escript).
    let s = setup();
    let served = s.mirror.serve();
    let url = served.url();
    let api = format!("{url}/api");
    let (status, body) = publish(&url, &s.alice, "team_lib", "1.0.0");
    assert_eq!(status, 201, "{body}");
    // hex_core's tarballs are reproducible: these are the published bytes'.
    let work = tempfile::TempDir::new().unwrap();
    let published = Oracle::tarball("team_lib", "1.0.0", &work.path().join("t.tar"), &[]);
    // The org-* commands print the status, then the body as JSON.
    let oracle = |base: &str, key: &str, call: &[&str]| -> (u16, Value) {
        let (status, body) = Oracle::api(base, key, call);
        let body = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("hexcore {call:?}: {e} in {body:?}"));
        (status, body)
    };
    let hex_core = |key: &str, call: &[&str]| oracle(&api, key, call);
    let key_names = |keys: &Value| -> Vec<String> {
        let keys = keys
            .as_array()
            .unwrap_or_else(|| panic!("not a list: {keys}"));
        assert!(keys.iter().all(|k| k["secret"].is_null()), "{keys:?}");
        let mut names: Vec<String> = keys
            .iter()
            .map(|k| k["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    let ours = fixture_key("other.pub.pem");
    let ours = ours.to_string_lossy();
    let repo = |key: &str| oracle(&url, key, &["org-repo", ORG, &ours, "team_lib"]);

    // r3_hex_api_key with api_organization: POST/GET/DELETE /api/orgs/team/keys.
    let read_team = "repository:team";
    let (status, ci) = hex_core(&s.alice, &["org-key-add", ORG, "ci", read_team]);
    assert_eq!(status, 201, "{ci}");
    assert_eq!(
        (ci["name"].clone(), ci["permissions"].clone()),
        (
            json!("ci"),
            json!([{"domain": "repository", "resource": "team"}])
        ),
        "{ci}"
    );
    let ci = ci["secret"].as_str().unwrap().to_owned();
    assert!(ci.starts_with("hxm_"), "{ci}");
    let (status, spare) = hex_core(&s.alice, &["org-key-add", ORG, "spare", read_team]);
    assert_eq!(status, 201, "{spare}");
    let spare = spare["secret"].as_str().unwrap().to_owned();
    let (status, keys) = hex_core(&s.alice, &["org-key-list", ORG]);
    assert_eq!(
        (status, key_names(&keys)),
        (200, vec!["ci".into(), "spare".into()])
    );
    let (status, got) = hex_core(&s.alice, &["org-key-get", ORG, "ci"]);
    assert_eq!(
        (status, got["name"].clone(), got["secret"].clone()),
        (200, json!("ci"), Value::Null),
        "{got}"
    );
    // bob is no member: the organization and its keys do not exist for him.
    assert_eq!(hex_core(&s.bob, &["org-key-list", ORG]).0, 404);
    assert_eq!(
        hex_core(&s.bob, &["org-key-add", ORG, "mine", read_team]).0,
        404
    );

    // The organization itself: GET /api/orgs, GET and POST /api/orgs/team.
    let (status, orgs) = hex_core(&s.alice, &["org-list"]);
    assert_eq!(status, 200, "{orgs}");
    assert_eq!(orgs[0]["name"], ORG, "{orgs}");
    assert_eq!(orgs.as_array().map(Vec::len), Some(1), "{orgs}");
    assert_eq!(hex_core(&s.bob, &["org-list"]), (200, json!([])));
    let (status, org) = hex_core(&s.alice, &["org-get", ORG]);
    assert_eq!(
        (status, org["name"].clone(), org["url"].clone()),
        (200, json!(ORG), json!(format!("{url}/api/orgs/team"))),
        "{org}"
    );
    assert_eq!(hex_core(&s.bob, &["org-get", ORG]).0, 404);
    let email = "billing@team.example";
    let (status, org) = hex_core(&s.alice, &["org-update", ORG, email]);
    assert_eq!(
        (status, org["billing_email"].clone()),
        (200, json!(email)),
        "{org}"
    );
    assert_eq!(
        hex_core(&s.alice, &["org-get", ORG]).1["billing_email"],
        email
    );
    assert_eq!(hex_core(&s.bob, &["org-update", ORG, "x@y.example"]).0, 404);

    // r3_hex_repo with repo_organization = team and the key as repo_key:
    // /repos/team/{names,versions,packages/team_lib,tarballs/...} verify
    // (signature, repository = team, checksums).
    let (status, got) = repo(&ci);
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["names"], json!(["team_lib"]), "{got}");
    assert_eq!(got["versions"], json!({"team_lib": ["1.0.0"]}), "{got}");
    assert_eq!(
        got["package"],
        json!([{"version": "1.0.0", "inner_checksum": published.inner, "outer_checksum": published.outer}])
    );
    assert_eq!(
        got["tarballs"],
        json!([{"version": "1.0.0", "sha256": published.outer}])
    );
    // A non-member's key is refused at the first request.
    assert_eq!(repo(&s.bob), (403, json!({"refused": "names"})));

    // Deleting a key ends its reads; the other key still reads.
    let (status, gone) = hex_core(&s.alice, &["org-key-delete", ORG, "ci"]);
    assert_eq!((status, gone["name"].clone()), (200, json!("ci")), "{gone}");
    let (_, keys) = hex_core(&s.alice, &["org-key-list", ORG]);
    assert_eq!(key_names(&keys), ["spare"]);
    assert_eq!(hex_core(&s.alice, &["org-key-get", ORG, "ci"]).0, 404);
    assert_eq!(repo(&ci), (401, json!({"refused": "names"})));
    assert_eq!(repo(&spare).0, 200);
    // r3_hex_api_key:delete_all: DELETE /api/orgs/team/keys revokes every
    // key of the organization (as hex.pm does), none of alice's own.
    let (status, body) = hex_core(&s.alice, &["org-key-delete-all", ORG]);
    assert_eq!(status, 200, "{body}");
    let (status, keys) = hex_core(&s.alice, &["org-key-list", ORG]);
    assert_eq!((status, key_names(&keys)), (200, Vec::<String>::new()));
    assert_eq!(repo(&spare), (401, json!({"refused": "names"})));
}

/// Fetches `path` from `url` with `token` and checks it with hex_core as
/// repository `repo`'s file, signed with our key. Returns the bytes.
fn verified(url: &str, token: &str, path: &str, file: RegistryFile<'_>, repo: &str) -> Vec<u8> {
    let got = http("GET", &format!("{url}{path}"), &[("authorization", token)]);
    assert_eq!(got.status, 200, "{path}");
    let work = tempfile::TempDir::new().unwrap();
    let saved = work.path().join("file");
    fs::write(&saved, &got.body).unwrap();
    Oracle::verify_file(&saved, file, repo, &fixture_key("other.pub.pem"))
        .unwrap_or_else(|e| panic!("{path} as {repo}'s: {e}"));
    got.body
}

#[test]
fn a_renamed_organization_is_served_re_signed_under_its_new_name_with_everything_it_had() {
    let s = setup();
    let served = s.mirror.serve();
    let url = served.url();
    let (status, body) = publish(&url, &s.alice, "team_lib", "1.0.0");
    assert_eq!(status, 201, "{body}");
    let tarball_path = "/repos/team/tarballs/team_lib-1.0.0.tar";
    let tarball = http(
        "GET",
        &format!("{url}{tarball_path}"),
        &[("authorization", &s.alice)],
    );
    assert_eq!(tarball.status, 200);
    let (status, key) = call(
        &url,
        "POST",
        "/api/orgs/team/keys",
        &s.alice,
        Some(json!({"name": "ci"})),
    );
    assert_eq!(status, 201, "{key}");
    let org_key = key["secret"].as_str().unwrap().to_owned();

    // Seed 000's update: an org admin sets the billing email.
    let (status, org) = call(
        &url,
        "POST",
        "/api/orgs/team",
        &s.alice,
        Some(json!({"billing_email": "pay@example.com"})),
    );
    assert_eq!(
        (status, &org["billing_email"]),
        (200, &json!("pay@example.com")),
        "{org}"
    );
    let (status, _) = call(
        &url,
        "POST",
        "/api/orgs/team",
        &s.alice,
        Some(json!({"billing_email": "nobody"})),
    );
    assert_eq!(status, 422);
    // Renaming is for server admins; a taken name changes nothing.
    let (status, body) = call(
        &url,
        "POST",
        "/api/orgs/team",
        &s.alice,
        Some(json!({"name": "crew"})),
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = call(
        &url,
        "POST",
        "/api/orgs/team",
        &s.admin,
        Some(json!({"name": "acme"})),
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("taken"),
        "{body}"
    );
    let (status, body) = call(
        &url,
        "POST",
        "/api/orgs/team",
        &s.admin,
        Some(json!({"name": "Crew!"})),
    );
    assert_eq!(status, 422, "{body}");
    verified(
        &url,
        &s.alice,
        "/repos/team/names",
        RegistryFile::Names,
        ORG,
    );

    let (status, org) = call(
        &url,
        "POST",
        "/api/orgs/team",
        &s.admin,
        Some(json!({"name": "crew"})),
    );
    assert_eq!(status, 200, "{org}");
    assert_eq!(
        (&org["name"], &org["billing_email"]),
        (&json!("crew"), &json!("pay@example.com"))
    );

    // The old name is gone everywhere; the new one serves the same
    // packages, re-signed as `crew`'s, and the same tarball bytes.
    assert_ne!(
        http(
            "GET",
            &format!("{url}/repos/team/names"),
            &[("authorization", &s.alice)]
        )
        .status,
        200
    );
    assert_eq!(call(&url, "GET", "/api/orgs/team", &s.alice, None).0, 404);
    verified(
        &url,
        &s.alice,
        "/repos/crew/names",
        RegistryFile::Names,
        "crew",
    );
    verified(
        &url,
        &s.alice,
        "/repos/crew/versions",
        RegistryFile::Versions,
        "crew",
    );
    verified(
        &url,
        &s.alice,
        "/repos/crew/packages/team_lib",
        RegistryFile::Package("team_lib"),
        "crew",
    );
    let moved = http(
        "GET",
        &format!("{url}/repos/crew/tarballs/team_lib-1.0.0.tar"),
        &[("authorization", &s.alice)],
    );
    assert_eq!((moved.status, &moved.body), (200, &tarball.body));
    // Members, keys and packages came along.
    assert_eq!(
        http(
            "GET",
            &format!("{url}/repos/crew/names"),
            &[("authorization", &org_key)]
        )
        .status,
        200,
        "the organization's key reads the renamed organization"
    );
    let (_, members) = call(&url, "GET", "/api/orgs/crew/members", &s.alice, None);
    assert_eq!(members[0]["username"], "alice", "{members}");
    let (_, keys) = call(&url, "GET", "/api/orgs/crew/keys", &s.alice, None);
    assert_eq!(keys[0]["name"], "ci", "{keys}");
    let (status, body) = call(
        &url,
        "GET",
        "/api/repos/crew/packages/team_lib",
        &s.alice,
        None,
    );
    assert_eq!(status, 200, "{body}");
    let work = tempfile::TempDir::new().unwrap();
    let path = work.path().join("team_lib-1.1.0.tar");
    Oracle::tarball("team_lib", "1.1.0", &path, &[]);
    let (status, body) = Oracle::api(
        &format!("{url}/api/repos/crew"),
        &s.alice,
        &["publish", &path.to_string_lossy()],
    );
    assert_eq!(status, 201, "{body}");
    let (_, log) = call(&url, "GET", "/api/orgs/crew/audit-logs", &s.alice, None);
    let actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "org.rename",
        "org.update",
        "org.key.generate",
        "release.publish",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    drop(served);
    let out = s.mirror.run(&["verify"]);
    assert!(out.ok(), "{out}");

    // From the command line, and back: a restarted serve follows.
    let out = s.mirror.run(&["org", "rename", "crew", "team"]);
    assert!(out.ok(), "{out}");
    let served = s.mirror.serve();
    let url = served.url();
    let record = verified(
        &url,
        &s.alice,
        "/repos/team/packages/team_lib",
        RegistryFile::Package("team_lib"),
        ORG,
    );
    assert!(!record.is_empty());
    let (status, body) = call(
        &url,
        "GET",
        "/api/repos/team/packages/team_lib",
        &s.alice,
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["releases"].as_array().map(Vec::len), Some(2), "{body}");
    let out = s.mirror.run(&["org", "rename", "team", "acme"]);
    assert!(!out.ok() && out.to_string().contains("taken"), "{out}");
}

#[test]
fn guessing_device_user_codes_is_limited_as_guessing_keys_is() {
    let s = setup();
    let served = s.mirror.serve();
    let url = served.url();
    let dev = start_device(&url, "api");
    let guess = |code: &Value| {
        call(
            &url,
            "POST",
            "/api/oauth/device",
            &s.alice,
            Some(json!({"user_code": code, "approve": true})),
        )
        .0
    };
    let mut limited_after = None;
    for i in 0..30 {
        match guess(&json!(format!("WXYZ-{:04}", i))) {
            404 => {}
            429 => {
                limited_after = Some(i);
                break;
            }
            other => panic!("guess {i}: {other}"),
        }
    }
    let after = limited_after.expect("wrong user codes were never limited");
    assert!(after <= 10, "limited only after {after} wrong codes");
    // While the limit holds, even the right code gets nothing: a guesser
    // cannot tell when it found one.
    assert_eq!(guess(&dev["user_code"]), 429);
    let device = json!({"grant_type": "urn:ietf:params:oauth:grant-type:device_code", "device_code": dev["device_code"]});
    let (_, pending) = call(&url, "POST", "/api/oauth/token", "", Some(device));
    assert_eq!(pending["error"], "authorization_pending", "{pending}");
}

#[test]
fn hex_core_revokes_its_own_key_and_every_key_made_from_it() {
    let s = setup();
    let served = s.mirror.serve();
    let url = served.url();
    let api = format!("{url}/api");
    let make = |parent: &str, name: &str| -> String {
        let body = json!({"name": name, "permissions": [{"domain": "api"}]});
        let (status, key) = call(&url, "POST", "/api/keys", parent, Some(body));
        assert_eq!(status, 201, "{key}");
        assert_eq!(
            key["authing_key"], false,
            "a new key is not the caller's: {key}"
        );
        key["secret"].as_str().unwrap().to_owned()
    };
    let live = |key: &str| call(&url, "GET", "/api/auth", key, None).0 == 204;
    let hex_core = |key: &str, cmd: &[&str]| -> (u16, Value) {
        let (status, body) = Oracle::api(&api, key, cmd);
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    };

    // The key list marks the caller's own key, and only it.
    let desk = make(&s.alice, "desk");
    let (_, keys) = call(&url, "GET", "/api/keys", &s.alice, None);
    let authing: Vec<_> = keys
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["authing_key"] == true)
        .map(|k| k["name"].clone())
        .collect();
    assert_eq!(authing, [json!("alice")], "{keys}");

    // Revoking the calling key says so: clients forget a key on `true`.
    let (status, gone) = hex_core(&desk, &["key-delete", "desk"]);
    assert_eq!(status, 200, "{gone}");
    assert_eq!(
        (gone["name"].clone(), gone["authing_key"].clone()),
        (json!("desk"), json!(true))
    );
    assert!(!live(&desk));

    // DELETE /api/keys: the calling key and every key made from it, in one
    // go; the key it was made from, and other users' keys, stay live.
    let laptop = make(&s.alice, "laptop");
    let tablet = make(&laptop, "tablet");
    let (status, gone) = hex_core(&laptop, &["key-delete-all"]);
    assert_eq!(status, 200, "{gone}");
    assert_eq!(gone["name"], "laptop", "{gone}");
    assert_eq!(gone["authing_key"], true, "{gone}");
    assert!(gone["revoked_at"].is_string(), "{gone}");
    assert!(!live(&laptop) && !live(&tablet));
    assert!(live(&s.alice) && live(&s.bob) && live(&s.admin));
    // Even an admin revokes only its own tree of keys, never everyone's.
    let spare = s
        .mirror
        .token(&["--admin", "--name", "spare", "--user", "root"]);
    let (status, _) = hex_core(&spare, &["key-delete-all"]);
    assert_eq!(status, 200);
    assert!(!live(&spare));
    assert!(live(&s.alice) && live(&s.admin));
    // A revoked key can revoke nothing more.
    assert_eq!(hex_core(&laptop, &["key-delete-all"]).0, 401);

    let (_, log) = call(&url, "GET", "/api/audit-logs", &s.admin, None);
    assert!(log.to_string().contains("key.revoke_all"), "{log}");
}
