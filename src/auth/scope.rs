//! Token scopes: which repositories and packages a token may read, write or
//! administer, and the Hex-style `permissions` that clients send for them.
//!
//! A token holds a list of scopes; it may do something when at least one
//! scope allows it. Scopes only ever add rights, so a list is checked by
//! asking each scope in turn, and "at most the rights of its creator" is
//! "each child scope is covered by one parent scope".

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::version::{Requirement, RequirementError, Version};

/// The wildcard for a scope's repository or package, and the suffix that
/// turns a package name into a prefix.
const ANY: &str = "*";

/// The repository of a scope that stands for every organization its
/// token's user belongs to, at the lower of the scope's access and the
/// member's role. It grants nothing until [`expand_members`] replaces it
/// with the live memberships, at each authentication.
pub const MEMBER: &str = "@member";

/// How much a scope allows; `Admin` includes `Write`, which includes `Read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Fetch the index, packages and tarballs.
    Read,
    /// Also publish, retire and revert releases.
    Write,
    /// Also manage owners and keys.
    Admin,
}

impl Access {
    /// The lowercase name, as in JSON and in `permissions`.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Admin => "admin",
        }
    }

    /// Reads a lowercase name as written by [`Access::as_str`].
    pub fn parse(s: &str) -> Option<Access> {
        match s {
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            "admin" => Some(Access::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One grant of a token: a repository, a package pattern, an access level
/// and optionally the releases that may be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    /// An exact repository name, or `*` for every repository.
    pub repository: String,
    /// `*`, an exact package name, or a prefix ending in `*` like `acme_*`.
    pub package: String,
    /// The most this scope allows.
    pub access: Access,
    /// A Hex version requirement like `~> 5.0` limiting which releases may
    /// be read. A scope with a limit grants `Read` only, whatever `access`
    /// says: letting a version-limited token publish or administer would make
    /// the limit meaningless, and [`Scope::validate`] refuses the combination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<String>,
}

/// Why a scope or a permission list was refused; each message says what to
/// write instead.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScopeError {
    /// The repository is neither `*` nor a valid name.
    #[error(
        "scope repository `{0}`: repository names are a lowercase letter, then lowercase letters, digits and _ (or `*` for every repository)"
    )]
    BadRepository(String),
    /// The package is neither `*`, a valid name nor a valid prefix.
    #[error(
        "scope package `{0}`: package names are lowercase letters, digits and _, starting with a letter; use `*` for every package or a prefix ending in `*` like `acme_*`"
    )]
    BadPackage(String),
    /// The version limit is not a Hex version requirement.
    #[error("scope versions `{versions}`: {source}")]
    BadVersions {
        /// The limit as given.
        versions: String,
        /// What is wrong with it; boxed because requirement errors are large
        /// and would bloat every `Result` carrying a `ScopeError`.
        #[source]
        source: Box<RequirementError>,
    },
    /// A version limit on a scope granting more than `Read`.
    #[error(
        "scope versions `{versions}` with access {access}: a version limit only restricts reads, so use access read or drop the limit"
    )]
    VersionsNeedRead {
        /// The limit as given.
        versions: String,
        /// The access asked for.
        access: Access,
    },
    /// An empty permission list.
    #[error("a key needs at least one permission")]
    NoPermissions,
    /// A permission domain we do not know.
    #[error("permission domain `{0}` is unknown: use api, repository, repositories or package")]
    UnknownDomain(String),
    /// An `api` permission whose resource is not `read` or `write`.
    #[error(
        "permission api resource `{0}` is unknown: use read or write (or no resource for full access)"
    )]
    BadApiResource(String),
    /// A `repository` or `package` permission without a resource.
    #[error(
        "permission domain `{0}` needs a resource: the repository name for repository, REPOSITORY/PACKAGE for package"
    )]
    MissingResource(String),
    /// A `package` resource not of the form `REPOSITORY/PACKAGE`.
    #[error(
        "permission package resource `{0}`: expected REPOSITORY/PACKAGE such as `hexpm/acme_*` or `*/*`"
    )]
    BadPackageResource(String),
    /// A `package` permission with an access level we do not know.
    #[error("permission access `{0}` is unknown: use read, write or admin")]
    BadAccess(String),
    /// `access` or `versions` on a domain other than `package`, where they
    /// would be silently ignored and the key broader than intended.
    #[error(
        "permission domain `{0}` does not take access or versions: use the package domain, e.g. {{\"domain\": \"package\", \"resource\": \"REPOSITORY/*\", \"versions\": \"~> 1.0\"}}"
    )]
    FieldsNeedPackageDomain(String),
}

impl Scope {
    /// Checks names, patterns and the version limit; see [`ScopeError`].
    pub fn validate(&self) -> Result<(), ScopeError> {
        if self.repository != ANY && self.repository != MEMBER && !is_name(&self.repository) {
            return Err(ScopeError::BadRepository(self.repository.clone()));
        }
        let package_ok = self.package == ANY
            || is_name(&self.package)
            || self.package.strip_suffix(ANY).is_some_and(is_name);
        if !package_ok {
            return Err(ScopeError::BadPackage(self.package.clone()));
        }
        if let Some(versions) = &self.versions {
            if let Err(source) = Requirement::parse(versions) {
                return Err(ScopeError::BadVersions {
                    versions: versions.clone(),
                    source: Box::new(source),
                });
            }
            if self.access != Access::Read {
                return Err(ScopeError::VersionsNeedRead {
                    versions: versions.clone(),
                    access: self.access,
                });
            }
        }
        Ok(())
    }

    /// What this scope really grants: `Read` when it has a version limit,
    /// even if `access` says more (a scope that skipped validation must not
    /// get more than the documented rule allows).
    fn effective_access(&self) -> Access {
        if self.versions.is_some() {
            Access::Read
        } else {
            self.access
        }
    }

    fn covers_repository(&self, repository: &str) -> bool {
        self.repository == ANY || self.repository == repository
    }

    fn covers_package(&self, package: &str) -> bool {
        if self.package == ANY {
            return true;
        }
        match self.package.strip_suffix(ANY) {
            Some(prefix) => package.starts_with(prefix),
            None => self.package == package,
        }
    }
}

/// A repository or package name: `^[a-z][a-z0-9_]*$`, at most 255 bytes
/// (the package-name rule hex.pm enforces, applied to repositories too).
fn is_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
        && s.len() <= 255
}

/// Whether some scope allows `access` on `repository` and, if given,
/// `package`.
///
/// `package: None` is a repository-wide action (listing, reading the index):
/// `Read` is allowed by any scope on the repository, because the caller
/// filters what is listed (see [`is_version_limited`]); `Write` and `Admin`
/// need a scope on every package (`*`). A version limit does not stop
/// `Read` here, since the package itself may be seen; callers check each
/// release with [`may_read_release`].
pub fn allows(scopes: &[Scope], repository: &str, package: Option<&str>, access: Access) -> bool {
    scopes.iter().any(|scope| {
        scope.covers_repository(repository)
            && scope.effective_access() >= access
            && match package {
                Some(package) => scope.covers_package(package),
                None => access == Access::Read || scope.package == ANY,
            }
    })
}

/// `scopes` with each [`MEMBER`] scope replaced by one per membership
/// `(organization, role)`: that organization, at the lower of the scope's
/// access and the role, with the scope's package pattern and version limit.
pub fn expand_members(scopes: &[Scope], memberships: &[(String, Access)]) -> Vec<Scope> {
    let mut out = Vec::with_capacity(scopes.len());
    for scope in scopes {
        if scope.repository != MEMBER {
            out.push(scope.clone());
            continue;
        }
        for (org, role) in memberships {
            out.push(Scope {
                repository: org.clone(),
                access: scope.access.min(*role),
                ..scope.clone()
            });
        }
    }
    out
}

/// Whether some scope lets this release be read: it covers the repository
/// and the package, and has no version limit or one that `version` matches
/// (Hex semantics: pre-releases only when the requirement names one).
///
/// Text that is not a version is never readable, and a stored limit that no
/// longer parses allows nothing: both fail closed.
pub fn may_read_release(scopes: &[Scope], repository: &str, package: &str, version: &str) -> bool {
    let Ok(version) = Version::parse(version) else {
        return false;
    };
    scopes.iter().any(|scope| {
        scope.covers_repository(repository)
            && scope.covers_package(package)
            && scope.versions.as_deref().is_none_or(|limit| {
                Requirement::parse(limit).is_ok_and(|requirement| requirement.matches(&version))
            })
    })
}

/// Whether what these scopes may read in `repository` is narrower than
/// everything in it: true unless some scope covers the repository with
/// package `*` and no version limit. Callers serve a filtered index when true.
///
/// Every scope grants at least `Read`, so "scopes that give read" is all
/// scopes covering the repository. With none at all the answer is true
/// (nothing is readable, which is narrower than everything).
pub fn is_version_limited(scopes: &[Scope], repository: &str) -> bool {
    !scopes.iter().any(|scope| {
        scope.covers_repository(repository) && scope.package == ANY && scope.versions.is_none()
    })
}

/// Whether `parent` grants everything `child` grants.
///
/// Repository: `*` covers all, a name covers itself. Package: `*` covers
/// all; a prefix `p*` covers names starting with `p` and prefixes `q*` where
/// `q` starts with `p`; a name covers itself. Access: the child's stated
/// access is at most what the parent really grants. Versions: a parent
/// without a limit covers any; a parent with a limit covers only the same
/// limit text (surrounding whitespace aside), since comparing ranges would
/// be easy to get wrong in the permissive direction.
pub fn covers(parent: &Scope, child: &Scope) -> bool {
    let repository = parent.repository == ANY || parent.repository == child.repository;
    let package = parent.package == ANY
        || match parent.package.strip_suffix(ANY) {
            // A child prefix `q*` names the packages starting with `q`; they
            // all start with `p` exactly when `q` does. `*` itself (q empty)
            // is only covered by `*`, handled above.
            Some(prefix) => {
                let child_stem = child.package.strip_suffix(ANY).unwrap_or(&child.package);
                child.package != ANY && child_stem.starts_with(prefix)
            }
            None => parent.package == child.package,
        };
    let access = child.access <= parent.effective_access();
    let versions = match (&parent.versions, &child.versions) {
        (None, _) => true,
        (Some(p), Some(c)) => p.trim() == c.trim(),
        (Some(_), None) => false,
    };
    repository && package && access && versions
}

/// Whether every `child` scope is covered by some `parent` scope, so a token
/// holding `parent` may create a token holding `child` ("at most its own
/// rights"). An empty `child` is trivially within.
pub fn within(child: &[Scope], parent: &[Scope]) -> bool {
    child.iter().all(|c| parent.iter().any(|p| covers(p, c)))
}

/// Full rights: admin on every package of every repository.
pub fn admin_scopes() -> Vec<Scope> {
    vec![Scope {
        repository: ANY.to_owned(),
        package: ANY.to_owned(),
        access: Access::Admin,
        versions: None,
    }]
}

/// One entry of a Hex `permissions` list, as `mix hex.user key generate` and
/// rebar3 send to `POST /api/keys`, plus our `package` domain.
///
/// Hex domains: `api` (resource `read`, `write`, or none for full access),
/// `repository` (resource: a repository name), `repositories` (all). Ours:
/// `package` with resource `REPOSITORY/PACKAGE` (package may be `*` or a
/// prefix like `acme_*`), optional `access` (`read` by default) and
/// `versions` (a requirement limiting reads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HexPermission {
    /// `api`, `repository`, `repositories` or `package`.
    pub domain: String,
    /// What the domain applies to; its meaning depends on the domain.
    #[serde(default)]
    pub resource: Option<String>,
    /// `read`, `write` or `admin`; `package` domain only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<String>,
    /// A version requirement limiting reads; `package` domain only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<String>,
}

/// Turns a `permissions` list into validated scopes; see [`HexPermission`]
/// for the domains and [`ScopeError`] for what is refused.
pub fn scopes_from_permissions(perms: &[HexPermission]) -> Result<Vec<Scope>, ScopeError> {
    if perms.is_empty() {
        return Err(ScopeError::NoPermissions);
    }
    perms
        .iter()
        .map(|perm| {
            let scope = scope_from_permission(perm)?;
            scope.validate()?;
            Ok(scope)
        })
        .collect()
}

fn scope_from_permission(perm: &HexPermission) -> Result<Scope, ScopeError> {
    let scope = |repository: &str, package: &str, access| Scope {
        repository: repository.to_owned(),
        package: package.to_owned(),
        access,
        versions: None,
    };
    let domain = perm.domain.as_str();
    if domain != "package" && (perm.access.is_some() || perm.versions.is_some()) {
        return Err(ScopeError::FieldsNeedPackageDomain(perm.domain.clone()));
    }
    let missing = || ScopeError::MissingResource(perm.domain.clone());
    match domain {
        "api" => match perm.resource.as_deref() {
            Some("read") => Ok(scope(ANY, ANY, Access::Read)),
            // hex.pm reads an `api` permission without a resource as full
            // API access; both that and `write` are publish rights.
            Some("write") | None => Ok(scope(ANY, ANY, Access::Write)),
            Some(other) => Err(ScopeError::BadApiResource(other.to_owned())),
        },
        "repository" => {
            let name = perm.resource.as_deref().ok_or_else(missing)?;
            Ok(scope(name, ANY, Access::Read))
        }
        // Hex sends no resource here; one given anyway changes nothing.
        "repositories" => Ok(scope(ANY, ANY, Access::Read)),
        "package" => {
            let resource = perm.resource.as_deref().ok_or_else(missing)?;
            let (repository, package) = resource
                .split_once('/')
                .ok_or_else(|| ScopeError::BadPackageResource(resource.to_owned()))?;
            let access = match perm.access.as_deref() {
                None => Access::Read,
                Some(text) => {
                    Access::parse(text).ok_or_else(|| ScopeError::BadAccess(text.to_owned()))?
                }
            };
            Ok(Scope {
                versions: perm.versions.clone(),
                ..scope(repository, package, access)
            })
        }
        _ => Err(ScopeError::UnknownDomain(perm.domain.clone())),
    }
}

/// The `permissions` list for showing a token's scopes, in Hex's own
/// domains where one means exactly the scope and the `package` domain
/// otherwise, so that [`scopes_from_permissions`] gives the scopes back.
pub fn permissions_from_scopes(scopes: &[Scope]) -> Vec<HexPermission> {
    scopes.iter().map(permission_from_scope).collect()
}

fn permission_from_scope(scope: &Scope) -> HexPermission {
    let hex = |domain: &str, resource: Option<&str>| HexPermission {
        domain: domain.to_owned(),
        resource: resource.map(str::to_owned),
        access: None,
        versions: None,
    };
    let everything = scope.package == ANY && scope.versions.is_none();
    match (scope.repository.as_str(), everything, scope.access) {
        (ANY, true, Access::Read) => hex("api", Some("read")),
        (ANY, true, Access::Write) => hex("api", Some("write")),
        (repository, true, Access::Read) => hex("repository", Some(repository)),
        _ => HexPermission {
            domain: "package".to_owned(),
            resource: Some(format!("{}/{}", scope.repository, scope.package)),
            access: Some(scope.access.as_str().to_owned()),
            versions: scope.versions.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Access::{Admin, Read, Write};

    fn s(repository: &str, package: &str, access: Access) -> Scope {
        Scope {
            repository: repository.to_owned(),
            package: package.to_owned(),
            access,
            versions: None,
        }
    }

    fn limited(repository: &str, package: &str, versions: &str) -> Scope {
        Scope {
            versions: Some(versions.to_owned()),
            ..s(repository, package, Access::Read)
        }
    }

    fn perm(domain: &str, resource: Option<&str>) -> HexPermission {
        HexPermission {
            domain: domain.to_owned(),
            resource: resource.map(str::to_owned),
            access: None,
            versions: None,
        }
    }

    #[test]
    fn access_is_ordered_and_serialises_lowercase() {
        assert!(Read < Write && Write < Admin);
        assert_eq!(
            serde_json::to_string(&Admin).ok().as_deref(),
            Some("\"admin\"")
        );
        for a in [Read, Write, Admin] {
            assert_eq!(Access::parse(a.as_str()), Some(a));
            assert_eq!(a.to_string(), a.as_str());
        }
        assert_eq!(Access::parse("Read"), None);
    }

    #[test]
    fn scope_json_omits_missing_versions() {
        let json = serde_json::to_string(&s("hexpm", "*", Read)).unwrap_or_default();
        assert_eq!(
            json,
            r#"{"repository":"hexpm","package":"*","access":"read"}"#
        );
        let back: Scope = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, s("hexpm", "*", Read));
        let json = serde_json::to_string(&limited("a", "b", "~> 1.0")).unwrap_or_default();
        assert!(json.contains(r#""versions":"~> 1.0""#));
    }

    #[test]
    fn validate_accepts_good_scopes() {
        for scope in [
            s("*", "*", Admin),
            s("hexpm", "phoenix", Write),
            s("acme", "acme_*", Read),
            s("a1_b", "x*", Admin),
            s("acme", "a_9", Read),
            limited("acme", "*", "~> 5.0"),
            limited("*", "acme_*", ">= 1.0.0 and < 2.0.0"),
        ] {
            assert_eq!(scope.validate(), Ok(()), "{scope:?}");
        }
    }

    #[test]
    fn validate_refuses_bad_scopes_with_useful_messages() {
        let err = s("hexpm", "Foo", Read).validate().expect_err("uppercase");
        assert_eq!(
            err.to_string(),
            "scope package `Foo`: package names are lowercase letters, digits and _, starting with a letter; use `*` for every package or a prefix ending in `*` like `acme_*`"
        );
        for package in [
            "", "**", "a**", "*a", "a*b", "_a*", "1a", "a-b", "a/b", "é", "A*",
        ] {
            assert_eq!(
                s("hexpm", package, Read).validate(),
                Err(ScopeError::BadPackage(package.to_owned())),
                "{package:?}"
            );
        }
        for repository in ["", "Hexpm", "9a", "a-b", "a*", "**", " hexpm", "a/b"] {
            assert_eq!(
                s(repository, "*", Read).validate(),
                Err(ScopeError::BadRepository(repository.to_owned()))
            );
        }
        let err = limited("a", "*", "~> banana")
            .validate()
            .expect_err("bad requirement");
        assert!(matches!(err, ScopeError::BadVersions { .. }));
        assert!(err.to_string().starts_with("scope versions `~> banana`: "));
        let err = Scope {
            versions: Some("~> 1.0".to_owned()),
            ..s("a", "*", Write)
        }
        .validate()
        .expect_err("versions with write");
        assert!(matches!(
            err,
            ScopeError::VersionsNeedRead { access: Write, .. }
        ));
        assert!(err.to_string().contains("use access read"));
        assert_eq!(
            s(&"a".repeat(256), "*", Read).validate(),
            Err(ScopeError::BadRepository("a".repeat(256)))
        );
    }

    #[test]
    fn allows_matrix() {
        let scopes = [
            s("acme", "acme_*", Write),
            s("hexpm", "phoenix", Admin),
            s("*", "jason", Read),
        ];
        let cases: &[(&str, Option<&str>, Access, bool)] = &[
            // Prefix scope.
            ("acme", Some("acme_web"), Read, true),
            ("acme", Some("acme_web"), Write, true),
            ("acme", Some("acme_web"), Admin, false),
            ("acme", Some("acme_"), Write, true),
            ("acme", Some("acme"), Read, false),
            ("acme", Some("other"), Read, false),
            ("other", Some("acme_web"), Read, false),
            // Exact scope.
            ("hexpm", Some("phoenix"), Admin, true),
            ("hexpm", Some("phoenix_html"), Read, false),
            ("hexpm", Some("phoeni"), Read, false),
            // Repository wildcard, exact package.
            ("hexpm", Some("jason"), Read, true),
            ("anything", Some("jason"), Read, true),
            ("anything", Some("jason"), Write, false),
            // Repository-wide actions: read from any scope, write needs `*`.
            ("acme", None, Read, true),
            ("acme", None, Write, false),
            ("hexpm", None, Read, true),
            ("hexpm", None, Admin, false),
            ("nowhere", None, Read, true), // via the `*` repository scope
        ];
        for &(repository, package, access, expect) in cases {
            assert_eq!(
                allows(&scopes, repository, package, access),
                expect,
                "{repository} {package:?} {access}"
            );
        }
        let wide = [s("acme", "*", Write)];
        assert!(allows(&wide, "acme", None, Write));
        assert!(allows(&wide, "acme", Some("x"), Write));
        assert!(!allows(&wide, "acme", None, Admin));
        assert!(!allows(&wide, "hexpm", None, Read));
        assert!(!allows(&[], "acme", None, Read));
        let admin = admin_scopes();
        assert!(allows(&admin, "any", Some("thing"), Admin));
        assert!(allows(&admin, "any", None, Admin));
    }

    #[test]
    fn version_limited_reads() {
        let scopes = [limited("acme", "secret", "~> 5.0")];
        assert!(may_read_release(&scopes, "acme", "secret", "5.1.0"));
        assert!(may_read_release(&scopes, "acme", "secret", "5.0.0"));
        assert!(!may_read_release(&scopes, "acme", "secret", "6.0.0"));
        assert!(!may_read_release(&scopes, "acme", "secret", "4.9.0"));
        // Elixir/Hex semantics: no pre-releases unless the limit names one.
        assert!(!may_read_release(&scopes, "acme", "secret", "5.2.0-rc.1"));
        assert!(!may_read_release(
            &scopes,
            "acme",
            "secret",
            "not a version"
        ));
        assert!(!may_read_release(&scopes, "acme", "secret", ""));
        assert!(!may_read_release(&scopes, "acme", "other", "5.1.0"));
        assert!(!may_read_release(&scopes, "hexpm", "secret", "5.1.0"));
        // The package itself is visible, the releases are filtered.
        assert!(allows(&scopes, "acme", Some("secret"), Read));
        assert!(allows(&scopes, "acme", None, Read));
        assert!(is_version_limited(&scopes, "acme"));
    }

    #[test]
    fn version_limited_scope_never_grants_write() {
        // Even one that skipped validation and claims admin.
        let sneaky = [Scope {
            versions: Some("~> 5.0".to_owned()),
            ..s("*", "*", Admin)
        }];
        assert!(allows(&sneaky, "acme", Some("secret"), Read));
        assert!(!allows(&sneaky, "acme", Some("secret"), Write));
        assert!(!allows(&sneaky, "acme", Some("secret"), Admin));
        assert!(!allows(&sneaky, "acme", None, Write));
        // Nor may it create a write token.
        assert!(!within(&[s("acme", "secret", Write)], &sneaky));
    }

    #[test]
    fn may_read_release_without_limits() {
        let scopes = [s("acme", "acme_*", Write)];
        assert!(may_read_release(&scopes, "acme", "acme_web", "0.1.0-dev"));
        assert!(!may_read_release(&scopes, "acme", "acme_web", "1.0"));
        assert!(!may_read_release(&scopes, "acme", "jason", "1.0.0"));
        // Any one scope suffices; a stored limit that no longer parses
        // allows nothing.
        let mixed = [
            limited("acme", "x", "~> 1.0"),
            limited("acme", "x", "~> 2.0"),
        ];
        assert!(may_read_release(&mixed, "acme", "x", "2.3.0"));
        assert!(!may_read_release(
            &[limited("acme", "x", "junk")],
            "acme",
            "x",
            "1.0.0"
        ));
        // A limit mentioning a pre-release admits pre-releases.
        let pre = [limited("acme", "x", "~> 2.0-rc.0")];
        assert!(may_read_release(&pre, "acme", "x", "2.0.0-rc.1"));
    }

    #[test]
    fn version_limited_means_narrower_than_everything() {
        assert!(!is_version_limited(&admin_scopes(), "acme"));
        assert!(!is_version_limited(&[s("acme", "*", Read)], "acme"));
        assert!(is_version_limited(&[s("acme", "*", Read)], "hexpm"));
        assert!(is_version_limited(&[s("acme", "acme_*", Admin)], "acme"));
        assert!(is_version_limited(&[s("acme", "x", Admin)], "acme"));
        assert!(is_version_limited(
            &[limited("acme", "*", "~> 1.0")],
            "acme"
        ));
        assert!(is_version_limited(&[], "acme"));
        // An unrestricted scope alongside restricted ones wins.
        assert!(!is_version_limited(
            &[limited("acme", "*", "~> 1.0"), s("*", "*", Read)],
            "acme"
        ));
    }

    #[test]
    fn within_allows_equal_and_narrower() {
        let parent = [s("acme", "acme_*", Write), limited("hexpm", "*", "~> 1.0")];
        assert!(within(&parent, &parent));
        assert!(within(&[], &parent));
        assert!(within(&[s("acme", "acme_web", Read)], &parent));
        assert!(within(&[s("acme", "acme_web_*", Write)], &parent));
        assert!(within(&[s("acme", "acme_*", Read)], &parent));
        assert!(within(&[limited("acme", "acme_x", "~> 9.0")], &parent));
        assert!(within(&[limited("hexpm", "jason", " ~> 1.0 ")], &parent));
        assert!(within(&parent, &admin_scopes()));
        assert!(within(&admin_scopes(), &admin_scopes()));
    }

    #[test]
    fn within_refuses_broader() {
        let parent = [s("acme", "acme_*", Write), limited("hexpm", "*", "~> 1.0")];
        let broader = [
            s("*", "acme_*", Write),                           // repository
            s("other", "acme_x", Read),                        // other repository
            s("acme", "*", Read),                              // package wildcard
            s("acme", "acme*", Read),                          // shorter prefix
            s("acme", "acm", Read),                            // name outside the prefix
            s("acme", "acme_x", Admin),                        // access
            s("hexpm", "jason", Read),                         // drops the version limit
            limited("hexpm", "jason", "~> 2.0"),               // another limit
            limited("hexpm", "jason", ">= 1.0.0 and < 1.5.0"), // narrower, but not proven
        ];
        for child in broader {
            assert!(!within(std::slice::from_ref(&child), &parent), "{child:?}");
            assert!(
                !within(&[parent[0].clone(), child.clone()], &parent),
                "{child:?}"
            );
        }
        // A prefix inside a prefix is fine; an exact parent covers no prefix.
        assert!(covers(&s("a", "ab*", Read), &s("a", "abc*", Read)));
        assert!(covers(&s("a", "ab*", Read), &s("a", "ab*", Read)));
        assert!(!covers(&s("a", "abc*", Read), &s("a", "ab*", Read)));
        assert!(!covers(&s("a", "abc", Read), &s("a", "abc*", Read)));
        assert!(!covers(&s("a", "ab*", Read), &s("a", "*", Read)));
    }

    #[test]
    fn permissions_from_hex_clients() {
        let perms = [
            perm("api", Some("read")),
            perm("api", Some("write")),
            perm("api", None),
            perm("repository", Some("acme")),
            perm("repositories", None),
        ];
        assert_eq!(
            scopes_from_permissions(&perms),
            Ok(vec![
                s("*", "*", Read),
                s("*", "*", Write),
                s("*", "*", Write),
                s("acme", "*", Read),
                s("*", "*", Read),
            ])
        );
        let json = r#"[{"domain":"api","resource":"write"},{"domain":"repositories"},
            {"domain":"package","resource":"acme/acme_*","access":"admin"},
            {"domain":"package","resource":"hexpm/secret","versions":"~> 5.0"}]"#;
        let perms: Vec<HexPermission> = serde_json::from_str(json).expect("valid JSON");
        assert_eq!(
            scopes_from_permissions(&perms),
            Ok(vec![
                s("*", "*", Write),
                s("*", "*", Read),
                s("acme", "acme_*", Admin),
                limited("hexpm", "secret", "~> 5.0"),
            ])
        );
    }

    #[test]
    fn permissions_errors() {
        let one = |p: HexPermission| scopes_from_permissions(&[p]);
        assert_eq!(scopes_from_permissions(&[]), Err(ScopeError::NoPermissions));
        assert_eq!(
            ScopeError::NoPermissions.to_string(),
            "a key needs at least one permission"
        );
        let err = one(perm("organization", Some("acme"))).expect_err("unknown");
        assert_eq!(err, ScopeError::UnknownDomain("organization".to_owned()));
        assert!(err.to_string().contains("`organization`"));
        assert_eq!(
            one(perm("api", Some("admin"))),
            Err(ScopeError::BadApiResource("admin".to_owned()))
        );
        assert_eq!(
            one(perm("repository", None)),
            Err(ScopeError::MissingResource("repository".to_owned()))
        );
        assert_eq!(
            one(perm("repository", Some("Acme"))),
            Err(ScopeError::BadRepository("Acme".to_owned()))
        );
        assert_eq!(
            one(perm("package", None)),
            Err(ScopeError::MissingResource("package".to_owned()))
        );
        assert_eq!(
            one(perm("package", Some("acme"))),
            Err(ScopeError::BadPackageResource("acme".to_owned()))
        );
        assert_eq!(
            one(perm("package", Some("acme/a/b"))),
            Err(ScopeError::BadPackage("a/b".to_owned()))
        );
        let with = |access: Option<&str>, versions: Option<&str>| HexPermission {
            access: access.map(str::to_owned),
            versions: versions.map(str::to_owned),
            ..perm("package", Some("acme/x"))
        };
        assert_eq!(
            one(with(Some("owner"), None)),
            Err(ScopeError::BadAccess("owner".to_owned()))
        );
        assert!(matches!(
            one(with(Some("write"), Some("~> 1.0"))),
            Err(ScopeError::VersionsNeedRead { .. })
        ));
        assert!(matches!(
            one(with(None, Some("~>"))),
            Err(ScopeError::BadVersions { .. })
        ));
        assert_eq!(
            one(HexPermission {
                versions: Some("~> 1.0".to_owned()),
                ..perm("repository", Some("acme"))
            }),
            Err(ScopeError::FieldsNeedPackageDomain("repository".to_owned()))
        );
        // One bad entry refuses the whole list.
        assert!(scopes_from_permissions(&[perm("api", None), perm("nope", None)]).is_err());
    }

    #[test]
    fn permissions_round_trip() {
        let scopes = vec![
            s("*", "*", Read),
            s("*", "*", Write),
            s("*", "*", Admin),
            s("acme", "*", Read),
            s("acme", "*", Write),
            s("acme", "acme_*", Admin),
            s("*", "jason", Read),
            limited("hexpm", "secret", "~> 5.0"),
            limited("*", "*", "~> 1.0"),
        ];
        let perms = permissions_from_scopes(&scopes);
        assert_eq!(perms[0], perm("api", Some("read")));
        assert_eq!(perms[1], perm("api", Some("write")));
        assert_eq!(perms[3], perm("repository", Some("acme")));
        assert_eq!(perms[2].domain, "package");
        assert_eq!(perms[2].resource.as_deref(), Some("*/*"));
        assert_eq!(perms[2].access.as_deref(), Some("admin"));
        assert_eq!(perms[7].versions.as_deref(), Some("~> 5.0"));
        assert_eq!(scopes_from_permissions(&perms), Ok(scopes));
        let json = serde_json::to_string(&perms[0]).unwrap_or_default();
        assert_eq!(json, r#"{"domain":"api","resource":"read"}"#);
    }
}
