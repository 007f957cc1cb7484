//! Hex versions and version requirements, with the semantics of Elixir's
//! `Version` module (`lib/elixir/lib/version.ex`), which Hex uses.
//!
//! PURE: strings in, values out; no file system, network or database.
//! Parsing is strict SemVer 2.0 as Elixir reads it: `MAJOR.MINOR.PATCH`, no
//! leading zeros in numbers or numeric pre-release identifiers, identifiers
//! made of ASCII letters, digits and `-`. Nothing here panics on any input:
//! numbers that do not fit in a `u64` are an error, not an overflow.
//!
//! One deliberate difference: current Elixir (1.21.0-dev source) refuses
//! numeric parts longer than 14 digits; we accept anything that fits in a
//! `u64`, so releases published before Elixir had that limit still parse.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

mod requirement;

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use thiserror::Error;

pub use requirement::{Requirement, RequirementError};

/// A parsed SemVer 2.0 version, such as `1.4.0-rc.1+build.5`.
///
/// Equality and [`Ord`] look at every field, build metadata included, so
/// sorting is total and deterministic; use [`Version::cmp_precedence`] for
/// SemVer precedence, which ignores build metadata.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version {
    major: u64,
    minor: u64,
    patch: u64,
    pre: Vec<Identifier>,
    build: Option<String>,
}

/// One dot-separated pre-release identifier.
///
/// The variant order is the SemVer order: numeric identifiers sort before
/// alphanumeric ones, numbers numerically, text by ASCII bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Identifier {
    /// All digits, no leading zero (`11` in `1.0.0-beta.11`).
    Numeric(u64),
    /// Anything else made of ASCII letters, digits and `-` (`beta`, `0a`, `-`).
    Alpha(String),
}

/// Why a string is not a version.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VersionError {
    /// The string is empty.
    #[error("empty string is not a version: expected MAJOR.MINOR.PATCH, such as 1.4.0")]
    Empty,
    /// The string is not a version; `column` counts characters from 1.
    #[error("{input:?} is not a version: {problem} (column {column})")]
    Invalid {
        input: String,
        column: usize,
        problem: Problem,
    },
}

/// What is wrong with a version string, without the string itself.
///
/// Shared by [`VersionError`] and [`RequirementError`], which give the context.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Problem {
    /// Whitespace inside or around the version.
    #[error("whitespace is not allowed in a version")]
    Whitespace,
    /// A `v` prefix, as in git tags.
    #[error("a leading `v` is not part of a version; drop it")]
    LeadingV,
    /// Not three (or, after `~>`, two or three) dot-separated numbers.
    #[error("{}", shape_text(*minor_only_allowed))]
    Shape { minor_only_allowed: bool },
    /// A core part is not made of digits.
    #[error("{part} version {text:?} is not a number")]
    NotANumber { part: Part, text: String },
    /// A number with a leading zero, which SemVer forbids.
    #[error("{part} {text:?} has a leading zero, which SemVer forbids")]
    LeadingZero { part: Part, text: String },
    /// A number that does not fit in 64 bits.
    #[error("{part} {text:?} is larger than {}", u64::MAX)]
    TooLarge { part: Part, text: String },
    /// `1.0.0-`, `1.0.0-a..b`, `1.0.0+`: an identifier with nothing in it.
    #[error("empty {section} identifier (look for `..` or a trailing `.`, `-` or `+`)")]
    EmptyIdentifier { section: Section },
    /// A character outside `[0-9A-Za-z-]` in the pre-release or build part.
    #[error(
        "{found:?} is not allowed in {section} identifiers, only ASCII letters, digits and `-`"
    )]
    BadCharacter { section: Section, found: char },
}

fn shape_text(minor_only_allowed: bool) -> &'static str {
    if minor_only_allowed {
        "expected MAJOR.MINOR or MAJOR.MINOR.PATCH, such as 1.4 or 1.4.0"
    } else {
        "expected MAJOR.MINOR.PATCH, such as 1.4.0"
    }
}

/// Which numeric part of a version a [`Problem`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The first number.
    Major,
    /// The second number.
    Minor,
    /// The third number.
    Patch,
    /// A numeric pre-release identifier.
    PreRelease,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Major => "major",
            Part::Minor => "minor",
            Part::Patch => "patch",
            Part::PreRelease => "pre-release identifier",
        })
    }
}

/// The part after `-` or after `+`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// After `-`.
    PreRelease,
    /// After `+`.
    Build,
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Section::PreRelease => "pre-release",
            Section::Build => "build",
        })
    }
}

impl Version {
    /// Parses a strict SemVer 2.0 version as Elixir's `Version.parse/1` does.
    pub fn parse(s: &str) -> Result<Version, VersionError> {
        if s.is_empty() {
            return Err(VersionError::Empty);
        }
        // Without `minor_only_allowed` a missing patch is an error, so the
        // flag is always true here.
        parse_loose(s, false)
            .map(|(version, _)| version)
            .map_err(|e| VersionError::Invalid {
                input: s.to_owned(),
                column: column(s, e.offset),
                problem: e.problem,
            })
    }

    /// The first number.
    pub fn major(&self) -> u64 {
        self.major
    }

    /// The second number.
    pub fn minor(&self) -> u64 {
        self.minor
    }

    /// The third number.
    pub fn patch(&self) -> u64 {
        self.patch
    }

    /// The pre-release identifiers; empty for a release.
    pub fn pre(&self) -> &[Identifier] {
        &self.pre
    }

    /// The build metadata after `+`, if any.
    pub fn build(&self) -> Option<&str> {
        self.build.as_deref()
    }

    /// True for pre-releases such as `1.0.0-rc.1`.
    pub fn is_pre_release(&self) -> bool {
        !self.pre.is_empty()
    }

    /// SemVer precedence (Elixir's `Version.compare/2`): build metadata is
    /// ignored, a pre-release sorts before its release, identifiers compare
    /// numeric < alphanumeric, and a shorter list of equal prefix sorts first.
    pub fn cmp_precedence(&self, other: &Version) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                // Vec's order is lexicographic with the shorter prefix first,
                // and Identifier's derived order is SemVer's.
                (false, false) => self.pre.cmp(&other.pre),
            })
    }
}

/// Precedence first; versions of equal precedence (differing only in build
/// metadata) are ordered by build: none first, then by the build text's ASCII
/// bytes. The tie-break keeps `Ord` consistent with `Eq`, so sorts are
/// deterministic; it carries no SemVer meaning.
impl Ord for Version {
    fn cmp(&self, other: &Version) -> Ordering {
        self.cmp_precedence(other)
            .then_with(|| self.build.cmp(&other.build))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Version) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Writes the version back exactly as it was parsed: numbers never have
/// leading zeros and identifiers are kept verbatim, so the text round-trips.
impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        for (i, id) in self.pre.iter().enumerate() {
            f.write_str(if i == 0 { "-" } else { "." })?;
            match id {
                Identifier::Numeric(n) => write!(f, "{n}")?,
                Identifier::Alpha(s) => f.write_str(s)?,
            }
        }
        if let Some(build) = &self.build {
            write!(f, "+{build}")?;
        }
        Ok(())
    }
}

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Version, VersionError> {
        Version::parse(s)
    }
}

/// Sorts version strings ascending by SemVer precedence, the order in which
/// hex.pm lists releases. Strings that are not versions go last, in byte
/// order. Versions that differ only in build metadata are ordered as [`Ord`]
/// for [`Version`] says, so the result never depends on the input order.
pub fn sort_versions(versions: &mut [String]) {
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    enum Key {
        // Variant order puts every version before every non-version.
        Parsed(Version),
        Junk(String),
    }
    versions.sort_by_cached_key(|s| match Version::parse(s) {
        Ok(v) => Key::Parsed(v),
        Err(_) => Key::Junk(s.clone()),
    });
}

/// A problem at a byte offset of the text being parsed.
struct Located {
    offset: usize,
    problem: Problem,
}

/// 1-based character column of a byte offset; offsets always fall on ASCII
/// separators, but `get` keeps a bad one from panicking.
fn column(s: &str, offset: usize) -> usize {
    s.get(..offset).map_or(offset, |head| head.chars().count()) + 1
}

/// Parses a version; with `minor_only_allowed` the patch may be missing
/// (`~> 2.1`), which the returned flag reports. Offsets in errors are relative
/// to `s`.
fn parse_loose(s: &str, minor_only_allowed: bool) -> Result<(Version, bool), Located> {
    if let Some(offset) = s.find(|c: char| c.is_whitespace()) {
        return Err(Located {
            offset,
            problem: Problem::Whitespace,
        });
    }
    // Same split as Elixir: build at the first `+`, then pre-release at the
    // first `-` of what is left, so `1.0.0+a-b` has build `a-b` and no pre.
    let (head, build) = match s.split_once('+') {
        Some((head, build)) => (head, Some((build, head.len() + 1))),
        None => (s, None),
    };
    let (core, pre) = match head.split_once('-') {
        Some((core, pre)) => (core, Some((pre, core.len() + 1))),
        None => (head, None),
    };

    let shape = Located {
        offset: 0,
        problem: Problem::Shape { minor_only_allowed },
    };
    let mut numbers = [0u64; 3];
    let mut count = 0;
    let mut offset = 0;
    let parts = [Part::Major, Part::Minor, Part::Patch];
    for text in core.split('.') {
        let (Some(part), Some(slot)) = (parts.get(count), numbers.get_mut(count)) else {
            return Err(shape);
        };
        if count == 0 && text.starts_with(['v', 'V']) {
            return Err(Located {
                offset,
                problem: Problem::LeadingV,
            });
        }
        if text.is_empty() {
            return Err(Located { offset, ..shape });
        }
        *slot = parse_number(text, *part).map_err(|problem| Located { offset, problem })?;
        offset += text.len() + 1;
        count += 1;
    }
    let patch_given = match count {
        3 => true,
        2 if minor_only_allowed => false,
        _ => return Err(shape),
    };
    let [major, minor, patch] = numbers;

    let pre = match pre {
        Some((text, start)) => parse_pre(text, start)?,
        None => Vec::new(),
    };
    let build = match build {
        Some((text, start)) => {
            check_identifiers(text, start, Section::Build)?;
            Some(text.to_owned())
        }
        None => None,
    };
    Ok((
        Version {
            major,
            minor,
            patch,
            pre,
            build,
        },
        patch_given,
    ))
}

/// A core number or numeric pre-release identifier: digits only, no leading
/// zero, fits in a `u64`.
fn parse_number(text: &str, part: Part) -> Result<u64, Problem> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Problem::NotANumber {
            part,
            text: text.to_owned(),
        });
    }
    if text.len() > 1 && text.starts_with('0') {
        return Err(Problem::LeadingZero {
            part,
            text: text.to_owned(),
        });
    }
    text.parse().map_err(|_| Problem::TooLarge {
        part,
        text: text.to_owned(),
    })
}

/// Checks dot-separated identifiers: non-empty, `[0-9A-Za-z-]` only.
fn check_identifiers(text: &str, start: usize, section: Section) -> Result<(), Located> {
    let mut offset = start;
    for id in text.split('.') {
        if id.is_empty() {
            return Err(Located {
                offset,
                problem: Problem::EmptyIdentifier { section },
            });
        }
        if let Some((i, found)) = id
            .char_indices()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '-'))
        {
            return Err(Located {
                offset: offset + i,
                problem: Problem::BadCharacter { section, found },
            });
        }
        offset += id.len() + 1;
    }
    Ok(())
}

fn parse_pre(text: &str, start: usize) -> Result<Vec<Identifier>, Located> {
    check_identifiers(text, start, Section::PreRelease)?;
    let mut offset = start;
    let mut pre = Vec::new();
    for id in text.split('.') {
        let id_offset = offset;
        offset += id.len() + 1;
        if id.bytes().all(|b| b.is_ascii_digit()) {
            let n = parse_number(id, Part::PreRelease).map_err(|problem| Located {
                offset: id_offset,
                problem,
            })?;
            pre.push(Identifier::Numeric(n));
        } else {
            pre.push(Identifier::Alpha(id.to_owned()));
        }
    }
    Ok(pre)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// `Ok(display)` or `Err(message)`.
    fn check(input: &str, expect: Result<&str, &str>) {
        let got = Version::parse(input)
            .map(|v| v.to_string())
            .map_err(|e| e.to_string());
        assert_eq!(
            got.as_deref().map_err(String::as_str),
            expect,
            "input {input:?}"
        );
    }

    // The accept and reject tables below agree with hex_core's version parser
    // (`hex_core_verl:parse/1`, hex_core commit a4d3472, compiled with erlc).

    #[test]
    fn accepts_and_round_trips() {
        for s in [
            "0.0.0",
            "1.2.3",
            "10.20.30",
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-0.3.7",
            "1.0.0-x.7.z.92",
            "1.0.0-x-y-z.--",
            "1.0.0-0a",
            "1.0.0-a01",
            "1.0.0+20130313144700",
            "1.0.0-beta+exp.sha.5114f85",
            "1.0.0+21AF26D3----117B344092BD",
            "1.0.0+001",
            "1.0.0+a-b",
            "18446744073709551615.0.0",
            "1.0.0-18446744073709551615",
        ] {
            check(s, Ok(s));
        }
    }

    #[test]
    fn build_splits_before_pre_release() {
        let version = v("1.0.0+a-b");
        assert!(version.pre().is_empty());
        assert_eq!(version.build(), Some("a-b"));
        let version = v("1.0.0-rc.1+b.2");
        assert_eq!(
            version.pre(),
            [Identifier::Alpha("rc".into()), Identifier::Numeric(1)]
        );
        assert_eq!(version.build(), Some("b.2"));
        assert_eq!(
            (version.major(), version.minor(), version.patch()),
            (1, 0, 0)
        );
    }

    #[test]
    fn rejects() {
        let cases: &[(&str, &str)] = &[
            (
                "",
                "empty string is not a version: expected MAJOR.MINOR.PATCH, such as 1.4.0",
            ),
            (
                "v1.0.0",
                "\"v1.0.0\" is not a version: a leading `v` is not part of a version; drop it (column 1)",
            ),
            (
                "1.0",
                "\"1.0\" is not a version: expected MAJOR.MINOR.PATCH, such as 1.4.0 (column 1)",
            ),
            (
                "1",
                "\"1\" is not a version: expected MAJOR.MINOR.PATCH, such as 1.4.0 (column 1)",
            ),
            (
                "1.0.0.0",
                "\"1.0.0.0\" is not a version: expected MAJOR.MINOR.PATCH, such as 1.4.0 (column 1)",
            ),
            (
                "1..0",
                "\"1..0\" is not a version: expected MAJOR.MINOR.PATCH, such as 1.4.0 (column 3)",
            ),
            (
                "01.0.0",
                "\"01.0.0\" is not a version: major \"01\" has a leading zero, which SemVer forbids (column 1)",
            ),
            (
                "1.00.0",
                "\"1.00.0\" is not a version: minor \"00\" has a leading zero, which SemVer forbids (column 3)",
            ),
            (
                "1.0.01",
                "\"1.0.01\" is not a version: patch \"01\" has a leading zero, which SemVer forbids (column 5)",
            ),
            (
                "1.0.0-01",
                "\"1.0.0-01\" is not a version: pre-release identifier \"01\" has a leading zero, which SemVer forbids (column 7)",
            ),
            (
                "1.x.0",
                "\"1.x.0\" is not a version: minor version \"x\" is not a number (column 3)",
            ),
            (
                "1.0.0-",
                "\"1.0.0-\" is not a version: empty pre-release identifier (look for `..` or a trailing `.`, `-` or `+`) (column 7)",
            ),
            (
                "1.0.0-a..b",
                "\"1.0.0-a..b\" is not a version: empty pre-release identifier (look for `..` or a trailing `.`, `-` or `+`) (column 9)",
            ),
            (
                "1.0.0+",
                "\"1.0.0+\" is not a version: empty build identifier (look for `..` or a trailing `.`, `-` or `+`) (column 7)",
            ),
            (
                "1.0.0-rc_1",
                "\"1.0.0-rc_1\" is not a version: '_' is not allowed in pre-release identifiers, only ASCII letters, digits and `-` (column 9)",
            ),
            (
                "1.0.0+a+b",
                "\"1.0.0+a+b\" is not a version: '+' is not allowed in build identifiers, only ASCII letters, digits and `-` (column 8)",
            ),
            (
                "1.0.0-é.x",
                "\"1.0.0-é.x\" is not a version: 'é' is not allowed in pre-release identifiers, only ASCII letters, digits and `-` (column 7)",
            ),
            (
                " 1.0.0",
                "\" 1.0.0\" is not a version: whitespace is not allowed in a version (column 1)",
            ),
            (
                "1.0.0\n",
                "\"1.0.0\\n\" is not a version: whitespace is not allowed in a version (column 6)",
            ),
            (
                "18446744073709551616.0.0",
                "\"18446744073709551616.0.0\" is not a version: major \"18446744073709551616\" is larger than 18446744073709551615 (column 1)",
            ),
            (
                "1.0.0-99999999999999999999999",
                "\"1.0.0-99999999999999999999999\" is not a version: pre-release identifier \"99999999999999999999999\" is larger than 18446744073709551615 (column 7)",
            ),
            (
                "-1.0.0",
                "\"-1.0.0\" is not a version: expected MAJOR.MINOR.PATCH, such as 1.4.0 (column 1)",
            ),
            (
                "+1.0.0",
                "\"+1.0.0\" is not a version: expected MAJOR.MINOR.PATCH, such as 1.4.0 (column 1)",
            ),
        ];
        for (input, message) in cases {
            check(input, Err(message));
        }
    }

    #[test]
    fn hyphen_only_identifiers_are_alphanumeric() {
        // SemVer allows `-` anywhere in an identifier, so after the first `-`
        // further hyphens are text: `rc.1-` is the identifiers `rc` and `1-`.
        assert_eq!(
            v("1.0.0-rc.1-").pre(),
            [
                Identifier::Alpha("rc".into()),
                Identifier::Alpha("1-".into())
            ]
        );
    }

    /// The precedence example of SemVer 2.0 section 11, plus neighbours;
    /// each adjacent pair was also checked with hex_core's `compare/2`.
    #[test]
    fn precedence_follows_semver() {
        let ascending = [
            "0.9.9",
            "1.0.0-0",
            "1.0.0-1",
            "1.0.0-2",
            "1.0.0-10",
            "1.0.0-1a",
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0-rc1",
            "1.0.0",
            "1.0.1",
            "1.1.0",
            "1.10.0",
            "2.0.0-rc.1",
            "2.0.0",
            "10.0.0",
        ];
        for pair in ascending.windows(2) {
            let [a, b] = pair else { unreachable!() };
            assert_eq!(v(a).cmp_precedence(&v(b)), Ordering::Less, "{a} < {b}");
            assert_eq!(v(b).cmp_precedence(&v(a)), Ordering::Greater, "{b} > {a}");
            assert!(v(a) < v(b), "{a} < {b} in Ord");
        }
        // ASCII order: upper case sorts before lower case.
        assert!(v("1.0.0-Z") < v("1.0.0-a"));
    }

    #[test]
    fn build_metadata_is_ignored_for_precedence_and_breaks_ties_in_ord() {
        let plain = v("1.0.0");
        let a = v("1.0.0+a");
        let b = v("1.0.0+b");
        assert_eq!(plain.cmp_precedence(&a), Ordering::Equal);
        assert_eq!(a.cmp_precedence(&b), Ordering::Equal);
        assert_ne!(a, b);
        assert!(plain < a && a < b);
        // Ord is Equal exactly when Eq holds.
        assert_eq!(a.cmp(&v("1.0.0+a")), Ordering::Equal);
        assert_eq!(a, v("1.0.0+a"));
        // A build never lifts a pre-release over its release.
        assert!(v("1.0.0-rc.1+zzz") < plain);
    }

    #[test]
    fn sort_versions_orders_by_precedence_and_puts_junk_last() {
        let mut versions: Vec<String> = [
            "1.0.0",
            "not-a-version",
            "1.0.0-rc.1",
            "0.1.0",
            "v2.0.0",
            "1.0.0-beta.11",
            "",
            "10.0.0",
            "1.0.0+b",
            "1.0.0-beta.2",
            "2.0.0",
            "01.0.0",
            "1.0.0+a",
            "2.0",
        ]
        .map(String::from)
        .to_vec();
        let expected = [
            "0.1.0",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.0+a",
            "1.0.0+b",
            "2.0.0",
            "10.0.0",
            "",
            "01.0.0",
            "2.0",
            "not-a-version",
            "v2.0.0",
        ];
        sort_versions(&mut versions);
        assert_eq!(versions, expected);
        // The result does not depend on the input order.
        versions.reverse();
        sort_versions(&mut versions);
        assert_eq!(versions, expected);
        sort_versions(&mut []);
    }

    #[test]
    fn from_str_matches_parse() {
        assert_eq!(
            "1.2.3-rc.1".parse::<Version>(),
            Version::parse("1.2.3-rc.1")
        );
        assert_eq!("x".parse::<Version>(), Version::parse("x"));
    }

    #[test]
    fn hostile_input_never_panics() {
        for input in [
            "é",
            "1.0.0-é",
            "1.0.0+é",
            "é.0.0",
            "1.é.0",
            "\u{0}",
            "1.0.0-\u{0}",
            "....",
            "---",
            "+++",
            "1.0.0-+",
            "1.0.0+-",
            "99999999999999999999999999999999999999.0.0",
            "1.0.0-.",
            "1.0.0\u{3000}",
        ] {
            let _ = Version::parse(input);
        }
        let mut junk = vec!["é".to_owned(), "\u{0}".to_owned(), "1.0.0".to_owned()];
        sort_versions(&mut junk);
        assert_eq!(junk.first().map(String::as_str), Some("1.0.0"));
    }
}
