//! Hex package tarballs (format version 3) built byte by byte, so a test can
//! make them honest or hostile in exactly one way: a wrong CHECKSUM, a missing
//! member, bad metadata, entries that escape the package, a gzip bomb.
//!
//! hex_core ([`super::Oracle::tarball`]) builds honest tarballs; these
//! builders exist for what hex_core (and the `tar` crate's own builder)
//! refuses to write.

use std::io::{self, Read};

use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

/// The mtime of every member and entry: 2000-01-01, so builds are repeatable.
const MTIME: u64 = 946_684_800;

/// One entry of a `contents.tar.gz`.
#[derive(Debug, Clone, Copy)]
pub enum Entry<'a> {
    /// A regular file with these bytes.
    File(&'a str, &'a [u8]),
    /// A symbolic link to the target, written as is.
    Symlink(&'a str, &'a str),
    /// A regular file of this many zero bytes, streamed into the gzip stream
    /// without ever being held in memory: a gzip bomb of any inflated size
    /// in about a thousandth of it compressed.
    Zeros(&'a str, u64),
}

/// hex_core-style `metadata.config` text for release `name` `version` of a
/// rebar3 package with one source file and no requirements, as `hex_core`
/// writes it (sorted keys, binaries). Replace the `{<<"requirements">>,[]}`
/// line to add some.
pub fn metadata(name: &str, version: &str) -> String {
    let file = erlang_binary(&format!("src/{name}.erl"));
    let (name, version) = (erlang_binary(name), erlang_binary(version));
    format!(
        "{{<<\"app\">>,{name}}}.\n\
         {{<<\"build_tools\">>,[<<\"rebar3\">>]}}.\n\
         {{<<\"description\">>,{name}}}.\n\
         {{<<\"files\">>,[{file}]}}.\n\
         {{<<\"licenses\">>,[<<\"Apache-2.0\">>]}}.\n\
         {{<<\"name\">>,{name}}}.\n\
         {{<<\"requirements\">>,[]}}.\n\
         {{<<\"version\">>,{version}}}.\n",
    )
}

/// `<<"TEXT">>`, with `"` and `\` escaped.
fn erlang_binary(text: &str) -> String {
    let escaped = text.replace('\\', "\\\\").replace('"', "\\\"");
    format!("<<\"{escaped}\">>")
}

/// A tar header whose name and link name are written as raw bytes: the `tar`
/// builder refuses `..` in paths, which is exactly what an attacker sends.
pub fn raw_header(path: &str, kind: EntryType, link: &str, size: u64) -> Header {
    let mut header = Header::new_gnu();
    let old = header.as_old_mut();
    assert!(
        path.len() <= old.name.len() && link.len() <= old.linkname.len(),
        "raw_header: `{path}` or `{link}` is longer than a tar name field"
    );
    old.name[..path.len()].copy_from_slice(path.as_bytes());
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(MTIME);
    header.set_cksum();
    header
}

/// `contents.tar.gz` holding `entries` in order, paths and link targets
/// written exactly as given.
pub fn contents_tar_gz(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut contents = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    for entry in entries {
        let (header, data): (Header, Box<dyn Read + '_>) = match *entry {
            Entry::File(path, data) => (
                raw_header(path, EntryType::Regular, "", data.len() as u64),
                Box::new(data),
            ),
            Entry::Symlink(path, target) => (
                raw_header(path, EntryType::Symlink, target, 0),
                Box::new(io::empty()),
            ),
            Entry::Zeros(path, size) => (
                raw_header(path, EntryType::Regular, "", size),
                Box::new(io::repeat(0).take(size)),
            ),
        };
        contents.append(&header, data).unwrap();
    }
    contents.into_inner().unwrap().finish().unwrap()
}

/// The inner checksum: sha256 of VERSION ‖ metadata.config ‖ contents.tar.gz.
pub fn inner_checksum(version_member: &[u8], metadata: &[u8], contents: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(version_member)
        .chain_update(metadata)
        .chain_update(contents)
        .finalize()
        .into()
}

/// The outer (uncompressed) tar with exactly `members`, in order: leave one
/// out, repeat one, or put in a wrong CHECKSUM.
pub fn outer_tar(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut outer = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut header = Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(MTIME);
        header.set_cksum();
        outer.append_data(&mut header, name, *data).unwrap();
    }
    outer.into_inner().unwrap()
}

/// A Hex tarball that is consistent with itself (CHECKSUM is the true inner
/// checksum, in hex_core's uppercase) but carries `version_member` as VERSION,
/// `metadata` as metadata.config and `entries` in contents.tar.gz, whatever
/// they are. Returns the tarball and its inner checksum.
pub fn hex_tarball(
    version_member: &[u8],
    metadata: &str,
    entries: &[Entry<'_>],
) -> (Vec<u8>, [u8; 32]) {
    let contents = contents_tar_gz(entries);
    let metadata = metadata.as_bytes();
    let inner = inner_checksum(version_member, metadata, &contents);
    let checksum = hex::encode_upper(inner);
    let tarball = outer_tar(&[
        ("VERSION", version_member),
        ("CHECKSUM", checksum.as_bytes()),
        ("metadata.config", metadata),
        ("contents.tar.gz", &contents),
    ]);
    (tarball, inner)
}
