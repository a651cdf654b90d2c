-- json_status: the body must be a JSON object whose "status" is "UP" or "ok" (any case), as
-- Spring Boot, many health-check libraries and most hand-written /health endpoints return.
--
-- Metrics: status_up (1 or 0) and, when the body lists its checks, checks (how many).
--
--   site { name = "orders-api", url = "https://api.example.com/health",
--          hooks = { script "json_status" } }

local HEALTHY = { up = true, ok = true }

return function(r)
  local decoded, doc = pcall(json.decode, r.body)
  if not decoded then
    -- First line of the error, without Lua's "runtime error: " prefix.
    local message = tostring(doc):match("[^\n]*"):gsub("^runtime error: ", "")
    return false, "body is not JSON: " .. message
  end
  if type(doc) ~= "table" then
    return false, "body is JSON but not an object"
  end

  local metrics = { status_up = 0 }
  if type(doc.checks) == "table" then
    metrics.checks = #doc.checks
  end

  local status = doc.status
  if type(status) == "string" and HEALTHY[string.lower(status)] then
    metrics.status_up = 1
    return { ok = true, metrics = metrics }
  end
  return {
    ok = false,
    reason = "status is " .. (status == nil and "missing" or json.encode(status)) .. ", want \"UP\" or \"ok\"",
    metrics = metrics,
  }
end
