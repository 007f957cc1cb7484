//! Verification of Hex package tarballs (format version 3) before they are stored.
//!
//! PURE: takes bytes, returns values; no file system, network or database.
//! A tarball passes only if its outer checksum matches the signed registry,
//! its structure and inner checksum are consistent, its metadata names the
//! expected release, and its contents could be unpacked without leaving the
//! package directory. Contents are inflated as a stream and counted, never
//! written, so a gzip bomb stops at the limit.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

mod metadata;
pub mod terms;

use std::collections::HashSet;
use std::io::{self, Cursor, Read};

use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};
use tar::EntryType;
use thiserror::Error;

pub use metadata::{Metadata, MetadataError, Requirement};

/// Size limits applied while verifying a tarball.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted outer tarball, in bytes.
    pub max_tarball: u64,
    /// Largest accepted inflated `contents.tar.gz` stream, in bytes.
    pub max_uncompressed: u64,
    /// Largest accepted `metadata.config`, in bytes.
    pub max_metadata: u64,
}

impl Default for Limits {
    /// hex_core's current defaults: 16 MiB, 128 MiB and 1 MiB.
    fn default() -> Self {
        Limits {
            max_tarball: 16 * 1024 * 1024,
            max_uncompressed: 128 * 1024 * 1024,
            max_metadata: 1024 * 1024,
        }
    }
}

/// What the signed registry says about the release a tarball should be.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// Package name.
    pub name: &'a str,
    /// Release version.
    pub version: &'a str,
    /// SHA-256 of the whole tarball; must be 32 bytes.
    pub outer_checksum: &'a [u8],
    /// The inner checksum, when the registry gives one; must be 32 bytes.
    pub inner_checksum: Option<&'a [u8]>,
}

/// A tarball that passed [`verify`], with what was learnt from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// SHA-256 of VERSION ‖ metadata.config ‖ contents.tar.gz.
    pub inner_checksum: [u8; 32],
    /// SHA-256 of the whole tarball.
    pub outer_checksum: [u8; 32],
    /// The parsed `metadata.config`.
    pub metadata: Metadata,
}

const VERSION: &str = "VERSION";
const CHECKSUM: &str = "CHECKSUM";
const METADATA: &str = "metadata.config";
const CONTENTS: &str = "contents.tar.gz";
const MAX_VERSION: u64 = 32;
const MAX_CHECKSUM: u64 = 128;

/// Why a tarball was rejected.
#[derive(Debug, Error)]
pub enum TarballError {
    /// The tarball exceeds [`Limits::max_tarball`].
    #[error("tarball is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    /// The caller passed a checksum that is not a SHA-256 digest.
    #[error("expected {which} checksum is {len} bytes, a sha256 digest is 32")]
    ExpectedChecksumLength { which: &'static str, len: usize },
    /// The whole-file SHA-256 differs from the signed registry.
    #[error(
        "outer checksum is {}, signed registry says {}",
        hex::encode(.actual),
        hex::encode(.expected)
    )]
    OuterChecksum { actual: [u8; 32], expected: Vec<u8> },
    /// The outer tar is malformed.
    #[error("outer tar cannot be read: {source}")]
    OuterTar {
        #[source]
        source: io::Error,
    },
    /// A member name appears twice, so readers could disagree on its content.
    #[error("outer tar has member `{name}` more than once")]
    DuplicateMember { name: String },
    /// A required member is not a regular file.
    #[error("outer tar member `{name}` is a {kind}, not a regular file")]
    MemberNotFile { name: &'static str, kind: String },
    /// A required member exceeds its size limit.
    #[error("outer tar member `{name}` is {size} bytes, over the limit of {limit} bytes")]
    MemberTooLarge {
        name: &'static str,
        size: u64,
        limit: u64,
    },
    /// A required member is absent.
    #[error("outer tar has no `{name}` member")]
    MissingMember { name: &'static str },
    /// `VERSION` is not `3`.
    #[error("VERSION is {found:?}, only \"3\" is supported")]
    UnsupportedVersion { found: String },
    /// `CHECKSUM` is not 64 hex digits.
    #[error("CHECKSUM is {found:?}, not 64 hex digits")]
    MalformedChecksum { found: String },
    /// `CHECKSUM` disagrees with the members it covers.
    #[error(
        "inner checksum is {}, CHECKSUM member says {}",
        hex::encode(.actual),
        hex::encode(.recorded)
    )]
    ChecksumMember {
        actual: [u8; 32],
        recorded: [u8; 32],
    },
    /// The inner checksum differs from the signed registry.
    #[error(
        "inner checksum is {}, signed registry says {}",
        hex::encode(.actual),
        hex::encode(.expected)
    )]
    InnerChecksum { actual: [u8; 32], expected: Vec<u8> },
    /// `metadata.config` is not valid Erlang term text.
    #[error("metadata.config is not valid erlang terms: {source}")]
    MetadataSyntax {
        #[source]
        source: terms::TermError,
    },
    /// `metadata.config` parses but lacks or mistypes fields.
    #[error("metadata.config is invalid: {source}")]
    Metadata {
        #[source]
        source: MetadataError,
    },
    /// The metadata names another package.
    #[error("metadata.config names package `{found}`, signed registry says `{expected}`")]
    NameMismatch { found: String, expected: String },
    /// The metadata names another version.
    #[error("metadata.config names version `{found}`, signed registry says `{expected}`")]
    VersionMismatch { found: String, expected: String },
    /// `contents.tar.gz` is not valid gzip.
    #[error("contents.tar.gz is not valid gzip: {source}")]
    ContentsGzip {
        #[source]
        source: io::Error,
    },
    /// The inflated `contents.tar.gz` is not a valid tar.
    #[error("contents.tar.gz does not hold a valid tar: {source}")]
    ContentsTar {
        #[source]
        source: io::Error,
    },
    /// `contents.tar.gz` inflates past [`Limits::max_uncompressed`].
    #[error("contents.tar.gz inflates to more than {limit} bytes")]
    UncompressedTooLarge { limit: u64 },
    /// An entry has an empty path.
    #[error("contents.tar.gz has an entry with an empty path")]
    EmptyPath,
    /// An entry path contains a NUL byte, which file systems would truncate.
    #[error("contents.tar.gz entry {path:?} contains a nul byte")]
    NulInPath { path: String },
    /// An entry path is absolute.
    #[error("contents.tar.gz entry `{path}` is an absolute path")]
    AbsolutePath { path: String },
    /// An entry path has a `..` component.
    #[error("contents.tar.gz entry `{path}` escapes the package")]
    ParentPath { path: String },
    /// An entry path goes through a symlink declared earlier.
    #[error("contents.tar.gz entry `{path}` goes through symlink `{via}`")]
    PathThroughSymlink { path: String, via: String },
    /// An entry type other than file, directory or link.
    #[error(
        "contents.tar.gz entry `{path}` is a {kind}, only files, directories and links are allowed"
    )]
    UnsupportedEntry { path: String, kind: String },
    /// A symlink or hard link without a target.
    #[error("contents.tar.gz link `{path}` has an empty target")]
    EmptyLinkTarget { path: String },
    /// A symlink or hard link with an absolute target.
    #[error("contents.tar.gz link `{path}` points to absolute path `{target}`")]
    AbsoluteLinkTarget { path: String, target: String },
    /// A symlink or hard link whose target resolves outside the package.
    #[error("contents.tar.gz link `{path}` -> `{target}` escapes the package")]
    LinkEscapes { path: String, target: String },
    /// A link whose target goes through (or, for a hard link, is) a symlink,
    /// so where it ends up depends on that other link.
    #[error("contents.tar.gz link `{path}` -> `{target}` goes through symlink `{via}`")]
    LinkThroughSymlink {
        path: String,
        target: String,
        via: String,
    },
}

/// SHA-256 of the whole tarball, as the registry's `outer_checksum` records it.
pub fn outer_checksum(tarball: &[u8]) -> [u8; 32] {
    Sha256::digest(tarball).into()
}

/// Verifies a downloaded or uploaded tarball against what the registry says.
pub fn verify(
    tarball: &[u8],
    expected: &Expected<'_>,
    limits: &Limits,
) -> Result<Verified, TarballError> {
    let size = u64::try_from(tarball.len()).unwrap_or(u64::MAX);
    if size > limits.max_tarball {
        return Err(TarballError::TooLarge {
            size,
            limit: limits.max_tarball,
        });
    }
    let expected_outer = digest_arg("outer", expected.outer_checksum)?;
    let outer = outer_checksum(tarball);
    if outer != expected_outer {
        return Err(TarballError::OuterChecksum {
            actual: outer,
            expected: expected.outer_checksum.to_vec(),
        });
    }

    let verified = inspect_unsized(tarball, outer, limits)?;
    if let Some(expected_inner) = expected.inner_checksum
        && digest_arg("inner", expected_inner)? != verified.inner_checksum
    {
        return Err(TarballError::InnerChecksum {
            actual: verified.inner_checksum,
            expected: expected_inner.to_vec(),
        });
    }
    if verified.metadata.name != expected.name {
        return Err(TarballError::NameMismatch {
            found: verified.metadata.name,
            expected: expected.name.to_owned(),
        });
    }
    if verified.metadata.version != expected.version {
        return Err(TarballError::VersionMismatch {
            found: verified.metadata.version,
            expected: expected.version.to_owned(),
        });
    }
    Ok(verified)
}

/// Checks an uploaded tarball on its own (no registry to compare against):
/// size, structure, the CHECKSUM member, metadata and contents. Publishing
/// uses this; the name and version come from the metadata it returns.
pub fn inspect(tarball: &[u8], limits: &Limits) -> Result<Verified, TarballError> {
    let size = u64::try_from(tarball.len()).unwrap_or(u64::MAX);
    if size > limits.max_tarball {
        return Err(TarballError::TooLarge {
            size,
            limit: limits.max_tarball,
        });
    }
    inspect_unsized(tarball, outer_checksum(tarball), limits)
}

/// Checks a documentation tarball (`NAME-VERSION.tar.gz`, a gzipped tar of
/// HTML) with the same path, link and inflation rules as package contents.
pub fn check_docs(docs: &[u8], limits: &Limits) -> Result<(), TarballError> {
    let size = u64::try_from(docs.len()).unwrap_or(u64::MAX);
    if size > limits.max_tarball {
        return Err(TarballError::TooLarge {
            size,
            limit: limits.max_tarball,
        });
    }
    check_contents(docs, limits.max_uncompressed)
}

fn inspect_unsized(
    tarball: &[u8],
    outer: [u8; 32],
    limits: &Limits,
) -> Result<Verified, TarballError> {
    let members = read_outer(tarball, limits)?;
    if members.version != b"3" {
        return Err(TarballError::UnsupportedVersion {
            found: String::from_utf8_lossy(members.version).into_owned(),
        });
    }
    let recorded = parse_checksum_member(members.checksum)?;
    let inner: [u8; 32] = Sha256::new()
        .chain_update(members.version)
        .chain_update(members.metadata)
        .chain_update(members.contents)
        .finalize()
        .into();
    if inner != recorded {
        return Err(TarballError::ChecksumMember {
            actual: inner,
            recorded,
        });
    }
    let terms = terms::parse_consult(members.metadata)
        .map_err(|source| TarballError::MetadataSyntax { source })?;
    let metadata = metadata::extract(terms).map_err(|source| TarballError::Metadata { source })?;
    check_contents(members.contents, limits.max_uncompressed)?;
    Ok(Verified {
        inner_checksum: inner,
        outer_checksum: outer,
        metadata,
    })
}

fn digest_arg(which: &'static str, bytes: &[u8]) -> Result<[u8; 32], TarballError> {
    <[u8; 32]>::try_from(bytes).map_err(|_| TarballError::ExpectedChecksumLength {
        which,
        len: bytes.len(),
    })
}

fn parse_checksum_member(text: &[u8]) -> Result<[u8; 32], TarballError> {
    let mut digest = [0u8; 32];
    // hex_core writes uppercase; the hex crate accepts both cases.
    match hex::decode_to_slice(text, &mut digest) {
        Ok(()) => Ok(digest),
        Err(_) => Err(TarballError::MalformedChecksum {
            found: String::from_utf8_lossy(text).into_owned(),
        }),
    }
}

/// The four members, borrowed from the tarball: a member's data is one
/// contiguous run of the archive, so nothing is copied.
struct Members<'a> {
    version: &'a [u8],
    checksum: &'a [u8],
    metadata: &'a [u8],
    contents: &'a [u8],
}

fn read_outer<'a>(tarball: &'a [u8], limits: &Limits) -> Result<Members<'a>, TarballError> {
    let outer_err = |source| TarballError::OuterTar { source };
    let mut archive = tar::Archive::new(Cursor::new(tarball));
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut found: [Option<&[u8]>; 4] = [None, None, None, None];
    let wanted: [(&'static str, u64); 4] = [
        (VERSION, MAX_VERSION),
        (CHECKSUM, MAX_CHECKSUM),
        (METADATA, limits.max_metadata),
        (CONTENTS, limits.max_tarball),
    ];
    // Seeking over each member's data instead of reading it through.
    for entry in archive.entries_with_seek().map_err(outer_err)? {
        let entry = entry.map_err(outer_err)?;
        // Every member's data must lie inside the archive: a size field
        // that runs past the end is a truncated or lying archive.
        let start = entry.raw_file_position();
        let size = entry.size();
        // The data's padding to the next 512-byte block must be there too:
        // seeking, tar would take a cut inside it for the archive's end.
        let data = usize::try_from(start)
            .ok()
            .zip(usize::try_from(size).ok())
            .filter(|&(start, size)| {
                size.checked_next_multiple_of(512)
                    .and_then(|padded| start.checked_add(padded))
                    .is_some_and(|end| end <= tarball.len())
            })
            .and_then(|(start, size)| tarball.get(start..start.checked_add(size)?))
            // A sparse member's size is its expanded one; none is ever used.
            .or((entry.header().entry_type() == EntryType::GNUSparse).then_some(&[][..]))
            .ok_or_else(|| {
                outer_err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "member `{}` claims {size} bytes at offset {start}, past the archive's end ({} bytes)",
                        String::from_utf8_lossy(&entry.path_bytes()),
                        tarball.len()
                    ),
                ))
            })?;
        let name = entry.path_bytes().into_owned();
        if !seen.insert(name.clone()) {
            return Err(TarballError::DuplicateMember {
                name: String::from_utf8_lossy(&name).into_owned(),
            });
        }
        // Unknown members are skipped: hex_core ignores them for forward compatibility.
        let Some((slot, &(member, limit))) = found
            .iter_mut()
            .zip(wanted.iter())
            .find(|(_, (member, _))| member.as_bytes() == name.as_slice())
        else {
            continue;
        };
        let kind = entry.header().entry_type();
        if !matches!(kind, EntryType::Regular | EntryType::Continuous) {
            return Err(TarballError::MemberNotFile {
                name: member,
                kind: kind_name(kind),
            });
        }
        if size > limit {
            return Err(TarballError::MemberTooLarge {
                name: member,
                size,
                limit,
            });
        }
        *slot = Some(data);
    }
    let [version, checksum, metadata, contents] = found;
    let take = |data: Option<&'a [u8]>, name| data.ok_or(TarballError::MissingMember { name });
    Ok(Members {
        version: take(version, VERSION)?,
        checksum: take(checksum, CHECKSUM)?,
        metadata: take(metadata, METADATA)?,
        contents: take(contents, CONTENTS)?,
    })
}

fn kind_name(kind: EntryType) -> String {
    match kind {
        EntryType::Regular | EntryType::Continuous => "regular file".into(),
        EntryType::Directory => "directory".into(),
        EntryType::Symlink => "symlink".into(),
        EntryType::Link => "hard link".into(),
        EntryType::Char => "character device".into(),
        EntryType::Block => "block device".into(),
        EntryType::Fifo => "fifo".into(),
        EntryType::GNUSparse => "sparse file".into(),
        other => format!("entry of type {:?}", other.as_byte() as char),
    }
}

/// Counts inflated bytes and fails once they pass the limit, so the caller
/// can tell a bomb from a gzip error after the tar reader has wrapped both.
struct Inflated<R> {
    inner: R,
    count: u64,
    limit: u64,
    over_limit: bool,
    inner_failed: bool,
}

impl<R: Read> Read for Inflated<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // One byte past the limit is enough to know it was exceeded.
        let room = self.limit.saturating_sub(self.count).saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let Some(head) = buf.get_mut(..want) else {
            return Ok(0);
        };
        let n = match self.inner.read(head) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.inner_failed = true;
                }
                return Err(e);
            }
        };
        self.count = self
            .count
            .saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
        if self.count > self.limit {
            self.over_limit = true;
            return Err(io::Error::other("inflated size limit exceeded"));
        }
        Ok(n)
    }
}

/// The normalized components of an archive path, or why it is unsafe.
fn components(path: &[u8]) -> Result<Vec<&[u8]>, TarballError> {
    let shown = || String::from_utf8_lossy(path).into_owned();
    if path.is_empty() {
        return Err(TarballError::EmptyPath);
    }
    if path.contains(&0) {
        return Err(TarballError::NulInPath { path: shown() });
    }
    if is_absolute(path) {
        return Err(TarballError::AbsolutePath { path: shown() });
    }
    let mut out = Vec::new();
    for part in split(path) {
        if part == b".." {
            return Err(TarballError::ParentPath { path: shown() });
        }
        out.push(part);
    }
    Ok(out)
}

/// Both separators count, so a Windows client unpacking `..\x` is covered too.
fn split(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.split(|&b| b == b'/' || b == b'\\')
        .filter(|part| !part.is_empty() && *part != b".")
}

fn is_absolute(path: &[u8]) -> bool {
    match path {
        [b'/' | b'\\', ..] => true,
        // A Windows drive prefix such as `C:`.
        [letter, b':', ..] => letter.is_ascii_alphabetic(),
        _ => false,
    }
}

struct Link {
    path: Vec<Vec<u8>>,
    target: Vec<u8>,
    symlink: bool,
}

fn check_contents(gz: &[u8], limit: u64) -> Result<(), TarballError> {
    let reader = Inflated {
        inner: GzDecoder::new(gz),
        count: 0,
        limit,
        over_limit: false,
        inner_failed: false,
    };
    let mut archive = tar::Archive::new(reader);
    let walked = walk_contents(&mut archive);
    let mut reader = archive.into_inner();
    let io_result = match walked {
        Ok(links) => {
            // Inflate to the end so the gzip trailer (CRC and length) is checked.
            io::copy(&mut reader, &mut io::sink()).map(|_| links)
        }
        Err(Walk::Io(e)) => Err(e),
        Err(Walk::Rejected(e)) => return Err(e),
    };
    let links = io_result.map_err(|source| {
        if reader.over_limit {
            TarballError::UncompressedTooLarge { limit }
        } else if reader.inner_failed {
            TarballError::ContentsGzip { source }
        } else {
            TarballError::ContentsTar { source }
        }
    })?;
    check_links(&links)
}

enum Walk {
    Io(io::Error),
    Rejected(TarballError),
}

/// Checks each entry's path and type, returning the links for [`check_links`].
fn walk_contents<R: Read>(archive: &mut tar::Archive<R>) -> Result<Vec<Link>, Walk> {
    let mut links = Vec::new();
    let mut symlinks: HashSet<Vec<Vec<u8>>> = HashSet::new();
    for entry in archive.entries().map_err(Walk::Io)? {
        let entry = entry.map_err(Walk::Io)?;
        let kind = entry.header().entry_type();
        // A pax global header carries defaults, not a file (git archive writes one).
        if kind == EntryType::XGlobalHeader {
            continue;
        }
        let raw = entry.path_bytes();
        let shown = || String::from_utf8_lossy(&raw).into_owned();
        let parts = components(&raw).map_err(Walk::Rejected)?;
        if parts.is_empty() && kind != EntryType::Directory {
            return Err(Walk::Rejected(TarballError::EmptyPath));
        }
        if let Some(via) = symlink_prefix(&parts, parts.len().saturating_sub(1), &symlinks) {
            return Err(Walk::Rejected(TarballError::PathThroughSymlink {
                path: shown(),
                via,
            }));
        }
        let parts: Vec<Vec<u8>> = parts.into_iter().map(<[u8]>::to_vec).collect();
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::Directory => {}
            EntryType::Symlink | EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let symlink = kind == EntryType::Symlink;
                if symlink {
                    symlinks.insert(parts.clone());
                }
                links.push(Link {
                    path: parts,
                    target,
                    symlink,
                });
            }
            other => {
                return Err(Walk::Rejected(TarballError::UnsupportedEntry {
                    path: shown(),
                    kind: kind_name(other),
                }));
            }
        }
    }
    Ok(links)
}

/// The first of `parts[..len]`'s proper prefixes (up to `len` components) that is a symlink.
fn symlink_prefix(
    parts: &[impl AsRef<[u8]>],
    len: usize,
    symlinks: &HashSet<Vec<Vec<u8>>>,
) -> Option<String> {
    (1..=len.min(parts.len())).find_map(|n| {
        let prefix: Vec<Vec<u8>> = parts.iter().take(n).map(|p| p.as_ref().to_vec()).collect();
        symlinks.contains(&prefix).then(|| join(&prefix))
    })
}

fn join(parts: &[Vec<u8>]) -> String {
    String::from_utf8_lossy(&parts.join(&b'/')).into_owned()
}

/// Resolves every link target lexically, against all symlinks in the archive
/// (a link may be followed after everything has been unpacked).
fn check_links(links: &[Link]) -> Result<(), TarballError> {
    let symlinks: HashSet<Vec<Vec<u8>>> = links
        .iter()
        .filter(|l| l.symlink)
        .map(|l| l.path.clone())
        .collect();
    for link in links {
        let path = join(&link.path);
        let target = String::from_utf8_lossy(&link.target).into_owned();
        if link.target.is_empty() {
            return Err(TarballError::EmptyLinkTarget { path });
        }
        if is_absolute(&link.target) || link.target.contains(&0) {
            return Err(TarballError::AbsoluteLinkTarget { path, target });
        }
        // A symlink resolves from its own directory; a hard link's target is an
        // archive path, so it resolves from the package root.
        let mut resolved: Vec<Vec<u8>> = if link.symlink {
            link.path
                .iter()
                .take(link.path.len().saturating_sub(1))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let mut via = None;
        for part in split(&link.target) {
            // Stepping into or back out of a symlink lands wherever it points.
            if via.is_none() && !resolved.is_empty() && symlinks.contains(&resolved) {
                via = Some(join(&resolved));
            }
            if part == b".." {
                if resolved.pop().is_none() {
                    return Err(TarballError::LinkEscapes { path, target });
                }
            } else {
                resolved.push(part.to_vec());
            }
        }
        // A hard link to a symlink copies that symlink to a new directory,
        // where its relative target means something else.
        if via.is_none() && !link.symlink && symlinks.contains(&resolved) {
            via = Some(join(&resolved));
        }
        if let Some(via) = via {
            return Err(TarballError::LinkThroughSymlink { path, target, via });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;
    use tar::Header;

    /// hex_core-style metadata with list-form requirements, in the sample format.
    const METADATA_TEXT: &str = r#"{<<"app">>,<<"alpha">>}.
{<<"build_tools">>,[<<"mix">>]}.
{<<"description">>,<<"Test package alpha">>}.
{<<"files">>,[<<"lib/alpha.ex">>,<<"mix.exs">>]}.
{<<"licenses">>,[<<"Apache-2.0">>]}.
{<<"name">>,<<"alpha">>}.
{<<"requirements">>,
 [[{<<"app">>,<<"jason">>},
   {<<"name">>,<<"jason">>},
   {<<"optional">>,true},
   {<<"repository">>,<<"hexpm">>},
   {<<"requirement">>,<<"~> 1.0">>}]]}.
{<<"version">>,<<"0.1.0">>}.
"#;

    type IsExpected = fn(&TarballError) -> bool;

    /// One entry of contents.tar.gz, written with raw header names so that
    /// hostile paths the `tar` builder refuses can be produced.
    enum Item {
        File(&'static str, Vec<u8>),
        Dir(&'static str),
        Symlink(&'static str, &'static str),
        Hardlink(&'static str, &'static str),
        Special(&'static str, EntryType),
    }

    /// A package to build; `Pkg::default()` is valid.
    struct Pkg {
        version: Vec<u8>,
        /// Replaces the computed CHECKSUM member.
        checksum: Option<Vec<u8>>,
        metadata: Vec<u8>,
        items: Vec<Item>,
        /// Replaces the built contents.tar.gz.
        contents: Option<Vec<u8>>,
        omit: Option<&'static str>,
        /// Appended after the four members.
        extra: Vec<(&'static str, Vec<u8>)>,
    }

    impl Default for Pkg {
        fn default() -> Self {
            Pkg {
                version: b"3".to_vec(),
                checksum: None,
                metadata: METADATA_TEXT.as_bytes().to_vec(),
                items: vec![
                    Item::Dir("lib"),
                    Item::File("lib/alpha.ex", b"defmodule Alpha do\nend\n".to_vec()),
                    Item::File("mix.exs", b"# mix\n".to_vec()),
                ],
                contents: None,
                omit: None,
                extra: Vec::new(),
            }
        }
    }

    fn append(
        builder: &mut tar::Builder<impl Write>,
        path: &str,
        kind: EntryType,
        link: &str,
        data: &[u8],
    ) {
        let mut header = Header::new_gnu();
        let old = header.as_old_mut();
        old.name[..path.len()].copy_from_slice(path.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(946_684_800);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }

    fn contents_tar_gz(items: &[Item]) -> Vec<u8> {
        let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
        for item in items {
            match item {
                Item::File(path, data) => append(&mut builder, path, EntryType::Regular, "", data),
                Item::Dir(path) => append(&mut builder, path, EntryType::Directory, "", b""),
                Item::Symlink(path, target) => {
                    append(&mut builder, path, EntryType::Symlink, target, b"")
                }
                Item::Hardlink(path, target) => {
                    append(&mut builder, path, EntryType::Link, target, b"")
                }
                Item::Special(path, kind) => append(&mut builder, path, *kind, "", b""),
            }
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    fn build(pkg: &Pkg) -> Vec<u8> {
        let contents = pkg
            .contents
            .clone()
            .unwrap_or_else(|| contents_tar_gz(&pkg.items));
        let inner = Sha256::new()
            .chain_update(&pkg.version)
            .chain_update(&pkg.metadata)
            .chain_update(&contents)
            .finalize();
        let checksum = pkg
            .checksum
            .clone()
            .unwrap_or_else(|| hex::encode_upper(inner).into_bytes());
        let members = [
            (VERSION, pkg.version.clone()),
            (CHECKSUM, checksum),
            (METADATA, pkg.metadata.clone()),
            (CONTENTS, contents),
        ];
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in members.iter().chain(pkg.extra.iter()) {
            if pkg.omit != Some(*name) {
                append(&mut builder, name, EntryType::Regular, "", data);
            }
        }
        builder.into_inner().unwrap()
    }

    /// Builds `pkg` and verifies it against its own outer checksum.
    fn check_with(pkg: &Pkg, limits: &Limits) -> Result<Verified, TarballError> {
        let tarball = build(pkg);
        let outer = outer_checksum(&tarball);
        let expected = Expected {
            name: "alpha",
            version: "0.1.0",
            outer_checksum: &outer,
            inner_checksum: None,
        };
        verify(&tarball, &expected, limits)
    }

    fn check(pkg: Pkg) -> Result<Verified, TarballError> {
        check_with(&pkg, &Limits::default())
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzz::config())]

        /// A changed tarball never passes against the original's checksum,
        /// and no input makes the checks panic.
        #[test]
        fn fuzz_tarballs(m in crate::fuzz::mutations(), raw in crate::fuzz::bytes(2048)) {
            let tarball = build(&Pkg::default());
            let outer = outer_checksum(&tarball);
            let expected = Expected {
                name: "alpha",
                version: "0.1.0",
                outer_checksum: &outer,
                inner_checksum: None,
            };
            let mutated = crate::fuzz::apply(&tarball, &m);
            let accepted = verify(&mutated, &expected, &Limits::default()).is_ok();
            proptest::prop_assert_eq!(accepted, mutated == tarball);
            let _ = inspect(&mutated, &Limits::default());
            let _ = inspect(&raw, &Limits::default());
            let _ = check_docs(&raw, &Limits::default());
        }
    }

    fn with_items(items: Vec<Item>) -> Pkg {
        Pkg {
            items,
            ..Pkg::default()
        }
    }

    #[test]
    fn valid_package_with_list_requirements() {
        let tarball = build(&Pkg::default());
        let outer = outer_checksum(&tarball);
        let verified = check(Pkg::default()).unwrap();
        assert_eq!(verified.outer_checksum, outer);
        assert_eq!(verified.metadata.name, "alpha");
        assert_eq!(verified.metadata.app.as_deref(), Some("alpha"));
        assert_eq!(verified.metadata.build_tools, vec!["mix".to_string()]);
        assert_eq!(
            verified.metadata.requirements,
            vec![Requirement {
                name: "jason".into(),
                requirement: "~> 1.0".into(),
                optional: true,
                app: Some("jason".into()),
                repository: Some("hexpm".into()),
            }]
        );
        // The inner checksum the registry would carry is accepted too.
        let expected = Expected {
            name: "alpha",
            version: "0.1.0",
            outer_checksum: &outer,
            inner_checksum: Some(&verified.inner_checksum),
        };
        assert!(verify(&tarball, &expected, &Limits::default()).is_ok());
    }

    #[test]
    fn valid_package_with_map_requirements_links_and_extras() {
        let metadata = METADATA_TEXT.replace(
            "[[{<<\"app\">>,<<\"jason\">>},\n   {<<\"name\">>,<<\"jason\">>},",
            "[{<<\"jason\">>, [{<<\"app\">>,<<\"jason\">>},",
        );
        let metadata = metadata.replace("~> 1.0\">>}]]}", "~> 1.0\">>}]}]}");
        assert!(metadata.contains("[{<<\"jason\">>, [{") && metadata.contains("}]}]}."));
        let pkg = Pkg {
            metadata: metadata.into_bytes(),
            items: vec![
                Item::Dir("./"),
                Item::File("./lib/a.ex", b"a".to_vec()),
                Item::Symlink("lib/b.ex", "a.ex"),
                Item::Symlink("priv/up", "../lib/./a.ex"),
                Item::Hardlink("lib/c.ex", "lib/a.ex"),
                Item::Special("pax_global_header", EntryType::XGlobalHeader),
            ],
            extra: vec![("future.member", b"whatever".to_vec())],
            ..Pkg::default()
        };
        let verified = check(pkg).unwrap();
        assert_eq!(verified.metadata.requirements.len(), 1);
        assert_eq!(verified.metadata.requirements[0].name, "jason");
        assert!(verified.metadata.requirements[0].optional);
    }

    #[test]
    fn lowercase_checksum_member_is_accepted() {
        let pkg = Pkg::default();
        let contents = contents_tar_gz(&pkg.items);
        let inner = Sha256::new()
            .chain_update(b"3")
            .chain_update(&pkg.metadata)
            .chain_update(&contents)
            .finalize();
        let pkg = Pkg {
            checksum: Some(hex::encode(inner).into_bytes()),
            contents: Some(contents),
            ..pkg
        };
        assert!(check(pkg).is_ok());
    }

    #[test]
    fn wrong_outer_checksum() {
        let tarball = build(&Pkg::default());
        let mut wrong = outer_checksum(&tarball);
        wrong[0] ^= 1;
        let expected = Expected {
            name: "alpha",
            version: "0.1.0",
            outer_checksum: &wrong,
            inner_checksum: None,
        };
        let err = verify(&tarball, &expected, &Limits::default()).unwrap_err();
        assert!(matches!(err, TarballError::OuterChecksum { .. }), "{err}");
        assert!(err.to_string().starts_with("outer checksum is "), "{err}");
        let short = Expected {
            outer_checksum: &wrong[..31],
            ..expected
        };
        let err = verify(&tarball, &short, &Limits::default()).unwrap_err();
        assert!(
            matches!(
                err,
                TarballError::ExpectedChecksumLength {
                    which: "outer",
                    len: 31
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn inner_checksum_mismatch_with_registry() {
        let tarball = build(&Pkg::default());
        let outer = outer_checksum(&tarball);
        let expected = Expected {
            name: "alpha",
            version: "0.1.0",
            outer_checksum: &outer,
            inner_checksum: Some(&[7u8; 32]),
        };
        let err = verify(&tarball, &expected, &Limits::default()).unwrap_err();
        assert!(matches!(err, TarballError::InnerChecksum { .. }), "{err}");
        let bad_len = Expected {
            inner_checksum: Some(&[7u8; 20]),
            ..expected
        };
        let err = verify(&tarball, &bad_len, &Limits::default()).unwrap_err();
        assert!(
            matches!(
                err,
                TarballError::ExpectedChecksumLength {
                    which: "inner",
                    len: 20
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn structural_rejections() {
        let cases: Vec<(&str, Pkg, IsExpected)> = vec![
            (
                "version 2",
                Pkg {
                    version: b"2".to_vec(),
                    ..Pkg::default()
                },
                |e| matches!(e, TarballError::UnsupportedVersion { .. }),
            ),
            (
                "version with newline",
                Pkg {
                    version: b"3\n".to_vec(),
                    ..Pkg::default()
                },
                |e| matches!(e, TarballError::UnsupportedVersion { .. }),
            ),
            (
                "oversize VERSION",
                Pkg {
                    version: vec![b'3'; 33],
                    ..Pkg::default()
                },
                |e| matches!(e, TarballError::MemberTooLarge { name: VERSION, .. }),
            ),
            (
                "CHECKSUM mismatch",
                Pkg {
                    checksum: Some(vec![b'A'; 64]),
                    ..Pkg::default()
                },
                |e| matches!(e, TarballError::ChecksumMember { .. }),
            ),
            (
                "CHECKSUM not hex",
                Pkg {
                    checksum: Some(b"xyz".to_vec()),
                    ..Pkg::default()
                },
                |e| matches!(e, TarballError::MalformedChecksum { .. }),
            ),
            (
                "oversize CHECKSUM",
                Pkg {
                    checksum: Some(vec![b'A'; 129]),
                    ..Pkg::default()
                },
                |e| matches!(e, TarballError::MemberTooLarge { name: CHECKSUM, .. }),
            ),
            (
                "missing metadata",
                Pkg {
                    omit: Some(METADATA),
                    ..Pkg::default()
                },
                |e| matches!(e, TarballError::MissingMember { name: METADATA }),
            ),
            (
                "missing VERSION",
                Pkg {
                    omit: Some(VERSION),
                    ..Pkg::default()
                },
                |e| matches!(e, TarballError::MissingMember { name: VERSION }),
            ),
            (
                "duplicate member",
                Pkg {
                    extra: vec![(METADATA, b"{a, b}.".to_vec())],
                    ..Pkg::default()
                },
                |e| matches!(e, TarballError::DuplicateMember { .. }),
            ),
            (
                "wrong name",
                Pkg {
                    metadata: METADATA_TEXT
                        .replace(
                            "<<\"alpha\">>}.\n{<<\"requirements",
                            "<<\"beta\">>}.\n{<<\"requirements",
                        )
                        .into_bytes(),
                    ..Pkg::default()
                },
                |e| matches!(e, TarballError::NameMismatch { .. }),
            ),
            (
                "wrong version",
                Pkg {
                    metadata: METADATA_TEXT.replace("0.1.0", "0.1.1").into_bytes(),
                    ..Pkg::default()
                },
                |e| matches!(e, TarballError::VersionMismatch { .. }),
            ),
            (
                "unparsable metadata",
                Pkg {
                    metadata: b"{<<\"name\">>, <<\"alpha\">>".to_vec(),
                    ..Pkg::default()
                },
                |e| matches!(e, TarballError::MetadataSyntax { .. }),
            ),
            (
                "metadata without version",
                Pkg {
                    metadata: b"{<<\"name\">>, <<\"alpha\">>}.".to_vec(),
                    ..Pkg::default()
                },
                |e| matches!(e, TarballError::Metadata { .. }),
            ),
            (
                "contents not gzip",
                Pkg {
                    contents: Some(b"not gzip at all".to_vec()),
                    ..Pkg::default()
                },
                |e| matches!(e, TarballError::ContentsGzip { .. }),
            ),
            (
                "truncated gzip",
                Pkg {
                    contents: Some({
                        let gz = contents_tar_gz(&Pkg::default().items);
                        gz[..gz.len() - 10].to_vec()
                    }),
                    ..Pkg::default()
                },
                |e| matches!(e, TarballError::ContentsGzip { .. }),
            ),
            (
                "gzip of garbage",
                Pkg {
                    contents: Some({
                        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
                        gz.write_all(&[0x55; 1024]).unwrap();
                        gz.finish().unwrap()
                    }),
                    ..Pkg::default()
                },
                |e| matches!(e, TarballError::ContentsTar { .. }),
            ),
        ];
        for (what, pkg, is_expected) in cases {
            match check(pkg) {
                Err(e) if is_expected(&e) => {}
                other => panic!("{what}: got {other:?}"),
            }
        }
    }

    #[test]
    fn size_limits() {
        let small = Limits {
            max_tarball: 2048,
            ..Limits::default()
        };
        let err = check_with(&Pkg::default(), &small).unwrap_err();
        assert!(
            matches!(err, TarballError::TooLarge { limit: 2048, .. }),
            "{err}"
        );

        let small = Limits {
            max_metadata: 16,
            ..Limits::default()
        };
        let err = check_with(&Pkg::default(), &small).unwrap_err();
        assert!(
            matches!(
                err,
                TarballError::MemberTooLarge {
                    name: METADATA,
                    limit: 16,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn gzip_bomb_stops_at_the_limit() {
        let limits = Limits {
            max_uncompressed: 64 * 1024,
            ..Limits::default()
        };
        let bomb = with_items(vec![Item::File("zeros", vec![0; 4 * 1024 * 1024])]);
        let err = check_with(&bomb, &limits).unwrap_err();
        assert!(
            matches!(err, TarballError::UncompressedTooLarge { limit: 65536 }),
            "{err}"
        );
        // A package just under the limit passes.
        let fine = with_items(vec![Item::File("zeros", vec![0; 32 * 1024])]);
        assert!(check_with(&fine, &limits).is_ok());
    }

    #[test]
    fn unsafe_entries() {
        let cases: Vec<(Item, IsExpected)> = vec![
            (Item::File("/etc/passwd", vec![]), |e| {
                matches!(e, TarballError::AbsolutePath { .. })
            }),
            (Item::File("C:/x", vec![]), |e| {
                matches!(e, TarballError::AbsolutePath { .. })
            }),
            (Item::File("../etc/passwd", vec![]), |e| {
                matches!(e, TarballError::ParentPath { .. })
            }),
            (Item::File("lib/../../x", vec![]), |e| {
                matches!(e, TarballError::ParentPath { .. })
            }),
            (Item::File("lib\\..\\..\\x", vec![]), |e| {
                matches!(e, TarballError::ParentPath { .. })
            }),
            (Item::File("", vec![]), |e| {
                matches!(e, TarballError::EmptyPath)
            }),
            (Item::File("./", vec![]), |e| {
                matches!(e, TarballError::EmptyPath)
            }),
            (Item::Symlink("lib/x", "../../x"), |e| {
                matches!(e, TarballError::LinkEscapes { .. })
            }),
            (Item::Symlink("x", "/etc/passwd"), |e| {
                matches!(e, TarballError::AbsoluteLinkTarget { .. })
            }),
            (Item::Symlink("x", ""), |e| {
                matches!(e, TarballError::EmptyLinkTarget { .. })
            }),
            (Item::Hardlink("x", "../outside"), |e| {
                matches!(e, TarballError::LinkEscapes { .. })
            }),
            // Hard link targets are archive paths: `lib/../..` leaves the root.
            (Item::Hardlink("lib/x", "lib/../../y"), |e| {
                matches!(e, TarballError::LinkEscapes { .. })
            }),
            (Item::Hardlink("x", "/etc/shadow"), |e| {
                matches!(e, TarballError::AbsoluteLinkTarget { .. })
            }),
            (Item::Special("dev/null", EntryType::Char), |e| {
                matches!(e, TarballError::UnsupportedEntry { .. })
            }),
            (Item::Special("dev/sda", EntryType::Block), |e| {
                matches!(e, TarballError::UnsupportedEntry { .. })
            }),
            (Item::Special("pipe", EntryType::Fifo), |e| {
                matches!(e, TarballError::UnsupportedEntry { .. })
            }),
        ];
        for (item, is_expected) in cases {
            let label = match &item {
                Item::File(p, _)
                | Item::Dir(p)
                | Item::Symlink(p, _)
                | Item::Hardlink(p, _)
                | Item::Special(p, _) => *p,
            };
            match check(with_items(vec![Item::Dir("lib"), item])) {
                Err(e) if is_expected(&e) => {}
                other => panic!("{label:?}: got {other:?}"),
            }
        }
        let err = check(with_items(vec![Item::File("../etc/passwd", vec![])])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "contents.tar.gz entry `../etc/passwd` escapes the package"
        );
    }

    #[test]
    fn links_that_go_through_other_symlinks() {
        // `d/s` points at the root, so `d/s/..` is outside although it looks inside.
        let err = check(with_items(vec![
            Item::Symlink("d/s", ".."),
            Item::Symlink("t", "d/s/.."),
        ]))
        .unwrap_err();
        assert!(
            matches!(err, TarballError::LinkThroughSymlink { .. }),
            "{err}"
        );
        // Order does not matter for link targets.
        let err = check(with_items(vec![
            Item::Symlink("t", "d/s/.."),
            Item::Symlink("d/s", ".."),
        ]))
        .unwrap_err();
        assert!(
            matches!(err, TarballError::LinkThroughSymlink { .. }),
            "{err}"
        );
        // A hard link to a symlink moves its relative target.
        let err = check(with_items(vec![
            Item::Symlink("a/b/s", "../.."),
            Item::Hardlink("h", "a/b/s"),
        ]))
        .unwrap_err();
        assert!(
            matches!(err, TarballError::LinkThroughSymlink { .. }),
            "{err}"
        );
        // A file written through a symlink lands wherever the link points.
        let err = check(with_items(vec![
            Item::Symlink("a/s", ".."),
            Item::File("a/s/x", vec![]),
        ]))
        .unwrap_err();
        assert!(
            matches!(err, TarballError::PathThroughSymlink { .. }),
            "{err}"
        );
    }

    /// Where `name`'s data starts and how long it is in the outer tar.
    fn member_span(tarball: &[u8], name: &str) -> (usize, usize) {
        let mut archive = tar::Archive::new(Cursor::new(tarball));
        let entry = archive
            .entries()
            .unwrap()
            .map(Result::unwrap)
            .find(|e| e.path_bytes().as_ref() == name.as_bytes())
            .unwrap();
        (entry.raw_file_position() as usize, entry.size() as usize)
    }

    /// Members are borrowed from the tarball by offset and size, not read
    /// through: a tarball cut inside any member's data, a member we use or
    /// one we skip, is refused as a truncated outer tar.
    #[test]
    fn tarball_cut_inside_a_member_is_refused() {
        let pkg = || Pkg {
            extra: vec![("future_member", vec![b'x'; 2000])],
            ..Pkg::default()
        };
        let tarball = build(&pkg());
        assert!(check(pkg()).is_ok());
        let cuts = [CONTENTS, "future_member"].into_iter().flat_map(|name| {
            let (start, size) = member_span(&tarball, name);
            // Inside the data, at its end, and inside its padding.
            [start + size / 2, start + size, start + size + 10].map(|end| (name, end))
        });
        for (name, end) in cuts {
            let cut = &tarball[..end];
            let outer = outer_checksum(cut);
            let expected = Expected {
                name: "alpha",
                version: "0.1.0",
                outer_checksum: &outer,
                inner_checksum: None,
            };
            match verify(cut, &expected, &Limits::default()) {
                // Past the end, or (a cut at a block's start) a short header.
                Err(TarballError::OuterTar { .. }) => {}
                other => panic!("{name}: got {other:?}"),
            }
        }
    }

    #[test]
    fn no_panic_on_corrupted_tarballs() {
        let tarball = build(&Pkg::default());
        let limits = Limits::default();
        let mut inputs: Vec<Vec<u8>> = (0..tarball.len())
            .step_by(61)
            .map(|end| tarball[..end].to_vec())
            .collect();
        for i in (0..tarball.len()).step_by(37) {
            let mut bytes = tarball.clone();
            bytes[i] ^= 0xA5;
            inputs.push(bytes);
        }
        for input in inputs {
            let outer = outer_checksum(&input);
            let expected = Expected {
                name: "alpha",
                version: "0.1.0",
                outer_checksum: &outer,
                inner_checksum: None,
            };
            let _ = verify(&input, &expected, &limits);
        }
    }
}
