//! PURE. Registry records of hosted packages: the signed package record built
//! from the releases we hold, and the one-entry edits of `/names` and
//! `/versions` a publish needs, so a publish never re-reads every record of
//! the repository.

use std::cmp::Ordering;

use crate::index;
use crate::index::encoded::{EncodedNames, EncodedVersions};
use crate::registry::proto::{self, names, package};
use crate::tarball::Requirement;
use crate::version::Version;
use serde_json::Value;

/// One hosted release as the registry record needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The version.
    pub version: String,
    /// SHA-256 of the whole tarball.
    pub outer_checksum: [u8; 32],
    /// SHA-256 of VERSION ‖ metadata.config ‖ contents.tar.gz.
    pub inner_checksum: [u8; 32],
    /// Dependencies from the tarball's metadata.
    pub requirements: Vec<Requirement>,
    /// Retirement: reason and message.
    pub retired: Option<(Retirement, String)>,
    /// Unix seconds of the first publication.
    pub published_at: i64,
}

/// Why a release was retired (the registry's `RetirementReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retirement {
    /// Any other reason.
    Other,
    /// The release is broken.
    Invalid,
    /// The release has a security problem.
    Security,
    /// The package is no longer maintained.
    Deprecated,
    /// The package was renamed.
    Renamed,
}

impl Retirement {
    /// Parses the API's reason string (`other`, `invalid`, ...).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "other" => Self::Other,
            "invalid" => Self::Invalid,
            "security" => Self::Security,
            "deprecated" => Self::Deprecated,
            "renamed" => Self::Renamed,
            _ => return None,
        })
    }

    /// The API's reason string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Other => "other",
            Self::Invalid => "invalid",
            Self::Security => "security",
            Self::Deprecated => "deprecated",
            Self::Renamed => "renamed",
        }
    }

    /// The reason a signed record gives (an unknown number is `Other`).
    pub fn from_proto(reason: i32) -> Self {
        use proto::package::RetirementReason as R;
        match R::try_from(reason) {
            Ok(R::RetiredInvalid) => Self::Invalid,
            Ok(R::RetiredSecurity) => Self::Security,
            Ok(R::RetiredDeprecated) => Self::Deprecated,
            Ok(R::RetiredRenamed) => Self::Renamed,
            Ok(R::RetiredOther) | Err(_) => Self::Other,
        }
    }

    fn proto(self) -> proto::package::RetirementReason {
        use proto::package::RetirementReason as R;
        match self {
            Self::Other => R::RetiredOther,
            Self::Invalid => R::RetiredInvalid,
            Self::Security => R::RetiredSecurity,
            Self::Deprecated => R::RetiredDeprecated,
            Self::Renamed => R::RetiredRenamed,
        }
    }
}

/// Orders version strings by SemVer precedence; unparsable ones (which the
/// API never stores) sort last, by text, so the order is total.
pub fn cmp_versions(a: &str, b: &str) -> Ordering {
    match (Version::parse(a), Version::parse(b)) {
        (Ok(x), Ok(y)) => x.cmp_precedence(&y).then_with(|| a.cmp(b)),
        (Ok(_), Err(_)) => Ordering::Less,
        (Err(_), Ok(_)) => Ordering::Greater,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

/// The package record of `name` in `repository`: releases oldest first, as
/// hex.pm orders them. A dependency naming `repository` itself is written
/// without a repository, meaning "this one", as hex.pm does.
pub fn package_record(repository: &str, name: &str, releases: &[Release]) -> package::Package {
    let mut sorted: Vec<&Release> = releases.iter().collect();
    sorted.sort_by(|a, b| cmp_versions(&a.version, &b.version));
    package::Package {
        name: name.to_owned(),
        repository: repository.to_owned(),
        advisories: Vec::new(),
        releases: sorted
            .into_iter()
            .map(|r| package::Release {
                version: r.version.clone(),
                inner_checksum: r.inner_checksum.to_vec(),
                outer_checksum: Some(r.outer_checksum.to_vec()),
                dependencies: r
                    .requirements
                    .iter()
                    .map(|d| package::Dependency {
                        package: d.name.clone(),
                        requirement: d.requirement.clone(),
                        optional: d.optional.then_some(true),
                        app: d.app.clone().filter(|a| a != &d.name),
                        repository: d.repository.clone().filter(|r| r != repository),
                    })
                    .collect(),
                retired: r
                    .retired
                    .as_ref()
                    .map(|(reason, message)| package::RetirementStatus {
                        reason: reason.proto() as i32,
                        message: Some(message.clone()).filter(|m| !m.is_empty()),
                    }),
                advisory_indexes: Vec::new(),
                published_at: Some(package::Timestamp {
                    seconds: r.published_at,
                    nanos: 0,
                }),
            })
            .collect(),
    }
}

/// Puts `name` into `/names` (sorted by name) with `updated_at`, or takes it
/// out when `updated_at` is `None`. Only this entry is encoded.
pub fn update_names(names: &mut EncodedNames, name: &str, updated_at: Option<i64>) {
    match updated_at {
        Some(seconds) => names.put(&names::Package {
            name: name.to_owned(),
            updated_at: Some(names::Timestamp { seconds, nanos: 0 }),
        }),
        None => {
            names.remove(name);
        }
    }
}

/// Puts `record`'s entry into `/versions` (sorted by name), or takes `name`
/// out when there is no record. Only this entry is encoded.
pub fn update_versions(
    versions: &mut EncodedVersions,
    name: &str,
    record: Option<&package::Package>,
) {
    match record {
        Some(r) => versions.put(&index::versions_entry(r)),
        None => {
            versions.remove(name);
        }
    }
}

/// One hosted release as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleaseRow {
    /// Our repository that holds it.
    pub repository: String,
    /// Package name.
    pub package: String,
    /// Version.
    pub version: String,
    /// SHA-256 of the tarball (also its blob name).
    pub outer_sha256: [u8; 32],
    /// Inner checksum.
    pub inner_sha256: [u8; 32],
    /// Tarball size in bytes.
    pub size: u64,
    /// Dependencies.
    pub requirements: Vec<Requirement>,
    /// `meta` as the API shows it (app, build_tools, elixir, description, licenses, links).
    pub meta: Value,
    /// Retirement reason and message.
    pub retired: Option<(Retirement, String)>,
    /// The docs tarball's blob, if docs were uploaded.
    pub docs_sha256: Option<[u8; 32]>,
    /// Who published it (the token's user).
    pub publisher: String,
    /// Unix seconds of the first publication (a replace keeps it).
    pub inserted_at: i64,
    /// Unix seconds of the last change.
    pub updated_at: i64,
}

impl ReleaseRow {
    /// The registry's view of this release.
    pub fn release(&self) -> Release {
        Release {
            version: self.version.clone(),
            outer_checksum: self.outer_sha256,
            inner_checksum: self.inner_sha256,
            requirements: self.requirements.clone(),
            retired: self.retired.clone(),
            published_at: self.inserted_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(version: &str) -> Release {
        Release {
            version: version.into(),
            outer_checksum: [1; 32],
            inner_checksum: [2; 32],
            requirements: vec![
                Requirement {
                    name: "jason".into(),
                    requirement: "~> 1.0".into(),
                    optional: false,
                    app: Some("jason".into()),
                    repository: Some("hexpm".into()),
                },
                Requirement {
                    name: "acme_util".into(),
                    requirement: ">= 0.1.0".into(),
                    optional: true,
                    app: None,
                    repository: Some("acme".into()),
                },
            ],
            retired: None,
            published_at: 1_700_000_000,
        }
    }

    #[test]
    fn record_orders_releases_and_normalises_dependencies() {
        let mut retired = release("1.0.0-rc.1");
        retired.retired = Some((Retirement::Security, "CVE".into()));
        let r = package_record(
            "acme",
            "acme_web",
            &[release("1.10.0"), release("1.2.0"), retired],
        );
        let versions: Vec<_> = r.releases.iter().map(|r| r.version.as_str()).collect();
        assert_eq!(versions, ["1.0.0-rc.1", "1.2.0", "1.10.0"]);
        assert_eq!(r.repository, "acme");
        let deps = &r.releases[1].dependencies;
        assert_eq!(deps[0].repository.as_deref(), Some("hexpm"));
        assert_eq!(deps[0].app, None, "app equal to the name is implied");
        assert_eq!(deps[1].repository, None, "own repository is implied");
        assert_eq!(deps[1].optional, Some(true));
        let status = r.releases[0].retired.as_ref().unwrap();
        assert_eq!(
            status.reason,
            proto::package::RetirementReason::RetiredSecurity as i32
        );
        assert_eq!(status.message.as_deref(), Some("CVE"));
    }

    #[test]
    fn names_and_versions_edits_keep_order() {
        use prost::Message;
        let mut names = EncodedNames::new("acme");
        update_names(&mut names, "b", Some(2));
        update_names(&mut names, "a", Some(1));
        update_names(&mut names, "c", Some(3));
        update_names(&mut names, "b", Some(5));
        let decoded = names::Names::decode(&names.encode()[..]).unwrap();
        let listed: Vec<_> = decoded.packages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(listed, ["a", "b", "c"]);
        assert_eq!(decoded.packages[1].updated_at.as_ref().unwrap().seconds, 5);
        assert_eq!(decoded.repository, "acme");
        update_names(&mut names, "b", None);
        update_names(&mut names, "zz", None);
        assert_eq!(names.len(), 2);

        let mut versions = EncodedVersions::new("acme");
        let mut old = release("0.1.0");
        old.retired = Some((Retirement::Other, String::new()));
        let rec = package_record("acme", "m", &[release("0.2.0"), old]);
        update_versions(&mut versions, "m", Some(&rec));
        update_versions(
            &mut versions,
            "a",
            Some(&package_record("acme", "a", &[release("1.0.0")])),
        );
        let decoded = proto::versions::Versions::decode(&versions.encode()[..]).unwrap();
        assert_eq!(decoded.packages[0].name, "a");
        assert_eq!(decoded.packages[1].versions, ["0.1.0", "0.2.0"]);
        assert_eq!(decoded.packages[1].retired, [0]);
        update_versions(&mut versions, "m", None);
        assert_eq!(versions.len(), 1);
        assert_eq!(versions.get("m").unwrap(), None);
    }

    #[test]
    fn retirement_reasons_round_trip() {
        for s in ["other", "invalid", "security", "deprecated", "renamed"] {
            assert_eq!(Retirement::parse(s).unwrap().as_str(), s);
        }
        assert!(Retirement::parse("Security").is_none());
    }
}
