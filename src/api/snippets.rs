//! The `configs` field of package and release bodies: how to depend on a
//! release from `mix.exs`, `rebar.config` and `erlang.mk`, the three
//! snippets hex.pm sends. `mix hex.info` prints the `mix.exs` one and
//! crashes without it.
//!
//! The version forms follow hex.pm's (`~> 1.2` for 1.2.3, `~> 0.2.3` below
//! 1.0, the full version with a pre-release; rebar3 and erlang.mk pin the
//! version). One difference: hex.pm's private packages live in organisation
//! repositories (`hexpm:ORG`) and get `organization: "ORG"`; ours are
//! repositories of their own that mix knows by the name given to `mix
//! hex.repo add`, which is what `repo: "NAME"` selects. rebar3 searches every
//! configured repository, so its snippet names none, as hex.pm's does not.

use serde_json::{Value, json};

use crate::version::Version;

/// The repository name that needs no `repo:` option: mix's default.
const DEFAULT_REPOSITORY: &str = "hexpm";

/// `{"mix.exs": ..., "rebar.config": ..., "erlang.mk": ...}` for release
/// `version` of package `name` (OTP application `app`) in `repository`.
pub fn configs(name: &str, app: Option<&str>, version: &str, repository: &str) -> Value {
    let app = app.filter(|a| !a.is_empty()).unwrap_or(name);
    let parsed = Version::parse(version).ok();
    let (mix_version, pinned) = match &parsed {
        Some(v) => (mix_requirement(v), pinned(v)),
        // Published versions are validated, so this is only a safe answer
        // for a row the validation never saw.
        None => (format!("== {version}"), version.to_owned()),
    };
    let repo = if repository == DEFAULT_REPOSITORY {
        String::new()
    } else {
        format!(", repo: {}", elixir_string(repository))
    };
    let mix = if app == name {
        format!("{{:{name}, \"{mix_version}\"{repo}}}")
    } else {
        format!(
            "{{{}, \"{mix_version}\", hex: :{name}{repo}}}",
            elixir_atom(app)
        )
    };
    let rebar = if app == name {
        format!("{{{name}, \"{pinned}\"}}")
    } else {
        format!("{{{}, \"{pinned}\", {{pkg, {name}}}}}", erlang_atom(app))
    };
    json!({
        "mix.exs": mix,
        "rebar.config": rebar,
        "erlang.mk": format!("dep_{name} = hex {pinned}"),
    })
}

/// What hex.pm suggests in `mix.exs`: minor-level pessimism from 1.0, patch
/// level before it, the exact pre-release for one.
fn mix_requirement(v: &Version) -> String {
    if !v.pre().is_empty() {
        format!("~> {}", pinned(v))
    } else if v.major() == 0 {
        format!("~> 0.{}.{}", v.minor(), v.patch())
    } else {
        format!("~> {}.{}", v.major(), v.minor())
    }
}

/// `MAJOR.MINOR.PATCH[-PRE]`, without build metadata (as hex.pm prints it).
fn pinned(v: &Version) -> String {
    let mut out = format!("{}.{}.{}", v.major(), v.minor(), v.patch());
    if !v.pre().is_empty() {
        let pre: Vec<String> = v
            .pre()
            .iter()
            .map(|p| match p {
                crate::version::Identifier::Numeric(n) => n.to_string(),
                crate::version::Identifier::Alpha(s) => s.clone(),
            })
            .collect();
        out.push('-');
        out.push_str(&pre.join("."));
    }
    out
}

/// An Elixir atom literal: bare when it can be, quoted otherwise.
fn elixir_atom(name: &str) -> String {
    let mut chars = name.chars();
    let bare = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if bare {
        format!(":{name}")
    } else {
        format!(":{}", elixir_string(name))
    }
}

/// An Erlang atom: bare when it starts lower-case, quoted otherwise.
fn erlang_atom(name: &str) -> String {
    let mut chars = name.chars();
    let bare = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if bare {
        name.to_owned()
    } else {
        format!("'{}'", name.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// An Elixir string literal.
fn elixir_string(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace("#{", "\\#{");
    format!("\"{escaped}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_in_our_own_repository_names_it() {
        let c = configs("acme_app", Some("acme_app"), "1.2.3", "acme");
        assert_eq!(c["mix.exs"], r#"{:acme_app, "~> 1.2", repo: "acme"}"#);
        assert_eq!(c["rebar.config"], r#"{acme_app, "1.2.3"}"#);
        assert_eq!(c["erlang.mk"], "dep_acme_app = hex 1.2.3");
    }

    #[test]
    fn the_hexpm_repository_needs_no_option() {
        let c = configs("jason", None, "0.4.1", "hexpm");
        assert_eq!(c["mix.exs"], r#"{:jason, "~> 0.4.1"}"#);
        assert_eq!(c["rebar.config"], r#"{jason, "0.4.1"}"#);
    }

    #[test]
    fn pre_releases_are_exact_and_build_metadata_is_dropped() {
        let c = configs("x", None, "2.0.0-rc.1+build.7", "acme");
        assert_eq!(c["mix.exs"], r#"{:x, "~> 2.0.0-rc.1", repo: "acme"}"#);
        assert_eq!(c["erlang.mk"], "dep_x = hex 2.0.0-rc.1");
    }

    #[test]
    fn an_app_named_otherwise_points_at_the_package() {
        let c = configs("my_pkg", Some("MyApp"), "1.0.0", "acme");
        assert_eq!(
            c["mix.exs"],
            r#"{:MyApp, "~> 1.0", hex: :my_pkg, repo: "acme"}"#
        );
        assert_eq!(c["rebar.config"], r#"{'MyApp', "1.0.0", {pkg, my_pkg}}"#);
        let c = configs("my_pkg", Some("my-app"), "1.0.0", "hexpm");
        assert_eq!(c["mix.exs"], r#"{:"my-app", "~> 1.0", hex: :my_pkg}"#);
    }
}
