-- sites.lua: what sitewatch watches. Written by `sitewatch init`; edit freely.
--
-- It is plain Lua 5.4, run in a sandbox: declare sites with site{}, shared settings with
-- defaults{}. The whole language is described in sitewatch's docs/config.md.
--
--   sitewatch validate        check this file, report every error with file:line
--   sitewatch check           probe every site once and print a table (--json for JSON)
--   sitewatch run             probe on schedule, store in PostgreSQL, serve a status page
--
-- Editors: sitewatch.d.lua beside this file describes site{}, defaults{} and hooks to
-- lua-language-server. A .luarc.json next to it turns on completion and checks:
--   { "runtime.version": "Lua 5.4", "workspace.library": ["sitewatch.d.lua"] }

-- What every site inherits unless it sets its own value.
defaults {
  interval = "1m",                       -- how often each site is checked
  timeout  = "10s",                      -- one attempt gives up after this
  expect   = {
    status    = "2xx",                   -- accepted statuses: codes or classes
    max_time  = "5s",                    -- slower than this: down
    warn_time = "2s",                    -- slower than this: degraded
  },
}

-- The smallest site: a name (unique, shown everywhere) and a URL.
site {
  name = "example",
  url  = "https://example.com/",
}

-- A site with more to check. Everything is optional but the name and the URL.
site {
  name     = "example-home",
  url      = "https://www.example.com/",
  interval = "5m",
  retries  = 1,                          -- one more attempt before calling it down
  expect   = {
    status    = 200,
    body      = "Example Domain",        -- a regex the body must match
    cert_days = 14,                      -- the certificate must stay valid two more weeks
    headers   = { ["content-type"] = "^text/html" },
  },
  -- Hooks: Lua functions that judge the response. Return true, false or "degraded",
  -- optionally with a reason.
  hooks = {
    function(r)
      if #r.body > 1000000 then
        return "degraded", "the page is over 1 MB"
      end
      return true
    end,
  },
  -- An objective for `sitewatch report` and the status page: 99.9% of checks up over 30 days.
  slo = { target = 99.9, window = "30d" },
}

-- It is Lua: generate similar sites from a list.
for _, name in ipairs { "www", "docs" } do
  site {
    name = "example-" .. name,
    url  = "https://" .. name .. ".example.org/",
  }
end
