//! Snapshots of the Lua tables passed to `site{}` and `defaults{}`, as plain Rust values.
//!
//! Taken at call time (so later mutation of the table does not matter) and then validated by
//! pure code in `validate`, which never touches the Lua state. Functions (hooks) are replaced by
//! a reference into the evaluation's function list.

use mlua::{Function, Table, Value};

/// Deepest nesting converted; deeper tables (or cycles) become [`Raw::Other`].
const MAX_DEPTH: usize = 32;
/// Bytes the snapshots of one evaluation may hold outside the Lua heap: strings as copied, plus
/// [`ENTRY_BYTES`] per table entry. Far above what 10,000 sites need (a few MiB), far below
/// what would hurt: without it, one large string declared again and again would be copied
/// again and again.
pub(crate) const MAX_DECLARED_BYTES: usize = 64 * 1024 * 1024;
/// What one snapshot entry costs beside its strings (the key and value themselves).
const ENTRY_BYTES: usize = 64;

/// A Lua value, detached from the state.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Raw {
    /// `json.null`.
    Null,
    Bool(bool),
    Int(i64),
    Num(f64),
    /// Lua strings are bytes; most keys want UTF-8 and say so when they do not get it.
    Str(Vec<u8>),
    Table(RawTable),
    Function(FnRef),
    /// Anything else, described for messages ("userdata", "a cyclic table").
    Other(String),
}

/// A function found in a table: its index in the evaluation's function list and, when it came
/// from `script(name)`, the script's name (the hook label).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FnRef {
    pub(crate) id: usize,
    pub(crate) script: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum RawKey {
    Index(i64),
    Name(String),
    /// A key that is neither an integer nor a UTF-8 string, described.
    Other(String),
}

impl std::fmt::Display for RawKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RawKey::Index(i) => write!(f, "[{i}]"),
            RawKey::Name(name) => write!(f, "{name:?}"),
            RawKey::Other(what) => write!(f, "[{what}]"),
        }
    }
}

/// Entries sorted: integer keys ascending, then names alphabetically — so messages and the order
/// of header/JSON expectations do not depend on Lua's hash order.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RawTable {
    pub(crate) entries: Vec<(RawKey, Raw)>,
}

impl RawTable {
    pub(crate) fn get(&self, key: &str) -> Option<&Raw> {
        self.entries.iter().find_map(|(k, v)| match k {
            RawKey::Name(name) if name == key => Some(v),
            _ => None,
        })
    }

    /// The values of a sequence `{a, b, c}`; `None` if there are other keys or gaps.
    pub(crate) fn sequence(&self) -> Option<Vec<&Raw>> {
        let mut out = Vec::with_capacity(self.entries.len());
        for (i, (key, value)) in self.entries.iter().enumerate() {
            match key {
                RawKey::Index(n) if *n == i as i64 + 1 => out.push(value),
                _ => return None,
            }
        }
        Some(out)
    }
}

impl Raw {
    /// The Lua type name (or description) for "must be X, got Y" messages.
    pub(crate) fn type_name(&self) -> String {
        match self {
            Raw::Null => "json.null".into(),
            Raw::Bool(_) => "boolean".into(),
            Raw::Int(_) | Raw::Num(_) => "number".into(),
            Raw::Str(_) => "string".into(),
            Raw::Table(_) => "table".into(),
            Raw::Function(_) => "function".into(),
            Raw::Other(what) => what.clone(),
        }
    }

    /// The value as written, for messages (`"10x"`, `10`, `true`, `table`).
    pub(crate) fn show(&self) -> String {
        match self {
            Raw::Str(bytes) => {
                // Cut before quoting: the value may be megabytes long.
                let head = &bytes[..bytes.len().min(4 * super::error::MAX_QUOTED_CHARS + 4)];
                let mut text = String::from_utf8_lossy(head).into_owned();
                if head.len() < bytes.len() {
                    text.push_str("...");
                }
                super::error::cut(&mut text, super::error::MAX_QUOTED_CHARS);
                format!("{text:?}")
            }
            Raw::Int(i) => i.to_string(),
            Raw::Num(n) => n.to_string(),
            Raw::Bool(b) => b.to_string(),
            other => other.type_name(),
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Raw::Str(bytes) => std::str::from_utf8(bytes).ok(),
            _ => None,
        }
    }

    /// A number, integer or float.
    pub(crate) fn as_f64(&self) -> Option<f64> {
        match *self {
            Raw::Int(i) => Some(i as f64),
            Raw::Num(n) => Some(n),
            _ => None,
        }
    }

    /// An integer, also from a float with an integral value (`2^3` is the float 8.0 in Lua).
    pub(crate) fn as_int(&self) -> Option<i64> {
        match *self {
            Raw::Int(i) => Some(i),
            Raw::Num(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => Some(n as i64),
            _ => None,
        }
    }
}

/// What a snapshot keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    /// Everything: the configuration is validated from it.
    All,
    /// At the top of each declaration, only these keys (others become [`Raw::Other`]): a
    /// worker that only needs the functions (`hooks`, `format`) and names does not copy the
    /// rest again.
    Only(&'static [&'static str]),
}

/// Converts Lua values, registering the functions it meets.
pub(crate) struct Converter<'a> {
    /// Every function met so far; [`FnRef::id`] indexes it.
    pub(crate) functions: &'a mut Vec<Function>,
    /// Which function (by pointer) `script(name)` returned for which name.
    pub(crate) script_names: &'a std::collections::HashMap<usize, String>,
    /// Tables on the path being converted, to spot cycles.
    stack: Vec<usize>,
    /// Bytes the evaluation's snapshots may still take (see [`MAX_DECLARED_BYTES`]).
    room: &'a mut usize,
    /// Set when `room` ran out: the snapshot is incomplete and the evaluation must stop.
    pub(crate) exhausted: bool,
    keep: Keep,
}

impl<'a> Converter<'a> {
    pub(crate) fn new(
        functions: &'a mut Vec<Function>,
        script_names: &'a std::collections::HashMap<usize, String>,
        room: &'a mut usize,
        keep: Keep,
    ) -> Self {
        Converter {
            functions,
            script_names,
            stack: Vec::new(),
            room,
            exhausted: false,
            keep,
        }
    }

    /// Takes `bytes` from the room left; false (and `exhausted`) when there is not enough.
    fn take(&mut self, bytes: usize) -> bool {
        match self.room.checked_sub(bytes) {
            Some(left) if !self.exhausted => {
                *self.room = left;
                true
            }
            _ => {
                self.exhausted = true;
                false
            }
        }
    }

    pub(crate) fn table(&mut self, table: &Table) -> RawTable {
        let pointer = table.to_pointer() as usize;
        let top = self.stack.is_empty();
        self.stack.push(pointer);
        let mut entries = Vec::new();
        // `for_each` walks with raw `next`: no metamethod runs.
        let _ = table.for_each(|key: Value, value: Value| {
            let key_bytes = match &key {
                Value::String(s) => s.as_bytes().len(),
                _ => 0,
            };
            if !self.take(ENTRY_BYTES.saturating_add(key_bytes)) {
                // Stops the walk; the caller sees `exhausted`.
                return Err(mlua::Error::runtime("declarations too large"));
            }
            let key = match key {
                Value::Integer(i) => RawKey::Index(i),
                Value::String(s) => match s.to_str() {
                    Ok(name) => RawKey::Name(name.to_string()),
                    Err(_) => RawKey::Other(format!("{:?}", s.to_string_lossy())),
                },
                Value::Number(n) => RawKey::Other(n.to_string()),
                other => RawKey::Other(other.type_name().to_string()),
            };
            let kept = match (&self.keep, top, &key) {
                (Keep::Only(keys), true, RawKey::Name(name)) => keys.contains(&name.as_str()),
                (Keep::Only(_), true, _) => false,
                _ => true,
            };
            let value = if kept {
                self.value(value)
            } else {
                Raw::Other("not kept".into())
            };
            entries.push((key, value));
            Ok(())
        });
        self.stack.pop();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        RawTable { entries }
    }

    pub(crate) fn value(&mut self, value: Value) -> Raw {
        match value {
            Value::Nil => Raw::Other("nil".into()),
            Value::Boolean(b) => Raw::Bool(b),
            Value::Integer(i) => Raw::Int(i),
            Value::Number(n) => Raw::Num(n),
            Value::String(s) => {
                let bytes = s.as_bytes();
                if self.take(bytes.len()) {
                    Raw::Str(bytes.to_vec())
                } else {
                    Raw::Other("a string beyond the size limit".into())
                }
            }
            Value::LightUserData(ud) if ud.0.is_null() => Raw::Null,
            Value::Table(t) => {
                let pointer = t.to_pointer() as usize;
                if self.stack.contains(&pointer) {
                    Raw::Other("a table that contains itself".into())
                } else if self.stack.len() >= MAX_DEPTH {
                    Raw::Other(format!("a table nested deeper than {MAX_DEPTH} levels"))
                } else {
                    Raw::Table(self.table(&t))
                }
            }
            Value::Function(f) => {
                let script = self.script_names.get(&(f.to_pointer() as usize)).cloned();
                self.functions.push(f);
                Raw::Function(FnRef {
                    id: self.functions.len() - 1,
                    script,
                })
            }
            other => Raw::Other(other.type_name().to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_and_sorts() {
        let lua = mlua::Lua::new();
        let table: Table = lua
            .load(r#"local t = { z = 1, a = "x", 10, 20, f = function() end, n = 1.5 } t.self = t return t"#)
            .eval()
            .unwrap();
        let mut functions = Vec::new();
        let names = Default::default();
        let mut room = MAX_DECLARED_BYTES;
        let raw = Converter::new(&mut functions, &names, &mut room, Keep::All).table(&table);
        let keys: Vec<String> = raw.entries.iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(
            keys,
            ["[1]", "[2]", "\"a\"", "\"f\"", "\"n\"", "\"self\"", "\"z\""]
        );
        assert_eq!(raw.get("a"), Some(&Raw::Str(b"x".to_vec())));
        assert_eq!(raw.get("n"), Some(&Raw::Num(1.5)));
        assert!(matches!(
            raw.get("f"),
            Some(Raw::Function(FnRef {
                id: 0,
                script: None
            }))
        ));
        assert_eq!(
            raw.get("self"),
            Some(&Raw::Other("a table that contains itself".into()))
        );
        assert_eq!(functions.len(), 1);
        let seq = RawTable {
            entries: vec![
                (RawKey::Index(1), Raw::Int(1)),
                (RawKey::Index(2), Raw::Int(2)),
            ],
        };
        assert_eq!(seq.sequence().map(|v| v.len()), Some(2));
        assert_eq!(raw.sequence(), None);
    }

    #[test]
    fn integers_from_floats() {
        let cases = [
            (Raw::Int(3), Some(3)),
            (Raw::Num(8.0), Some(8)),
            (Raw::Num(1.5), None),
            (Raw::Str(b"3".to_vec()), None),
        ];
        for (raw, want) in cases {
            assert_eq!(raw.as_int(), want, "{raw:?}");
        }
    }
}
