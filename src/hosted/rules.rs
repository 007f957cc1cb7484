//! PURE. The rules a hosted change must pass, given what the writer read:
//! the package's releases and owners, the repository's other releases, the
//! versions a dependency resolves against, and the time. Each refusal is a
//! [`Rejection`] that says what to do instead. Nothing here reads the disk
//! or the database, so every rule has unit tests with an injected clock.

use crate::index::hosted::ReleaseRow;
use crate::registry::{self, PackageName};
use crate::tarball::{Metadata, TarballError};
use crate::version::{Requirement, Version};

/// Most dependencies a release may declare.
pub const MAX_REQUIREMENTS: usize = 500;
/// Longest description accepted, in characters.
pub const MAX_DESCRIPTION: usize = 1000;

/// How a client should read a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The input is not acceptable (HTTP 422).
    Invalid,
    /// The package, release or repository does not exist (HTTP 404).
    NotFound,
    /// The caller may not do this (HTTP 403).
    Forbidden,
}

/// The revert and replace window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window(pub u64);

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_multiple_of(3600) {
            write!(f, "{} hour(s)", self.0 / 3600)
        } else {
            write!(f, "{} minute(s)", self.0.div_ceil(60))
        }
    }
}

impl Window {
    /// Whether something inserted at `inserted_at` is still inside it at `now`.
    fn open(self, inserted_at: i64, now: i64) -> bool {
        now.saturating_sub(inserted_at) <= i64::try_from(self.0).unwrap_or(i64::MAX)
    }
}

/// Why a change was refused. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// The repository is not one of ours.
    #[error("repository {0:?} is not configured here")]
    UnknownRepository(String),
    /// No such release.
    #[error("{name} {version} is not a release in repository {repository}")]
    NoRelease {
        /// Repository.
        repository: String,
        /// Package.
        name: String,
        /// Version.
        version: String,
    },
    /// The name cannot be a Hex package name.
    #[error(
        "package name {0:?}: names start with a lowercase letter and hold only lowercase letters, digits and _"
    )]
    BadName(String),
    /// The name is too short or too long.
    #[error("package name {0:?} must be 2 to 64 characters long")]
    NameLength(String),
    /// The version is not a semantic version.
    #[error("version {version:?} of {name} is not a semantic version like 1.2.3")]
    BadVersion {
        /// Package.
        name: String,
        /// Version as uploaded.
        version: String,
    },
    /// Too many dependencies.
    #[error("{name} declares {count} dependencies, more than the limit of {MAX_REQUIREMENTS}")]
    TooManyRequirements {
        /// Package.
        name: String,
        /// How many it declares.
        count: usize,
    },
    /// The description is too long.
    #[error("the description of {0} is longer than {MAX_DESCRIPTION} characters")]
    DescriptionTooLong(String),
    /// Somebody else owns the package.
    #[error(
        "{name} is owned by {owners}; ask an owner to add {user} (`PUT /api/packages/{name}/owners/{user}`)"
    )]
    NotOwner {
        /// Package.
        name: String,
        /// Its owners, comma-separated.
        owners: String,
        /// Who asked.
        user: String,
    },
    /// The upstream has this name and the repository does not reserve it.
    #[error(
        "{name} exists in the upstream repository {upstream}; publishing it in {repository} would shadow it for clients (dependency confusion). Pick another name, or reserve it with `reserved = [\"{name}\"]` under this [[repository]] if this is your package"
    )]
    UpstreamName {
        /// Package.
        name: String,
        /// The upstream repository.
        upstream: String,
        /// Ours.
        repository: String,
    },
    /// No upstream index yet, so the name cannot be checked.
    #[error(
        "hexmirror has no upstream index yet, so it cannot tell whether {name} exists in {upstream}; run `hexmirror sync`, or reserve the name (or `reserved = [\"*\"]` for a repository without upstream packages)"
    )]
    NoUpstreamIndex {
        /// Package.
        name: String,
        /// The upstream repository.
        upstream: String,
    },
    /// The release exists and `replace` was not asked for.
    #[error(
        "{name} {version} is already published; versions are immutable. Within {window} of publishing it can be replaced (`mix hex.publish --replace`, `?replace=true`); after that, publish a new version"
    )]
    Immutable {
        /// Package.
        name: String,
        /// Version.
        version: String,
        /// The window.
        window: Window,
    },
    /// Too late to replace.
    #[error(
        "{name} {version} was published more than {window} ago and can no longer be replaced; retire it and publish a new version"
    )]
    ReplaceTooLate {
        /// Package.
        name: String,
        /// Version.
        version: String,
        /// The window.
        window: Window,
    },
    /// Too late to revert.
    #[error(
        "{name} {version} was published more than {window} ago and can no longer be reverted; retire it instead"
    )]
    RevertTooLate {
        /// Package.
        name: String,
        /// Version.
        version: String,
        /// The window.
        window: Window,
    },
    /// Other releases depend on the one to revert.
    #[error("{name} {version} cannot be reverted: {dependents} depend(s) on it; retire it instead")]
    HasDependents {
        /// Package.
        name: String,
        /// Version.
        version: String,
        /// The dependents, as "package version", comma-separated.
        dependents: String,
    },
    /// A requirement does not parse, or names no package.
    #[error("dependency {dependency} of {name}: {reason}")]
    BadRequirement {
        /// Package.
        name: String,
        /// The dependency.
        dependency: String,
        /// What is wrong.
        reason: String,
    },
    /// A dependency names a repository this server does not know.
    #[error(
        "dependency {dependency} of {name} names repository {repository:?}, which this server does not know; known: {known}"
    )]
    UnknownDependencyRepository {
        /// Package.
        name: String,
        /// The dependency.
        dependency: String,
        /// The repository it names.
        repository: String,
        /// The ones that exist, comma-separated.
        known: String,
    },
    /// A dependency does not exist where it points.
    #[error(
        "dependency {dependency} of {name} does not exist in repository {repository}; publish it first, or name the repository that has it"
    )]
    MissingDependency {
        /// Package.
        name: String,
        /// The dependency.
        dependency: String,
        /// Where it was looked for.
        repository: String,
    },
    /// No release of a dependency matches its requirement.
    #[error(
        "dependency {dependency} {requirement} of {name}: no release of {dependency} in repository {repository} matches (it has {versions})"
    )]
    UnsatisfiedDependency {
        /// Package.
        name: String,
        /// The dependency.
        dependency: String,
        /// Its requirement.
        requirement: String,
        /// Where it was looked for.
        repository: String,
        /// The versions there, comma-separated.
        versions: String,
    },
    /// The docs tarball is refused.
    #[error("docs tarball: {0}")]
    Docs(TarballError),
}

impl Rejection {
    /// How a client should read it.
    pub fn kind(&self) -> Kind {
        match self {
            Self::UnknownRepository(_) | Self::NoRelease { .. } => Kind::NotFound,
            Self::NotOwner { .. } | Self::UpstreamName { .. } | Self::NoUpstreamIndex { .. } => {
                Kind::Forbidden
            }
            _ => Kind::Invalid,
        }
    }
}

/// Who asks, as the rules see them.
#[derive(Debug, Clone, Copy)]
pub struct Asker<'a> {
    /// The user the token acts for.
    pub user: &'a str,
    /// Admin rights over the package (owners bypass).
    pub admin: bool,
}

/// The caller may change `name`: it has no owner yet (then the caller
/// becomes it: `Ok(true)`), the caller owns it, or is an admin.
pub fn may_change(
    name: &str,
    owners: &[(String, String)],
    asker: Asker<'_>,
) -> Result<bool, Rejection> {
    if owners.is_empty() {
        return Ok(true);
    }
    if asker.admin || owners.iter().any(|(u, _)| u == asker.user) {
        return Ok(false);
    }
    Err(Rejection::NotOwner {
        name: name.to_owned(),
        owners: owners
            .iter()
            .map(|(u, _)| u.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        user: asker.user.to_owned(),
    })
}

/// The release `name` `version` among `rows` (the package's releases).
pub fn release<'a>(
    rows: &'a [ReleaseRow],
    repository: &str,
    name: &str,
    version: &str,
) -> Result<&'a ReleaseRow, Rejection> {
    rows.iter()
        .find(|r| r.version == version)
        .ok_or_else(|| Rejection::NoRelease {
            repository: repository.to_owned(),
            name: name.to_owned(),
            version: version.to_owned(),
        })
}

/// A revert is allowed within the window, and only when no other package
/// of the repository (`others`: its releases) depends on the release.
pub fn revert(
    row: &ReleaseRow,
    others: &[ReleaseRow],
    now: i64,
    window: Window,
) -> Result<(), Rejection> {
    let (name, version) = (&row.package, &row.version);
    if !window.open(row.inserted_at, now) {
        return Err(Rejection::RevertTooLate {
            name: name.clone(),
            version: version.clone(),
            window,
        });
    }
    let Ok(v) = Version::parse(version) else {
        return Ok(());
    };
    let dependents: Vec<String> = others
        .iter()
        .filter(|r| r.repository == row.repository && r.package != *name)
        .filter(|r| {
            r.requirements.iter().any(|d| {
                d.name == *name
                    && d.repository.as_deref().is_none_or(|x| x == row.repository)
                    && Requirement::parse(&d.requirement)
                        .is_ok_and(|q| q.matches(&v) || q.matches_allowing_pre(&v))
            })
        })
        .map(|r| format!("{} {}", r.package, r.version))
        .collect();
    if dependents.is_empty() {
        return Ok(());
    }
    Err(Rejection::HasDependents {
        name: name.clone(),
        version: version.clone(),
        dependents: dependents.join(", "),
    })
}

/// An uploaded tarball's name, version and metadata limits.
pub fn upload(meta: &Metadata) -> Result<(), Rejection> {
    let (name, version) = (&meta.name, &meta.version);
    PackageName::parse(name).map_err(|_| Rejection::BadName(name.clone()))?;
    if name.len() < 2 || name.len() > 64 {
        return Err(Rejection::NameLength(name.clone()));
    }
    if Version::parse(version).is_err() || !registry::is_valid_version(version) {
        return Err(Rejection::BadVersion {
            name: name.clone(),
            version: version.clone(),
        });
    }
    if meta.requirements.len() > MAX_REQUIREMENTS {
        return Err(Rejection::TooManyRequirements {
            name: name.clone(),
            count: meta.requirements.len(),
        });
    }
    let description = meta
        .terms
        .iter()
        .find(|(k, _)| k == "description")
        .and_then(|(_, v)| v.as_str())
        .unwrap_or("");
    if description.chars().count() > MAX_DESCRIPTION {
        return Err(Rejection::DescriptionTooLong(name.clone()));
    }
    Ok(())
}

/// Dependency confusion: a name the upstream has may only be published
/// here when the repository reserves it. `upstream_has` is `None` when
/// there is no upstream index to ask.
pub fn not_upstream(
    name: &str,
    repository: &str,
    upstream: &str,
    reserved: bool,
    upstream_has: Option<bool>,
) -> Result<(), Rejection> {
    match (reserved, upstream_has) {
        (true, _) | (false, Some(false)) => Ok(()),
        (false, Some(true)) => Err(Rejection::UpstreamName {
            name: name.to_owned(),
            upstream: upstream.to_owned(),
            repository: repository.to_owned(),
        }),
        (false, None) => Err(Rejection::NoUpstreamIndex {
            name: name.to_owned(),
            upstream: upstream.to_owned(),
        }),
    }
}

/// When the release being published was first inserted: `now` for a new
/// one; the existing one's time for a replace within the window.
pub fn publish_slot(
    previous: Option<&ReleaseRow>,
    name: &str,
    version: &str,
    replace: bool,
    now: i64,
    window: Window,
) -> Result<i64, Rejection> {
    match previous {
        None => Ok(now),
        Some(_) if !replace => Err(Rejection::Immutable {
            name: name.to_owned(),
            version: version.to_owned(),
            window,
        }),
        Some(p) if !window.open(p.inserted_at, now) => Err(Rejection::ReplaceTooLate {
            name: name.to_owned(),
            version: version.to_owned(),
            window,
        }),
        Some(p) => Ok(p.inserted_at),
    }
}

/// Where a dependency's versions come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source<'a> {
    /// The repository being published to (the release itself counts).
    Own,
    /// The upstream repository.
    Upstream,
    /// Another repository of ours.
    Other(&'a str),
}

/// The repositories a requirement may name.
#[derive(Debug, Clone, Copy)]
pub struct Repositories<'a> {
    /// The one being published to.
    pub own: &'a str,
    /// The upstream's name.
    pub upstream: &'a str,
    /// Every repository of ours.
    pub ours: &'a [&'a str],
}

/// Every requirement of `meta` parses and is met by a release where it
/// points. `versions(source, package)` gives that repository's versions of
/// a package (`None`: it has no such package); its error stops the check.
pub fn requirements<E>(
    meta: &Metadata,
    repos: Repositories<'_>,
    mut versions: impl FnMut(Source<'_>, &str) -> Result<Option<Vec<String>>, E>,
) -> Result<Result<(), Rejection>, E> {
    let name = &meta.name;
    for dep in &meta.requirements {
        let bad = |reason: String| Rejection::BadRequirement {
            name: name.clone(),
            dependency: dep.name.clone(),
            reason,
        };
        let req = match Requirement::parse(&dep.requirement) {
            Ok(r) => r,
            Err(e) => return Ok(Err(bad(format!("requirement {:?}: {e}", dep.requirement)))),
        };
        if PackageName::parse(&dep.name).is_err() {
            return Ok(Err(bad("not a package name".into())));
        }
        let target = dep.repository.as_deref().unwrap_or(repos.own);
        let source = if target == repos.own {
            Source::Own
        } else if target == repos.upstream {
            Source::Upstream
        } else if repos.ours.contains(&target) {
            Source::Other(target)
        } else {
            let mut known = vec![repos.upstream];
            known.extend_from_slice(repos.ours);
            return Ok(Err(Rejection::UnknownDependencyRepository {
                name: name.clone(),
                dependency: dep.name.clone(),
                repository: target.to_owned(),
                known: known.join(", "),
            }));
        };
        let mut found = versions(source, &dep.name)?;
        if source == Source::Own && dep.name == *name {
            found
                .get_or_insert_with(Vec::new)
                .push(meta.version.clone());
        }
        let Some(found) = found else {
            return Ok(Err(Rejection::MissingDependency {
                name: name.clone(),
                dependency: dep.name.clone(),
                repository: target.to_owned(),
            }));
        };
        let met = found.iter().any(|v| {
            Version::parse(v).is_ok_and(|v| req.matches(&v) || req.matches_allowing_pre(&v))
        });
        if !met {
            return Ok(Err(Rejection::UnsatisfiedDependency {
                name: name.clone(),
                dependency: dep.name.clone(),
                requirement: dep.requirement.clone(),
                repository: target.to_owned(),
                versions: found.join(", "),
            }));
        }
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tarball::Requirement as Dep;

    const HOUR: Window = Window(3600);
    const T0: i64 = 1_795_341_600;

    fn row(package: &str, version: &str, inserted_at: i64, deps: &[(&str, &str)]) -> ReleaseRow {
        ReleaseRow {
            repository: "acme".into(),
            package: package.into(),
            version: version.into(),
            outer_sha256: [1; 32],
            inner_sha256: [2; 32],
            size: 10,
            requirements: deps
                .iter()
                .map(|(n, r)| Dep {
                    name: (*n).into(),
                    requirement: (*r).into(),
                    optional: false,
                    app: Some((*n).into()),
                    repository: None,
                })
                .collect(),
            meta: serde_json::json!({}),
            retired: None,
            docs_sha256: None,
            publisher: "ann".into(),
            inserted_at,
            updated_at: inserted_at,
        }
    }

    fn meta(name: &str, version: &str, deps: &[(&str, &str, Option<&str>)]) -> Metadata {
        Metadata {
            name: name.into(),
            version: version.into(),
            requirements: deps
                .iter()
                .map(|(n, r, repo)| Dep {
                    name: (*n).into(),
                    requirement: (*r).into(),
                    optional: false,
                    app: Some((*n).into()),
                    repository: repo.map(str::to_owned),
                })
                .collect(),
            app: Some(name.into()),
            build_tools: vec!["mix".into()],
            terms: Vec::new(),
        }
    }

    #[test]
    fn owners_admins_and_strangers() {
        let owners = vec![("ann".to_string(), "full".to_string())];
        let ann = Asker {
            user: "ann",
            admin: false,
        };
        let bob = Asker {
            user: "bob",
            admin: false,
        };
        let admin = Asker {
            user: "root",
            admin: true,
        };
        assert!(
            may_change("x", &[], bob).unwrap(),
            "the first publisher owns it"
        );
        assert!(!may_change("x", &owners, ann).unwrap());
        assert!(!may_change("x", &owners, admin).unwrap());
        let refused = may_change("x", &owners, bob).unwrap_err();
        assert_eq!(refused.kind(), Kind::Forbidden);
        assert!(refused.to_string().contains("owned by ann"), "{refused}");
    }

    #[test]
    fn the_window_decides_replace_and_revert() {
        // The regression test of the publish lifecycle, without waiting it out.
        let published = row("app", "1.0.0", T0, &[]);
        assert_eq!(
            publish_slot(None, "app", "1.0.0", false, T0, HOUR).unwrap(),
            T0
        );
        assert!(matches!(
            publish_slot(Some(&published), "app", "1.0.0", false, T0 + 1, HOUR),
            Err(Rejection::Immutable { .. })
        ));
        assert_eq!(
            publish_slot(Some(&published), "app", "1.0.0", true, T0 + 3600, HOUR).unwrap(),
            T0,
            "a replace keeps the first publication time"
        );
        assert!(matches!(
            publish_slot(Some(&published), "app", "1.0.0", true, T0 + 3601, HOUR),
            Err(Rejection::ReplaceTooLate { .. })
        ));
        revert(&published, &[], T0 + 3600, HOUR).unwrap();
        let late = revert(&published, &[], T0 + 3601, HOUR).unwrap_err();
        assert!(matches!(late, Rejection::RevertTooLate { .. }));
        assert!(late.to_string().contains("1 hour(s)"), "{late}");
        assert_eq!(Window(90).to_string(), "2 minute(s)");
    }

    #[test]
    fn a_release_others_depend_on_is_not_reverted() {
        let lib = row("lib", "1.0.0", T0, &[]);
        let app = row("app", "0.1.0", T0, &[("lib", "~> 1.0")]);
        let other = row("other", "0.1.0", T0, &[("lib", "~> 2.0")]);
        let refused = revert(&lib, &[app.clone(), other.clone()], T0, HOUR).unwrap_err();
        assert!(
            matches!(&refused, Rejection::HasDependents { dependents, .. } if dependents == "app 0.1.0"),
            "{refused}"
        );
        revert(&lib, &[other], T0, HOUR).unwrap();
        let rows = [lib.clone()];
        assert_eq!(release(&rows, "acme", "lib", "1.0.0").unwrap(), &lib);
        assert_eq!(
            release(&rows, "acme", "lib", "2.0.0").unwrap_err().kind(),
            Kind::NotFound
        );
    }

    #[test]
    fn uploads_need_a_good_name_version_and_limits() {
        upload(&meta("acme_app", "1.0.0", &[])).unwrap();
        for (name, version) in [("Bad", "1.0.0"), ("a", "1.0.0"), ("ok_name", "1.0")] {
            let refused = upload(&meta(name, version, &[])).unwrap_err();
            assert_eq!(refused.kind(), Kind::Invalid, "{name} {version}: {refused}");
        }
        let mut long = meta("acme_app", "1.0.0", &[]);
        long.terms.push((
            "description".into(),
            crate::tarball::terms::Term::String("é".repeat(1001)),
        ));
        assert!(matches!(
            upload(&long),
            Err(Rejection::DescriptionTooLong(name)) if name == "acme_app"
        ));
    }

    #[test]
    fn upstream_names_need_a_reservation() {
        not_upstream("jason", "acme", "hexpm", false, Some(false)).unwrap();
        not_upstream("jason", "acme", "hexpm", true, Some(true)).unwrap();
        let shadow = not_upstream("jason", "acme", "hexpm", false, Some(true)).unwrap_err();
        assert!(matches!(shadow, Rejection::UpstreamName { .. }));
        assert_eq!(shadow.kind(), Kind::Forbidden);
        assert!(matches!(
            not_upstream("jason", "acme", "hexpm", false, None),
            Err(Rejection::NoUpstreamIndex { .. })
        ));
    }

    #[test]
    fn requirements_resolve_where_they_point() {
        let repos = Repositories {
            own: "acme",
            upstream: "hexpm",
            ours: &["acme", "tools"],
        };
        let lookup = |source: Source<'_>, package: &str| -> Result<Option<Vec<String>>, ()> {
            Ok(match (source, package) {
                (Source::Own, "lib") => Some(vec!["1.2.0".into()]),
                (Source::Upstream, "jason") => Some(vec!["1.4.4".into()]),
                (Source::Other("tools"), "fmt") => Some(vec!["0.3.0".into()]),
                _ => None,
            })
        };
        let check = |deps: &[(&str, &str, Option<&str>)]| {
            requirements(&meta("app", "1.0.0", deps), repos, lookup).unwrap()
        };
        check(&[
            ("lib", "~> 1.0", None),
            ("jason", ">= 1.0.0", Some("hexpm")),
            ("fmt", "~> 0.3", Some("tools")),
        ])
        .unwrap();
        // Its own other versions count: a package may depend on itself.
        check(&[("app", "~> 1.0", None)]).unwrap();
        assert!(matches!(
            check(&[("lib", "~> 2.0", None)]),
            Err(Rejection::UnsatisfiedDependency { .. })
        ));
        assert!(matches!(
            check(&[("nope", "~> 1.0", None)]),
            Err(Rejection::MissingDependency { .. })
        ));
        assert!(matches!(
            check(&[("lib", "~> 1.0", Some("elsewhere"))]),
            Err(Rejection::UnknownDependencyRepository { .. })
        ));
        assert!(matches!(
            check(&[("lib", "not a requirement", None)]),
            Err(Rejection::BadRequirement { .. })
        ));
        // A lookup failure is passed through, not turned into a refusal.
        let failing = |_: Source<'_>, _: &str| -> Result<Option<Vec<String>>, &str> { Err("disk") };
        assert!(matches!(
            requirements(
                &meta("app", "1.0.0", &[("lib", "~> 1.0", None)]),
                repos,
                failing
            ),
            Err("disk")
        ));
    }
}
