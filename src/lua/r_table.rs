//! Builds the read-only `r` table a hook receives and calls the hook on it, in one protected
//! Lua call. The data tables are made with the raw C API (going through mlua value by value
//! costs a protected call per table slot once a memory limit is set); the read-only proxies are
//! made by a small Lua builder, [`R_BUILDER`].

use std::os::raw::c_int;
use std::ptr;

use mlua::{ffi, ChunkMode, Function, Lua, Value};

use crate::hooks::HookInput;

/// Lua source of the `r` builder, loaded in each worker before any user code: read-only proxies
/// (fresh per call) over plain tables, so a hook can read `r` but not change what the next hook
/// sees.
const R_BUILDER: &str = r#"
local setmetatable, next, error = setmetatable, next, error
local function denier(what)
  return function() error(what .. " is read-only", 2) end
end
local deny_r, deny_headers, deny_timings, deny_cert = denier("r"), denier("r.headers"), denier("r.timings"), denier("r.cert")
local function ro(t, deny)
  return setmetatable({}, {
    __index = t, __newindex = deny, __metatable = false,
    -- An iterator that does not hand out `t` itself.
    __pairs = function() return function(_, k) return next(t, k) end, nil, nil end,
  })
end
return function(site, url, final_url, status, headers, body, body_truncated, attempt,
                dns, connect, tls, ttfb, transfer, total, cert)
  return ro({
    site = site, url = url, final_url = final_url, status = status,
    headers = ro(headers, deny_headers), body = body, body_truncated = body_truncated,
    attempt = attempt,
    timings = ro({ dns_ms = dns, connect_ms = connect, tls_ms = tls, ttfb_ms = ttfb,
                   transfer_ms = transfer, total_ms = total }, deny_timings),
    cert = cert and ro(cert, deny_cert) or nil,
  }, deny_r)
end
"#;

/// Loads [`R_BUILDER`] into `lua` (before any user code).
pub(crate) fn builder(lua: &Lua) -> mlua::Result<Function> {
    lua.load(R_BUILDER)
        .set_name("=sitewatch r")
        .set_mode(ChunkMode::Text)
        .eval()
}

/// Arguments the `r` builder takes (see [`R_BUILDER`]).
const R_BUILDER_ARGS: c_int = 15;
/// Longest header name lower-cased for `r.headers` (names are lower case from the probe anyway).
const MAX_LOWERCASED_NAME: usize = 256;

/// Builds `r` and calls the hook on it, in one protected Lua call: the data tables are made with
/// the raw C API and the read-only proxies by the Lua builder. Going through mlua value by value
/// costs a protected call per table slot once a memory limit is set.
pub(crate) fn run_hook(
    lua: &Lua,
    builder: &Function,
    hook: &Function,
    input: &HookInput,
) -> mlua::Result<(Value, Value)> {
    let not_after = input.cert.as_ref().map(|cert| {
        cert.not_after
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    });
    let days = input
        .cert
        .as_ref()
        .map_or(0, |cert| cert.whole_days_left(chrono::Utc::now()));
    let t = &input.timings;
    // SAFETY: `exec_raw` runs the closure in protected mode with the builder at stack index 1
    // and the hook at 2. The closure checks stack space, pushes only values it creates, and owns
    // nothing that needs dropping (it borrows `input`), so a Lua error raised by the builder, the
    // hook or an allocation may unwind past it. It leaves exactly the hook's two results.
    unsafe {
        lua.exec_raw((builder, hook), |state| {
            ffi::luaL_checkstack(state, R_BUILDER_ARGS + 8, ptr::null());
            ffi::lua_pushvalue(state, 2);
            ffi::lua_pushvalue(state, 1);
            push_bytes(state, input.site.as_bytes());
            push_bytes(state, input.url.as_bytes());
            push_bytes(state, input.final_url.as_bytes());
            ffi::lua_pushinteger(state, ffi::lua_Integer::from(input.status));
            push_headers(state, &input.headers);
            push_bytes(state, &input.body);
            ffi::lua_pushboolean(state, c_int::from(input.body_truncated));
            ffi::lua_pushinteger(state, ffi::lua_Integer::from(input.attempt));
            for phase in [t.dns_ms, t.connect_ms, t.tls_ms, t.ttfb_ms, t.transfer_ms] {
                ffi::lua_pushnumber(state, phase.unwrap_or(0.0));
            }
            ffi::lua_pushnumber(state, t.total_ms);
            match (&input.cert, &not_after) {
                (Some(cert), Some(not_after)) => {
                    ffi::lua_createtable(state, 0, 4);
                    push_bytes(state, not_after.as_bytes());
                    ffi::lua_setfield(state, -2, c"not_after".as_ptr());
                    ffi::lua_pushinteger(state, days);
                    ffi::lua_setfield(state, -2, c"days_left".as_ptr());
                    push_bytes(state, cert.subject.as_bytes());
                    ffi::lua_setfield(state, -2, c"subject".as_ptr());
                    push_bytes(state, cert.issuer.as_bytes());
                    ffi::lua_setfield(state, -2, c"issuer".as_ptr());
                }
                _ => ffi::lua_pushnil(state),
            }
            ffi::lua_call(state, R_BUILDER_ARGS, 1);
            ffi::lua_call(state, 1, 2);
            ffi::lua_remove(state, 1);
            ffi::lua_remove(state, 1);
        })
    }
}

/// # Safety
/// Inside a protected call with stack space for one more value.
unsafe fn push_bytes(state: *mut ffi::lua_State, bytes: &[u8]) {
    ffi::lua_pushlstring(state, bytes.as_ptr().cast(), bytes.len());
}

/// Pushes the headers table: lower-case names, repeated headers joined with ", ".
///
/// # Safety
/// Inside a protected call with stack space for four more values.
unsafe fn push_headers(state: *mut ffi::lua_State, headers: &[(String, String)]) {
    ffi::lua_createtable(
        state,
        0,
        c_int::try_from(headers.len()).unwrap_or(c_int::MAX),
    );
    for (i, (name, value)) in headers.iter().enumerate() {
        if headers[..i]
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            continue;
        }
        push_lowercase(state, name);
        push_bytes(state, value.as_bytes());
        for (other, value) in &headers[i + 1..] {
            if other.eq_ignore_ascii_case(name) {
                ffi::lua_pushlstring(state, c", ".as_ptr(), 2);
                push_bytes(state, value.as_bytes());
                ffi::lua_concat(state, 3);
            }
        }
        ffi::lua_rawset(state, -3);
    }
}

/// # Safety
/// Inside a protected call with stack space for one more value.
unsafe fn push_lowercase(state: *mut ffi::lua_State, name: &str) {
    let bytes = name.as_bytes();
    if !bytes.iter().any(u8::is_ascii_uppercase) || bytes.len() > MAX_LOWERCASED_NAME {
        return push_bytes(state, bytes);
    }
    let mut lower = [0u8; MAX_LOWERCASED_NAME];
    let lower = &mut lower[..bytes.len()];
    lower.copy_from_slice(bytes);
    lower.make_ascii_lowercase();
    push_bytes(state, lower);
}
