//! The upstream's checks of what a bundle carries, defined once for both
//! sides: the importer refuses a bundle that fails one, and the exporter
//! leaves out of its tree a proxied file that would fail one, because a
//! bundle the importer refuses stays refused (it is signed, and the next
//! bundle chains from it), so one such file would stop the air gap for good.

use super::UpstreamCheck;
use crate::config::UpstreamConfig;
use crate::registry::{self, PackageName, proto::package::Package};
use crate::upstream::release::Sums;

/// `tarballs/NAME-VERSION.tar` as (NAME, VERSION); `None` for another path
/// or a NAME that is not a package name (the importer then finds no record).
pub(super) fn tarball_release(path: &str) -> Option<(&str, &str)> {
    path.strip_prefix("tarballs/")?
        .strip_suffix(".tar")?
        .split_once('-')
        .filter(|(name, _)| PackageName::parse(name).is_ok())
}

/// Record `packages/NAME`: signature, repository and name, with the
/// `[upstream]` key and size limit.
pub(super) fn verify_record(
    upstream: &UpstreamConfig,
    name: &str,
    bytes: &[u8],
) -> Result<Package, UpstreamCheck> {
    registry::verify_package_within(
        bytes,
        &upstream.public_key,
        &upstream.repository,
        name,
        upstream.max_registry_bytes,
    )
    .map(registry::Verified::into_inner)
    .map_err(UpstreamCheck::from)
}

/// Whether `path` is an index file, which the importer checks by
/// signature and origin; any other file that is neither a record nor a
/// tarball (our repositories, docs) rests on the bundle's own signature.
pub(super) fn is_index(path: &str) -> bool {
    matches!(path, "names" | "versions")
}

/// `/names` or `/versions` by signature and origin, with the `[upstream]`
/// key and size limit (anything else passes).
pub(super) fn verify_index(
    upstream: &UpstreamConfig,
    path: &str,
    bytes: &[u8],
) -> Result<(), UpstreamCheck> {
    let (key, repo, max) = (
        &upstream.public_key,
        upstream.repository.as_str(),
        upstream.max_registry_bytes,
    );
    match path {
        "names" => registry::verify_names_within(bytes, key, repo, max).map(drop),
        "versions" => registry::verify_versions_within(bytes, key, repo, max).map(drop),
        _ => Ok(()),
    }
    .map_err(UpstreamCheck::from)
}

/// The sums `record` lists for release `version`, if its outer checksum is
/// `sha` (the tarball's content).
pub(super) fn listed_sums(
    record: &Package,
    version: &str,
    sha: &str,
) -> Result<Sums, UpstreamCheck> {
    let release = record
        .releases
        .iter()
        .find(|r| r.version == version)
        .ok_or(UpstreamCheck::NotInRecord)?;
    Sums::of(release)
        .filter(|s| hex::encode(s.outer) == sha)
        .ok_or(UpstreamCheck::Checksum)
}

/// Tarball `bytes` of NAME-VERSION against its record's sums: outer and
/// inner checksums and structure, within hex_core's limits.
pub(super) fn verify_tarball(
    name: &str,
    version: &str,
    sums: &Sums,
    bytes: &[u8],
) -> Result<crate::tarball::Verified, UpstreamCheck> {
    let expected = crate::tarball::Expected {
        name,
        version,
        outer_checksum: &sums.outer,
        inner_checksum: Some(&sums.inner),
    };
    crate::tarball::verify(bytes, &expected, &crate::tarball::Limits::default())
        .map_err(UpstreamCheck::from)
}
