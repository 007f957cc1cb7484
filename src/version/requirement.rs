//! Version requirements such as `~> 1.4` or `>= 1.0.0 and < 2.0.0`, read and
//! matched as Elixir's `Version.parse_requirement/1` and `Version.match?/3`
//! do (`lib/elixir/lib/version.ex`, as of the 1.21.0-dev source).

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use super::{Problem, Version, column, parse_loose};

/// A parsed version requirement: clauses joined by `and` and `or`.
///
/// Grammar, as Elixir reads it: a clause is `OP VERSION` with OP one of `==`,
/// `!=` (deprecated in Elixir, still accepted), `>`, `>=`, `<`, `<=`, `~>`,
/// or a bare `VERSION` meaning `==`. Only `~>` accepts `MAJOR.MINOR`
/// (`~> 2.1` is `>= 2.1.0 and < 3.0.0`; `~> 2.1.3` is `>= 2.1.3 and < 2.2.0`).
/// `and` binds tighter than `or`. Whitespace between tokens is free, and an
/// operator may touch its version (`>=1.0.0`); `and` and `or` are words, so
/// whitespace must separate them from versions. Build metadata in a version
/// is accepted and ignored, as in Elixir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The text, without surrounding whitespace; what `Display` writes.
    source: String,
    /// Disjunction of conjunctions: `and` binds tighter than `or`.
    any_of: Vec<Vec<Clause>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Clause {
    op: Op,
    /// The version after the operator; for `~>` the lower bound, with a
    /// missing patch read as 0.
    operand: Version,
    /// For `~>` only: versions must sort below this (`X.Y.0-0`, the lowest
    /// version of the next minor or major). `None` when that bound would not
    /// fit in a `u64`, where every representable version is below it.
    upper: Option<Version>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Pessimistic,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Pessimistic => "~>",
        }
    }
}

/// Longest first, so `>=` is not read as `>` then `=`.
const OPERATORS: [(&str, Op); 7] = [
    (">=", Op::Ge),
    ("<=", Op::Le),
    ("~>", Op::Pessimistic),
    ("==", Op::Eq),
    ("!=", Op::Ne),
    (">", Op::Gt),
    ("<", Op::Lt),
];

/// Characters that start an operator; they cannot appear in a version, so a
/// run of them that is no known operator is reported as a bad operator.
const OPERATOR_CHARS: [char; 5] = ['<', '>', '=', '~', '!'];

/// Why a string is not a version requirement. `requirement` is the input as
/// given and `column` counts its characters from 1.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequirementError {
    /// Nothing but whitespace.
    #[error(
        "empty string is not a version requirement: expected something like `~> 1.4` or `>= 1.0.0 and < 2.0.0`"
    )]
    Empty,
    /// An operator, `and`, `or` or the end where a version must be.
    #[error(
        "{requirement:?} is not a version requirement: expected a version{} at column {column}{}",
        after_text(after),
        found_text(found)
    )]
    ExpectedVersion {
        requirement: String,
        column: usize,
        /// The token before, such as `~>` or `and`; `None` at the start.
        after: Option<String>,
        /// The token found instead; `None` at the end of the input.
        found: Option<String>,
    },
    /// A word where a version must be, but not a valid version.
    #[error(
        "{requirement:?} is not a version requirement: expected a version{} at column {column}, found {found:?}: {problem}",
        after_text(after)
    )]
    BadVersion {
        requirement: String,
        column: usize,
        after: Option<String>,
        found: String,
        problem: Problem,
    },
    /// `MAJOR.MINOR` after an operator other than `~>`.
    #[error(
        "{requirement:?} is not a version requirement: `{op}` needs MAJOR.MINOR.PATCH, found {found:?} at column {column}; write {found}.0 (only `~>` accepts MAJOR.MINOR)"
    )]
    MissingPatch {
        requirement: String,
        column: usize,
        op: &'static str,
        found: String,
    },
    /// Something other than `and`, `or` or the end after a complete clause.
    #[error(
        "{requirement:?} is not a version requirement: expected `and`, `or` or the end at column {column}, found {found:?}"
    )]
    ExpectedConjunction {
        requirement: String,
        column: usize,
        found: String,
    },
    /// A run of operator characters that is no operator, such as `=>`.
    #[error(
        "{requirement:?} is not a version requirement: unknown operator `{found}` at column {column}; {}",
        suggestion_text(found)
    )]
    UnknownOperator {
        requirement: String,
        column: usize,
        found: String,
    },
}

fn after_text(after: &Option<String>) -> String {
    after
        .as_ref()
        .map_or_else(String::new, |token| format!(" after `{token}`"))
}

fn found_text(found: &Option<String>) -> String {
    found
        .as_ref()
        .map_or_else(String::new, |token| format!(", found `{token}`"))
}

fn suggestion_text(found: &str) -> &'static str {
    match found {
        "=>" => "did you mean `>=`?",
        "=<" => "did you mean `<=`?",
        "=" | "===" => "did you mean `==`?",
        "!" | "<>" | "=!" => "did you mean `!=`?",
        "~" | ">~" | "~=" | "~>=" => "did you mean `~>`?",
        _ => "use one of ==, !=, >, >=, <, <=, ~>",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok<'a> {
    Op(Op),
    Word(&'a str),
    And,
    Or,
    BadOp(&'a str),
}

impl Tok<'_> {
    fn text(&self) -> &str {
        match self {
            Tok::Op(op) => op.as_str(),
            Tok::Word(w) | Tok::BadOp(w) => w,
            Tok::And => "and",
            Tok::Or => "or",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    tok: Tok<'a>,
    /// Byte offset in the input.
    offset: usize,
}

fn lex(s: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let mut rest = s;
    let mut offset = 0;
    loop {
        let trimmed = rest.trim_start();
        offset += rest.len() - trimmed.len();
        rest = trimmed;
        if rest.is_empty() {
            return tokens;
        }
        let (tok, len) =
            if let Some((text, op)) = OPERATORS.iter().find(|(text, _)| rest.starts_with(text)) {
                (Tok::Op(*op), text.len())
            } else {
                let is_op_char = |c: char| OPERATOR_CHARS.contains(&c);
                let op_run = rest.find(|c| !is_op_char(c)).unwrap_or(rest.len());
                if op_run > 0 {
                    (Tok::BadOp(rest.get(..op_run).unwrap_or(rest)), op_run)
                } else {
                    let len = rest
                        .find(|c: char| c.is_whitespace() || is_op_char(c))
                        .unwrap_or(rest.len());
                    let word = rest.get(..len).unwrap_or(rest);
                    let tok = match word {
                        "and" => Tok::And,
                        "or" => Tok::Or,
                        _ => Tok::Word(word),
                    };
                    (tok, len)
                }
            };
        tokens.push(Token { tok, offset });
        match rest.split_at_checked(len) {
            // A token is never empty, so this always advances.
            Some((_, tail)) if len > 0 => rest = tail,
            _ => return tokens,
        }
        offset += len;
    }
}

impl Requirement {
    /// Parses a requirement as Elixir's `Version.parse_requirement/1` does.
    pub fn parse(s: &str) -> Result<Requirement, RequirementError> {
        let source = s.trim();
        if source.is_empty() {
            return Err(RequirementError::Empty);
        }
        let requirement = || s.to_owned();
        let col = |offset: usize| column(s, offset);
        let end = s.len();

        let mut tokens = lex(s).into_iter().peekable();
        let mut any_of = Vec::new();
        let mut all_of = Vec::new();
        // The token before the clause being read, for messages.
        let mut after: Option<String> = None;
        loop {
            // A clause: an optional operator, then a version.
            let op = match tokens.peek().map(|t| t.tok) {
                Some(Tok::Op(op)) => {
                    tokens.next();
                    after = Some(op.as_str().to_owned());
                    op
                }
                _ => Op::Eq,
            };
            let version_token = tokens.next();
            let (word, offset) = match version_token {
                Some(Token {
                    tok: Tok::Word(word),
                    offset,
                }) => (word, offset),
                Some(Token {
                    tok: Tok::BadOp(found),
                    offset,
                }) => {
                    return Err(RequirementError::UnknownOperator {
                        requirement: requirement(),
                        column: col(offset),
                        found: found.to_owned(),
                    });
                }
                Some(Token { tok, offset }) => {
                    return Err(RequirementError::ExpectedVersion {
                        requirement: requirement(),
                        column: col(offset),
                        after,
                        found: Some(tok.text().to_owned()),
                    });
                }
                None => {
                    return Err(RequirementError::ExpectedVersion {
                        requirement: requirement(),
                        column: col(end),
                        after,
                        found: None,
                    });
                }
            };
            let pessimistic = op == Op::Pessimistic;
            let (operand, patch_given) = parse_loose(word, true).map_err(|e| {
                let problem = match e.problem {
                    Problem::Shape { .. } => Problem::Shape {
                        minor_only_allowed: pessimistic,
                    },
                    other => other,
                };
                RequirementError::BadVersion {
                    requirement: requirement(),
                    column: col(offset),
                    after: after.clone(),
                    found: word.to_owned(),
                    problem,
                }
            })?;
            if !patch_given && !pessimistic {
                return Err(RequirementError::MissingPatch {
                    requirement: requirement(),
                    column: col(offset),
                    op: op.as_str(),
                    found: word.to_owned(),
                });
            }
            all_of.push(Clause::new(op, operand, patch_given));

            // Then `and`, `or` or the end.
            match tokens.next() {
                None => break,
                Some(Token { tok: Tok::And, .. }) => after = Some("and".to_owned()),
                Some(Token { tok: Tok::Or, .. }) => {
                    after = Some("or".to_owned());
                    any_of.push(std::mem::take(&mut all_of));
                }
                Some(Token { tok, offset }) => {
                    return Err(RequirementError::ExpectedConjunction {
                        requirement: requirement(),
                        column: col(offset),
                        found: tok.text().to_owned(),
                    });
                }
            }
        }
        any_of.push(all_of);
        Ok(Requirement {
            source: source.to_owned(),
            any_of,
        })
    }

    /// Does `v` satisfy this requirement, as Hex decides when it picks a
    /// release for a dependency?
    ///
    /// This is Elixir's `Version.match?(v, req, allow_pre: false)`
    /// (`lib/elixir/lib/version.ex`, `Version.Requirement.match_op?/3`); the
    /// Elixir docs say Hex sets `allow_pre: false`. Clauses compare by SemVer
    /// precedence, and a pre-release `v` additionally fails every `~>`, `>`
    /// and `>=` clause whose own version is not a pre-release. `<`, `<=`, `==`
    /// and `!=` clauses are not restricted. So `~> 1.0` does not match
    /// `1.1.0-rc.1` but `~> 1.1-rc.0` does, `>= 2.0.0-rc.1` matches
    /// `2.1.0-dev`, and `< 2.0.0` matches `1.0.0-rc.1`. `~>` never matches a
    /// pre-release of its upper bound: `~> 1.0` is `< 2.0.0-0`.
    pub fn matches(&self, v: &Version) -> bool {
        self.eval(v, false)
    }

    /// Like [`Requirement::matches`] but pre-releases are always eligible
    /// (Elixir's default `allow_pre: true`): pure precedence, so `~> 1.0`
    /// matches `1.1.0-rc.1`. For deny lists, where "deny foo ~> 1.0" must also
    /// catch the release candidates inside that range.
    pub fn matches_allowing_pre(&self, v: &Version) -> bool {
        self.eval(v, true)
    }

    /// The requirement text, without surrounding whitespace.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    fn eval(&self, v: &Version, allow_pre: bool) -> bool {
        self.any_of
            .iter()
            .any(|all_of| all_of.iter().all(|clause| clause.eval(v, allow_pre)))
    }
}

impl Clause {
    fn new(op: Op, mut operand: Version, patch_given: bool) -> Clause {
        // Elixir ignores build metadata in requirements; dropping it keeps
        // two requirements that match the same versions structurally equal
        // in their clauses (the source text still differs).
        operand.build = None;
        let upper = (op == Op::Pessimistic).then(|| {
            let lowest = |major, minor| Version {
                major,
                minor,
                patch: 0,
                pre: vec![super::Identifier::Numeric(0)],
                build: None,
            };
            // `~> X.Y` stops below (X+1).0.0-0 and `~> X.Y.Z` below
            // X.(Y+1).0-0. If Y+1 overflows, "below X.(Y+1).0-0" means
            // "major at most X", which is "below (X+1).0.0-0"; if that
            // overflows too, every version is below it.
            let minor_bound = patch_given
                .then(|| operand.minor.checked_add(1))
                .flatten()
                .map(|minor| lowest(operand.major, minor));
            minor_bound.or_else(|| operand.major.checked_add(1).map(|major| lowest(major, 0)))
        });
        Clause {
            op,
            operand,
            upper: upper.flatten(),
        }
    }

    fn eval(&self, v: &Version, allow_pre: bool) -> bool {
        let order = v.cmp_precedence(&self.operand);
        let pre_ok = allow_pre || self.operand.is_pre_release() || !v.is_pre_release();
        match self.op {
            Op::Eq => order == Ordering::Equal,
            Op::Ne => order != Ordering::Equal,
            Op::Gt => order == Ordering::Greater && pre_ok,
            Op::Ge => order != Ordering::Less && pre_ok,
            Op::Lt => order == Ordering::Less,
            Op::Le => order != Ordering::Greater,
            Op::Pessimistic => {
                order != Ordering::Less
                    && self
                        .upper
                        .as_ref()
                        .is_none_or(|upper| v.cmp_precedence(upper) == Ordering::Less)
                    && pre_ok
            }
        }
    }
}

/// Writes the requirement as it was given, minus surrounding whitespace
/// (Elixir's `to_string/1` on a requirement also returns its source).
impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl FromStr for Requirement {
    type Err = RequirementError;

    fn from_str(s: &str) -> Result<Requirement, RequirementError> {
        Requirement::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(crate::fuzz::config())]

        #[test]
        fn fuzz_versions_and_requirements(m in crate::fuzz::mutations(), raw in ".{0,64}") {
            let valid = b"~> 1.2.3-rc.1+build or >= 2.0.0 and < 3.0.0";
            let mutated = String::from_utf8_lossy(&crate::fuzz::apply(valid, &m)).into_owned();
            for text in [mutated.as_str(), raw.as_str()] {
                if let Ok(req) = Requirement::parse(text) {
                    let v = crate::version::Version::parse("1.2.3").unwrap();
                    let _ = (req.matches(&v), req.matches_allowing_pre(&v));
                }
                let _ = crate::version::Version::parse(text);
            }
        }
    }

    /// `(matches, matches_allowing_pre)` for `version` against `requirement`.
    fn check(requirement: &str, version: &str, expect: (bool, bool)) {
        let req = Requirement::parse(requirement)
            .unwrap_or_else(|e| panic!("{requirement:?} should parse: {e}"));
        let v = Version::parse(version).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (req.matches(&v), req.matches_allowing_pre(&v)),
            expect,
            "{version} against {requirement:?}: (matches, matches_allowing_pre)"
        );
    }

    const BOTH: (bool, bool) = (true, true);
    const NEITHER: (bool, bool) = (false, false);
    /// Matches by precedence, but only once pre-releases are allowed.
    const PRE_ONLY: (bool, bool) = (false, true);

    /// Every row was checked against hex_core's version module
    /// (`hex_core_verl`, Elixir's `Version` ported to Erlang; hex_core commit
    /// a4d3472, compiled with erlc) with `is_match(V, R, [{allow_pre, false}])`
    /// and `[{allow_pre, true}]`. Debian's rebar3 3.19 carries no hex_core
    /// version module (it matches with erlware_commons), so it could not be
    /// the oracle.
    #[test]
    fn matches_as_hex_core_does() {
        let rows: &[(&str, &str, (bool, bool))] = &[
            ("~> 1.0", "1.0.0", BOTH),
            ("~> 1.0", "1.5.0", BOTH),
            ("~> 1.0", "2.0.0", NEITHER),
            ("~> 1.0", "2.0.0-rc.1", NEITHER),
            ("~> 1.0", "2.0.0-0", NEITHER),
            ("~> 1.0", "1.1.0-rc.1", PRE_ONLY),
            ("~> 1.0", "0.9.0", NEITHER),
            ("~> 1.0", "1.0.0-rc.1", NEITHER),
            ("~> 1.2.3", "1.2.3", BOTH),
            ("~> 1.2.3", "1.2.9", BOTH),
            ("~> 1.2.3", "1.3.0", NEITHER),
            ("~> 1.2.3", "1.2.2", NEITHER),
            ("~> 1.2.3", "1.3.0-rc.1", NEITHER),
            ("~> 1.2.3", "1.2.4-dev", PRE_ONLY),
            (">= 1.0.0 and < 2.0.0", "1.0.0", BOTH),
            (">= 1.0.0 and < 2.0.0", "1.9.9", BOTH),
            (">= 1.0.0 and < 2.0.0", "2.0.0", NEITHER),
            (">= 1.0.0 and < 2.0.0", "0.9.0", NEITHER),
            (">= 1.0.0 and < 2.0.0", "2.0.0-rc.1", PRE_ONLY),
            (">= 1.0.0 and < 2.0.0", "1.5.0-beta", PRE_ONLY),
            (">= 1.0.0 and < 2.0.0 or >= 3.0.0", "2.5.0", NEITHER),
            (">= 1.0.0 and < 2.0.0 or >= 3.0.0", "3.1.0", BOTH),
            ("== 1.0.0 or == 2.0.0", "1.0.0", BOTH),
            ("== 1.0.0 or == 2.0.0", "2.0.0", BOTH),
            ("== 1.0.0 or == 2.0.0", "1.5.0", NEITHER),
            ("== 1.0.0 or == 2.0.0", "1.0.0+build", BOTH),
            ("1.0.0", "1.0.0", BOTH),
            ("1.0.0", "1.0.1", NEITHER),
            ("1.0.0", "1.0.0-rc.1", NEITHER),
            ("1.0.0", "1.0.0+abc", BOTH),
            ("== 1.0.0-rc.1", "1.0.0-rc.1", BOTH),
            ("!= 1.0.0", "1.0.0", NEITHER),
            ("!= 1.0.0", "1.0.1", BOTH),
            // `!=` is not one of the operators `allow_pre` restricts.
            ("!= 1.0.0", "1.1.0-rc.1", BOTH),
            // A pre-release operand opens the clause to pre-releases.
            ("~> 2.0.0-rc1", "2.0.0-rc1", BOTH),
            ("~> 2.0.0-rc1", "2.0.0-rc2", BOTH),
            ("~> 2.0.0-rc1", "2.0.0", BOTH),
            ("~> 2.0.0-rc1", "2.0.5", BOTH),
            ("~> 2.0.0-rc1", "2.0.1-dev", BOTH),
            ("~> 2.0.0-rc1", "2.1.0", NEITHER),
            ("~> 2.0.0-rc1", "2.0.0-beta", NEITHER),
            ("~> 2.0.0-rc1", "2.0.0-rc0", NEITHER),
            ("~> 2.0.0-rc1", "2.1.0-rc1", NEITHER),
            ("~> 2.0-rc1", "2.0.0", BOTH),
            ("~> 2.0-rc1", "2.0.0-rc2", BOTH),
            ("~> 2.0-rc1", "2.5.0-rc1", BOTH),
            ("~> 2.0-rc1", "3.0.0-rc1", NEITHER),
            ("~> 2.1-dev", "2.2.0-dev", BOTH),
            ("~> 2.1-dev", "2.1.0", BOTH),
            ("~> 2.1-dev", "3.0.0-dev", NEITHER),
            ("~> 2.1.2", "2.1.6-dev", PRE_ONLY),
            (">= 2.0.0-rc.1", "2.0.0-rc.1", BOTH),
            (">= 2.0.0-rc.1", "2.0.0", BOTH),
            (">= 2.0.0-rc.1", "2.1.0-dev", BOTH),
            (">= 2.0.0-rc.1", "3.0.0", BOTH),
            (">= 2.0.0-rc.1", "2.0.0-beta", NEITHER),
            (">= 2.1.0", "2.2.0-dev", PRE_ONLY),
            // `<` and `<=` are not restricted either.
            ("< 2.2.0", "2.1.0-dev", BOTH),
            ("< 2.2.0", "2.2.0-dev", BOTH),
            ("< 2.2.0", "2.2.0", NEITHER),
            ("<= 2.0.0", "2.0.0", BOTH),
            ("<= 2.0.0", "2.0.0-rc.1", BOTH),
            ("<= 2.0.0", "2.0.1", NEITHER),
            ("> 1.0.0", "1.0.0", NEITHER),
            ("> 1.0.0", "1.0.0+b", NEITHER),
            ("> 1.0.0", "1.0.1", BOTH),
            ("> 1.0.0", "1.0.1-rc.1", PRE_ONLY),
            ("> 1.0.0-rc.1", "1.0.0-rc.2", BOTH),
            ("> 1.0.0-rc.1", "1.0.0-rc.1.1", BOTH),
            ("> 1.0.0-rc.1", "1.0.0", BOTH),
            ("> 1.0.0-rc.1", "1.0.0-rc.1", NEITHER),
            // Per clause: `~> 1.0` still keeps the pre-release out.
            ("~> 1.0 and >= 1.5.0-rc.1", "1.6.0-rc.1", PRE_ONLY),
            ("~> 1.0 and >= 1.5.0-rc.1", "1.6.0", BOTH),
            // Whitespace, and build metadata in the requirement (ignored).
            (">=1.0.0", "1.0.0", BOTH),
            ("~>1.0", "1.3.0", BOTH),
            ("  ~> 1.0  ", "1.2.0", BOTH),
            (">=  1.0.0  and  <  2.0.0", "1.5.0", BOTH),
            ("~> 1.0.0+build", "1.0.5", BOTH),
            // Bounds at the edge of u64 (Erlang has bignums, we do not).
            (
                "~> 18446744073709551615.18446744073709551615.0",
                "18446744073709551615.18446744073709551615.7",
                BOTH,
            ),
            (
                "~> 18446744073709551615.0",
                "18446744073709551615.5.0",
                BOTH,
            ),
            ("~> 1.18446744073709551615.0", "2.0.0", NEITHER),
            (
                "~> 1.18446744073709551615.0",
                "1.18446744073709551615.3",
                BOTH,
            ),
        ];
        for (requirement, version, expect) in rows {
            check(requirement, version, *expect);
        }
    }

    /// Where current Elixir (`lib/elixir/lib/version.ex` at 1.21.0-dev) and
    /// that older hex_core port disagree, we follow Elixir; these rows are
    /// derived from the Elixir source, not from the oracle.
    #[test]
    fn matches_as_current_elixir_does() {
        let rows: &[(&str, &str, (bool, bool))] = &[
            // `and` binds tighter than `or`; the old port folded left.
            ("~> 1.0 or ~> 2.0 and > 2.1.0", "1.5.0", BOTH),
            ("~> 1.0 or ~> 2.0 and > 2.1.0", "2.0.5", NEITHER),
            ("~> 1.0 or ~> 2.0 and > 2.1.0", "2.2.0", BOTH),
            ("> 2.1.0 and ~> 2.0 or ~> 1.0", "1.5.0", BOTH),
            // Pre-release identifiers compare by SemVer precedence; the old
            // port compared list lengths first.
            ("> 1.0.0-alpha.1", "1.0.0-beta", BOTH),
            ("< 1.0.0-beta.1", "1.0.0-rc", NEITHER),
            // Dotted pre-releases after `~>`, which the old port refused.
            ("~> 2.0.0-rc.1", "2.0.0-rc.1", BOTH),
            ("~> 2.0.0-rc.1", "2.0.0-rc.2", BOTH),
            ("~> 2.0.0-rc.1", "2.0.0-rc.1.1", BOTH),
            ("~> 2.0.0-rc.1", "2.0.0", BOTH),
            ("~> 2.0.0-rc.1", "2.0.1-dev", BOTH),
            ("~> 2.0.0-rc.1", "2.0.0-beta.9", NEITHER),
            ("~> 2.0.0-rc.1", "2.1.0-rc.1", NEITHER),
            ("~> 2.0.0-rc.1", "2.1.0", NEITHER),
            ("~> 1.1-rc.0", "1.1.0-rc.1", BOTH),
            // Tabs are not whitespace to Elixir's lexer; we accept them.
            (">= 1.0.0\tand\t< 2.0.0", "1.5.0", BOTH),
        ];
        for (requirement, version, expect) in rows {
            check(requirement, version, *expect);
        }
    }

    /// Each of these is also refused by hex_core's `parse_requirement/1`
    /// (except the tab row above, which it refuses and we accept).
    #[test]
    fn rejects() {
        let rows: &[(&str, &str)] = &[
            (
                "",
                "empty string is not a version requirement: expected something like `~> 1.4` or `>= 1.0.0 and < 2.0.0`",
            ),
            (
                "   ",
                "empty string is not a version requirement: expected something like `~> 1.4` or `>= 1.0.0 and < 2.0.0`",
            ),
            (
                "~>",
                "\"~>\" is not a version requirement: expected a version after `~>` at column 3",
            ),
            (
                "~> 1.x",
                "\"~> 1.x\" is not a version requirement: expected a version after `~>` at column 4, found \"1.x\": minor version \"x\" is not a number",
            ),
            (
                "~> 1",
                "\"~> 1\" is not a version requirement: expected a version after `~>` at column 4, found \"1\": expected MAJOR.MINOR or MAJOR.MINOR.PATCH, such as 1.4 or 1.4.0",
            ),
            (
                ">= 1.0 and",
                "\">= 1.0 and\" is not a version requirement: `>=` needs MAJOR.MINOR.PATCH, found \"1.0\" at column 4; write 1.0.0 (only `~>` accepts MAJOR.MINOR)",
            ),
            (
                "!= 1.0",
                "\"!= 1.0\" is not a version requirement: `!=` needs MAJOR.MINOR.PATCH, found \"1.0\" at column 4; write 1.0.0 (only `~>` accepts MAJOR.MINOR)",
            ),
            (
                "1.0",
                "\"1.0\" is not a version requirement: `==` needs MAJOR.MINOR.PATCH, found \"1.0\" at column 1; write 1.0.0 (only `~>` accepts MAJOR.MINOR)",
            ),
            (
                ">= 1.0.0 and",
                "\">= 1.0.0 and\" is not a version requirement: expected a version after `and` at column 13",
            ),
            (
                "~> 1.0 or",
                "\"~> 1.0 or\" is not a version requirement: expected a version after `or` at column 10",
            ),
            (
                "or",
                "\"or\" is not a version requirement: expected a version at column 1, found `or`",
            ),
            (
                "and 1.0.0",
                "\"and 1.0.0\" is not a version requirement: expected a version at column 1, found `and`",
            ),
            (
                "1.0.0 and or 2.0.0",
                "\"1.0.0 and or 2.0.0\" is not a version requirement: expected a version after `and` at column 11, found `or`",
            ),
            (
                "== == 1.0.0",
                "\"== == 1.0.0\" is not a version requirement: expected a version after `==` at column 4, found `==`",
            ),
            (
                "=> 1.0.0",
                "\"=> 1.0.0\" is not a version requirement: unknown operator `=>` at column 1; did you mean `>=`?",
            ),
            (
                "= 1.0.0",
                "\"= 1.0.0\" is not a version requirement: unknown operator `=` at column 1; did you mean `==`?",
            ),
            (
                ">= 1.0.0 && < 2.0.0",
                "\">= 1.0.0 && < 2.0.0\" is not a version requirement: expected `and`, `or` or the end at column 10, found \"&&\"",
            ),
            (
                "1.0.0 1.0.0",
                "\"1.0.0 1.0.0\" is not a version requirement: expected `and`, `or` or the end at column 7, found \"1.0.0\"",
            ),
            (
                "< 1.0.0 ~> 2.0",
                "\"< 1.0.0 ~> 2.0\" is not a version requirement: expected `and`, `or` or the end at column 9, found \"~>\"",
            ),
            (
                "1.0.0and",
                "\"1.0.0and\" is not a version requirement: expected a version at column 1, found \"1.0.0and\": patch version \"0and\" is not a number",
            ),
            (
                "v1.0.0",
                "\"v1.0.0\" is not a version requirement: expected a version at column 1, found \"v1.0.0\": a leading `v` is not part of a version; drop it",
            ),
            (
                "~> 01.0",
                "\"~> 01.0\" is not a version requirement: expected a version after `~>` at column 4, found \"01.0\": major \"01\" has a leading zero, which SemVer forbids",
            ),
            (
                "~> 1.0.0-",
                "\"~> 1.0.0-\" is not a version requirement: expected a version after `~>` at column 4, found \"1.0.0-\": empty pre-release identifier (look for `..` or a trailing `.`, `-` or `+`)",
            ),
            (
                ">= 1.0.0 and < 2.0.0 or",
                "\">= 1.0.0 and < 2.0.0 or\" is not a version requirement: expected a version after `or` at column 24",
            ),
        ];
        for (input, message) in rows {
            let got = Requirement::parse(input).map_err(|e| e.to_string());
            assert_eq!(got, Err(message.to_string()), "input {input:?}");
        }
    }

    #[test]
    fn display_and_from_str_round_trip() {
        for text in [
            "~> 1.0",
            ">= 1.0.0 and < 2.0.0 or == 3.0.0-rc.1",
            "1.0.0",
            ">=1.0.0",
        ] {
            let req: Requirement = text.parse().unwrap();
            assert_eq!(req.to_string(), text);
            assert_eq!(req.as_str(), text);
            assert_eq!(Requirement::parse(&req.to_string()).unwrap(), req);
        }
        assert_eq!(
            Requirement::parse("  ~> 1.0\t").unwrap().to_string(),
            "~> 1.0"
        );
    }

    #[test]
    fn hostile_input_never_panics() {
        let inputs = [
            "~> é",
            "é",
            ">=é1.0.0",
            "~> 1.0 and é",
            "~>~>~>",
            "!!!!",
            "<<>>",
            "and and",
            "or or or",
            "1.0.0 or 1.0.0 or",
            "~> 99999999999999999999999.0",
            "> 1.0.0-99999999999999999999",
            "\u{0}",
            "~> 1.0\u{3000}or 2.0.0",
        ];
        for input in inputs {
            let _ = Requirement::parse(input);
        }
        // Every prefix of a valid requirement, cut on char boundaries.
        let full = ">= 1.0.0-rc.1+b and < 2.0.0 or ~> 3.1 or != 4.0.0";
        for (i, _) in full.char_indices() {
            let _ = full.get(..i).map(Requirement::parse);
        }
    }
}
