//! PURE: maps a raw request path to a file path relative to the served root.
//!
//! Every segment is percent-decoded and checked against a strict charset
//! before any file-system call, so a path built here can never leave the root:
//! it is assembled from segments that hold no `/`, `\`, `.`/`..`, NUL or
//! control characters. `+` stays `+` (Hex versions carry `+build` raw).

use std::path::PathBuf;

use percent_encoding::percent_decode_str;

/// Longest accepted segment, in bytes after decoding; file systems cap names at 255.
const MAX_SEGMENT_LEN: usize = 255;

/// What a request path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `/`: a short human-readable banner.
    Root,
    /// A file in the served tree.
    File(FileTarget),
}

/// A validated file in the served tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileTarget {
    /// The organisation, for paths under `/repos/ORG/`.
    pub org: Option<String>,
    /// Which kind of file this is; decides headers.
    pub kind: Kind,
    /// The path relative to the served root, made only of validated segments.
    pub relative: PathBuf,
}

/// The kinds of file the server knows; each has its own cache policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `names`, `versions` and `packages/NAME`: signed, gzipped registry resources.
    Registry,
    /// `tarballs/NAME-VERSION.tar`.
    Tarball,
    /// `docs/NAME-VERSION.tar.gz`.
    Docs,
    /// `public_key`: PEM text.
    PublicKey,
    /// `hexmirror-manifest.json` and `hexmirror-manifest-delta.json`: the
    /// signed snapshot manifest of the generation and its delta.
    Manifest,
    /// `installs/FILE` or `installs/DIR/FILE`: the upstream's list of Hex
    /// releases (`hex-1.x.csv`) and installers; not registry content.
    Installs,
}

/// Why a request path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Maps to 400: a segment that could smuggle a path component.
    #[error("request path segment {segment:?} is not allowed: {reason}")]
    BadSegment {
        /// The segment as it appeared in the request, before decoding.
        segment: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Maps to 404: a well-formed path the server does not serve.
    #[error("no such resource")]
    Unknown,
}

/// Maps a raw (still percent-encoded) request path to what it names.
///
/// Malformed segments give [`PathError::BadSegment`] even when the overall
/// shape is unknown, so every traversal attempt is a 400, never a file lookup.
pub fn parse(raw_path: &str) -> Result<Target, PathError> {
    if raw_path == "/" {
        return Ok(Target::Root);
    }
    let Some(rest) = raw_path.strip_prefix('/') else {
        return Err(PathError::Unknown);
    };
    let segments = rest
        .split('/')
        .map(decode_segment)
        .collect::<Result<Vec<_>, PathError>>()?;
    let mut segments: Vec<&str> = segments.iter().map(|s| s.as_ref()).collect();

    // `/repos/ORG/installs/...`: a client whose hexpm repository is one of
    // ours asks there; it is the same, repository-independent file.
    if let ["repos", org, "installs", ..] = segments.as_slice() {
        check_org(org)?;
        segments.drain(..2);
    }
    // `/repos/ONE/repos/ORG/...`: Hex fetches an organisation's files (its
    // index, packages, tarballs and docs) at its hexpm URL + `/repos/ORG/`,
    // and when that URL is one of our repositories (`mix hex.repo set hexpm
    // --url http://HOST/repos/hexpm`) this is where it looks; the files are
    // ORG's, behind ORG's gate.
    if let ["repos", one, "repos", _, _, ..] = segments.as_slice() {
        check_org(one)?;
        segments.drain(..2);
    }
    let org = match segments.as_slice() {
        ["repos", org, _, ..] => {
            check_org(org)?;
            let org = (*org).to_owned();
            segments.drain(..2);
            Some(org)
        }
        _ => None,
    };

    let kind = match segments.as_slice() {
        ["names"] | ["versions"] => Kind::Registry,
        ["public_key"] => Kind::PublicKey,
        [crate::manifest::MANIFEST_FILE | crate::manifest::MANIFEST_DELTA_FILE]
            if org.is_none() =>
        {
            Kind::Manifest
        }
        ["packages", name] => {
            check_name(name)?;
            Kind::Registry
        }
        ["tarballs", file] => {
            check_release_file(file, ".tar")?;
            Kind::Tarball
        }
        ["docs", file] => {
            check_release_file(file, ".tar.gz")?;
            Kind::Docs
        }
        ["installs", rest @ ..] if org.is_none() && matches!(rest.len(), 1 | 2) => {
            for part in rest {
                check_installs_part(part)?;
            }
            Kind::Installs
        }
        _ => return Err(PathError::Unknown),
    };

    let mut relative = PathBuf::new();
    if let Some(org) = &org {
        relative.push("repos");
        relative.push(org);
    }
    relative.extend(segments);
    Ok(Target::File(FileTarget {
        org,
        kind,
        relative,
    }))
}

fn bad(segment: &str, reason: &'static str) -> PathError {
    PathError::BadSegment {
        segment: segment.to_owned(),
        reason,
    }
}

/// Decodes one segment and refuses anything that could act as a path component.
fn decode_segment(raw: &str) -> Result<std::borrow::Cow<'_, str>, PathError> {
    if raw.is_empty() {
        return Err(bad(raw, "empty segment"));
    }
    let decoded = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| bad(raw, "not UTF-8 after percent-decoding"))?;
    if decoded.len() > MAX_SEGMENT_LEN {
        return Err(bad(raw, "longer than 255 bytes"));
    }
    if decoded == "." || decoded == ".." {
        return Err(bad(raw, "dot segment"));
    }
    if decoded.contains(['/', '\\']) {
        return Err(bad(raw, "contains a path separator"));
    }
    if decoded.chars().any(char::is_control) {
        return Err(bad(raw, "contains a control character"));
    }
    // Borrowed unless it had escapes: most paths allocate nothing here.
    Ok(decoded)
}

/// Package names as hex.pm allows them: `^[a-z][a-z0-9_]*$`.
fn check_name(name: &str) -> Result<(), PathError> {
    if is_identifier(name, |c| c == '_') {
        Ok(())
    } else {
        Err(bad(name, "package name must match ^[a-z][a-z0-9_]*$"))
    }
}

/// Organisation names: like package names, and `-` is also allowed.
fn check_org(org: &str) -> Result<(), PathError> {
    if is_identifier(org, |c| c == '_' || c == '-') {
        Ok(())
    } else {
        Err(bad(org, "organisation name must match ^[a-z][a-z0-9_-]*$"))
    }
}

/// A file or directory name under `installs/` (`hex-1.x.csv`, `1.14.0`,
/// `hex-2.5.1.ez`): letters, digits, `.`, `_`, `+`, `-`, not starting with a dot.
fn check_installs_part(part: &str) -> Result<(), PathError> {
    let ok = !part.starts_with('.')
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'));
    if ok {
        Ok(())
    } else {
        Err(bad(part, "installs file names match [A-Za-z0-9._+-]+"))
    }
}

fn is_identifier(s: &str, extra: impl Fn(char) -> bool) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra(c))
}

/// `NAME-VERSION` followed by `suffix`. Names hold no `-`, so the first `-`
/// splits them; the version must start with a digit and use `[0-9A-Za-z.+-]`.
fn check_release_file(file: &str, suffix: &str) -> Result<(), PathError> {
    let stem = file
        .strip_suffix(suffix)
        .ok_or_else(|| bad(file, "wrong file extension"))?;
    let (name, version) = stem
        .split_once('-')
        .ok_or_else(|| bad(file, "expected NAME-VERSION"))?;
    check_name(name)?;
    let version_ok = version.starts_with(|c: char| c.is_ascii_digit())
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-'));
    if version_ok {
        Ok(())
    } else {
        Err(bad(
            file,
            "version must start with a digit and match [0-9A-Za-z.+-]+",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(crate::fuzz::config())]

        /// No path escapes the tree: whatever parses names a relative path
        /// without `..`, absolute parts or NUL.
        #[test]
        fn fuzz_request_paths(m in crate::fuzz::mutations(), raw in ".{0,128}") {
            let valid = b"/repos/acme/tarballs/acme_app-1.0.0%2Bbuild.tar";
            let mutated = String::from_utf8_lossy(&crate::fuzz::apply(valid, &m)).into_owned();
            for path in [mutated.as_str(), raw.as_str()] {
                if let Ok(Target::File(f)) = parse(path) {
                    let rel = f.relative.to_string_lossy().into_owned();
                    proptest::prop_assert!(!f.relative.is_absolute(), "{path} -> {rel}");
                    proptest::prop_assert!(
                        f.relative.components().all(|c| matches!(c, std::path::Component::Normal(_))),
                        "{path} -> {rel}"
                    );
                    proptest::prop_assert!(!rel.contains('\0'), "{path}");
                }
            }
        }
    }

    fn file(org: Option<&str>, kind: Kind, relative: &str) -> Result<Target, PathError> {
        Ok(Target::File(FileTarget {
            org: org.map(str::to_owned),
            kind,
            relative: PathBuf::from(relative),
        }))
    }

    fn is_bad(path: &str) -> bool {
        matches!(parse(path), Err(PathError::BadSegment { .. }))
    }

    #[test]
    fn accepts_every_served_shape() {
        assert_eq!(parse("/"), Ok(Target::Root));
        assert_eq!(parse("/names"), file(None, Kind::Registry, "names"));
        assert_eq!(parse("/versions"), file(None, Kind::Registry, "versions"));
        assert_eq!(
            parse("/public_key"),
            file(None, Kind::PublicKey, "public_key")
        );
        assert_eq!(
            parse("/packages/phoenix_live_view"),
            file(None, Kind::Registry, "packages/phoenix_live_view")
        );
        assert_eq!(
            parse("/tarballs/foo-1.0.0.tar"),
            file(None, Kind::Tarball, "tarballs/foo-1.0.0.tar")
        );
        assert_eq!(
            parse("/docs/foo-1.0.0-rc.1.tar.gz"),
            file(None, Kind::Docs, "docs/foo-1.0.0-rc.1.tar.gz")
        );
    }

    #[test]
    fn installs_are_one_tree_wide_file_set() {
        assert_eq!(
            parse("/installs/hex-1.x.csv"),
            file(None, Kind::Installs, "installs/hex-1.x.csv")
        );
        assert_eq!(
            parse("/installs/1.14.0/hex-2.5.1.ez"),
            file(None, Kind::Installs, "installs/1.14.0/hex-2.5.1.ez")
        );
        // Asked under a repository of ours: the same file.
        assert_eq!(
            parse("/repos/hexpm/installs/hex-1.x.csv"),
            file(None, Kind::Installs, "installs/hex-1.x.csv")
        );
        assert_eq!(parse("/installs"), Err(PathError::Unknown));
        // An organisation's docs as Hex asks for them through a repository of ours.
        assert_eq!(
            parse("/repos/hexpm/repos/acme/docs/x-1.0.0.tar.gz"),
            file(Some("acme"), Kind::Docs, "repos/acme/docs/x-1.0.0.tar.gz")
        );
        assert_eq!(
            parse("/repos/hexpm/repos/acme/names"),
            file(Some("acme"), Kind::Registry, "repos/acme/names")
        );
        assert_eq!(
            parse("/repos/hexpm/repos/acme/tarballs/x-1.0.0.tar"),
            file(
                Some("acme"),
                Kind::Tarball,
                "repos/acme/tarballs/x-1.0.0.tar"
            )
        );
        assert!(is_bad("/repos/hexpm/repos/../names"));
        assert_eq!(parse("/installs/a/b/c"), Err(PathError::Unknown));
        assert!(is_bad("/installs/.hidden"));
        assert!(is_bad("/installs/a%20b"));
    }

    #[test]
    fn repos_prefix_maps_under_repos_org() {
        assert_eq!(
            parse("/repos/acme/names"),
            file(Some("acme"), Kind::Registry, "repos/acme/names")
        );
        assert_eq!(
            parse("/repos/acme-corp/packages/foo"),
            file(
                Some("acme-corp"),
                Kind::Registry,
                "repos/acme-corp/packages/foo"
            )
        );
        assert_eq!(
            parse("/repos/acme/tarballs/foo-2.0.0.tar"),
            file(
                Some("acme"),
                Kind::Tarball,
                "repos/acme/tarballs/foo-2.0.0.tar"
            )
        );
        assert_eq!(
            parse("/repos/acme/docs/foo-2.0.0.tar.gz"),
            file(Some("acme"), Kind::Docs, "repos/acme/docs/foo-2.0.0.tar.gz")
        );
        assert_eq!(
            parse("/repos/acme/public_key"),
            file(Some("acme"), Kind::PublicKey, "repos/acme/public_key")
        );
    }

    #[test]
    fn plus_in_version_stays_a_plus() {
        assert_eq!(
            parse("/tarballs/foo-1.0.0+build.1.tar"),
            file(None, Kind::Tarball, "tarballs/foo-1.0.0+build.1.tar")
        );
        // An encoded plus decodes to the same file.
        assert_eq!(
            parse("/tarballs/foo-1.0.0%2Bbuild.1.tar"),
            file(None, Kind::Tarball, "tarballs/foo-1.0.0+build.1.tar")
        );
    }

    #[test]
    fn unknown_shapes_are_not_found() {
        for path in [
            "",
            "names",
            "/nope",
            "/packages",
            "/tarballs",
            "/packages/foo/extra",
            "/repos/acme",
            "/repos/acme/nope",
            "/repos/acme/repos/x/nope",
            "/repos/acme/repos/x/repos/y/names",
            "/repos/acme/installs",
            "/registry.ets.gz",
        ] {
            assert_eq!(parse(path), Err(PathError::Unknown), "{path}");
        }
    }

    #[test]
    fn traversal_is_rejected() {
        for path in [
            "/..",
            "/../etc/passwd",
            "/packages/..",
            "/packages/../names",
            "/packages/.",
            "/packages/%2e%2e",
            "/packages/%2E%2E",
            "/packages/.%2e",
            "/repos/../packages/foo",
            "/repos/%2e%2e/packages/foo",
            "/repos/acme/../../names",
        ] {
            assert!(is_bad(path), "{path}");
        }
    }

    #[test]
    fn encoded_separators_are_rejected() {
        for path in [
            "/packages/foo%2Fbar",
            "/packages/foo%2fbar",
            "/packages/%2e%2e%2fsecret",
            "/packages/..%2F..%2Fsecret",
            "/packages/foo%5Cbar",
            "/packages/foo\\bar",
            "/packages/..\\secret",
            "/repos/acme%2Fx/names",
        ] {
            assert!(is_bad(path), "{path}");
        }
    }

    #[test]
    fn nul_and_control_characters_are_rejected() {
        for path in [
            "/packages/foo%00",
            "/packages/%00",
            "/packages/foo%0a",
            "/packages/foo%0D",
            "/packages/foo%7f",
            "/tarballs/foo-1.0.0.tar%00.txt",
        ] {
            assert!(is_bad(path), "{path}");
        }
    }

    #[test]
    fn empty_segments_are_rejected() {
        for path in [
            "//names",
            "/names/",
            "/packages//foo",
            "/packages/",
            "/repos//names",
        ] {
            assert!(is_bad(path), "{path}");
        }
    }

    #[test]
    fn names_outside_the_charset_are_rejected() {
        for path in [
            "/packages/Foo",
            "/packages/FOO",
            "/packages/1foo",
            "/packages/_foo",
            "/packages/foo-bar",
            "/packages/foo.bar",
            "/packages/foo%20bar",
            "/packages/foo+bar",
            "/packages/f%C3%B6o",
            "/packages/%ff",
            "/packages/foo%zz",
            "/repos/Acme/names",
            "/repos/-acme/names",
            "/repos/ac.me/names",
        ] {
            assert!(is_bad(path), "{path}");
        }
        let long = format!("/packages/{}", "a".repeat(256));
        assert!(is_bad(&long));
        let max = format!("/packages/{}", "a".repeat(255));
        assert!(parse(&max).is_ok());
    }

    #[test]
    fn release_files_are_checked() {
        for path in [
            "/tarballs/foo.tar",
            "/tarballs/foo-.tar",
            "/tarballs/foo-1.0.0",
            "/tarballs/foo-1.0.0.tar.gz",
            "/tarballs/Foo-1.0.0.tar",
            "/tarballs/foo-v1.0.0.tar",
            "/tarballs/foo-1.0.0 .tar",
            "/tarballs/foo-1.0.0_x.tar",
            "/tarballs/-1.0.0.tar",
            "/docs/foo-1.0.0.tar",
            "/docs/foo-1.0.0.tgz",
        ] {
            assert!(is_bad(path), "{path}");
        }
        assert!(parse("/tarballs/foo_bar-0.1.0-alpha.2+sha.5114f85.tar").is_ok());
    }

    #[test]
    fn relative_path_has_only_normal_components() {
        use std::path::Component;
        let Ok(Target::File(target)) = parse("/repos/acme/tarballs/foo-1.0.0+b.tar") else {
            panic!("expected a file target");
        };
        assert!(target.relative.is_relative());
        assert!(
            target
                .relative
                .components()
                .all(|c| matches!(c, Component::Normal(_)))
        );
        assert_eq!(target.relative.components().count(), 4);
    }
}
