//! A strict parser for Erlang term text, the format `file:consult/1` reads.
//!
//! `metadata.config` is a sequence of `Term.` forms. Only literal terms are
//! accepted: no variables, no operators other than a leading minus, no list
//! tails (`[H|T]`), and binaries only with string, byte and `/utf8` segments,
//! which covers everything hex_core and Mix write. Input that is not valid
//! UTF-8 is read as latin-1, as hex_core does.

use thiserror::Error;

/// How deeply terms may nest before parsing stops with an error.
pub const MAX_DEPTH: usize = 64;

/// Erlang caps atoms at 255 characters; longer ones do not load in Erlang.
const MAX_ATOM_CHARS: usize = 255;

/// One Erlang term.
#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    /// A bare (`foo`) or quoted (`'Foo bar'`) atom.
    Atom(String),
    /// An integer; Erlang has bignums, we stop at 128 bits.
    Integer(i128),
    /// A float, always finite.
    Float(f64),
    /// A binary `<<...>>`, as bytes.
    Binary(Vec<u8>),
    /// A string literal `"..."` (a list of characters in Erlang).
    String(String),
    /// A proper list `[...]`.
    List(Vec<Term>),
    /// A tuple `{...}`.
    Tuple(Vec<Term>),
    /// A map `#{K => V}`, pairs in source order.
    Map(Vec<(Term, Term)>),
}

impl Term {
    /// The term as JSON, for metadata shown by the API: text (binaries,
    /// strings, atoms) as strings, `true`/`false` as booleans, integers
    /// as numbers (as strings past 64 bits), maps and lists of two-element
    /// tuples with text keys as objects, other lists and tuples as arrays.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            Self::Atom(a) => match a.as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                "nil" | "undefined" => Value::Null,
                other => Value::String(other.to_owned()),
            },
            Self::Integer(i) => i64::try_from(*i)
                .map(Value::from)
                .unwrap_or_else(|_| Value::String(i.to_string())),
            Self::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Self::Binary(_) | Self::String(_) => self
                .as_str()
                .map_or(Value::Null, |s| Value::String(s.to_owned())),
            Self::Map(pairs) => Self::object(pairs.iter().map(|(k, v)| (k, v))),
            Self::List(items) => {
                let pairs: Option<Vec<(&Term, &Term)>> = items
                    .iter()
                    .map(|t| match t.as_tuple()? {
                        [k, v] if k.as_str().or(k.as_atom()).is_some() => Some((k, v)),
                        _ => None,
                    })
                    .collect();
                match pairs {
                    Some(pairs) if !pairs.is_empty() => Self::object(pairs.into_iter()),
                    _ => Value::Array(items.iter().map(Self::to_json).collect()),
                }
            }
            Self::Tuple(items) => Value::Array(items.iter().map(Self::to_json).collect()),
        }
    }

    fn object<'a>(pairs: impl Iterator<Item = (&'a Term, &'a Term)>) -> serde_json::Value {
        serde_json::Value::Object(
            pairs
                .filter_map(|(k, v)| Some((k.as_str().or(k.as_atom())?.to_owned(), v.to_json())))
                .collect(),
        )
    }

    /// The text of a UTF-8 binary or a string literal.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Term::Binary(bytes) => std::str::from_utf8(bytes).ok(),
            Term::String(s) => Some(s),
            _ => None,
        }
    }

    /// The name of an atom.
    pub fn as_atom(&self) -> Option<&str> {
        match self {
            Term::Atom(a) => Some(a),
            _ => None,
        }
    }

    /// The value of the atoms `true` and `false`.
    pub fn as_bool(&self) -> Option<bool> {
        match self.as_atom() {
            Some("true") => Some(true),
            Some("false") => Some(false),
            _ => None,
        }
    }

    /// The elements of a list.
    pub fn as_list(&self) -> Option<&[Term]> {
        match self {
            Term::List(items) => Some(items),
            _ => None,
        }
    }

    /// The elements of a tuple.
    pub fn as_tuple(&self) -> Option<&[Term]> {
        match self {
            Term::Tuple(items) => Some(items),
            _ => None,
        }
    }

    /// The kind of term, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Term::Atom(_) => "an atom",
            Term::Integer(_) => "an integer",
            Term::Float(_) => "a float",
            Term::Binary(_) => "a binary",
            Term::String(_) => "a string",
            Term::List(_) => "a list",
            Term::Tuple(_) => "a tuple",
            Term::Map(_) => "a map",
        }
    }
}

/// Why term text could not be parsed, with the 1-based line it happened on.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}: {kind}")]
pub struct TermError {
    /// The line of the offending text.
    pub line: u32,
    /// What was wrong.
    pub kind: TermErrorKind,
}

/// What was wrong with the term text.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TermErrorKind {
    /// Something other than what the grammar allows at this point.
    #[error("expected {expected}, found {found}")]
    Unexpected {
        expected: &'static str,
        found: String,
    },
    /// The input ended inside a term or before the final `.`.
    #[error("input ends early, expected {expected}")]
    Truncated { expected: &'static str },
    /// Terms nest deeper than [`MAX_DEPTH`].
    #[error("terms nest deeper than {limit} levels")]
    TooDeep { limit: usize },
    /// An integer outside the 128-bit range.
    #[error("integer `{text}` does not fit in 128 bits")]
    IntegerOverflow { text: String },
    /// A float that overflows or is malformed.
    #[error("float `{text}` is not a finite number")]
    BadFloat { text: String },
    /// A base outside 2..=36 in `Base#Digits`.
    #[error("integer base {base} is not between 2 and 36")]
    BadBase { base: String },
    /// A character code that is not a Unicode scalar value where one is needed.
    #[error("character code {code:#x} is not a valid character")]
    BadChar { code: u32 },
    /// A byte segment outside 0..=255.
    #[error("binary segment {value} is not a byte (0..255)")]
    ByteOutOfRange { value: i128 },
    /// A binary segment type other than `utf8`.
    #[error("binary segment type `{ty}` is not supported, only `utf8`")]
    SegmentType { ty: String },
    /// A variable name, which `file:consult/1` would reject as unbound.
    #[error("variable `{name}` is not a term")]
    Variable { name: String },
    /// A reserved word used as a bare atom.
    #[error("reserved word `{word}` must be quoted to be an atom")]
    ReservedWord { word: String },
    /// An atom over Erlang's length limit.
    #[error("atom is longer than {limit} characters")]
    AtomTooLong { limit: usize },
    /// A list with a `|` tail.
    #[error("list tails (`[H|T]`) are not supported")]
    ListTail,
}

/// Parses a whole `file:consult/1` document into its top-level terms.
pub fn parse_consult(input: &[u8]) -> Result<Vec<Term>, TermError> {
    let chars: Vec<char> = match std::str::from_utf8(input) {
        Ok(text) => text.chars().collect(),
        // Latin-1 maps each byte to the code point of the same value.
        Err(_) => input.iter().map(|&b| char::from(b)).collect(),
    };
    let mut parser = Parser {
        lexer: Lexer {
            chars: &chars,
            pos: 0,
            line: 1,
        },
        peeked: None,
    };
    let mut terms = Vec::new();
    loop {
        if parser.peek()?.tok == Tok::Eof {
            return Ok(terms);
        }
        terms.push(parser.term(0)?);
        let end = parser.next()?;
        match end.tok {
            Tok::Dot => {}
            Tok::Eof => {
                return Err(end.error(TermErrorKind::Truncated {
                    expected: "`.` after the term",
                }));
            }
            ref other => {
                return Err(end.error(TermErrorKind::Unexpected {
                    expected: "`.` after the term",
                    found: other.describe(),
                }));
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LBrace,
    RBrace,
    LBracket,
    RBracket,
    LBin,
    RBin,
    Hash,
    Comma,
    Arrow,
    Pipe,
    Slash,
    Minus,
    Dot,
    Atom(String),
    Var(String),
    Str(Vec<u32>),
    Int(i128),
    Float(f64),
    /// Any other character, reported as found where it appears.
    Other(char),
    Eof,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::LBrace => "`{`".into(),
            Tok::RBrace => "`}`".into(),
            Tok::LBracket => "`[`".into(),
            Tok::RBracket => "`]`".into(),
            Tok::LBin => "`<<`".into(),
            Tok::RBin => "`>>`".into(),
            Tok::Hash => "`#`".into(),
            Tok::Comma => "`,`".into(),
            Tok::Arrow => "`=>`".into(),
            Tok::Pipe => "`|`".into(),
            Tok::Slash => "`/`".into(),
            Tok::Minus => "`-`".into(),
            Tok::Dot => "`.`".into(),
            Tok::Atom(a) => format!("atom `{a}`"),
            Tok::Var(v) => format!("variable `{v}`"),
            Tok::Str(_) => "a string".into(),
            Tok::Int(i) => format!("integer {i}"),
            Tok::Float(f) => format!("float {f}"),
            Tok::Other(c) => format!("{:?}", c),
            Tok::Eof => "end of input".into(),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: u32,
}

impl Token {
    fn error(&self, kind: TermErrorKind) -> TermError {
        TermError {
            line: self.line,
            kind,
        }
    }
}

struct Lexer<'a> {
    chars: &'a [char],
    pos: usize,
    line: u32,
}

const RESERVED: &[&str] = &[
    "after", "and", "andalso", "band", "begin", "bnot", "bor", "bsl", "bsr", "bxor", "case",
    "catch", "cond", "div", "end", "fun", "if", "let", "not", "of", "or", "orelse", "receive",
    "rem", "try", "when", "xor",
];

fn is_atom_start(c: char) -> bool {
    c.is_ascii_lowercase() || (('\u{df}'..='\u{ff}').contains(&c) && c != '\u{f7}')
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || c == '_'
        || c == '@'
        || (('\u{c0}'..='\u{ff}').contains(&c) && c != '\u{d7}' && c != '\u{f7}')
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\u{b}' | '\u{c}')
}

impl Lexer<'_> {
    fn peek_char(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_char_at(&self, offset: usize) -> Option<char> {
        self.chars.get(self.pos.checked_add(offset)?).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek_char()?;
        self.pos = self.pos.saturating_add(1);
        if c == '\n' {
            self.line = self.line.saturating_add(1);
        }
        Some(c)
    }

    fn err(&self, kind: TermErrorKind) -> TermError {
        TermError {
            line: self.line,
            kind,
        }
    }

    fn skip_space_and_comments(&mut self) {
        while let Some(c) = self.peek_char() {
            if is_space(c) {
                self.bump();
            } else if c == '%' {
                while let Some(c) = self.bump() {
                    if c == '\n' {
                        break;
                    }
                }
            } else {
                break;
            }
        }
    }

    fn next_token(&mut self) -> Result<Token, TermError> {
        self.skip_space_and_comments();
        let line = self.line;
        let Some(c) = self.bump() else {
            return Ok(Token {
                tok: Tok::Eof,
                line,
            });
        };
        let tok = match c {
            '{' => Tok::LBrace,
            '}' => Tok::RBrace,
            '[' => Tok::LBracket,
            ']' => Tok::RBracket,
            ',' => Tok::Comma,
            '|' => Tok::Pipe,
            '/' => Tok::Slash,
            '-' => Tok::Minus,
            '#' => Tok::Hash,
            '<' if self.peek_char() == Some('<') => {
                self.bump();
                Tok::LBin
            }
            '>' if self.peek_char() == Some('>') => {
                self.bump();
                Tok::RBin
            }
            '=' if self.peek_char() == Some('>') => {
                self.bump();
                Tok::Arrow
            }
            // A `.` ends a form only when followed by whitespace, a comment or the end.
            '.' if self
                .peek_char()
                .is_none_or(|next| is_space(next) || next == '%') =>
            {
                Tok::Dot
            }
            '"' => Tok::Str(self.quoted('"')?),
            '\'' => {
                let codes = self.quoted('\'')?;
                if codes.len() > MAX_ATOM_CHARS {
                    return Err(self.err(TermErrorKind::AtomTooLong {
                        limit: MAX_ATOM_CHARS,
                    }));
                }
                Tok::Atom(self.codes_to_string(&codes)?)
            }
            '$' => {
                let code = match self.bump() {
                    None => {
                        return Err(self.err(TermErrorKind::Truncated {
                            expected: "a character after `$`",
                        }));
                    }
                    Some('\\') => self.escape()?,
                    Some(c) => u32::from(c),
                };
                Tok::Int(i128::from(code))
            }
            c if c.is_ascii_digit() => self.number(c)?,
            c if is_atom_start(c) => {
                let name = self.name(c);
                if RESERVED.contains(&name.as_str()) {
                    return Err(self.err(TermErrorKind::ReservedWord { word: name }));
                }
                if name.chars().count() > MAX_ATOM_CHARS {
                    return Err(self.err(TermErrorKind::AtomTooLong {
                        limit: MAX_ATOM_CHARS,
                    }));
                }
                Tok::Atom(name)
            }
            c if c == '_' || c.is_ascii_uppercase() => Tok::Var(self.name(c)),
            other => Tok::Other(other),
        };
        Ok(Token { tok, line })
    }

    fn name(&mut self, first: char) -> String {
        let mut name = String::from(first);
        while let Some(c) = self.peek_char().filter(|&c| is_name_char(c)) {
            name.push(c);
            self.bump();
        }
        name
    }

    fn codes_to_string(&self, codes: &[u32]) -> Result<String, TermError> {
        codes
            .iter()
            .map(|&code| char::from_u32(code).ok_or(self.err(TermErrorKind::BadChar { code })))
            .collect()
    }

    /// Reads up to the closing quote; returns character codes, since binaries
    /// without `/utf8` keep only the low byte of each.
    fn quoted(&mut self, quote: char) -> Result<Vec<u32>, TermError> {
        let expected = if quote == '"' {
            "closing `\"`"
        } else {
            "closing `'`"
        };
        let mut codes = Vec::new();
        loop {
            match self.bump() {
                None => return Err(self.err(TermErrorKind::Truncated { expected })),
                Some(c) if c == quote => return Ok(codes),
                Some('\\') => codes.push(self.escape()?),
                Some(c) => codes.push(u32::from(c)),
            }
        }
    }

    /// Decodes the escape sequence after a backslash.
    fn escape(&mut self) -> Result<u32, TermError> {
        let truncated = || TermErrorKind::Truncated {
            expected: "an escape sequence after `\\`",
        };
        let c = self.bump().ok_or_else(|| self.err(truncated()))?;
        let code = match c {
            'n' => 10,
            't' => 9,
            'r' => 13,
            's' => 32,
            'e' => 27,
            'd' => 127,
            'b' => 8,
            'f' => 12,
            'v' => 11,
            '0'..='7' => {
                let mut value = c.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    match self.peek_char().and_then(|d| d.to_digit(8)) {
                        Some(d) => {
                            value = value.saturating_mul(8).saturating_add(d);
                            self.bump();
                        }
                        None => break,
                    }
                }
                value
            }
            'x' => {
                if self.peek_char() == Some('{') {
                    self.bump();
                    let mut value: u32 = 0;
                    let mut digits = 0usize;
                    loop {
                        match self.bump() {
                            Some('}') if digits > 0 => break,
                            Some(d) if d.is_ascii_hexdigit() => {
                                value = value
                                    .checked_mul(16)
                                    .and_then(|v| v.checked_add(d.to_digit(16).unwrap_or(0)))
                                    .ok_or_else(|| {
                                        self.err(TermErrorKind::BadChar { code: u32::MAX })
                                    })?;
                                digits = digits.saturating_add(1);
                            }
                            Some(other) => {
                                return Err(self.err(TermErrorKind::Unexpected {
                                    expected: "hex digits and `}` in `\\x{...}`",
                                    found: format!("{other:?}"),
                                }));
                            }
                            None => return Err(self.err(truncated())),
                        }
                    }
                    value
                } else {
                    let mut value = 0;
                    for _ in 0..2 {
                        match self.bump() {
                            Some(d) if d.is_ascii_hexdigit() => {
                                value = value * 16 + d.to_digit(16).unwrap_or(0);
                            }
                            Some(other) => {
                                return Err(self.err(TermErrorKind::Unexpected {
                                    expected: "two hex digits after `\\x`",
                                    found: format!("{other:?}"),
                                }));
                            }
                            None => return Err(self.err(truncated())),
                        }
                    }
                    value
                }
            }
            '^' => {
                let ctl = self.bump().ok_or_else(|| self.err(truncated()))?;
                if ctl.is_ascii_alphabetic() || ('@'..='_').contains(&ctl) {
                    u32::from(ctl) & 31
                } else {
                    return Err(self.err(TermErrorKind::Unexpected {
                        expected: "a letter after `\\^`",
                        found: format!("{ctl:?}"),
                    }));
                }
            }
            // Erlang reads any other escaped character as itself (`\\`, `\"`, `\'`).
            other => u32::from(other),
        };
        Ok(code)
    }

    /// Collects digits (and `_` between digits) in the given radix.
    fn digits(&mut self, radix: u32, text: &mut String) -> usize {
        let mut count = 0usize;
        loop {
            match self.peek_char() {
                Some(d) if d.is_digit(radix) => {
                    text.push(d);
                    count = count.saturating_add(1);
                    self.bump();
                }
                Some('_')
                    if count > 0 && self.peek_char_at(1).is_some_and(|d| d.is_digit(radix)) =>
                {
                    self.bump();
                }
                _ => return count,
            }
        }
    }

    fn number(&mut self, first: char) -> Result<Tok, TermError> {
        let mut text = String::from(first);
        // `first` is already consumed; let `digits` see the rest, with `_` allowed after it.
        loop {
            match self.peek_char() {
                Some(d) if d.is_ascii_digit() => {
                    text.push(d);
                    self.bump();
                }
                Some('_') if self.peek_char_at(1).is_some_and(|d| d.is_ascii_digit()) => {
                    self.bump();
                }
                _ => break,
            }
        }
        if self.peek_char() == Some('#') {
            self.bump();
            let radix = text
                .parse::<u32>()
                .ok()
                .filter(|r| (2..=36).contains(r))
                .ok_or_else(|| self.err(TermErrorKind::BadBase { base: text.clone() }))?;
            let mut digits = String::new();
            if self.digits(radix, &mut digits) == 0 {
                let found = self
                    .peek_char()
                    .map_or("end of input".to_string(), |c| format!("{c:?}"));
                return Err(self.err(TermErrorKind::Unexpected {
                    expected: "digits after `#`",
                    found,
                }));
            }
            return i128::from_str_radix(&digits, radix)
                .map(Tok::Int)
                .map_err(|_| {
                    self.err(TermErrorKind::IntegerOverflow {
                        text: format!("{text}#{digits}"),
                    })
                });
        }
        let is_float = self.peek_char() == Some('.')
            && self.peek_char_at(1).is_some_and(|d| d.is_ascii_digit());
        if !is_float {
            return text
                .parse::<i128>()
                .map(Tok::Int)
                .map_err(|_| self.err(TermErrorKind::IntegerOverflow { text }));
        }
        self.bump();
        text.push('.');
        self.digits(10, &mut text);
        if matches!(self.peek_char(), Some('e' | 'E')) {
            let sign = self.peek_char_at(1);
            let has_sign = matches!(sign, Some('+' | '-'));
            let first_digit = if has_sign { self.peek_char_at(2) } else { sign };
            // Like Erlang, `1.0e` without digits is not an exponent.
            if first_digit.is_some_and(|d| d.is_ascii_digit()) {
                text.push('e');
                self.bump();
                if has_sign && let Some(s) = self.bump() {
                    text.push(s);
                }
                self.digits(10, &mut text);
            }
        }
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Tok::Float(f)),
            _ => Err(self.err(TermErrorKind::BadFloat { text })),
        }
    }
}

struct Parser<'a> {
    lexer: Lexer<'a>,
    peeked: Option<Token>,
}

impl Parser<'_> {
    fn peek(&mut self) -> Result<&Token, TermError> {
        let token = match self.peeked.take() {
            Some(token) => token,
            None => self.lexer.next_token()?,
        };
        Ok(self.peeked.insert(token))
    }

    fn next(&mut self) -> Result<Token, TermError> {
        match self.peeked.take() {
            Some(token) => Ok(token),
            None => self.lexer.next_token(),
        }
    }

    fn unexpected(token: &Token, expected: &'static str) -> TermError {
        match &token.tok {
            Tok::Eof => token.error(TermErrorKind::Truncated { expected }),
            Tok::Var(name) => token.error(TermErrorKind::Variable { name: name.clone() }),
            Tok::Pipe => token.error(TermErrorKind::ListTail),
            other => token.error(TermErrorKind::Unexpected {
                expected,
                found: other.describe(),
            }),
        }
    }

    fn expect(&mut self, want: &Tok, expected: &'static str) -> Result<(), TermError> {
        let token = self.next()?;
        if &token.tok == want {
            Ok(())
        } else {
            Err(Self::unexpected(&token, expected))
        }
    }

    /// Takes the next token and returns whether it closes the sequence (`close`)
    /// or separates two elements; anything else is an error.
    fn comma_or(&mut self, close: &Tok, expected: &'static str) -> Result<bool, TermError> {
        let token = self.next()?;
        if &token.tok == close {
            Ok(true)
        } else if token.tok == Tok::Comma {
            Ok(false)
        } else {
            Err(Self::unexpected(&token, expected))
        }
    }

    fn term(&mut self, depth: usize) -> Result<Term, TermError> {
        let token = self.next()?;
        if depth >= MAX_DEPTH {
            return Err(token.error(TermErrorKind::TooDeep { limit: MAX_DEPTH }));
        }
        let inner = depth.saturating_add(1);
        match token.tok {
            Tok::Atom(a) => Ok(Term::Atom(a)),
            Tok::Int(i) => Ok(Term::Integer(i)),
            Tok::Float(f) => Ok(Term::Float(f)),
            Tok::Minus => {
                let number = self.next()?;
                match number.tok {
                    Tok::Int(i) => Ok(Term::Integer(i.checked_neg().ok_or_else(|| {
                        number.error(TermErrorKind::IntegerOverflow {
                            text: format!("-{i}"),
                        })
                    })?)),
                    Tok::Float(f) => Ok(Term::Float(-f)),
                    _ => Err(Self::unexpected(&number, "a number after `-`")),
                }
            }
            Tok::Str(codes) => {
                let codes = self.adjacent_strings(codes)?;
                Ok(Term::String(self.lexer.codes_to_string(&codes).map_err(
                    |e| TermError {
                        line: token.line,
                        ..e
                    },
                )?))
            }
            Tok::LBrace => Ok(Term::Tuple(self.sequence(
                &Tok::RBrace,
                "`,` or `}`",
                inner,
            )?)),
            Tok::LBracket => Ok(Term::List(self.sequence(
                &Tok::RBracket,
                "`,` or `]`",
                inner,
            )?)),
            Tok::Hash => {
                self.expect(&Tok::LBrace, "`{` after `#`")?;
                self.map(inner)
            }
            Tok::LBin => self.binary(),
            _ => Err(Self::unexpected(&token, "a term")),
        }
    }

    /// Erlang joins adjacent string literals (`"ab" "cd"`), and io_lib_pretty
    /// may split long strings that way.
    fn adjacent_strings(&mut self, mut codes: Vec<u32>) -> Result<Vec<u32>, TermError> {
        while matches!(self.peek()?.tok, Tok::Str(_)) {
            if let Tok::Str(more) = self.next()?.tok {
                codes.extend(more);
            }
        }
        Ok(codes)
    }

    fn sequence(
        &mut self,
        close: &Tok,
        expected: &'static str,
        depth: usize,
    ) -> Result<Vec<Term>, TermError> {
        let mut items = Vec::new();
        if &self.peek()?.tok == close {
            self.next()?;
            return Ok(items);
        }
        loop {
            items.push(self.term(depth)?);
            if self.comma_or(close, expected)? {
                return Ok(items);
            }
        }
    }

    fn map(&mut self, depth: usize) -> Result<Term, TermError> {
        let mut pairs = Vec::new();
        if self.peek()?.tok == Tok::RBrace {
            self.next()?;
            return Ok(Term::Map(pairs));
        }
        loop {
            let key = self.term(depth)?;
            self.expect(&Tok::Arrow, "`=>` after a map key")?;
            let value = self.term(depth)?;
            pairs.push((key, value));
            if self.comma_or(&Tok::RBrace, "`,` or `}` in a map")? {
                return Ok(Term::Map(pairs));
            }
        }
    }

    fn binary(&mut self) -> Result<Term, TermError> {
        let mut bytes = Vec::new();
        if self.peek()?.tok == Tok::RBin {
            self.next()?;
            return Ok(Term::Binary(bytes));
        }
        loop {
            let token = self.next()?;
            let line = token.line;
            let value = match token.tok {
                Tok::Str(codes) => Segment::Text(self.adjacent_strings(codes)?),
                Tok::Int(i) => Segment::Int(i),
                _ => return Err(Self::unexpected(&token, "a string or integer segment")),
            };
            let utf8 = if self.peek()?.tok == Tok::Slash {
                self.next()?;
                let ty = self.next()?;
                match ty.tok {
                    Tok::Atom(name) if name == "utf8" => true,
                    Tok::Atom(ref name) => {
                        return Err(ty.error(TermErrorKind::SegmentType { ty: name.clone() }));
                    }
                    _ => return Err(Self::unexpected(&ty, "a segment type after `/`")),
                }
            } else {
                false
            };
            let at = |kind| TermError { line, kind };
            let bad_char = |code| at(TermErrorKind::BadChar { code });
            match (value, utf8) {
                (Segment::Text(codes), true) => {
                    for code in codes {
                        let c = char::from_u32(code).ok_or_else(|| bad_char(code))?;
                        let mut buf = [0u8; 4];
                        bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
                // Without a type Erlang keeps the low 8 bits of each character.
                (Segment::Text(codes), false) => {
                    bytes.extend(codes.iter().map(|&code| (code & 0xff) as u8));
                }
                (Segment::Int(i), true) => {
                    let c = u32::try_from(i)
                        .ok()
                        .and_then(char::from_u32)
                        .ok_or_else(|| bad_char(u32::try_from(i).unwrap_or(u32::MAX)))?;
                    let mut buf = [0u8; 4];
                    bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                (Segment::Int(i), false) => {
                    let byte = u8::try_from(i)
                        .map_err(|_| at(TermErrorKind::ByteOutOfRange { value: i }))?;
                    bytes.push(byte);
                }
            }
            if self.comma_or(&Tok::RBin, "`,` or `>>` in a binary")? {
                return Ok(Term::Binary(bytes));
            }
        }
    }
}

enum Segment {
    Text(Vec<u32>),
    Int(i128),
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(crate::fuzz::config())]

        #[test]
        fn fuzz_terms(m in crate::fuzz::mutations(), raw in crate::fuzz::bytes(1024)) {
            let valid = b"{<<\"name\">>,<<\"alpha\">>}.\n{<<\"requirements\">>,[[{<<\"name\">>,<<\"b\">>},{<<\"optional\">>,true}]]}.\n{<<\"n\">>,[1,-2,3.5,'atom',\"str\",{}]}.\n";
            let _ = parse_consult(&crate::fuzz::apply(valid, &m));
            let _ = parse_consult(&raw);
        }
    }

    fn one(input: &str) -> Term {
        match parse_consult(input.as_bytes()) {
            Ok(mut terms) if terms.len() == 1 => terms.remove(0),
            other => panic!("{input:?} gave {other:?}"),
        }
    }

    fn fails(input: &[u8]) -> TermError {
        match parse_consult(input) {
            Err(e) => e,
            Ok(terms) => panic!("{:?} parsed to {terms:?}", String::from_utf8_lossy(input)),
        }
    }

    fn bin(s: &str) -> Term {
        Term::Binary(s.as_bytes().to_vec())
    }

    fn atom(s: &str) -> Term {
        Term::Atom(s.into())
    }

    #[test]
    fn atoms() {
        assert_eq!(one("true."), atom("true"));
        assert_eq!(one("foo_bar@x."), atom("foo_bar@x"));
        assert_eq!(one("'Foo bar'."), atom("Foo bar"));
        assert_eq!(one(r"'it\'s\n'."), atom("it's\n"));
        assert_eq!(one("'end'."), atom("end"));
    }

    #[test]
    fn integers() {
        assert_eq!(one("42."), Term::Integer(42));
        assert_eq!(one("-7."), Term::Integer(-7));
        assert_eq!(one("16#FF."), Term::Integer(255));
        assert_eq!(one("2#1010."), Term::Integer(10));
        assert_eq!(one("36#zz."), Term::Integer(1295));
        assert_eq!(one("1_000_000."), Term::Integer(1_000_000));
        assert_eq!(one("$c."), Term::Integer(99));
        assert_eq!(one("$\\n."), Term::Integer(10));
        assert_eq!(one("$ ."), Term::Integer(32));
        assert_eq!(one("$é."), Term::Integer(0xe9));
    }

    #[test]
    fn floats() {
        assert_eq!(one("1.5."), Term::Float(1.5));
        assert_eq!(one("1.0e3."), Term::Float(1000.0));
        assert_eq!(one("2.5E-1."), Term::Float(0.25));
        assert_eq!(one("-0.5."), Term::Float(-0.5));
        // `1.` followed by whitespace is the integer 1 and the end of the form.
        assert_eq!(one("1.\n"), Term::Integer(1));
    }

    #[test]
    fn strings_and_escapes() {
        assert_eq!(
            one(r#""a\tb\rc\\d\"e\'f\sg"."#),
            Term::String("a\tb\rc\\d\"e'f g".into())
        );
        assert_eq!(
            one(r#""\e\d\b\f\v"."#),
            Term::String("\u{1b}\u{7f}\u{8}\u{c}\u{b}".into())
        );
        assert_eq!(one(r#""\101\0\7"."#), Term::String("A\0\u{7}".into()));
        assert_eq!(
            one(r#""\x41\x{1F600}\x{e9}"."#),
            Term::String("A😀é".into())
        );
        assert_eq!(one(r#""\^a\^Z"."#), Term::String("\u{1}\u{1a}".into()));
        assert_eq!(one(r#""ab" "cd"."#), Term::String("abcd".into()));
        assert_eq!(one(r#""héllo"."#), Term::String("héllo".into()));
    }

    #[test]
    fn binaries() {
        assert_eq!(one(r#"<<"text">>."#), bin("text"));
        assert_eq!(one(r#"<<"héllo"/utf8>>."#), bin("héllo"));
        // Without /utf8 Erlang keeps the low byte of each character.
        assert_eq!(one(r#"<<"é">>."#), Term::Binary(vec![0xe9]));
        assert_eq!(one("<<1,2,3>>."), Term::Binary(vec![1, 2, 3]));
        assert_eq!(one("<<>>."), Term::Binary(vec![]));
        // Current hex_core writes a trailing backslash as octal `\134`.
        assert_eq!(one(r#"<<"a\134">>."#), bin("a\\"));
        assert_eq!(
            one(r#"<<"a", 0, "é"/utf8, 233/utf8, $b, "c" "d">>."#),
            Term::Binary(b"a\0\xc3\xa9\xc3\xa9bcd".to_vec())
        );
        assert_eq!(
            fails(b"<<256>>.").kind,
            TermErrorKind::ByteOutOfRange { value: 256 }
        );
        assert_eq!(
            fails(b"<<\"a\"/binary>>.").kind,
            TermErrorKind::SegmentType {
                ty: "binary".into()
            }
        );
        assert!(matches!(
            fails(b"<<a>>.").kind,
            TermErrorKind::Unexpected { .. }
        ));
        assert!(matches!(
            fails(b"<<1:8>>.").kind,
            TermErrorKind::Unexpected { .. }
        ));
    }

    #[test]
    fn containers() {
        assert_eq!(one("{}."), Term::Tuple(vec![]));
        assert_eq!(one("[]."), Term::List(vec![]));
        assert_eq!(
            one("{a, [1, {b}], #{<<\"k\">> => [], c => #{}}}."),
            Term::Tuple(vec![
                atom("a"),
                Term::List(vec![Term::Integer(1), Term::Tuple(vec![atom("b")])]),
                Term::Map(vec![
                    (bin("k"), Term::List(vec![])),
                    (atom("c"), Term::Map(vec![])),
                ]),
            ])
        );
        assert_eq!(fails(b"[a|b].").kind, TermErrorKind::ListTail);
        assert!(matches!(
            fails(b"[a,].").kind,
            TermErrorKind::Unexpected { .. }
        ));
        assert!(matches!(
            fails(b"#{a}.").kind,
            TermErrorKind::Unexpected { .. }
        ));
    }

    #[test]
    fn several_forms_and_comments() {
        let terms =
            parse_consult(b"% header\n{a, 1}.\n\n%% more\n{b, 2}. % trailing\n{c,3}.").unwrap();
        assert_eq!(terms.len(), 3);
        assert_eq!(parse_consult(b"").unwrap(), vec![]);
        assert_eq!(parse_consult(b"  % only a comment").unwrap(), vec![]);
    }

    #[test]
    fn latin1_fallback() {
        // 0xE9 alone is not UTF-8, so the whole input is read as latin-1.
        let terms =
            parse_consult(b"{<<\"name\">>, \"h\xe9llo\"}.\n{x, <<\"\xe9\"/utf8>>}.").unwrap();
        assert_eq!(
            terms,
            vec![
                Term::Tuple(vec![bin("name"), Term::String("héllo".into())]),
                Term::Tuple(vec![atom("x"), bin("é")]),
            ]
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "[".repeat(100_000);
        assert_eq!(
            fails(deep.as_bytes()).kind,
            TermErrorKind::TooDeep { limit: MAX_DEPTH }
        );
        let ok = format!("{}{}.", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse_consult(ok.as_bytes()).is_ok());
        let over = format!(
            "{}{}.",
            "{".repeat(MAX_DEPTH + 1),
            "}".repeat(MAX_DEPTH + 1)
        );
        assert_eq!(
            fails(over.as_bytes()).kind,
            TermErrorKind::TooDeep { limit: MAX_DEPTH }
        );
    }

    #[test]
    fn truncated_input() {
        for input in [
            &b"{a, b}"[..],
            b"{a, ",
            b"\"abc",
            b"'abc",
            b"<<\"a\"",
            b"$",
            b"\"\\",
            b"\"\\x{12",
            b"#{a =>",
            b"-",
        ] {
            let err = fails(input);
            assert!(
                matches!(err.kind, TermErrorKind::Truncated { .. }),
                "{:?}: {err}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn garbage() {
        assert_eq!(
            fails(b"{a, B}.").kind,
            TermErrorKind::Variable { name: "B".into() }
        );
        assert_eq!(
            fails(b"case.").kind,
            TermErrorKind::ReservedWord {
                word: "case".into()
            }
        );
        assert!(matches!(
            fails(b"1e5.").kind,
            TermErrorKind::Unexpected { .. }
        ));
        assert!(matches!(
            fails(b"{a}.{b}").kind,
            TermErrorKind::Unexpected { .. }
        ));
        assert!(matches!(
            fails(b"{a} {b}.").kind,
            TermErrorKind::Unexpected { .. }
        ));
        assert!(matches!(
            fails(b"a + 1.").kind,
            TermErrorKind::Unexpected { .. }
        ));
        assert!(matches!(
            fails(b"\x00\x01\xff").kind,
            TermErrorKind::Unexpected { .. }
        ));
        assert_eq!(
            fails(b"99999999999999999999999999999999999999999.").kind,
            TermErrorKind::IntegerOverflow {
                text: "99999999999999999999999999999999999999999".into()
            }
        );
        assert!(matches!(
            fails(b"1.0e999.").kind,
            TermErrorKind::BadFloat { .. }
        ));
        assert!(matches!(
            fails(b"37#1.").kind,
            TermErrorKind::BadBase { .. }
        ));
        assert!(matches!(
            fails(b"\"\\x{110000}\".").kind,
            TermErrorKind::BadChar { .. }
        ));
        assert!(matches!(
            fails(format!("'{}'.", "a".repeat(256)).as_bytes()).kind,
            TermErrorKind::AtomTooLong { .. }
        ));
    }

    #[test]
    fn error_reports_line() {
        let err = fails(b"{a, 1}.\n{b,\n  2,,}.");
        assert_eq!(err.line, 3);
        assert_eq!(err.to_string(), "line 3: expected a term, found `,`");
    }

    #[test]
    fn no_panic_on_any_prefix_of_a_sample() {
        let sample = "{<<\"a\">>, [#{1 => $x}, 16#1F, -2.5e-3, 'q\\x{41}', <<\"é\"/utf8, 1>>]}.\n";
        let bytes = sample.as_bytes();
        for end in 0..=bytes.len() {
            let _ = parse_consult(&bytes[..end]);
        }
    }
}
