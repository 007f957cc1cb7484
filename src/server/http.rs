//! PURE: conditional-request and range evaluation (RFC 9110 sections 13 and 14).
//!
//! Takes header values as plain strings and the file's validators, returns
//! what to send. Unparseable headers are ignored, as RFC 9110 asks.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The request headers that steer a GET or HEAD of a file.
#[derive(Debug, Default, Clone, Copy)]
pub struct Conditions<'a> {
    /// `If-None-Match`, all field lines joined with `,`.
    pub if_none_match: Option<&'a str>,
    /// `If-Modified-Since`.
    pub if_modified_since: Option<&'a str>,
    /// `Range`; `None` also when the field appears more than once.
    pub range: Option<&'a str>,
    /// `If-Range`.
    pub if_range: Option<&'a str>,
}

/// The file facts that conditions are checked against.
#[derive(Debug, Clone, Copy)]
pub struct Validators<'a> {
    /// The strong ETag, quotes included.
    pub etag: &'a str,
    /// The modification time, already truncated to whole seconds.
    pub last_modified: Option<SystemTime>,
    /// The file length in bytes.
    pub len: u64,
}

/// What to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 304 with validators and no body.
    NotModified,
    /// 200 with the whole file.
    Full,
    /// 206 with bytes `start..=end`.
    Partial {
        /// First byte sent.
        start: u64,
        /// Last byte sent, inclusive.
        end: u64,
    },
    /// 416 with `Content-Range: bytes */LEN`.
    Unsatisfiable,
}

/// Decides the response for a request. `ranges_allowed` is false for HEAD,
/// since RFC 9110 defines range handling for GET only.
pub fn evaluate(c: &Conditions<'_>, v: &Validators<'_>, ranges_allowed: bool) -> Outcome {
    // If-Modified-Since is evaluated only when If-None-Match is absent.
    if let Some(inm) = c.if_none_match {
        if etag_list_matches(inm, v.etag) {
            return Outcome::NotModified;
        }
    } else if let (Some(ims), Some(lm)) = (c.if_modified_since, v.last_modified)
        && let Ok(since) = httpdate::parse_http_date(ims.trim())
        && lm <= since
    {
        return Outcome::NotModified;
    }

    let Some(range) = c.range.filter(|_| ranges_allowed) else {
        return Outcome::Full;
    };
    if let Some(if_range) = c.if_range
        && !if_range_matches(if_range, v)
    {
        return Outcome::Full;
    }
    match parse_range(range, v.len) {
        RangeSpec::Ignore => Outcome::Full,
        RangeSpec::Unsatisfiable => Outcome::Unsatisfiable,
        RangeSpec::Bytes { start, end } => Outcome::Partial { start, end },
    }
}

/// Drops sub-second precision: HTTP dates carry whole seconds only, and
/// comparing a nanosecond mtime to a parsed date would never be equal.
pub fn truncate_to_secs(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(_) => t,
    }
}

/// Weak comparison of an `If-None-Match` list against our ETag; `*` matches any.
fn etag_list_matches(list: &str, etag: &str) -> bool {
    if list.trim() == "*" {
        return true;
    }
    let ours = etag.strip_prefix("W/").unwrap_or(etag);
    entity_tags(list).any(|(_, tag)| tag == ours)
}

/// `If-Range`: a strong ETag match, or a date equal to `Last-Modified`.
fn if_range_matches(value: &str, v: &Validators<'_>) -> bool {
    let value = value.trim();
    if value.starts_with('"') || value.starts_with("W/") {
        // Strong comparison: a weak validator never matches.
        return !value.starts_with("W/") && value == v.etag;
    }
    match (httpdate::parse_http_date(value), v.last_modified) {
        (Ok(date), Some(lm)) => date == lm,
        _ => false,
    }
}

/// Yields `(is_weak, "quoted-tag")` for each entity-tag in a comma list,
/// stopping at the first malformed element.
fn entity_tags(list: &str) -> impl Iterator<Item = (bool, &str)> {
    let mut rest = list;
    std::iter::from_fn(move || {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return None;
        }
        let (weak, tail) = match rest.strip_prefix("W/") {
            Some(t) => (true, t),
            None => (false, rest),
        };
        let inner = tail.strip_prefix('"')?;
        let close = inner.find('"')?;
        let tag = &tail[..close + 2];
        rest = &inner[close + 1..];
        Some((weak, tag))
    })
}

#[derive(Debug, PartialEq, Eq)]
enum RangeSpec {
    Ignore,
    Unsatisfiable,
    Bytes { start: u64, end: u64 },
}

/// A single `bytes=` range. Several ranges are ignored (full 200) rather than
/// answered with multipart/byteranges, which no Hex client asks for.
fn parse_range(header: &str, len: u64) -> RangeSpec {
    let header = header.trim();
    let Some((unit, spec)) = header.split_once('=') else {
        return RangeSpec::Ignore;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return RangeSpec::Ignore;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeSpec::Ignore;
    };
    match (first.is_empty(), last.is_empty()) {
        (true, true) => RangeSpec::Ignore,
        (true, false) => match parse_pos(last) {
            None => RangeSpec::Ignore,
            Some(0) => RangeSpec::Unsatisfiable,
            Some(_) if len == 0 => RangeSpec::Unsatisfiable,
            Some(suffix) => RangeSpec::Bytes {
                start: len.saturating_sub(suffix),
                end: len - 1,
            },
        },
        (false, last_empty) => {
            let Some(start) = parse_pos(first) else {
                return RangeSpec::Ignore;
            };
            let last = if last_empty {
                None
            } else {
                match parse_pos(last) {
                    Some(l) if l >= start => Some(l),
                    _ => return RangeSpec::Ignore,
                }
            };
            if start >= len {
                return RangeSpec::Unsatisfiable;
            }
            let end = last.map_or(len - 1, |l| l.min(len - 1));
            RangeSpec::Bytes { start, end }
        }
    }
}

/// Digits only; saturates on overflow, since a huge last-byte-pos is
/// legitimate ("to the end") and a huge first-byte-pos is simply past the end.
fn parse_pos(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |acc, b| {
        acc.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ETAG: &str = "\"0123456789abcdef0123456789abcdef\"";

    fn mtime() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn validators(len: u64) -> Validators<'static> {
        Validators {
            etag: ETAG,
            last_modified: Some(mtime()),
            len,
        }
    }

    fn check(c: Conditions<'_>, expect: Outcome) {
        assert_eq!(evaluate(&c, &validators(100), true), expect, "{c:?}");
    }

    fn range(r: &str) -> Conditions<'_> {
        Conditions {
            range: Some(r),
            ..Conditions::default()
        }
    }

    #[test]
    fn no_conditions_is_full() {
        check(Conditions::default(), Outcome::Full);
    }

    #[test]
    fn if_none_match_forms() {
        fn inm(v: &str) -> Conditions<'_> {
            Conditions {
                if_none_match: Some(v),
                ..Conditions::default()
            }
        }
        check(inm(ETAG), Outcome::NotModified);
        check(inm("*"), Outcome::NotModified);
        check(inm(&format!("W/{ETAG}")), Outcome::NotModified);
        check(inm(&format!("\"x\", {ETAG}")), Outcome::NotModified);
        check(inm(&format!("\"a,b\",W/{ETAG}")), Outcome::NotModified);
        check(inm("\"other\""), Outcome::Full);
        check(inm("\"0123\""), Outcome::Full);
        check(inm("0123456789abcdef0123456789abcdef"), Outcome::Full);
        check(inm(""), Outcome::Full);
    }

    #[test]
    fn if_modified_since() {
        fn ims(v: &str) -> Conditions<'_> {
            Conditions {
                if_modified_since: Some(v),
                ..Conditions::default()
            }
        }
        let at = |secs: u64| httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
        check(ims(&at(1_700_000_000)), Outcome::NotModified);
        check(ims(&at(1_700_000_500)), Outcome::NotModified);
        check(ims(&at(1_699_999_999)), Outcome::Full);
        check(ims("not a date"), Outcome::Full);
        // If-None-Match wins even when the date alone would give 304.
        let both = Conditions {
            if_none_match: Some("\"other\""),
            if_modified_since: Some(&at(1_700_000_500)),
            ..Conditions::default()
        };
        check(both, Outcome::Full);
    }

    #[test]
    fn single_ranges() {
        check(range("bytes=0-9"), Outcome::Partial { start: 0, end: 9 });
        check(range("bytes=90-"), Outcome::Partial { start: 90, end: 99 });
        check(range("bytes=-10"), Outcome::Partial { start: 90, end: 99 });
        check(range("bytes=-1000"), Outcome::Partial { start: 0, end: 99 });
        check(
            range("bytes=50-5000"),
            Outcome::Partial { start: 50, end: 99 },
        );
        check(
            range("bytes=99-99"),
            Outcome::Partial { start: 99, end: 99 },
        );
        check(range("Bytes = 1-2"), Outcome::Partial { start: 1, end: 2 });
        check(
            range("bytes=0-99999999999999999999999"),
            Outcome::Partial { start: 0, end: 99 },
        );
    }

    #[test]
    fn unsatisfiable_ranges() {
        check(range("bytes=100-"), Outcome::Unsatisfiable);
        check(range("bytes=100-200"), Outcome::Unsatisfiable);
        check(range("bytes=-0"), Outcome::Unsatisfiable);
        check(
            range("bytes=99999999999999999999999-"),
            Outcome::Unsatisfiable,
        );
        let empty_file = evaluate(&range("bytes=-5"), &validators(0), true);
        assert_eq!(empty_file, Outcome::Unsatisfiable);
        let empty_file = evaluate(&range("bytes=0-"), &validators(0), true);
        assert_eq!(empty_file, Outcome::Unsatisfiable);
    }

    #[test]
    fn ignored_ranges() {
        for r in [
            "bytes=0-1,5-6",
            "bytes=0-1,",
            "bytes=5-1",
            "bytes=-",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes=1-2-3",
            "items=0-1",
            "bytes",
            "",
        ] {
            check(range(r), Outcome::Full);
        }
    }

    #[test]
    fn head_ignores_range() {
        assert_eq!(
            evaluate(&range("bytes=0-9"), &validators(100), false),
            Outcome::Full
        );
    }

    #[test]
    fn if_range() {
        fn with(ir: &str) -> Conditions<'_> {
            Conditions {
                range: Some("bytes=0-9"),
                if_range: Some(ir),
                ..Conditions::default()
            }
        }
        let partial = Outcome::Partial { start: 0, end: 9 };
        check(with(ETAG), partial);
        check(with(&format!("W/{ETAG}")), Outcome::Full);
        check(with("\"other\""), Outcome::Full);
        check(with(&httpdate::fmt_http_date(mtime())), partial);
        check(
            with(&httpdate::fmt_http_date(mtime() + Duration::from_secs(1))),
            Outcome::Full,
        );
        check(with("garbage"), Outcome::Full);
    }

    #[test]
    fn not_modified_beats_range() {
        let c = Conditions {
            if_none_match: Some(ETAG),
            range: Some("bytes=0-9"),
            ..Conditions::default()
        };
        check(c, Outcome::NotModified);
    }

    #[test]
    fn truncation() {
        let t = mtime() + Duration::from_millis(999);
        assert_eq!(truncate_to_secs(t), mtime());
    }
}
