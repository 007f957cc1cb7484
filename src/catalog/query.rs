//! PURE. hex.pm's package search syntax, parsed: free text, `name:`,
//! `description:`, `depends:`, `build_tool:`, `updated_after:` and `extra:`,
//! each `key:value` or `key:"quoted value"`; the sorts and the page.
//!
//! As on hex.pm: a token is a filter when its colon comes before any space
//! and not first; unknown keys are ignored; every other word is free text,
//! which matches a name (a substring from three characters on, else the
//! whole name) or any word of the description.

/// A parsed search.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// Free-text words, lowercased.
    pub words: Vec<String>,
    /// `name:`: exact, or with `*` at either end as a wildcard.
    pub name: Option<NamePattern>,
    /// `description:` words, lowercased.
    pub description: Vec<String>,
    /// `depends:NAME` or `depends:REPO:NAME`.
    pub depends: Option<Dependency>,
    /// `build_tool:X`.
    pub build_tool: Option<String>,
    /// `updated_after:` (Unix seconds, from an ISO-8601 UTC date-time).
    pub updated_after: Option<u64>,
    /// `extra:k1,k2,value`: the keys, then the value.
    pub extra: Option<(Vec<String>, String)>,
}

/// The longest search read, in bytes: longer ones are refused, not cut, so
/// no one gets an answer to a question they did not ask.
pub const MAX_SEARCH_BYTES: usize = 512;

/// The most words (free text and `description:`) a search may have.
pub const MAX_SEARCH_WORDS: usize = 32;

/// Why a search is refused (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchError {
    /// More than [`MAX_SEARCH_BYTES`].
    #[error("the search is {0} bytes long; at most {MAX_SEARCH_BYTES} are read: shorten it")]
    TooLong(usize),
    /// More than [`MAX_SEARCH_WORDS`].
    #[error("the search has {0} words; at most {MAX_SEARCH_WORDS} are read: use fewer")]
    TooManyWords(usize),
}

/// A `name:` filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern {
    /// `org/name` limits it to one repository.
    pub repository: Option<String>,
    /// The name without its wildcards, lowercased.
    pub core: String,
    /// `*name`: anything may come before.
    pub any_before: bool,
    /// `name*`: anything may come after.
    pub any_after: bool,
}

impl NamePattern {
    /// The pattern for SQL `LIKE … ESCAPE '\'`.
    pub fn like(&self) -> String {
        format!(
            "{}{}{}",
            if self.any_before { "%" } else { "" },
            like_escape(&self.core),
            if self.any_after { "%" } else { "" }
        )
    }
}

/// A `depends:` filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    /// The dependency's repository, if given.
    pub repository: Option<String>,
    /// Its name.
    pub name: String,
}

/// How results are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// By name (the default).
    Name,
    /// Most downloaded first.
    Downloads,
    /// Most downloaded in the last 90 days first.
    RecentDownloads,
    /// Newest first (first seen here).
    InsertedAt,
    /// Most recently updated first.
    UpdatedAt,
}

impl Sort {
    /// hex.pm's sort names; an unknown one sorts by name, as hex.pm
    /// ignores it.
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("downloads" | "total_downloads") => Self::Downloads,
            Some("recent_downloads") => Self::RecentDownloads,
            Some("inserted_at") => Self::InsertedAt,
            Some("updated_at") => Self::UpdatedAt,
            _ => Self::Name,
        }
    }
}

/// Results per page, at most.
pub const PAGE_SIZE: usize = 100;

/// A page number from the query string: anything below 1 or unreadable is 1.
pub fn page(s: Option<&str>) -> usize {
    s.and_then(|p| p.trim().parse::<usize>().ok())
        .filter(|p| *p >= 1)
        .unwrap_or(1)
}

/// Splits `s` into tokens, keeping `"quoted values"` (after a `key:`) whole.
fn tokens(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Escapes `%`, `_` and `\` for a `LIKE … ESCAPE '\'`.
pub fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Words of free text as the full-text index sees them: letters, digits
/// and `_`, lowercased; `/` and punctuation split words.
pub fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Parses an ISO-8601 UTC date-time (`2024-01-31T12:00:00Z`, fractions
/// allowed, offset zero only, years 1970 to 9999) to Unix seconds. Anything
/// else, however large, is `None`: the fields are bounded before any
/// arithmetic, so no input overflows.
pub fn parse_utc(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.split('.').next()?;
    let mut t = time.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if !(1970..=9999).contains(&y)
        || !(1..=12).contains(&m)
        || !(1..=31).contains(&day)
        || !(0..=23).contains(&hh)
        || !(0..=59).contains(&mm)
        || !(0..=60).contains(&ss)
    {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

impl Query {
    /// [`Query::parse`] within [`MAX_SEARCH_BYTES`] and [`MAX_SEARCH_WORDS`],
    /// the bounds that keep a search's SQL small.
    pub fn read(s: &str) -> Result<Self, SearchError> {
        if s.len() > MAX_SEARCH_BYTES {
            return Err(SearchError::TooLong(s.len()));
        }
        let q = Self::parse(s);
        let words = q.words.len() + q.description.len();
        if words > MAX_SEARCH_WORDS {
            return Err(SearchError::TooManyWords(words));
        }
        Ok(q)
    }

    /// Parses hex.pm's search syntax. Never fails: what it cannot read is
    /// free text, as on hex.pm.
    pub fn parse(s: &str) -> Self {
        let mut q = Self::default();
        let mut free = Vec::new();
        for token in tokens(s.trim()) {
            let filter = token
                .find(':')
                .filter(|at| *at > 0)
                .map(|at| (&token[..at], &token[at + 1..]));
            let Some((key, value)) = filter else {
                free.push(token);
                continue;
            };
            match key {
                "name" => {
                    let (repository, name) = match value.split_once('/') {
                        Some((r, n)) => (Some(r.to_owned()), n),
                        None => (None, value),
                    };
                    q.name = Some(NamePattern {
                        repository,
                        core: name.trim_matches('*').to_lowercase(),
                        any_before: name.starts_with('*'),
                        any_after: name.len() > 1 && name.ends_with('*'),
                    });
                }
                "description" => q.description.extend(words(value)),
                "depends" => {
                    q.depends = Some(match value.split_once(':') {
                        Some((r, n)) => Dependency {
                            repository: Some(r.to_owned()),
                            name: n.to_owned(),
                        },
                        None => Dependency {
                            repository: None,
                            name: value.to_owned(),
                        },
                    });
                }
                "build_tool" => q.build_tool = Some(value.to_owned()),
                // Silently ignored when not a UTC date-time, as on hex.pm.
                "updated_after" => q.updated_after = parse_utc(value),
                "extra" => match value.rsplit_once(',') {
                    Some((keys, v)) => {
                        q.extra =
                            Some((keys.split(',').map(str::to_owned).collect(), v.to_owned()));
                    }
                    // Not `k,v`: the whole search is free text (hex.pm).
                    None => return Self::free_text(s),
                },
                _ => {}
            }
        }
        q.words = free.iter().flat_map(|w| words(w)).collect();
        q
    }

    fn free_text(s: &str) -> Self {
        Self {
            words: words(s),
            ..Self::default()
        }
    }

    /// The free text as one lowercased string (for the name match).
    pub fn text(&self) -> String {
        self.words.join(" ")
    }

    /// True when nothing filters.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_free_text() {
        let q = Query::parse(
            r#"json name:ja* depends:hexpm:plug build_tool:mix description:"fast parser" extra"#,
        );
        assert_eq!(q.words, ["json", "extra"]);
        assert_eq!(q.name.unwrap().like(), "ja%");
        assert_eq!(q.description, ["fast", "parser"]);
        assert_eq!(
            q.depends,
            Some(Dependency {
                repository: Some("hexpm".into()),
                name: "plug".into()
            })
        );
        assert_eq!(q.build_tool.as_deref(), Some("mix"));
        let q = Query::parse("name:acme/*_core unknown:thing :colon");
        let name = q.name.clone().unwrap();
        assert_eq!(
            (name.repository.as_deref(), name.like()),
            (Some("acme"), "%\\_core".into())
        );
        assert_eq!(
            q.words,
            ["colon"],
            "a leading colon is text, unknown keys go"
        );
        assert!(Query::parse("   ").is_empty());
    }

    #[test]
    fn extra_needs_a_comma_or_the_whole_search_is_text() {
        let q = Query::parse("extra:key,sub,42 x");
        assert_eq!(
            q.extra,
            Some((vec!["key".into(), "sub".into()], "42".into()))
        );
        assert_eq!(q.words, ["x"]);
        let q = Query::parse("extra:nocomma name:x");
        assert_eq!((q.extra, q.name), (None, None));
        assert_eq!(q.words, ["extra", "nocomma", "name", "x"]);
    }

    #[test]
    fn dates_sorts_and_pages() {
        assert_eq!(parse_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_utc("2024-02-29T12:30:15.123Z"), Some(1_709_209_815));
        assert_eq!(parse_utc("2024-02-29T12:30:15+02:00"), None);
        assert_eq!(parse_utc("2024-13-01T00:00:00Z"), None);
        // Regression: these overflowed (a panic in debug builds).
        assert_eq!(parse_utc("9223372036854775807-01-01T00:00:00Z"), None);
        assert_eq!(parse_utc("2024-01-01T-9223372036854775807:00:00Z"), None);
        assert_eq!(parse_utc("2024-01-01T00:-5:00Z"), None);
        assert_eq!(parse_utc("9999-12-31T23:59:60Z"), Some(253_402_300_800));
        assert_eq!(Query::parse("updated_after:2024-01-01").updated_after, None);
        assert_eq!(
            Query::read(&"a".repeat(MAX_SEARCH_BYTES + 1)),
            Err(SearchError::TooLong(MAX_SEARCH_BYTES + 1))
        );
        assert_eq!(
            Query::read(&"ab ".repeat(MAX_SEARCH_WORDS + 1)),
            Err(SearchError::TooManyWords(MAX_SEARCH_WORDS + 1))
        );
        assert!(Query::read(&"ab ".repeat(MAX_SEARCH_WORDS)).is_ok());
        assert_eq!(Sort::parse(Some("downloads")), Sort::Downloads);
        assert_eq!(Sort::parse(Some("nonsense")), Sort::Name);
        assert_eq!(
            (page(Some("0")), page(Some("x")), page(Some("3"))),
            (1, 1, 3)
        );
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzz::config())]

        /// Any text parses, and a name's LIKE pattern has no wildcard but
        /// the ones asked for.
        #[test]
        fn fuzz_dates(y in proptest::num::i64::ANY, rest in "[-0-9:T.Z]{0,40}") {
            let _ = parse_utc(&format!("{y}-{rest}"));
            let _ = parse_utc(&rest);
        }

        #[test]
        fn fuzz_queries(s in ".{0,200}") {
            let q = Query::parse(&s);
            if let Some(n) = q.name {
                let escaped = like_escape(&n.core);
                let mut chars = escaped.chars();
                while let Some(c) = chars.next() {
                    if c == '\\' {
                        proptest::prop_assert!(matches!(chars.next(), Some('%' | '_' | '\\')));
                    } else {
                        proptest::prop_assert!(c != '%' && c != '_');
                    }
                }
            }
        }
    }
}
