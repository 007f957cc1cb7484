//! Stock rebar3 (Debian's, hex_core 0.7.1) builds through `hexmirror serve`
//! in byte-identical mode: `HEX_CDN` pointed at the mirror, the upstream's
//! key, repository `hexpm`. The upstream is gone before rebar3 runs, so every
//! byte comes from the mirror.

mod common;

use common::*;

#[test]
fn rebar3_compiles_through_the_mirror_with_transitive_and_optional_deps() {
    require_tool("rebar3");
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = Mirror::new(&upstream, "packages = [\"beta\"]");
    let out = mirror.sync();
    assert!(out.ok(), "{out}");
    drop(upstream);

    let server = mirror.serve();
    let project = Rebar3Project::new(&[("beta", "0.2.1")], &fixture_key("upstream.pub.pem"));
    let run = project.compile(&server.url());
    assert!(
        run.success,
        "rebar3 failed through the mirror:\n{}",
        run.output
    );
    // beta directly, alpha transitively (~> 1.1 picks 1.1.0, not the
    // 2.0.0 pre-release), gamma as beta's optional dependency, which
    // rebar3 3.19 fetches too.
    for app in ["beta", "alpha", "gamma"] {
        assert!(
            project.has_beam(app),
            "{app} was not compiled:\n{}",
            run.output
        );
    }
    assert!(run.output.contains("alpha v1.1.0"), "{}", run.output);
}

#[test]
fn rebar3_refuses_the_mirror_when_told_the_wrong_key() {
    require_tool("rebar3");
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = Mirror::new(&upstream, "");
    mirror.sync_ok();
    let server = mirror.serve();
    // Same bytes, but the client trusts another key: hexmirror must not have
    // re-signed anything in byte-identical mode, so the client refuses.
    let project = Rebar3Project::new(&[("beta", "0.2.1")], &fixture_key("other.pub.pem"));
    let run = project.compile(&server.url());
    assert!(
        !run.success,
        "rebar3 accepted a registry signed with another key:\n{}",
        run.output
    );
    assert!(
        run.output.contains("Package not found in any repo: beta"),
        "refused for another reason than the signature:\n{}",
        run.output
    );
}
