-- latency_budget: degraded when the time to first byte is over budget, which usually shows a
-- struggling backend before requests start to time out.
--
-- Metrics: ttfb_ms (time to first byte of the final response, summed over redirect hops).
--
--   site { name = "shop", url = "https://shop.example.com/",
--          hooks = { script "latency_budget" } }

-- First-byte budget in milliseconds.
local BUDGET_MS = 500

return function(r)
  local ttfb = r.timings.ttfb_ms
  local metrics = { ttfb_ms = ttfb }
  if ttfb > BUDGET_MS then
    return {
      degraded = true,
      reason = string.format("first byte after %.0f ms (budget %d ms)", ttfb, BUDGET_MS),
      metrics = metrics,
    }
  end
  return { ok = true, metrics = metrics }
end
