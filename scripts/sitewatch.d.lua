---@meta sitewatch
-- LuaLS (lua-language-server) definitions for sites.lua and hook scripts: completion, hover
-- docs and type checks in editors. Nothing here runs. Point your editor at it, e.g. in
-- .luarc.json: { "runtime.version": "Lua 5.4", "workspace.library": ["scripts/sitewatch.d.lua"] }
-- The language itself is described in docs/config.md.

---A duration: integer parts with units ms, s, m, h, d, e.g. "800ms", "30s", "1m30s", "2h".
---@alias sitewatch.Duration string

---A size: an integer with a unit B, KB (1000), KiB (1024), MB, MiB, GB, GiB, e.g. "512KB";
---or a plain number of bytes.
---@alias sitewatch.Size string|integer

---An accepted status: an exact code (100-599) or a class such as "2xx".
---@alias sitewatch.StatusOne integer|"1xx"|"2xx"|"3xx"|"4xx"|"5xx"

---@alias sitewatch.Status sitewatch.StatusOne|sitewatch.StatusOne[]

---@alias sitewatch.JsonValue string|number|boolean|table|lightuserdata

---Built-in expectations. Keys set on a site override those of defaults{} one by one.
---@class sitewatch.Expect
---@field status? sitewatch.Status Accepted statuses of the final response (default: any 2xx); a redirect status only with follow_redirects = false.
---@field body? string Rust regex that must match the body.
---@field body_not? string Rust regex that must not match the body.
---@field max_time? sitewatch.Duration Slower than this (whole attempt): down.
---@field warn_time? sitewatch.Duration Slower than this: degraded. Must be below max_time.
---@field cert_days? integer The leaf certificate must stay valid at least this many days.
---@field max_body? sitewatch.Size A larger body fails.
---@field headers? table<string, string> Header name → Rust regex its value must match (the header must exist).
---@field json? table<string, sitewatch.JsonValue> JSONPath (RFC 9535) query → the JSON value it must select. An empty table means [].

---What to send.
---@class sitewatch.Request
---@field method? string HTTP method (default "GET").
---@field headers? table<string, string> Extra request headers.
---@field body? string Request body.

---TLS options. Paths are relative to the directory of sites.lua.
---@class sitewatch.Tls
---@field ca? string PEM file of extra trusted CA certificates (added to the system roots).
---@field client_cert? string PEM client certificate for mutual TLS (with client_key).
---@field client_key? string PEM key of client_cert, unencrypted: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
---@field insecure? boolean Skip certificate and host name verification; results are flagged tls_insecure. Inherited from defaults{}, it is warned about.

---A service-level objective, judged by `sitewatch report` and the status page.
---@class sitewatch.Slo
---@field target number Percent of checks (outside maintenance) that must be up or degraded, above 0 and at most 100, e.g. 99.9.
---@field window? sitewatch.Duration Period the target is judged over (default "30d").
---@field latency? sitewatch.LatencyObjective

---A latency objective: one percentile of the total time and its bound.
---@class sitewatch.LatencyObjective
---@field p50? sitewatch.Duration
---@field p90? sitewatch.Duration
---@field p95? sitewatch.Duration
---@field p99? sitewatch.Duration
---@field ["p99.9"]? sitewatch.Duration

---When a site's checks become an incident, and whom it is sent to. A site's alert replaces the
---one of defaults{} whole; with neither, incidents open after 3 down checks and notify nobody.
---@class sitewatch.Alert
---@field notify? string[] Names of notifiers (declared with notifier, anywhere in the file) to send to.
---@field after? integer Consecutive down checks that open an incident (1-1000, default 3).
---@field recover_after? integer Consecutive up or degraded checks that resolve it (1-1000, default 2).
---@field ["for"]? sitewatch.Duration Also open once the site has been failing this long, whichever comes first.
---@field remind? sitewatch.Duration Repeat the notification this often while the incident is open (at least "10s").
---@field on_resolved? boolean Notify when the incident resolves too (default true).
---@field flap? sitewatch.Flap

---Flapping: this many incidents opened within the window pause the site's notifications until
---no incident has opened for a whole window.
---@class sitewatch.Flap
---@field count integer Incidents opened (2-100).
---@field window sitewatch.Duration

---A hook: gets the read-only response table and returns a verdict.
---@alias sitewatch.Hook fun(r: sitewatch.Response): (boolean|"degraded"|sitewatch.Verdict|nil), string?

---Settings shared by site{} and defaults{}.
---@class sitewatch.Settings
---@field interval? sitewatch.Duration How often the site is checked (default "1m").
---@field timeout? sitewatch.Duration Deadline for one attempt, redirects and body included; below interval (default "10s", or half the interval when that is 10s or less).
---@field expect? sitewatch.Expect
---@field request? sitewatch.Request What to send; a site's request replaces the default one whole.
---@field tls? sitewatch.Tls TLS options; a site's tls replaces the default one whole (tls = {} verifies again).
---@field retries? integer Extra attempts (0-10) before a failing check is declared down (default 0).
---@field max_redirects? integer Redirects followed (0-100, default 10); more fail as redirect_loop. 0 follows none, like follow_redirects = false.
---@field follow_redirects? boolean false: judge the first response as it arrived (a 301, its Location in expect.headers). Default true.
---@field body_cap? sitewatch.Size Body bytes read at most (default "1MiB"; raised past expect.max_body).
---@field hooks? sitewatch.Hook[] Lua assertions, run in order after the built-in ones.
---@field slo? sitewatch.Slo Service-level objective; a site's slo replaces the default one whole.
---@field alert? sitewatch.Alert Incidents and notifications; a site's alert replaces the default one whole.
---@field status_page? boolean Shown by `sitewatch serve` (status page, JSON API, badges); false keeps the site off them entirely (404). Default true.

---@class sitewatch.Site: sitewatch.Settings
---@field name string Unique name: the Kafka key and the label everywhere (at most 128 bytes).
---@field url string http or https URL to check.

---Declares a site to check. Every error in it is reported with the line of this call.
---@param site sitewatch.Site
function site(site) end

---Settings for every site (a site's own keys win; expect keys win one by one). At most once,
---before the first site{}.
---@param settings sitewatch.Settings
function defaults(settings) end

---Where alerts are sent. Keys other than type and url are for webhooks only.
---@class sitewatch.Notifier
---@field type "webhook"|"alertmanager" webhook: a POST of the event as JSON (or of what format returns); alertmanager: alerts posted to url/api/v2/alerts.
---@field url string http or https URL.
---@field headers? table<string, string> Extra request headers (webhook only), e.g. { ["X-Token"] = env("OPS_TOKEN") }.
---@field format? fun(event: sitewatch.AlertEvent): string|table Builds the request body (webhook only): a string is sent as is, a table as JSON.

---What a notifier's format function gets. Times are RFC 3339 in UTC.
---@class sitewatch.AlertEvent
---@field dedup_key string Stable across retries and replays: the receiver's deduplication key.
---@field kind "open"|"reminder"|"resolve"|"flapping"|"flap_ended"
---@field site string
---@field url string
---@field severity? "down"|"degraded"|"nodata" Absent for flapping events.
---@field incident_id? string
---@field started_at? string The first failing check.
---@field resolved_at? string
---@field failure_kind? string
---@field failure_message? string
---@field failed_checks? integer
---@field down_for_s? integer How long it was (or has been) down, in seconds.
---@field reminder? integer 1 for the first reminder, ...
---@field message string One line for people.

---Declares a notifier: notifier "ops" { type = "webhook", url = env("OPS_HOOK") }. Names are
---unique: letters, digits, _, . and -, at most 64 bytes. Every error is reported with the line
---of this call.
---@param name string
---@return fun(settings: sitewatch.Notifier)
function notifier(name) end

---@alias sitewatch.Weekday "Mon"|"Tue"|"Wed"|"Thu"|"Fri"|"Sat"|"Sun"

---A maintenance window: checks probed in it carry its name, and SLOs and alerts leave them out.
---Weekly (every, start, tz) or one-off (at); duration either way.
---@class sitewatch.Maintenance
---@field name string Unique: letters, digits, _, . and -, at most 64 bytes.
---@field sites? string[] Declared site names it covers (default: every site).
---@field every? sitewatch.Weekday|sitewatch.Weekday[]|"day" Weekly: the days it opens on ("day": every day).
---@field start? string Weekly: local opening time "HH:MM" in tz.
---@field tz? string Weekly: IANA time zone of start, e.g. "Europe/Berlin" (default "UTC").
---@field at? string One-off: when it opens, RFC 3339, e.g. "2026-12-24T18:00:00Z".
---@field duration sitewatch.Duration How long it stays open (at most "7d").

---Declares a maintenance window. Every error in it is reported with the line of this call.
---@param window sitewatch.Maintenance
function maintenance(window) end

---The value of an environment variable. An unset variable is a configuration error (reported
---at this line); the call then returns "". Load time only.
---@param name string
---@return string
function env(name) end

---Loads scripts/<name>.lua (name: letters, digits, _ and -), which must return a hook
---function. Every use of one script shares one function. Load time only.
---@param name string
---@return sitewatch.Hook
function script(name) end

---Timings of the attempt in milliseconds; phases that did not happen are 0.
---@class sitewatch.Timings
---@field dns_ms number
---@field connect_ms number
---@field tls_ms number
---@field ttfb_ms number Time to first byte of the response head.
---@field transfer_ms number
---@field total_ms number

---The leaf certificate of an https response.
---@class sitewatch.Cert
---@field not_after string Expiry, RFC 3339 in UTC, e.g. "2025-01-31T23:59:59Z".
---@field days_left integer Whole days until expiry (negative once expired).
---@field subject string
---@field issuer string

---What a hook sees. Read-only: assigning to it (or to a nested table) raises an error.
---@class sitewatch.Response
---@field site string Site name.
---@field url string Configured URL.
---@field final_url string URL of the final response, after redirects.
---@field status integer HTTP status of the final response.
---@field headers table<string, string> Lower-case name → value; repeated headers joined with ", ".
---@field body string Body (after decompression), at most body_cap bytes.
---@field body_truncated boolean True when the body was longer than body_cap.
---@field timings sitewatch.Timings
---@field cert? sitewatch.Cert nil for plain http.
---@field attempt integer 1 for the first attempt, 2 for the first retry, ...

---A verdict table: ok = false fails (down); degraded = true warns; metrics are recorded either way.
---@class sitewatch.Verdict
---@field ok? boolean Default true.
---@field degraded? boolean Default false.
---@field reason? string Why, when not ok or degraded.
---@field metrics? table<string, number> Up to 64 named numbers stored with the result.

---JSON helpers.
---@class sitewatch.json
---@field null lightuserdata Stands for JSON null (decode gives it, encode writes it).
json = {}

---Decodes JSON text. Objects and arrays become tables, null becomes json.null. Raises an error
---on invalid JSON.
---@param text string
---@return any
function json.decode(text) end

---Encodes a value as JSON (keys sorted). Raises an error for functions and cyclic tables.
---@param value any
---@return string
function json.encode(value) end

---Rust regex helpers (https://docs.rs/regex syntax), matched over the bytes of the subject.
---@class sitewatch.regex
regex = {}

---Like string.match with a Rust regex: nil when there is no match, the captures when the
---pattern has groups, the whole match otherwise. Raises an error for an invalid pattern.
---@param subject string
---@param pattern string
---@return string? ...
function regex.match(subject, pattern) end

---Logging through sitewatch's log, tagged with the site name. print() logs at info too.
---@class sitewatch.log
log = {}

---@param message any
function log.info(message) end

---@param message any
function log.warn(message) end
