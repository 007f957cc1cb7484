//! PURE. A codec between JSON-like values and the Erlang External Term Format.
//!
//! The Hex HTTP API speaks `application/vnd.hex+erlang`: hex_core reads our
//! responses with `binary_to_term(B, [safe])` and sends request bodies as
//! `term_to_binary(Map)`. Responses are encoded the way hexpm's
//! `term_to_binary(binarify(map))` does (binary keys and strings, `nil` for
//! null), byte for byte for maps of up to 32 keys (Erlang orders larger ones
//! by hash, which no decoder depends on). Requests are decoded strictly: only
//! the terms a body can carry are accepted, every length is checked against
//! the input before anything is allocated, and nesting is bounded, so hostile
//! input yields an error and never a panic.

use serde_json::{Map, Number, Value};
use thiserror::Error;

/// How deeply lists, tuples and maps may nest in a decoded body.
pub const MAX_DEPTH: usize = 64;

const VERSION: u8 = 131;
const NEW_FLOAT_EXT: u8 = 70;
const SMALL_INTEGER_EXT: u8 = 97;
const INTEGER_EXT: u8 = 98;
const ATOM_EXT: u8 = 100;
const SMALL_TUPLE_EXT: u8 = 104;
const LARGE_TUPLE_EXT: u8 = 105;
const NIL_EXT: u8 = 106;
const STRING_EXT: u8 = 107;
const LIST_EXT: u8 = 108;
const BINARY_EXT: u8 = 109;
const SMALL_BIG_EXT: u8 = 110;
const LARGE_BIG_EXT: u8 = 111;
const SMALL_ATOM_EXT: u8 = 115;
const MAP_EXT: u8 = 116;
const ATOM_UTF8_EXT: u8 = 118;
const SMALL_ATOM_UTF8_EXT: u8 = 119;

/// Erlang refuses atoms longer than this many characters.
const MAX_ATOM_CHARS: usize = 255;

/// Why a request body is not an ETF term a Hex API body can hold.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EtfError {
    /// The body does not start with the ETF version byte.
    #[error("ETF body: expected version byte 131 at byte 0, found {found}")]
    BadVersion {
        /// The byte found instead.
        found: u8,
    },
    /// The body ends before a term, or a declared length, is complete.
    #[error("ETF body: truncated at byte {offset}: needs {needed} bytes, {available} remain")]
    Truncated {
        /// Where the missing bytes should start.
        offset: usize,
        /// How many bytes the term needs there (at least).
        needed: usize,
        /// How many bytes are left.
        available: usize,
    },
    /// A term of a kind that Hex bodies never contain (pid, fun, compressed term, ...).
    #[error("ETF body: unsupported term tag {tag} at byte {offset}")]
    UnsupportedTag {
        /// The term tag.
        tag: u8,
        /// Where the term starts.
        offset: usize,
    },
    /// Bytes follow the single term of the body.
    #[error("ETF body: {count} trailing bytes at byte {offset}")]
    TrailingBytes {
        /// Where the extra bytes start.
        offset: usize,
        /// How many there are.
        count: usize,
    },
    /// Lists, tuples and maps nest deeper than [`MAX_DEPTH`].
    #[error(
        "ETF body: terms nested deeper than {} levels at byte {offset}",
        MAX_DEPTH
    )]
    TooDeep {
        /// Where the term that is too deep starts.
        offset: usize,
    },
    /// A binary or UTF-8 atom whose bytes are not UTF-8.
    #[error("ETF body: text is not valid UTF-8 at byte {offset}")]
    InvalidUtf8 {
        /// Where the term starts.
        offset: usize,
    },
    /// An atom longer than Erlang allows.
    #[error(
        "ETF body: atom longer than {} characters at byte {offset}",
        MAX_ATOM_CHARS
    )]
    AtomTooLong {
        /// Where the atom starts.
        offset: usize,
    },
    /// An integer that fits neither `i64` nor `u64`.
    #[error("ETF body: integer out of 64-bit range at byte {offset}")]
    IntegerOutOfRange {
        /// Where the integer starts.
        offset: usize,
    },
    /// A big integer whose sign byte is neither 0 nor 1.
    #[error("ETF body: big integer sign byte {sign} is not 0 or 1 at byte {offset}")]
    BadSign {
        /// The sign byte.
        sign: u8,
        /// Where the integer starts.
        offset: usize,
    },
    /// A float that is NaN or infinite, which JSON cannot hold.
    #[error("ETF body: float is not finite at byte {offset}")]
    NonFiniteFloat {
        /// Where the float starts.
        offset: usize,
    },
    /// A list whose tail is not `[]`.
    #[error("ETF body: improper list (tail is not []) at byte {offset}")]
    ImproperList {
        /// Where the tail starts.
        offset: usize,
    },
    /// A map key that is not a binary, an atom or a string.
    #[error("ETF body: map key with tag {tag} at byte {offset} is not a binary, atom or string")]
    BadMapKey {
        /// The key's term tag.
        tag: u8,
        /// Where the key starts.
        offset: usize,
    },
    /// Two map keys that name the same string.
    #[error("ETF body: duplicate map key {key:?} at byte {offset}")]
    DuplicateKey {
        /// The key, as text.
        key: String,
        /// Where the second occurrence starts.
        offset: usize,
    },
}

/// Encodes a JSON-like value as ETF (version byte 131 first).
///
/// # Panics
///
/// If a string is longer than `u32::MAX` bytes or an array or object has more
/// than `u32::MAX` elements, which ETF cannot express.
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = vec![VERSION];
    encode_term(value, &mut out);
    out
}

/// Decodes an ETF request body into a JSON-like value; refuses anything a Hex API body cannot hold.
pub fn decode(bytes: &[u8]) -> Result<Value, EtfError> {
    let mut reader = Reader { bytes, pos: 0 };
    let version = reader.u8()?;
    if version != VERSION {
        return Err(EtfError::BadVersion { found: version });
    }
    let value = reader.term(0)?;
    let count = reader.remaining();
    if count != 0 {
        return Err(EtfError::TrailingBytes {
            offset: reader.pos,
            count,
        });
    }
    Ok(value)
}

fn encode_term(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => encode_atom("nil", out),
        Value::Bool(true) => encode_atom("true", out),
        Value::Bool(false) => encode_atom("false", out),
        Value::Number(n) => encode_number(n, out),
        Value::String(s) => encode_binary(s, out),
        Value::Array(items) => encode_list(items, out),
        Value::Object(map) => {
            out.push(MAP_EXT);
            push_len(map.len(), out);
            // Erlang writes maps of up to 32 keys in key order; sorting keeps
            // the bytes identical to hexpm's even if serde_json is ever built
            // with preserve_order.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            for (key, item) in entries {
                encode_binary(key, out);
                encode_term(item, out);
            }
        }
    }
}

/// OTP 26+ writes every atom as SMALL_ATOM_UTF8_EXT; older decoders read it too.
fn encode_atom(name: &str, out: &mut Vec<u8>) {
    out.push(SMALL_ATOM_UTF8_EXT);
    // Only the fixed atoms nil/true/false are written, all far below 256 bytes.
    out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(name.as_bytes());
}

fn encode_binary(text: &str, out: &mut Vec<u8>) {
    out.push(BINARY_EXT);
    push_len(text.len(), out);
    out.extend_from_slice(text.as_bytes());
}

fn encode_list(items: &[Value], out: &mut Vec<u8>) {
    if items.is_empty() {
        out.push(NIL_EXT);
        return;
    }
    // Erlang stores a list of bytes as STRING_EXT; matching that keeps our
    // output identical to term_to_binary's (both decode to the same list).
    let bytes: Option<Vec<u8>> = items
        .iter()
        .map(|item| item.as_u64().and_then(|n| u8::try_from(n).ok()))
        .collect();
    if let Some(bytes) = bytes
        && let Ok(len) = u16::try_from(bytes.len())
    {
        out.push(STRING_EXT);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&bytes);
        return;
    }
    out.push(LIST_EXT);
    push_len(items.len(), out);
    for item in items {
        encode_term(item, out);
    }
    out.push(NIL_EXT);
}

fn encode_number(n: &Number, out: &mut Vec<u8>) {
    if let Some(u) = n.as_u64() {
        encode_integer(false, u, out);
    } else if let Some(i) = n.as_i64() {
        encode_integer(i < 0, i.unsigned_abs(), out);
    } else if let Some(f) = n.as_f64() {
        out.push(NEW_FLOAT_EXT);
        out.extend_from_slice(&f.to_be_bytes());
    } else {
        // Reachable only with serde_json's arbitrary_precision feature; the
        // decimal text loses nothing, unlike a rounded float.
        encode_binary(&n.to_string(), out);
    }
}

fn encode_integer(negative: bool, magnitude: u64, out: &mut Vec<u8>) {
    if !negative && magnitude <= u64::from(u8::MAX) {
        out.push(SMALL_INTEGER_EXT);
        out.push(magnitude.to_le_bytes()[0]);
        return;
    }
    let signed = if negative {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    };
    if let Some(small) = signed.and_then(|s| i32::try_from(s).ok()) {
        out.push(INTEGER_EXT);
        out.extend_from_slice(&small.to_be_bytes());
        return;
    }
    // Erlang writes the fewest magnitude bytes that hold the value.
    let le = magnitude.to_le_bytes();
    let used = le.len() - (magnitude.leading_zeros() / 8) as usize;
    out.push(SMALL_BIG_EXT);
    out.push(u8::try_from(used).unwrap_or(8));
    out.push(u8::from(negative));
    out.extend_from_slice(le.get(..used).unwrap_or(&le));
}

fn push_len(len: usize, out: &mut Vec<u8>) {
    let len = u32::try_from(len).expect("ETF cannot express lengths beyond u32::MAX");
    out.extend_from_slice(&len.to_be_bytes());
}

/// A cursor over the body; every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    fn truncated(&self, needed: usize) -> EtfError {
        EtfError::Truncated {
            offset: self.pos,
            needed,
            available: self.remaining(),
        }
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], EtfError> {
        let slice = self
            .pos
            .checked_add(len)
            .and_then(|end| self.bytes.get(self.pos..end))
            .ok_or_else(|| self.truncated(len))?;
        self.pos += len;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], EtfError> {
        let chunk = self
            .bytes
            .get(self.pos..)
            .and_then(|rest| rest.first_chunk::<N>())
            .copied()
            .ok_or_else(|| self.truncated(N))?;
        self.pos += N;
        Ok(chunk)
    }

    fn u8(&mut self) -> Result<u8, EtfError> {
        self.array::<1>().map(u8::from_be_bytes)
    }

    fn u16(&mut self) -> Result<u16, EtfError> {
        self.array::<2>().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<usize, EtfError> {
        let n = u32::from_be_bytes(self.array::<4>()?);
        // On 16-bit targets a length this large cannot fit in the input anyway.
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Refuses a count of `count` items of at least `each` bytes that the
    /// rest of the input cannot hold, so huge declared lengths never allocate.
    fn check_room(&self, count: usize, each: usize) -> Result<(), EtfError> {
        let needed = count.saturating_mul(each);
        if needed > self.remaining() {
            return Err(self.truncated(needed));
        }
        Ok(())
    }

    fn term(&mut self, depth: usize) -> Result<Value, EtfError> {
        let offset = self.pos;
        let tag = self.u8()?;
        match tag {
            SMALL_INTEGER_EXT => Ok(Value::from(self.u8()?)),
            INTEGER_EXT => Ok(Value::from(i32::from_be_bytes(self.array::<4>()?))),
            SMALL_BIG_EXT => {
                let n = usize::from(self.u8()?);
                self.big(n, offset)
            }
            LARGE_BIG_EXT => {
                let n = self.u32()?;
                self.big(n, offset)
            }
            NEW_FLOAT_EXT => {
                let f = f64::from_be_bytes(self.array::<8>()?);
                Number::from_f64(f)
                    .map(Value::Number)
                    .ok_or(EtfError::NonFiniteFloat { offset })
            }
            BINARY_EXT => self.binary_text(offset).map(Value::String),
            ATOM_EXT | SMALL_ATOM_EXT | ATOM_UTF8_EXT | SMALL_ATOM_UTF8_EXT => {
                let name = self.atom_name(tag, offset)?;
                Ok(match name.as_str() {
                    "nil" | "undefined" => Value::Null,
                    "true" => Value::Bool(true),
                    "false" => Value::Bool(false),
                    _ => Value::String(name),
                })
            }
            NIL_EXT => Ok(Value::Array(Vec::new())),
            STRING_EXT => {
                let len = usize::from(self.u16()?);
                let bytes = self.take(len)?;
                Ok(Value::Array(
                    bytes.iter().map(|&b| Value::from(b)).collect(),
                ))
            }
            LIST_EXT => {
                let depth = nest(depth, offset)?;
                let len = self.u32()?;
                // Each element takes at least one byte, and the tail one more.
                self.check_room(len.saturating_add(1), 1)?;
                let items = self.items(len, depth)?;
                let tail = self.pos;
                if self.u8()? != NIL_EXT {
                    return Err(EtfError::ImproperList { offset: tail });
                }
                Ok(Value::Array(items))
            }
            SMALL_TUPLE_EXT => {
                let depth = nest(depth, offset)?;
                let len = usize::from(self.u8()?);
                self.check_room(len, 1)?;
                self.items(len, depth).map(Value::Array)
            }
            LARGE_TUPLE_EXT => {
                let depth = nest(depth, offset)?;
                let len = self.u32()?;
                self.check_room(len, 1)?;
                self.items(len, depth).map(Value::Array)
            }
            MAP_EXT => {
                let depth = nest(depth, offset)?;
                let arity = self.u32()?;
                self.check_room(arity, 2)?;
                let mut map = Map::new();
                for _ in 0..arity {
                    let key_offset = self.pos;
                    let key = self.key(depth)?;
                    let value = self.term(depth)?;
                    // Keys that differ in Erlang (an atom and a binary) can
                    // collide as strings; guessing which one wins would be
                    // silent data loss.
                    if map.contains_key(&key) {
                        return Err(EtfError::DuplicateKey {
                            key,
                            offset: key_offset,
                        });
                    }
                    map.insert(key, value);
                }
                Ok(Value::Object(map))
            }
            _ => Err(EtfError::UnsupportedTag { tag, offset }),
        }
    }

    /// Reads `len` terms; the caller has checked that the input can hold them.
    fn items(&mut self, len: usize, depth: usize) -> Result<Vec<Value>, EtfError> {
        let mut items = Vec::with_capacity(len.min(self.remaining()));
        for _ in 0..len {
            items.push(self.term(depth)?);
        }
        Ok(items)
    }

    /// Reads the sign and `n` little-endian magnitude bytes of a big integer.
    fn big(&mut self, n: usize, offset: usize) -> Result<Value, EtfError> {
        // Checked before the sign byte so a huge `n` is reported where it matters.
        self.check_room(n.saturating_add(1), 1)?;
        let sign = self.u8()?;
        let digits = self.take(n)?;
        if sign > 1 {
            return Err(EtfError::BadSign { sign, offset });
        }
        let out_of_range = EtfError::IntegerOutOfRange { offset };
        // High zero bytes add nothing; what is left must fit in 64 bits.
        let significant = digits
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |last| last + 1);
        let digits = digits.get(..significant).unwrap_or_default();
        if digits.len() > 8 {
            return Err(out_of_range);
        }
        let magnitude = digits
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        if sign == 0 {
            Ok(Value::from(magnitude))
        } else {
            0i64.checked_sub_unsigned(magnitude)
                .map(Value::from)
                .ok_or(out_of_range)
        }
    }

    /// Reads a BINARY_EXT payload (after the tag) as UTF-8 text.
    fn binary_text(&mut self, offset: usize) -> Result<String, EtfError> {
        let len = self.u32()?;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| EtfError::InvalidUtf8 { offset })
    }

    /// Reads an atom's name (after the tag); the old atom tags are Latin-1.
    fn atom_name(&mut self, tag: u8, offset: usize) -> Result<String, EtfError> {
        let len = match tag {
            ATOM_EXT | ATOM_UTF8_EXT => usize::from(self.u16()?),
            _ => usize::from(self.u8()?),
        };
        let bytes = self.take(len)?;
        let name = match tag {
            ATOM_EXT | SMALL_ATOM_EXT => latin1(bytes),
            _ => std::str::from_utf8(bytes)
                .map_err(|_| EtfError::InvalidUtf8 { offset })?
                .to_owned(),
        };
        if name.chars().count() > MAX_ATOM_CHARS {
            return Err(EtfError::AtomTooLong { offset });
        }
        Ok(name)
    }

    /// Reads a map key: a binary, an atom (by name, so `nil` stays "nil") or
    /// a string, which Erlang writes as STRING_EXT, `[]` or a list of code points.
    fn key(&mut self, depth: usize) -> Result<String, EtfError> {
        let offset = self.pos;
        let tag = self.u8()?;
        match tag {
            BINARY_EXT => self.binary_text(offset),
            ATOM_EXT | SMALL_ATOM_EXT | ATOM_UTF8_EXT | SMALL_ATOM_UTF8_EXT => {
                self.atom_name(tag, offset)
            }
            STRING_EXT => {
                let len = usize::from(self.u16()?);
                self.take(len).map(latin1)
            }
            NIL_EXT => Ok(String::new()),
            LIST_EXT => {
                self.pos = offset;
                let bad_key = EtfError::BadMapKey { tag, offset };
                match self.term(depth)? {
                    Value::Array(items) => items
                        .iter()
                        .map(|item| {
                            item.as_u64()
                                .and_then(|c| u32::try_from(c).ok())
                                .and_then(char::from_u32)
                        })
                        .collect::<Option<String>>()
                        .ok_or(bad_key),
                    _ => Err(bad_key),
                }
            }
            _ => Err(EtfError::BadMapKey { tag, offset }),
        }
    }
}

/// The depth inside one more container, or an error beyond [`MAX_DEPTH`].
fn nest(depth: usize, offset: usize) -> Result<usize, EtfError> {
    if depth >= MAX_DEPTH {
        return Err(EtfError::TooDeep { offset });
    }
    Ok(depth + 1)
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Round-trips a value and returns its encoding.
    fn round_trip(value: &Value) -> Vec<u8> {
        let bytes = encode(value);
        assert_eq!(decode(&bytes).as_ref(), Ok(value), "bytes {bytes:?}");
        bytes
    }

    /// A small xorshift PRNG so the fuzz tests are reproducible.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n as u64).unwrap_or(0)
        }

        fn byte(&mut self) -> u8 {
            self.next().to_le_bytes()[0]
        }
    }

    fn sample() -> Value {
        sample_value()
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzz::config())]

        #[test]
        fn fuzz_etf(m in crate::fuzz::mutations(), raw in crate::fuzz::bytes(1024)) {
            let _ = decode(&crate::fuzz::apply(&encode(&sample()), &m));
            let _ = decode(&raw);
        }
    }

    fn sample_value() -> Value {
        json!({
            "name": "hexmirror",
            "meta": {
                "licenses": ["Apache-2.0", "MIT"],
                "links": {},
                "description": "Grüße, 世界 🚀",
            },
            "numbers": [0, 255, 256, -1, i32::MIN, i32::MAX, i64::MIN, i64::MAX, u64::MAX, 1.5, -0.25],
            "bytes": [1, 2, 3],
            "flags": [true, false, null],
            "empty": [],
            "nested": [[[]], [{}], {"a": [{"b": null}]}],
        })
    }

    // Constants from `erl` (OTP 25 and the brief's OTP 26 atom), so the
    // encoder is held to what term_to_binary really writes.
    const MAP_A_1: &[u8] = &[131, 116, 0, 0, 0, 1, 109, 0, 0, 0, 1, 97, 97, 1];
    const MAP_A_LIST_1_2: &[u8] = &[131, 116, 0, 0, 0, 1, 109, 0, 0, 0, 1, 97, 107, 0, 2, 1, 2];
    const EMPTY_LIST: &[u8] = &[131, 106];
    const BINARY_HI: &[u8] = &[131, 109, 0, 0, 0, 2, 104, 105];
    const NIL_OTP26: &[u8] = &[131, 119, 3, 110, 105, 108];
    const NIL_OTP25: &[u8] = &[131, 100, 0, 3, 110, 105, 108];
    const INT_300: &[u8] = &[131, 98, 0, 0, 1, 44];
    const CHARLIST_AB: &[u8] = &[131, 107, 0, 2, 97, 98];
    const LIST_1_256_MINUS_1: &[u8] = &[
        131, 108, 0, 0, 0, 3, 97, 1, 98, 0, 0, 1, 0, 98, 255, 255, 255, 255, 106,
    ];
    const HEX_LIKE_MAP: &[u8] = &[
        131, 116, 0, 0, 0, 4, 109, 0, 0, 0, 4, 109, 101, 116, 97, 116, 0, 0, 0, 2, 109, 0, 0, 0, 8,
        108, 105, 99, 101, 110, 115, 101, 115, 108, 0, 0, 0, 1, 109, 0, 0, 0, 3, 77, 73, 84, 106,
        109, 0, 0, 0, 7, 118, 101, 114, 115, 105, 111, 110, 109, 0, 0, 0, 5, 49, 46, 48, 46, 48,
        109, 0, 0, 0, 1, 110, 70, 64, 10, 0, 0, 0, 0, 0, 0, 109, 0, 0, 0, 4, 110, 97, 109, 101,
        109, 0, 0, 0, 3, 102, 111, 111, 109, 0, 0, 0, 2, 111, 107, 100, 0, 4, 116, 114, 117, 101,
    ];

    #[test]
    fn encodes_like_term_to_binary() {
        assert_eq!(encode(&json!({"a": 1})), MAP_A_1);
        assert_eq!(encode(&json!({"a": [1, 2]})), MAP_A_LIST_1_2);
        assert_eq!(encode(&json!([])), EMPTY_LIST);
        assert_eq!(encode(&json!("hi")), BINARY_HI);
        assert_eq!(encode(&Value::Null), NIL_OTP26);
        assert_eq!(encode(&json!(300)), INT_300);
        assert_eq!(encode(&json!([97, 98])), CHARLIST_AB);
        assert_eq!(encode(&json!([1, 256, -1])), LIST_1_256_MINUS_1);
        assert_eq!(encode(&json!(255)), [131, 97, 255]);
        assert_eq!(encode(&json!(256)), [131, 98, 0, 0, 1, 0]);
        assert_eq!(encode(&json!(-1)), [131, 98, 255, 255, 255, 255]);
        assert_eq!(encode(&json!(i32::MAX)), [131, 98, 127, 255, 255, 255]);
        assert_eq!(encode(&json!(i32::MIN)), [131, 98, 128, 0, 0, 0]);
        assert_eq!(
            encode(&json!(2_147_483_648_u64)),
            [131, 110, 4, 0, 0, 0, 0, 128]
        );
        assert_eq!(
            encode(&json!(-2_147_483_649_i64)),
            [131, 110, 4, 1, 1, 0, 0, 128]
        );
        assert_eq!(
            encode(&json!(i64::MAX)),
            [131, 110, 8, 0, 255, 255, 255, 255, 255, 255, 255, 127]
        );
        assert_eq!(
            encode(&json!(i64::MIN)),
            [131, 110, 8, 1, 0, 0, 0, 0, 0, 0, 0, 128]
        );
        assert_eq!(
            encode(&json!(u64::MAX)),
            [131, 110, 8, 0, 255, 255, 255, 255, 255, 255, 255, 255]
        );
        assert_eq!(encode(&json!(1.5)), [131, 70, 63, 248, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode(&json!(-0.0)), [131, 70, 128, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode(&json!(true)), [131, 119, 4, 116, 114, 117, 101]);
        assert_eq!(encode(&json!(false)), [131, 119, 5, 102, 97, 108, 115, 101]);
        assert_eq!(
            encode(&json!({"name": "ä€"})),
            [
                131, 116, 0, 0, 0, 1, 109, 0, 0, 0, 4, 110, 97, 109, 101, 109, 0, 0, 0, 5, 195,
                164, 226, 130, 172
            ]
        );
        assert_eq!(
            encode(&json!({"b": null, "a": {}})),
            [
                131, 116, 0, 0, 0, 2, 109, 0, 0, 0, 1, 97, 116, 0, 0, 0, 0, 109, 0, 0, 0, 1, 98,
                119, 3, 110, 105, 108
            ]
        );
    }

    #[test]
    fn long_byte_lists_fall_back_to_list_ext() {
        // Erlang switches at 65536 elements: [131,108,0,1,0,0,97,1,...].
        let short = encode(&Value::Array(vec![json!(1); 65_535]));
        assert_eq!(short.get(..5), Some(&[131, 107, 255, 255, 1][..]));
        let long = encode(&Value::Array(vec![json!(1); 65_536]));
        assert_eq!(long.get(..8), Some(&[131, 108, 0, 1, 0, 0, 97, 1][..]));
        assert_eq!(long.last(), Some(&NIL_EXT));
        assert_eq!(
            decode(&long).map(|v| v.as_array().map(Vec::len)),
            Ok(Some(65_536))
        );
    }

    #[test]
    fn decodes_term_to_binary_output() {
        assert_eq!(decode(MAP_A_1), Ok(json!({"a": 1})));
        assert_eq!(decode(MAP_A_LIST_1_2), Ok(json!({"a": [1, 2]})));
        assert_eq!(decode(EMPTY_LIST), Ok(json!([])));
        assert_eq!(decode(BINARY_HI), Ok(json!("hi")));
        assert_eq!(decode(NIL_OTP26), Ok(Value::Null));
        assert_eq!(decode(NIL_OTP25), Ok(Value::Null));
        assert_eq!(decode(INT_300), Ok(json!(300)));
        assert_eq!(decode(CHARLIST_AB), Ok(json!([97, 98])));
        assert_eq!(decode(LIST_1_256_MINUS_1), Ok(json!([1, 256, -1])));
        assert_eq!(
            decode(HEX_LIKE_MAP),
            Ok(json!({
                "name": "foo",
                "meta": {"licenses": ["MIT"], "version": "1.0.0"},
                "ok": true,
                "n": 3.25,
            }))
        );
        // [<<"x">>, true, false] from OTP 25 (ATOM_EXT atoms).
        assert_eq!(
            decode(&[
                131, 108, 0, 0, 0, 3, 109, 0, 0, 0, 1, 120, 100, 0, 4, 116, 114, 117, 101, 100, 0,
                5, 102, 97, 108, 115, 101, 106
            ]),
            Ok(json!(["x", true, false]))
        );
        // undefined, {1, <<"a">>}, {} and 'héllo' (Latin-1 ATOM_EXT).
        assert_eq!(
            decode(&[131, 100, 0, 9, 117, 110, 100, 101, 102, 105, 110, 101, 100]),
            Ok(Value::Null)
        );
        assert_eq!(
            decode(&[131, 104, 2, 97, 1, 109, 0, 0, 0, 1, 97]),
            Ok(json!([1, "a"]))
        );
        assert_eq!(decode(&[131, 104, 0]), Ok(json!([])));
        assert_eq!(
            decode(&[131, 100, 0, 5, 104, 233, 108, 108, 111]),
            Ok(json!("héllo"))
        );
        // '€' as SMALL_ATOM_UTF8_EXT, and "é" as a STRING_EXT value.
        assert_eq!(decode(&[131, 119, 3, 226, 130, 172]), Ok(json!("€")));
        assert_eq!(decode(&[131, 107, 0, 1, 233]), Ok(json!([233])));
        // #{a => <<"x">>, "k" => 1}: atom and charlist keys.
        assert_eq!(
            decode(&[
                131, 116, 0, 0, 0, 2, 100, 0, 1, 97, 109, 0, 0, 0, 1, 120, 107, 0, 1, 107, 97, 1
            ]),
            Ok(json!({"a": "x", "k": 1}))
        );
        // -9223372036854775809 and 2^64 do not fit.
        assert_eq!(
            decode(&[131, 110, 8, 1, 1, 0, 0, 0, 0, 0, 0, 128]),
            Err(EtfError::IntegerOutOfRange { offset: 1 })
        );
        assert_eq!(
            decode(&[131, 110, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            Err(EtfError::IntegerOutOfRange { offset: 1 })
        );
    }

    #[test]
    fn round_trips() {
        round_trip(&sample());
        for n in [
            0_i64,
            255,
            256,
            -1,
            -255,
            -256,
            i64::from(i32::MIN),
            i64::from(i32::MAX),
            i64::MIN,
            i64::MAX,
        ] {
            round_trip(&json!(n));
        }
        for n in [0_u64, u64::from(u32::MAX), 1 << 32, 1 << 63, u64::MAX] {
            round_trip(&json!(n));
        }
        for f in [
            0.0,
            1.0,
            -1.5,
            f64::MAX,
            f64::MIN_POSITIVE,
            1e-300,
            std::f64::consts::PI,
        ] {
            round_trip(&json!(f));
        }
        for s in [
            "",
            "a",
            "nil",
            "true",
            "ünïcödé",
            "日本語",
            "🦀 crab",
            "\u{0}",
        ] {
            round_trip(&json!(s));
            round_trip(&json!({ s: s }));
        }
        round_trip(&json!([null, true, false]));
        round_trip(&json!({"": {"": [[], {}]}}));
        // Floats stay floats, even integral ones.
        assert_eq!(
            decode(&encode(&json!(2.0))).ok().and_then(|v| v.as_f64()),
            Some(2.0)
        );
        assert!(decode(&encode(&json!(2.0))).is_ok_and(|v| v.is_f64()));
    }

    #[test]
    fn decodes_all_atom_tags() {
        for (text, expected) in [
            ("nil", Value::Null),
            ("undefined", Value::Null),
            ("true", json!(true)),
            ("false", json!(false)),
            ("ok", json!("ok")),
        ] {
            let name = text.as_bytes();
            let len = u8::try_from(name.len()).unwrap_or(0);
            for header in [
                vec![ATOM_EXT, 0, len],
                vec![SMALL_ATOM_EXT, len],
                vec![ATOM_UTF8_EXT, 0, len],
                vec![SMALL_ATOM_UTF8_EXT, len],
            ] {
                let bytes = [&[VERSION][..], &header, name].concat();
                assert_eq!(decode(&bytes), Ok(expected.clone()), "{bytes:?}");
            }
        }
        // An atom `nil` as a key is the key "nil", not null.
        assert_eq!(
            decode(&[131, 116, 0, 0, 0, 1, 119, 3, 110, 105, 108, 97, 1]),
            Ok(json!({"nil": 1}))
        );
    }

    #[test]
    fn decodes_big_integers_in_range() {
        // Negative bigs, high zero bytes and LARGE_BIG_EXT all decode.
        assert_eq!(decode(&[131, 110, 1, 1, 5]), Ok(json!(-5)));
        assert_eq!(decode(&[131, 110, 3, 0, 7, 0, 0]), Ok(json!(7)));
        assert_eq!(decode(&[131, 110, 0, 0]), Ok(json!(0)));
        assert_eq!(
            decode(&[
                131, 110, 10, 0, 255, 255, 255, 255, 255, 255, 255, 255, 0, 0
            ]),
            Ok(json!(u64::MAX))
        );
        assert_eq!(decode(&[131, 111, 0, 0, 0, 2, 1, 0, 1]), Ok(json!(-256)));
        assert_eq!(
            decode(&[131, 110, 1, 2, 5]),
            Err(EtfError::BadSign { sign: 2, offset: 1 })
        );
        // 2^63 + 1 negated is below i64::MIN.
        assert_eq!(
            decode(&[131, 110, 8, 1, 1, 0, 0, 0, 0, 0, 0, 128]),
            Err(EtfError::IntegerOutOfRange { offset: 1 })
        );
        // 2^2040 as LARGE_BIG_EXT, from `erl`.
        let mut huge = vec![131, 111, 0, 0, 1, 0, 0];
        huge.extend(std::iter::repeat_n(0, 255));
        huge.push(1);
        assert_eq!(
            decode(&huge),
            Err(EtfError::IntegerOutOfRange { offset: 1 })
        );
    }

    #[test]
    fn refuses_what_a_body_cannot_hold() {
        // Tag 117 (FUN_EXT) after a map header and key: the brief's example.
        let fun = [131, 116, 0, 0, 0, 1, 109, 0, 0, 0, 1, 97, 117, 0];
        let err = decode(&fun).err();
        assert_eq!(
            err,
            Some(EtfError::UnsupportedTag {
                tag: 117,
                offset: 12
            })
        );
        assert_eq!(
            err.map(|e| e.to_string()).as_deref(),
            Some("ETF body: unsupported term tag 117 at byte 12")
        );
        // self(), make_ref(), a compressed term, a bitstring, an old-style float.
        let pid = [
            131, 88, 100, 0, 13, 110, 111, 110, 111, 100, 101, 64, 110, 111, 104, 111, 115, 116, 0,
            0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(
            decode(&pid),
            Err(EtfError::UnsupportedTag { tag: 88, offset: 1 })
        );
        assert_eq!(
            decode(&[131, 90, 0, 3]),
            Err(EtfError::UnsupportedTag { tag: 90, offset: 1 })
        );
        let compressed = [
            131, 80, 0, 0, 0, 43, 120, 156, 203, 102, 208, 96, 39, 18, 0, 0, 46, 248, 1, 172,
        ];
        assert_eq!(
            decode(&compressed),
            Err(EtfError::UnsupportedTag { tag: 80, offset: 1 })
        );
        assert_eq!(
            decode(&[131, 77, 0, 0, 0, 1, 3, 32]),
            Err(EtfError::UnsupportedTag { tag: 77, offset: 1 })
        );
        assert_eq!(
            decode(&[131, 99, 0]),
            Err(EtfError::UnsupportedTag { tag: 99, offset: 1 })
        );

        assert_eq!(
            decode(&[]),
            Err(EtfError::Truncated {
                offset: 0,
                needed: 1,
                available: 0
            })
        );
        assert_eq!(
            decode(&[130, 106]),
            Err(EtfError::BadVersion { found: 130 })
        );
        assert_eq!(
            decode(&[131]),
            Err(EtfError::Truncated {
                offset: 1,
                needed: 1,
                available: 0
            })
        );
        assert_eq!(
            decode(&[131, 109, 0, 0, 0, 2, 0xC3, 0x28]),
            Err(EtfError::InvalidUtf8 { offset: 1 })
        );
        assert_eq!(
            decode(&[131, 119, 2, 0xC3, 0x28]),
            Err(EtfError::InvalidUtf8 { offset: 1 })
        );
        let mut long_atom = vec![131, 118, 1, 0];
        long_atom.extend(std::iter::repeat_n(b'a', 256));
        assert_eq!(decode(&long_atom), Err(EtfError::AtomTooLong { offset: 1 }));
        assert_eq!(
            decode(&[131, 70, 127, 240, 0, 0, 0, 0, 0, 0]),
            Err(EtfError::NonFiniteFloat { offset: 1 })
        );
        assert_eq!(
            decode(&[131, 70, 127, 248, 0, 0, 0, 0, 0, 0]),
            Err(EtfError::NonFiniteFloat { offset: 1 })
        );
        // [a|b] from `erl`.
        assert_eq!(
            decode(&[131, 108, 0, 0, 0, 1, 100, 0, 1, 97, 100, 0, 1, 98]),
            Err(EtfError::ImproperList { offset: 10 })
        );
        // #{1 => 2} from `erl`, and a tuple key.
        assert_eq!(
            decode(&[131, 116, 0, 0, 0, 1, 97, 1, 97, 2]),
            Err(EtfError::BadMapKey { tag: 97, offset: 6 })
        );
        assert_eq!(
            decode(&[131, 116, 0, 0, 0, 1, 104, 0, 97, 2]),
            Err(EtfError::BadMapKey {
                tag: 104,
                offset: 6
            })
        );
        // A list key that is not a string of code points.
        assert_eq!(
            decode(&[131, 116, 0, 0, 0, 1, 108, 0, 0, 0, 1, 106, 106, 97, 2]),
            Err(EtfError::BadMapKey {
                tag: 108,
                offset: 6
            })
        );
        // The atom `a` and the binary <<"a">> collide.
        assert_eq!(
            decode(&[
                131, 116, 0, 0, 0, 2, 119, 1, 97, 97, 1, 109, 0, 0, 0, 1, 97, 97, 2
            ]),
            Err(EtfError::DuplicateKey {
                key: "a".to_owned(),
                offset: 11
            })
        );
    }

    #[test]
    fn accepts_string_keys_of_every_shape() {
        // "" as [], "é" as STRING_EXT (Latin-1), "€" as a list of code points.
        assert_eq!(
            decode(&[
                131, 116, 0, 0, 0, 3, 106, 97, 1, 107, 0, 1, 233, 97, 2, 108, 0, 0, 0, 1, 98, 0, 0,
                32, 172, 106, 97, 3
            ]),
            Ok(json!({"": 1, "é": 2, "€": 3}))
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        assert_eq!(
            decode(&[131, 106, 106]),
            Err(EtfError::TrailingBytes {
                offset: 2,
                count: 1
            })
        );
        let mut bytes = encode(&sample());
        bytes.extend_from_slice(&[0, 0]);
        assert!(matches!(
            decode(&bytes),
            Err(EtfError::TrailingBytes { count: 2, .. })
        ));
    }

    #[test]
    fn every_truncation_fails() {
        let mut encodings = vec![encode(&sample()), MAP_A_1.to_vec(), HEX_LIKE_MAP.to_vec()];
        encodings.push(encode(&json!(u64::MAX)));
        encodings.push(encode(&json!([1, 256, -1, "x", [1, 2]])));
        for bytes in &encodings {
            assert!(decode(bytes).is_ok());
            for len in 0..bytes.len() {
                let prefix = bytes.get(..len).unwrap_or_default();
                assert!(decode(prefix).is_err(), "prefix of {len} bytes decoded");
            }
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let valid = encode(&sample());
        let tags = [
            70, 97, 98, 100, 104, 105, 106, 107, 108, 109, 110, 111, 115, 116, 118, 119,
        ];
        for round in 0..20_000 {
            let bytes: Vec<u8> = match round % 3 {
                // Pure noise behind the version byte.
                0 => {
                    let len = rng.below(48);
                    std::iter::once(VERSION)
                        .chain((0..len).map(|_| rng.byte()))
                        .collect()
                }
                // Valid tags with random bytes in between, to get deeper.
                1 => {
                    let len = rng.below(64);
                    std::iter::once(VERSION)
                        .chain((0..len).map(|_| {
                            if rng.below(2) == 0 {
                                tags.get(rng.below(tags.len())).copied().unwrap_or(106)
                            } else {
                                rng.byte() % 4
                            }
                        }))
                        .collect()
                }
                // A valid body with a few bytes flipped.
                _ => {
                    let mut bytes = valid.clone();
                    for _ in 0..=rng.below(4) {
                        let at = rng.below(bytes.len());
                        if let Some(b) = bytes.get_mut(at) {
                            *b = rng.byte();
                        }
                    }
                    bytes
                }
            };
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn huge_declared_lengths_fail_without_allocating() {
        let max = [255, 255, 255, 255];
        for tag in [
            BINARY_EXT,
            LIST_EXT,
            MAP_EXT,
            LARGE_TUPLE_EXT,
            LARGE_BIG_EXT,
        ] {
            let bytes = [&[VERSION, tag][..], &max, &[0, 0, 0]].concat();
            let err = decode(&bytes);
            assert!(
                matches!(err, Err(EtfError::Truncated { offset: 6, .. })),
                "tag {tag}: {err:?}"
            );
        }
        assert!(matches!(
            decode(&[131, 107, 255, 255, 1]),
            Err(EtfError::Truncated {
                offset: 4,
                needed: 65_535,
                available: 1
            })
        ));
        assert!(matches!(
            decode(&[131, 104, 255, 97]),
            Err(EtfError::Truncated {
                offset: 3,
                needed: 255,
                available: 1
            })
        ));
        // Huge lengths nested inside a list are caught the same way.
        let nested = [131, 108, 0, 0, 0, 1, 109, 255, 255, 255, 255, 106];
        assert!(matches!(
            decode(&nested),
            Err(EtfError::Truncated { offset: 11, .. })
        ));
    }

    fn nested_lists(depth: usize) -> Vec<u8> {
        let mut bytes = vec![VERSION];
        for _ in 0..depth {
            bytes.extend_from_slice(&[LIST_EXT, 0, 0, 0, 1]);
        }
        bytes.push(NIL_EXT);
        bytes.extend(std::iter::repeat_n(NIL_EXT, depth));
        bytes
    }

    #[test]
    fn nesting_is_limited() {
        assert!(decode(&nested_lists(MAX_DEPTH)).is_ok());
        assert_eq!(
            decode(&nested_lists(MAX_DEPTH + 1)),
            Err(EtfError::TooDeep {
                offset: 1 + 5 * MAX_DEPTH
            })
        );
        assert!(matches!(
            decode(&nested_lists(100_000)),
            Err(EtfError::TooDeep { .. })
        ));

        let mut deep = json!(1);
        for _ in 0..MAX_DEPTH {
            deep = json!([deep]);
        }
        round_trip(&deep);
        let mut too_deep = json!(1);
        for _ in 0..=MAX_DEPTH {
            too_deep = json!({ "k": too_deep });
        }
        assert!(matches!(
            decode(&encode(&too_deep)),
            Err(EtfError::TooDeep { .. })
        ));
        // Tuples count too.
        let mut tuples = vec![VERSION];
        tuples.extend(std::iter::repeat_n([SMALL_TUPLE_EXT, 1], MAX_DEPTH + 1).flatten());
        tuples.push(NIL_EXT);
        assert!(matches!(decode(&tuples), Err(EtfError::TooDeep { .. })));
    }
}
