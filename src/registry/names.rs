//! Package names and version strings as they appear in paths. Checked once
//! here so that no unchecked string ever becomes a file name.

use std::fmt;

/// Why a name or version was refused.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    /// Not a Hex package name.
    #[error(
        "{0:?} is not a valid Hex package name (lowercase letter, then lowercase letters, digits or `_`)"
    )]
    BadPackage(String),
}

/// A Hex package name: `^[a-z][a-z0-9_]*$`, as hex.pm enforces.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PackageName(String);

impl PackageName {
    /// Checks `s` and wraps it.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let mut chars = s.chars();
        let ok = matches!(chars.next(), Some('a'..='z'))
            && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
            && s.len() <= 255;
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError::BadPackage(s.to_owned()))
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PackageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// True for a version string safe to put in a tarball file name: SemVer
/// characters only (`+` included), not empty, not starting with `.`.
pub fn is_valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 255
        && v.as_bytes()[0].is_ascii_digit()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
        && !v.contains("..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names() {
        for ok in ["a", "ab", "phoenix_live_view", "a1_"] {
            assert!(PackageName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "1a", "_a", "a-b", "a/b", "..", "a b", "é", "a\0"] {
            assert!(PackageName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn versions() {
        for ok in ["1.0.0", "2.0.0-rc.1", "1.0.0+build.5", "0.1.0-alpha+001"] {
            assert!(is_valid_version(ok), "{ok}");
        }
        for bad in ["", ".1", "1/2", "1..0", "1.0 ", "v1", "1.0.0%2F", "1\0"] {
            assert!(!is_valid_version(bad), "{bad:?}");
        }
    }
}
