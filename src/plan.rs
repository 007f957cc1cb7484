//! PURE sync planning: from the verified upstream index and the local state,
//! decide which packages to fetch, which are current, and what to remove.
//! Also the plain values the plan reads from the state database (what a
//! package holds, the validators of a conditional request), so the database
//! and the upstream client depend on the plan, never the other way round.

use std::collections::{BTreeMap, BTreeSet};

use crate::registry::proto;

/// What the state knows about one mirrored package.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PackageState {
    /// `updated_at` from the upstream `/names` when it was synced.
    pub updated_at: Option<(i64, i32)>,
    /// Versions in the published package record, in record order.
    pub versions: Vec<String>,
    /// Indexes into `versions` of retired releases.
    pub retired: Vec<i32>,
    /// Dependencies of every release: (package, repository if named).
    pub deps: Vec<(String, Option<String>)>,
}

/// Cache validators remembered from an earlier response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    /// The `ETag` header, verbatim.
    pub etag: Option<String>,
    /// The `Last-Modified` header, verbatim.
    pub last_modified: Option<String>,
}

impl Validators {
    /// True when there is nothing to make a request conditional with.
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

/// What the upstream index says about one package.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Remote {
    /// `updated_at` from `/names`, when the upstream publishes it.
    pub updated_at: Option<(i64, i32)>,
    /// Versions from `/versions`.
    pub versions: Vec<String>,
    /// Retired indexes from `/versions`.
    pub retired: Vec<i32>,
}

/// Joins `/names` and `/versions` into one map by package name.
pub fn remote_index(
    names: &proto::names::Names,
    versions: &proto::versions::Versions,
) -> BTreeMap<String, Remote> {
    let mut map: BTreeMap<String, Remote> = names
        .packages
        .iter()
        .map(|p| {
            let remote = Remote {
                updated_at: p.updated_at.as_ref().map(|t| (t.seconds, t.nanos)),
                ..Remote::default()
            };
            (p.name.clone(), remote)
        })
        .collect();
    for p in &versions.packages {
        let entry = map.entry(p.name.clone()).or_default();
        entry.versions = p.versions.clone();
        entry.retired = p.retired.clone();
    }
    map
}

/// True when the package record must be fetched (conditionally) again.
///
/// When the upstream publishes `updated_at`, an equal timestamp and equal
/// version and retirement lists mean nothing changed. Without `updated_at`
/// a record can change in ways `/versions` does not show (a retirement
/// message, an advisory), so it is always asked for again; the request is
/// conditional and costs a 304 when nothing changed.
pub fn needs_fetch(remote: Option<&Remote>, local: Option<&PackageState>) -> bool {
    let (Some(remote), Some(local)) = (remote, local) else {
        return true;
    };
    remote.updated_at.is_none()
        || remote.updated_at != local.updated_at
        || remote.versions != local.versions
        || remote.retired != local.retired
}

/// Versions present locally that the new record no longer has.
pub fn dropped_versions<'a>(old: &'a [String], new: &[String]) -> Vec<&'a str> {
    let new: BTreeSet<&str> = new.iter().map(String::as_str).collect();
    old.iter()
        .map(String::as_str)
        .filter(|v| !new.contains(v))
        .collect()
}

/// Packages held locally that are no longer part of the mirror.
pub fn removed_packages<'a>(
    local: impl IntoIterator<Item = &'a String>,
    wanted: &BTreeSet<String>,
) -> Vec<String> {
    local
        .into_iter()
        .filter(|n| !wanted.contains(*n))
        .cloned()
        .collect()
}

/// Retired indexes of a package record, the way `/versions` lists them.
pub fn retired_indexes(package: &proto::package::Package) -> Vec<i32> {
    package
        .releases
        .iter()
        .enumerate()
        .filter(|(_, r)| r.retired.is_some())
        .map(|(i, _)| i as i32)
        .collect()
}

/// How far an upstream index may go back in one sync before it is taken
/// for a rollback (an old, validly signed index replayed). Hex v2 index
/// files carry no sequence number, and upstream may remove releases (hex.pm
/// lets an owner revert one within an hour), so a few changes are normal;
/// many at once are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollbackLimits {
    /// Packages whose newest version may go backwards in one sync.
    pub max_backwards: usize,
    /// Share of the mirrored releases, in percent, that may vanish (once
    /// more than [`MIN_VANISHED`] have).
    pub max_vanished_percent: u32,
}

/// Releases that may always vanish in one sync, whatever the share: a small
/// mirror sees a few reverts, and only a bulk disappearance is suspect.
pub const MIN_VANISHED: usize = 10;

impl Default for RollbackLimits {
    fn default() -> Self {
        Self {
            max_backwards: 3,
            max_vanished_percent: 1,
        }
    }
}

/// An index that went back further than [`RollbackLimits`] allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rollback {
    /// Too many packages' newest version went backwards.
    #[error(
        "the newest version of {count} packages went backwards (more than {limit}), e.g. {examples}"
    )]
    Backwards {
        /// How many.
        count: usize,
        /// The limit.
        limit: usize,
        /// The first few, as `name was -> now`.
        examples: String,
    },
    /// Too many releases vanished.
    #[error("{vanished} of {total} mirrored releases vanished (more than {limit_percent}%)")]
    Vanished {
        /// Releases no longer listed.
        vanished: usize,
        /// Releases mirrored before.
        total: usize,
        /// The limit, in percent.
        limit_percent: u32,
    },
}

/// Compares the upstream index with what the mirror holds and reports a
/// rollback beyond `limits`. Only packages the mirror holds count; a
/// version that does not parse is ignored.
pub fn rollback(
    local: &BTreeMap<String, PackageState>,
    remote: &BTreeMap<String, Remote>,
    limits: RollbackLimits,
) -> Option<Rollback> {
    use crate::version::Version;
    let newest = |versions: &[String]| versions.iter().filter_map(|v| Version::parse(v).ok()).max();
    let mut backwards = Vec::new();
    let (mut vanished, mut total) = (0usize, 0usize);
    for (name, held) in local {
        total += held.versions.len();
        let Some(now) = remote.get(name) else {
            vanished += held.versions.len();
            continue;
        };
        vanished += dropped_versions(&held.versions, &now.versions).len();
        if let (Some(was), Some(is)) = (newest(&held.versions), newest(&now.versions))
            && is < was
        {
            backwards.push(format!("{name} {was} -> {is}"));
        }
    }
    if backwards.len() > limits.max_backwards {
        return Some(Rollback::Backwards {
            count: backwards.len(),
            limit: limits.max_backwards,
            examples: backwards[..3.min(backwards.len())].join(", "),
        });
    }
    if vanished > MIN_VANISHED && vanished * 100 > total * limits.max_vanished_percent as usize {
        return Some(Rollback::Vanished {
            vanished,
            total,
            limit_percent: limits.max_vanished_percent,
        });
    }
    None
}

/// Which check a package failed: the kinds the quarantine and `/metrics`
/// report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureKind {
    /// A signature is missing, foreign or does not verify.
    Signature,
    /// A file is for another repository or package than the one asked for.
    Origin,
    /// A tarball does not match the checksums of its signed record.
    Checksum,
    /// Malformed: bad gzip, protobuf, tar, terms, paths or links.
    Structure,
    /// The upstream could not supply it: connection, timeout, status, 404.
    Transport,
    /// Larger than a limit allows.
    Size,
}

impl FailureKind {
    /// Every kind, in report order.
    pub const ALL: [Self; 6] = [
        Self::Signature,
        Self::Origin,
        Self::Checksum,
        Self::Structure,
        Self::Transport,
        Self::Size,
    ];

    /// The name used in the database, `/metrics` and `hexmirror status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Signature => "signature",
            Self::Origin => "origin",
            Self::Checksum => "checksum",
            Self::Structure => "structure",
            Self::Transport => "transport",
            Self::Size => "size",
        }
    }

    /// The kind named `name`, as [`FailureKind::as_str`] writes it.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// The kind of a refused registry file.
pub fn registry_failure(e: &crate::registry::RegistryError) -> FailureKind {
    use crate::registry::RegistryError as E;
    match e {
        E::MissingSignature | E::BadSignature => FailureKind::Signature,
        E::WrongRepository { .. } | E::WrongPackage { .. } => FailureKind::Origin,
        E::TooLarge { .. } => FailureKind::Size,
        _ => FailureKind::Structure,
    }
}

/// The kind of a refused tarball.
pub fn tarball_failure(e: &crate::tarball::TarballError) -> FailureKind {
    use crate::tarball::TarballError as E;
    match e {
        E::TooLarge { .. } | E::MemberTooLarge { .. } | E::UncompressedTooLarge { .. } => {
            FailureKind::Size
        }
        E::OuterChecksum { .. }
        | E::InnerChecksum { .. }
        | E::ExpectedChecksumLength { .. }
        | E::MalformedChecksum { .. }
        | E::ChecksumMember { .. } => FailureKind::Checksum,
        E::NameMismatch { .. } | E::VersionMismatch { .. } => FailureKind::Origin,
        _ => FailureKind::Structure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(updated: Option<(i64, i32)>, versions: &[&str]) -> Remote {
        Remote {
            updated_at: updated,
            versions: versions.iter().map(|s| s.to_string()).collect(),
            retired: vec![],
        }
    }

    fn local(updated: Option<(i64, i32)>, versions: &[&str]) -> PackageState {
        PackageState {
            updated_at: updated,
            versions: versions.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_replayed_index_is_a_rollback_and_a_revert_is_not() {
        let held: BTreeMap<String, PackageState> = (0..100)
            .map(|i| (format!("p{i}"), local(None, &["1.0.0", "1.1.0"])))
            .collect();
        let now = |f: &dyn Fn(usize) -> Vec<&'static str>| -> BTreeMap<String, Remote> {
            (0..100)
                .map(|i| (format!("p{i}"), remote(None, &f(i))))
                .collect()
        };
        let limits = RollbackLimits::default();
        // Growth and one owner's revert of a fresh release are normal.
        assert_eq!(
            rollback(&held, &now(&|_| vec!["1.0.0", "1.1.0", "1.2.0"]), limits),
            None
        );
        let one_revert = now(&|i| {
            if i == 7 {
                vec!["1.0.0"]
            } else {
                vec!["1.0.0", "1.1.0"]
            }
        });
        assert_eq!(rollback(&held, &one_revert, limits), None);
        // An old index replayed: many packages go back at once.
        let replayed = now(&|i| {
            if i < 10 {
                vec!["1.0.0"]
            } else {
                vec!["1.0.0", "1.1.0"]
            }
        });
        assert!(matches!(
            rollback(&held, &replayed, limits),
            Some(Rollback::Backwards {
                count: 10,
                limit: 3,
                ..
            })
        ));
        // A few releases vanishing is normal however small the mirror...
        let thinned = |n: usize| {
            now(&move |i| {
                if i < n {
                    vec!["1.1.0"]
                } else {
                    vec!["1.0.0", "1.1.0"]
                }
            })
        };
        assert_eq!(rollback(&held, &thinned(MIN_VANISHED), limits), None);
        // ...releases vanishing in bulk, newest intact, are not: 12 of 200.
        assert_eq!(
            rollback(&held, &thinned(12), limits),
            Some(Rollback::Vanished {
                vanished: 12,
                total: 200,
                limit_percent: 1
            })
        );
        // A package gone from the index counts all its releases.
        let mut fewer = now(&|_| vec!["1.0.0", "1.1.0"]);
        for i in 0..6 {
            fewer.remove(&format!("p{i}"));
        }
        assert!(matches!(
            rollback(&held, &fewer, limits),
            Some(Rollback::Vanished { vanished: 12, .. })
        ));
        assert_eq!(rollback(&BTreeMap::new(), &fewer, limits), None);
    }

    #[test]
    fn unchanged_package_with_timestamp_is_skipped() {
        let t = Some((10, 0));
        assert!(!needs_fetch(
            Some(&remote(t, &["1.0.0"])),
            Some(&local(t, &["1.0.0"]))
        ));
    }

    #[test]
    fn changes_and_unknowns_are_fetched() {
        let t = Some((10, 0));
        let l = local(t, &["1.0.0"]);
        assert!(needs_fetch(
            Some(&remote(Some((11, 0)), &["1.0.0"])),
            Some(&l)
        ));
        assert!(needs_fetch(Some(&remote(t, &["1.0.0", "1.1.0"])), Some(&l)));
        assert!(needs_fetch(
            Some(&remote(None, &["1.0.0"])),
            Some(&local(None, &["1.0.0"]))
        ));
        assert!(needs_fetch(None, Some(&l)));
        assert!(needs_fetch(Some(&remote(t, &["1.0.0"])), None));
        let mut retired = remote(t, &["1.0.0"]);
        retired.retired = vec![0];
        assert!(needs_fetch(Some(&retired), Some(&l)));
    }

    #[test]
    fn dropped_and_removed() {
        let old = vec!["1.0.0".to_string(), "1.1.0".to_string()];
        assert_eq!(
            dropped_versions(&old, &["1.1.0".to_string()]),
            vec!["1.0.0"]
        );
        let wanted: BTreeSet<String> = ["a".to_string()].into();
        let local = ["a".to_string(), "b".to_string()];
        assert_eq!(removed_packages(&local, &wanted), vec!["b".to_string()]);
    }

    #[test]
    fn index_joins_names_and_versions() {
        let names = proto::names::Names {
            repository: "hexpm".into(),
            packages: vec![proto::names::Package {
                name: "a".into(),
                updated_at: Some(proto::names::Timestamp {
                    seconds: 5,
                    nanos: 1,
                }),
            }],
        };
        let versions = proto::versions::Versions {
            repository: "hexpm".into(),
            packages: vec![proto::versions::Package {
                name: "a".into(),
                versions: vec!["1.0.0".into()],
                retired: vec![0],
                with_advisories: vec![],
            }],
        };
        let idx = remote_index(&names, &versions);
        assert_eq!(idx["a"].updated_at, Some((5, 1)));
        assert_eq!(idx["a"].retired, vec![0]);
    }
}
