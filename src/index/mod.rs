//! Builds the registry files of a repository of our own from verified
//! upstream package records: curation (a package list with its dependency
//! closure, a denylist), and `/names` and `/versions` consistent with the
//! records. PURE: values in, values out; signing is `registry::seal_signed`.

pub mod encoded;
pub mod hosted;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::registry::proto::{names, package, versions};
use crate::version::{Requirement, Version};

/// A denylist entry: a whole package, or its releases matching a requirement.
#[derive(Debug, Clone)]
pub struct DenyRule {
    /// The package.
    pub package: String,
    /// `None`: every release.
    pub releases: Option<Requirement>,
    text: String,
}

/// Why a denylist entry was refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "deny entry {entry:?}: {reason} (write \"name\" or \"name REQUIREMENT\", e.g. \"plug == 1.2.3\" or \"plug < 1.4.0\")"
)]
pub struct DenyRuleError {
    /// The entry as written.
    pub entry: String,
    /// What is wrong with it.
    pub reason: String,
}

impl DenyRule {
    /// Parses `"name"` or `"name REQUIREMENT"`.
    pub fn parse(entry: &str) -> Result<Self, DenyRuleError> {
        let fail = |reason: String| DenyRuleError {
            entry: entry.to_owned(),
            reason,
        };
        let trimmed = entry.trim();
        let (package, requirement) = match trimmed.split_once(char::is_whitespace) {
            Some((p, r)) => (p, Some(r.trim())),
            None => (trimmed, None),
        };
        crate::registry::PackageName::parse(package).map_err(|e| fail(e.to_string()))?;
        let releases = requirement
            .map(|r| Requirement::parse(r).map_err(|e| fail(e.to_string())))
            .transpose()?;
        Ok(Self {
            package: package.to_owned(),
            releases,
            text: trimmed.to_owned(),
        })
    }

    /// True when this rule removes `version` of `package`.
    pub fn denies(&self, package: &str, version: &str) -> bool {
        if self.package != package {
            return false;
        }
        match &self.releases {
            None => true,
            // A version we cannot parse is never served under a rule that
            // names versions: fail closed.
            Some(req) => match Version::parse(version) {
                Ok(v) => req.matches_allowing_pre(&v),
                Err(_) => true,
            },
        }
    }
}

impl fmt::Display for DenyRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A package record re-targeted at `repository` with denied releases
/// removed; `None` when no release is left. Everything else is kept as the
/// upstream signed it: checksums, dependencies (with their `repository`
/// fields), retirement, advisories, `published_at`, release order.
pub fn curate_package(
    upstream: &package::Package,
    repository: &str,
    deny: &[DenyRule],
) -> Option<package::Package> {
    let releases: Vec<package::Release> = upstream
        .releases
        .iter()
        .filter(|r| !deny.iter().any(|d| d.denies(&upstream.name, &r.version)))
        .cloned()
        .collect();
    if releases.is_empty() {
        return None;
    }
    Some(package::Package {
        releases,
        name: upstream.name.clone(),
        repository: repository.to_owned(),
        advisories: upstream.advisories.clone(),
    })
}

/// The names a record's releases depend on in this repository (a
/// dependency naming another repository is resolved there, not here):
/// all a dependency closure needs of a record.
pub fn dependency_names(record: &package::Package, upstream_repository: &str) -> Vec<String> {
    let mut names: Vec<String> = record
        .releases
        .iter()
        .flat_map(|r| &r.dependencies)
        .filter(|dep| {
            dep.repository
                .as_deref()
                .is_none_or(|r| r == upstream_repository)
        })
        .map(|dep| dep.package.clone())
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// The packages a curated view contains: `roots` and the dependency closure
/// of every release left in the view, over `graph` (each available
/// package's [`dependency_names`]).
pub fn closure(
    roots: &BTreeSet<String>,
    graph: &BTreeMap<String, Vec<String>>,
) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut queue: Vec<&str> = roots.iter().map(String::as_str).collect();
    while let Some(name) = queue.pop() {
        let Some(deps) = graph.get(name) else {
            continue;
        };
        if !seen.insert(name.to_owned()) {
            continue;
        }
        queue.extend(
            deps.iter()
                .map(String::as_str)
                .filter(|d| !seen.contains(*d)),
        );
    }
    seen
}

/// `/names` listing `packages` (in name order), carrying each package's
/// upstream `updated_at`.
pub fn build_names<'a>(
    repository: &str,
    packages: impl IntoIterator<Item = &'a str>,
    updated_at: &BTreeMap<String, names::Timestamp>,
) -> names::Names {
    names::Names {
        repository: repository.to_owned(),
        packages: packages
            .into_iter()
            .map(|name| names::Package {
                name: name.to_owned(),
                updated_at: updated_at.get(name).cloned(),
            })
            .collect(),
    }
}

/// `/versions` listing `entries` (in name order, each from
/// [`versions_entry`]).
pub fn build_versions(repository: &str, entries: Vec<versions::Package>) -> versions::Versions {
    versions::Versions {
        repository: repository.to_owned(),
        packages: entries,
    }
}

/// One package's `/versions` entry, derived from its record.
pub fn versions_entry(r: &package::Package) -> versions::Package {
    let indexes = |pred: &dyn Fn(&package::Release) -> bool| {
        r.releases
            .iter()
            .enumerate()
            .filter(|(_, rel)| pred(rel))
            .map(|(i, _)| i as i32)
            .collect::<Vec<_>>()
    };
    versions::Package {
        name: r.name.clone(),
        versions: r.releases.iter().map(|rel| rel.version.clone()).collect(),
        retired: indexes(&|rel| rel.retired.is_some()),
        with_advisories: indexes(&|rel| !rel.advisory_indexes.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(version: &str, deps: &[&str]) -> package::Release {
        package::Release {
            version: version.into(),
            inner_checksum: vec![1; 32],
            outer_checksum: Some(vec![2; 32]),
            dependencies: deps
                .iter()
                .map(|d| package::Dependency {
                    package: d.to_string(),
                    requirement: ">= 0.0.0".into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn record(name: &str, releases: Vec<package::Release>) -> package::Package {
        package::Package {
            name: name.into(),
            repository: "hexpm".into(),
            releases,
            advisories: vec![],
        }
    }

    #[test]
    fn deny_rules_parse_and_match() {
        let all = DenyRule::parse("plug").unwrap();
        assert!(all.denies("plug", "1.0.0") && !all.denies("plugx", "1.0.0"));
        let some = DenyRule::parse("plug  < 1.4.0").unwrap();
        assert!(some.denies("plug", "1.3.9"));
        assert!(
            some.denies("plug", "1.4.0-rc.1"),
            "pre-releases of denied ranges are denied"
        );
        assert!(!some.denies("plug", "1.4.0"));
        for bad in ["", "Plug", "plug ~>", "plug >> 1"] {
            assert!(DenyRule::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn curation_removes_denied_releases_and_keeps_everything_else() {
        let mut up = record("a", vec![release("1.0.0", &["b"]), release("1.1.0", &[])]);
        up.releases[1].retired = Some(package::RetirementStatus {
            reason: 2,
            message: Some("x".into()),
        });
        let deny = vec![DenyRule::parse("a == 1.0.0").unwrap()];
        let got = curate_package(&up, "mirror", &deny).unwrap();
        assert_eq!(got.repository, "mirror");
        assert_eq!(got.releases, vec![up.releases[1].clone()]);
        assert!(curate_package(&up, "m", &[DenyRule::parse("a").unwrap()]).is_none());
    }

    #[test]
    fn closure_follows_same_repository_dependencies_only() {
        let mut other = release("1.0.0", &["x"]);
        other.dependencies[0].repository = Some("acme".into());
        let available: BTreeMap<String, package::Package> = [
            ("a".to_string(), record("a", vec![release("1.0.0", &["b"])])),
            (
                "b".to_string(),
                record("b", vec![release("1.0.0", &["c"]), other]),
            ),
            ("c".to_string(), record("c", vec![release("1.0.0", &[])])),
            ("d".to_string(), record("d", vec![release("1.0.0", &[])])),
            ("x".to_string(), record("x", vec![release("1.0.0", &[])])),
        ]
        .into();
        let roots = ["a".to_string()].into();
        let graph = available
            .iter()
            .map(|(name, r)| (name.clone(), dependency_names(r, "hexpm")))
            .collect();
        let got: Vec<_> = closure(&roots, &graph).into_iter().collect();
        assert_eq!(got, vec!["a", "b", "c"]);
    }

    #[test]
    fn versions_indexes_follow_record_order() {
        let mut r = record("a", vec![release("1.0.0", &[]), release("2.0.0", &[])]);
        r.releases[1].retired = Some(package::RetirementStatus {
            reason: 0,
            message: None,
        });
        r.releases[0].advisory_indexes = vec![0];
        let v = build_versions("m", vec![versions_entry(&r)]);
        assert_eq!(v.packages[0].versions, vec!["1.0.0", "2.0.0"]);
        assert_eq!(v.packages[0].retired, vec![1]);
        assert_eq!(v.packages[0].with_advisories, vec![0]);
        let n = build_names("m", ["a"], &BTreeMap::new());
        assert_eq!(n.packages[0].name, "a");
    }
}
