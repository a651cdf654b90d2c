-- sites.lua: what sitewatch watches. Plain Lua 5.4 in a sandbox; see docs/config.md.
-- Editors: point lua-language-server at scripts/sitewatch.d.lua for completion and checks.

defaults {
  interval = "30s",
  timeout  = "10s",
  expect   = { status = "2xx", max_time = "5s", warn_time = "1500ms" },
}

site {
  name = "example",
  url  = "https://example.com/",
  interval = "1m",
  expect = {
    status    = 200,
    body      = "Example Domain",
    body_not  = "[Ee]rror",
    cert_days = 14,
    headers   = { ["content-type"] = "^text/html" },
  },
}

site {
  name = "iana",
  url  = "https://www.iana.org/",
  expect = { status = 200, max_body = "2MiB" },
  hooks = { script "cert_expiry" },
}

site {
  name = "rust-lang",
  url  = "https://www.rust-lang.org/",
  retries = 1,
  expect = { body = "Rust" },
  hooks = {
    script "latency_budget",
    function(r)
      -- An inline hook: a missing security header is worth a warning, not an outage.
      if not r.headers["strict-transport-security"] then
        return "degraded", "no HSTS header"
      end
      return true
    end,
  },
}

-- It is Lua: generate similar sites from a list.
for _, mirror in ipairs { "deb.debian.org", "ftp.debian.org" } do
  site {
    name = "debian-" .. mirror:match("^(%w+)"),
    url  = "https://" .. mirror .. "/debian/",
    interval = "2m",
    expect = { body = "Index of" },
  }
end
