//! `json.decode` and `json.encode` for the sandbox, built for the hook hot path and for hostile
//! input.
//!
//! Decoding goes through a reusable [`Tape`]: serde_json parses the text into a flat list of
//! tokens (no Lua involved, buffers reused between calls), then one protected Lua call builds
//! the tables from the tape with the raw C API. Going value by value through mlua instead costs
//! one protected call per table slot once a memory limit is set — about ten times slower for a
//! typical 2 KB health document.
//!
//! Encoding ([`encode`]) walks Lua values in Rust, so it runs no Lua instruction: its own limits
//! stand in for the budget — nesting depth ([`MAX_ENCODE_DEPTH`]; a deeper table would overflow
//! the thread's stack), output size (what the Lua heap can still take) and work (every value
//! written counts as an instruction, through the `charge` callback).

use std::os::raw::c_int;

use mlua::{ffi, Lua, LuaSerdeExt, Table, Value};
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// Deepest nesting `json.encode` writes: the same as the decoder accepts (serde_json's
/// recursion limit).
pub(crate) const MAX_ENCODE_DEPTH: usize = 128;
/// Values written between two calls of the encoder's `charge` callback.
const ENCODE_CHARGE_EVERY: u64 = 256;

/// Least heap one decoded token takes in Lua (one 16-byte slot); with the state's headroom it
/// bounds how many tokens are worth parsing before the build would run out of memory anyway.
const MIN_LUA_BYTES_PER_TOKEN: usize = 16;
/// Tokens a tape keeps room for between calls; a tape that grew past this (one huge document)
/// gives the memory back.
const TAPE_KEEP_TOKENS: usize = 64 * 1024;

/// A parsed JSON document, flattened in pre-order.
#[derive(Debug, Default)]
pub(crate) struct Tape {
    tokens: Vec<Token>,
    /// Every string of the document (keys and values), unescaped, back to back.
    strings: String,
    /// Most tokens this parse may produce (see [`MIN_LUA_BYTES_PER_TOKEN`]).
    max_tokens: usize,
    /// Set when the parse stopped at `max_tokens`.
    too_large: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Token {
    Null,
    Bool(bool),
    Int(i64),
    Num(f64),
    Str {
        start: usize,
        len: usize,
    },
    /// An array of `n` values; they follow.
    Array(usize),
    /// An object of `n` key/value pairs; they follow, key first.
    Object(usize),
}

/// Why a document could not be decoded.
#[derive(Debug)]
pub(crate) enum DecodeError {
    Json(serde_json::Error),
    /// The document would not fit in the Lua heap.
    TooLarge,
}

impl Tape {
    /// Parses `input`, which must be one JSON value (surrounding whitespace allowed).
    /// `heap_headroom` is how many bytes the Lua state may still allocate.
    pub(crate) fn parse(&mut self, input: &[u8], heap_headroom: usize) -> Result<(), DecodeError> {
        self.tokens.clear();
        self.strings.clear();
        self.max_tokens = heap_headroom / MIN_LUA_BYTES_PER_TOKEN;
        self.too_large = false;
        // Validating UTF-8 once up front spares serde_json a check per string.
        let result = match std::str::from_utf8(input) {
            Ok(text) => {
                let mut deserializer = serde_json::Deserializer::from_str(text);
                Seed(self)
                    .deserialize(&mut deserializer)
                    .and_then(|()| deserializer.end())
            }
            Err(_) => {
                let mut deserializer = serde_json::Deserializer::from_slice(input);
                Seed(self)
                    .deserialize(&mut deserializer)
                    .and_then(|()| deserializer.end())
            }
        };
        match result {
            Ok(()) => Ok(()),
            Err(_) if self.too_large => Err(DecodeError::TooLarge),
            Err(e) => Err(DecodeError::Json(e)),
        }
    }

    /// Builds the Lua value of the parsed document. Arrays get mlua's array metatable so
    /// `json.encode` writes them back as arrays.
    pub(crate) fn build(&self, lua: &Lua) -> mlua::Result<Value> {
        if self.tokens.is_empty() {
            return Ok(Value::Nil);
        }
        let array_metatable = lua.array_metatable();
        // SAFETY: `exec_raw` runs the closure in protected mode with the array metatable at stack
        // index 1. The closure (and `push`) only push values and set table slots with the Lua C
        // API, checking stack space first, and hold nothing that needs dropping, so a Lua error
        // (out of memory) may unwind past them. The tape is well formed by construction: every
        // container token is followed by exactly its children. It leaves exactly one value.
        unsafe {
            lua.exec_raw::<Value>(array_metatable, |state| {
                let mut position = 0;
                push(state, self, &mut position);
                ffi::lua_remove(state, 1);
            })
        }
    }

    /// Returns memory to the allocator after an unusually large document.
    pub(crate) fn trim(&mut self) {
        if self.tokens.capacity() > TAPE_KEEP_TOKENS {
            self.tokens = Vec::new();
            self.strings = String::new();
        }
    }

    fn push_token(&mut self, token: Token) -> Result<usize, serde_json::Error> {
        if self.tokens.len() >= self.max_tokens {
            self.too_large = true;
            return Err(serde::de::Error::custom(
                "document too large for the memory limit",
            ));
        }
        self.tokens.push(token);
        Ok(self.tokens.len() - 1)
    }
}

/// Pushes the value starting at `tape.tokens[*position]` and advances past it.
///
/// # Safety
/// `state` must be a Lua state inside a protected call with the array metatable at index 1.
unsafe fn push(state: *mut ffi::lua_State, tape: &Tape, position: &mut usize) {
    let token = tape.tokens[*position];
    *position += 1;
    match token {
        Token::Null => ffi::lua_pushlightuserdata(state, std::ptr::null_mut()),
        Token::Bool(b) => ffi::lua_pushboolean(state, c_int::from(b)),
        Token::Int(i) => ffi::lua_pushinteger(state, i),
        Token::Num(n) => ffi::lua_pushnumber(state, n),
        Token::Str { start, len } => {
            let bytes = &tape.strings.as_bytes()[start..start + len];
            ffi::lua_pushlstring(state, bytes.as_ptr().cast(), bytes.len());
        }
        Token::Array(n) => {
            ffi::luaL_checkstack(state, 3, std::ptr::null());
            ffi::lua_createtable(state, size_hint(n), 0);
            for i in 1..=n {
                push(state, tape, position);
                ffi::lua_rawseti(state, -2, i as ffi::lua_Integer);
            }
            ffi::lua_pushvalue(state, 1);
            ffi::lua_setmetatable(state, -2);
        }
        Token::Object(n) => {
            ffi::luaL_checkstack(state, 3, std::ptr::null());
            ffi::lua_createtable(state, 0, size_hint(n));
            for _ in 0..n {
                push(state, tape, position);
                push(state, tape, position);
                ffi::lua_rawset(state, -3);
            }
        }
    }
}

fn size_hint(n: usize) -> c_int {
    c_int::try_from(n).unwrap_or(c_int::MAX)
}

/// Parses one value into the tape.
struct Seed<'a>(&'a mut Tape);

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.0.push_token(Token::Null).map(drop).map_err(E::custom)
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.0
            .push_token(Token::Bool(v))
            .map(drop)
            .map_err(E::custom)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.0
            .push_token(Token::Int(v))
            .map(drop)
            .map_err(E::custom)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        let token = i64::try_from(v).map_or(Token::Num(v as f64), Token::Int);
        self.0.push_token(token).map(drop).map_err(E::custom)
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.0
            .push_token(Token::Num(v))
            .map(drop)
            .map_err(E::custom)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        let start = self.0.strings.len();
        self.0.strings.push_str(v);
        self.0
            .push_token(Token::Str {
                start,
                len: v.len(),
            })
            .map(drop)
            .map_err(E::custom)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let tape = self.0;
        let at = tape
            .push_token(Token::Array(0))
            .map_err(serde::de::Error::custom)?;
        let mut n = 0;
        while seq.next_element_seed(Seed(&mut *tape))?.is_some() {
            n += 1;
        }
        tape.tokens[at] = Token::Array(n);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let tape = self.0;
        let at = tape
            .push_token(Token::Object(0))
            .map_err(serde::de::Error::custom)?;
        let mut n = 0;
        while map.next_key_seed(Seed(&mut *tape))?.is_some() {
            map.next_value_seed(Seed(&mut *tape))?;
            n += 1;
        }
        tape.tokens[at] = Token::Object(n);
        Ok(())
    }
}

/// Why a value could not be encoded.
#[derive(Debug)]
pub(crate) enum EncodeError {
    /// A value JSON has no form for, a cycle, or nesting too deep: the message says which.
    Invalid(String),
    /// The text would not fit in `max_len` bytes (the Lua heap's headroom).
    TooLarge,
    /// `charge` refused more work (a broken budget).
    Budget(mlua::Error),
}

/// `json.encode`: `value` as JSON text of at most `max_len` bytes, object keys sorted. A table
/// is an array when it has a sequence part or the array metatable `json.decode` gives arrays
/// (its `1..#t` values are written), else an object (its keys must be strings, numbers or
/// booleans). Metamethods are not run. `charge(n)` is called as values are written and may
/// stop the encoding with its error.
pub(crate) fn encode(
    lua: &Lua,
    value: &Value,
    max_len: usize,
    charge: &mut dyn FnMut(u64) -> mlua::Result<()>,
) -> Result<String, EncodeError> {
    let mut encoder = Encoder {
        out: String::new(),
        max_len,
        array_metatable: lua.array_metatable().to_pointer(),
        path: Vec::new(),
        uncharged: 0,
        charge,
    };
    encoder.value(value)?;
    Ok(encoder.out)
}

struct Encoder<'a> {
    out: String,
    max_len: usize,
    array_metatable: *const std::ffi::c_void,
    /// Tables being written, outermost first: the depth, and what makes a cycle.
    path: Vec<*const std::ffi::c_void>,
    uncharged: u64,
    charge: &'a mut dyn FnMut(u64) -> mlua::Result<()>,
}

impl Encoder<'_> {
    fn push(&mut self, text: &str) -> Result<(), EncodeError> {
        if self.out.len() + text.len() > self.max_len {
            return Err(EncodeError::TooLarge);
        }
        self.out.push_str(text);
        Ok(())
    }

    fn string(&mut self, text: &str) -> Result<(), EncodeError> {
        // Quoting needs at least the text and two quotes: refuse before copying a huge string.
        if self.out.len() + text.len() + 2 > self.max_len {
            return Err(EncodeError::TooLarge);
        }
        let quoted = serde_json::to_string(text).unwrap_or_default();
        self.push(&quoted)
    }

    fn value(&mut self, value: &Value) -> Result<(), EncodeError> {
        self.uncharged += 1;
        if self.uncharged >= ENCODE_CHARGE_EVERY {
            (self.charge)(self.uncharged).map_err(EncodeError::Budget)?;
            self.uncharged = 0;
        }
        match value {
            Value::Nil => self.push("null"),
            Value::LightUserData(ud) if ud.0.is_null() => self.push("null"),
            Value::Boolean(b) => self.push(if *b { "true" } else { "false" }),
            Value::Integer(i) => self.push(&i.to_string()),
            Value::Number(n) => self.push(&number(*n)),
            Value::String(s) => {
                let bytes = s.as_bytes();
                if self.out.len() + bytes.len() + 2 > self.max_len {
                    return Err(EncodeError::TooLarge);
                }
                self.string(&String::from_utf8_lossy(&bytes))
            }
            Value::Table(t) => self.table(t),
            other => Err(EncodeError::Invalid(format!(
                "cannot encode a {}",
                other.type_name()
            ))),
        }
    }

    fn table(&mut self, table: &Table) -> Result<(), EncodeError> {
        let pointer = table.to_pointer();
        if self.path.contains(&pointer) {
            return Err(EncodeError::Invalid("a table contains itself".into()));
        }
        if self.path.len() >= MAX_ENCODE_DEPTH {
            return Err(EncodeError::Invalid(format!(
                "tables nested deeper than {MAX_ENCODE_DEPTH} levels"
            )));
        }
        self.path.push(pointer);
        let is_array = table.raw_len() > 0
            || table
                .metatable()
                .is_some_and(|mt| mt.to_pointer() == self.array_metatable);
        let result = if is_array {
            self.array(table)
        } else {
            self.object(table)
        };
        self.path.pop();
        result
    }

    fn array(&mut self, table: &Table) -> Result<(), EncodeError> {
        self.push("[")?;
        for i in 1..=table.raw_len() {
            if i > 1 {
                self.push(",")?;
            }
            let item: Value = table
                .raw_get(i)
                .map_err(|e| EncodeError::Invalid(e.to_string()))?;
            self.value(&item)?;
        }
        self.push("]")
    }

    fn object(&mut self, table: &Table) -> Result<(), EncodeError> {
        let mut entries: Vec<(Key, Value)> = Vec::new();
        let mut invalid = None;
        let walked = table.for_each(|key: Value, value: Value| {
            match Key::of(&key) {
                Some(key) => entries.push((key, value)),
                None => {
                    invalid = Some(key.type_name());
                    return Err(mlua::Error::runtime("stop"));
                }
            }
            Ok(())
        });
        if let Some(kind) = invalid {
            return Err(EncodeError::Invalid(format!(
                "object keys must be strings, numbers or booleans, not a {kind}"
            )));
        }
        walked.map_err(|e| EncodeError::Invalid(e.to_string()))?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        self.push("{")?;
        for (i, (key, value)) in entries.iter().enumerate() {
            if i > 0 {
                self.push(",")?;
            }
            self.string(&key.text())?;
            self.push(":")?;
            self.value(value)?;
        }
        self.push("}")
    }
}

/// An object key, ordered numbers first (by value), then strings (by bytes), then booleans.
#[derive(Debug, PartialEq, PartialOrd)]
enum Key {
    Number(f64),
    Text(String),
    Bool(bool),
}

impl Key {
    fn of(value: &Value) -> Option<Key> {
        match value {
            Value::Integer(i) => Some(Key::Number(*i as f64)),
            Value::Number(n) if n.is_finite() => Some(Key::Number(*n)),
            Value::String(s) => Some(Key::Text(s.to_string_lossy())),
            Value::Boolean(b) => Some(Key::Bool(*b)),
            _ => None,
        }
    }

    fn cmp(&self, other: &Key) -> std::cmp::Ordering {
        self.partial_cmp(other).unwrap_or(std::cmp::Ordering::Equal)
    }

    fn text(&self) -> String {
        match self {
            Key::Number(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => (*n as i64).to_string(),
            Key::Number(n) => number(*n),
            Key::Text(text) => text.clone(),
            Key::Bool(b) => b.to_string(),
        }
    }
}

/// A float as serde_json writes it; `null` for NaN and infinities, which JSON has no form for.
fn number(n: f64) -> String {
    serde_json::to_string(&n).unwrap_or_else(|_| "null".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(lua: &Lua, text: &str) -> Result<Value, String> {
        let mut tape = Tape::default();
        tape.parse(text.as_bytes(), usize::MAX)
            .map_err(|e| format!("{e:?}"))?;
        tape.build(lua).map_err(|e| e.to_string())
    }

    #[test]
    fn tokens() {
        let mut tape = Tape::default();
        tape.parse(
            br#" {"a": [1, -2, 3.5, true, null], "b": "x\n"} "#,
            usize::MAX,
        )
        .unwrap();
        assert_eq!(
            tape.tokens,
            [
                Token::Object(2),
                Token::Str { start: 0, len: 1 },
                Token::Array(5),
                Token::Int(1),
                Token::Int(-2),
                Token::Num(3.5),
                Token::Bool(true),
                Token::Null,
                Token::Str { start: 1, len: 1 },
                Token::Str { start: 2, len: 2 },
            ]
        );
        assert_eq!(tape.strings, "abx\n");
    }

    #[test]
    fn builds_lua_values() {
        let lua = Lua::new();
        let value = decode(
            &lua,
            r#"{"status":"UP","n":18446744073709551615,"list":[[],{}],"nothing":null}"#,
        )
        .unwrap();
        lua.globals().set("v", value).unwrap();
        lua.globals().set("null", lua.null()).unwrap();
        let ok: bool = lua
            .load(
                r#"return v.status == "UP" and v.n == 18446744073709551615.0 and #v.list == 2
                   and #v.list[1] == 0 and next(v.list[2]) == nil and v.nothing == null"#,
            )
            .eval()
            .unwrap();
        assert!(ok);
        assert_eq!(decode(&lua, "42").unwrap(), Value::Integer(42));
    }

    #[test]
    fn errors() {
        let lua = Lua::new();
        let cases = [
            ("{", "EOF while parsing"),
            ("[1,]", "trailing comma"),
            ("1 2", "trailing characters"),
            ("", "EOF"),
        ];
        for (text, want) in cases {
            let err = decode(&lua, text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
        let mut tape = Tape::default();
        let err = tape
            .parse(b"[1,2,3,4,5]", 4 * MIN_LUA_BYTES_PER_TOKEN)
            .unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge), "{err:?}");
    }

    #[test]
    fn deep_documents_are_refused_not_overflowed() {
        let lua = Lua::new();
        let text = "[".repeat(100_000);
        assert!(decode(&lua, &text).unwrap_err().contains("recursion limit"));
    }
}
