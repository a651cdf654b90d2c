-- cert_expiry: degraded when the leaf certificate expires within WARN_DAYS, down once it has
-- expired. (expect.cert_days is the built-in hard limit; this hook is the early warning.)
--
-- Metrics: cert_days_left (whole days until notAfter), for https sites.
--
--   site { name = "www", url = "https://www.example.com/",
--          expect = { cert_days = 7 }, hooks = { script "cert_expiry" } }

-- Days of remaining validity below which the site is reported degraded.
local WARN_DAYS = 30

return function(r)
  local cert = r.cert
  if cert == nil then
    return true -- plain http, or no certificate seen
  end
  local metrics = { cert_days_left = cert.days_left }
  if cert.days_left < 0 then
    return { ok = false, reason = "certificate expired at " .. cert.not_after, metrics = metrics }
  end
  if cert.days_left < WARN_DAYS then
    return {
      degraded = true,
      reason = string.format("certificate expires in %d days (%s, issuer %s)", cert.days_left, cert.not_after, cert.issuer),
      metrics = metrics,
    }
  end
  return { ok = true, metrics = metrics }
end
