//! Lua errors as people read them: one line, with the `file:line` it points at.

use crate::config::Location;

/// The innermost error of a chain of callback errors.
pub(crate) fn root_cause(error: &mlua::Error) -> &mlua::Error {
    match error {
        mlua::Error::CallbackError { cause, .. } => root_cause(cause),
        mlua::Error::WithContext { cause, .. } => root_cause(cause),
        other => other,
    }
}

pub(crate) fn is_memory_error(error: &mlua::Error) -> bool {
    matches!(root_cause(error), mlua::Error::MemoryError(_))
}

/// A one-line message for a Lua error and, when it starts with `file:line:`, that location
/// (taken off the message). Falls back on the first `file:line:` of a traceback.
/// `known_files` maps Lua's shortened `...tail/sites.lua` back to full paths.
pub(crate) fn lua_error_text(
    error: &mlua::Error,
    known_files: &[String],
) -> (String, Option<Location>) {
    let mut tracebacks = Vec::new();
    let mut current = error;
    loop {
        match current {
            mlua::Error::CallbackError { cause, traceback } => {
                tracebacks.push(traceback.as_str());
                current = cause;
            }
            mlua::Error::WithContext { cause, .. } => current = cause,
            _ => break,
        }
    }
    let full = match current {
        mlua::Error::RuntimeError(message) | mlua::Error::MemoryError(message) => message.clone(),
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        other => other.to_string(),
    };
    let first = full.lines().next().unwrap_or("").trim_end().to_string();
    if let Some((location, rest)) = split_location(&first, known_files) {
        return (rest.to_string(), Some(location));
    }
    let traceback_location = tracebacks
        .iter()
        .copied()
        .chain(std::iter::once(full.as_str()))
        .flat_map(|t| t.lines())
        .filter_map(|line| split_location(line.trim(), known_files))
        .map(|(location, _)| location)
        .next();
    (first, traceback_location)
}

/// Splits `file:line: rest`. The file must not be `[C]` or `[string ...]`.
pub(crate) fn split_location<'a>(
    text: &'a str,
    known_files: &[String],
) -> Option<(Location, &'a str)> {
    let mut search_from = 0;
    while let Some(offset) = text[search_from..].find(':') {
        let colon = search_from + offset;
        let after = &text[colon + 1..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && after[digits..].starts_with(':') {
            let file = &text[..colon];
            if file.is_empty() || file.starts_with('[') {
                return None;
            }
            let line: u32 = after[..digits].parse().ok()?;
            let rest = after[digits + 1..].trim_start();
            return Some((
                Location {
                    file: resolve_file(file, known_files),
                    line,
                },
                rest,
            ));
        }
        search_from = colon + 1;
    }
    None
}

/// Lua shortens long chunk names to `...tail`; map them back to a known path.
fn resolve_file(file: &str, known_files: &[String]) -> String {
    if let Some(tail) = file.strip_prefix("...") {
        if let Some(full) = known_files.iter().find(|k| k.ends_with(tail)) {
            return full.clone();
        }
    }
    file.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_locations() {
        let known = vec!["/very/long/path/to/sites.lua".to_string()];
        type Split<'a> = Option<(&'a str, u32, &'a str)>;
        let cases: [(&str, Split); 5] = [
            ("sites.lua:3: boom", Some(("sites.lua", 3, "boom"))),
            (
                "scripts/x.lua:12: attempt to index a nil value",
                Some(("scripts/x.lua", 12, "attempt to index a nil value")),
            ),
            (
                "...to/sites.lua:7: oops",
                Some(("/very/long/path/to/sites.lua", 7, "oops")),
            ),
            ("[C]: in ?", None),
            ("no location here", None),
        ];
        for (input, want) in cases {
            let got =
                split_location(input, &known).map(|(l, rest)| (l.file, l.line, rest.to_string()));
            let want = want.map(|(f, l, r)| (f.to_string(), l, r.to_string()));
            assert_eq!(got, want, "{input}");
        }
    }
}
