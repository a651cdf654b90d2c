-- notify_ntfy: an ntfy (ntfy.sh or self-hosted) message published as JSON to the server root,
-- with the topic in the body.
--
--   notifier "phone" { type = "webhook", url = "https://ntfy.example.com/",
--                      format = script "notify_ntfy" }
--
-- Set TOPIC below (or copy the script per topic).

local TOPIC = "sitewatch"
local PRIORITY = { open = 5, reminder = 4, resolve = 3, flapping = 4, flap_ended = 3 }

return function(event)
  return {
    topic = TOPIC,
    title = event.site .. " " .. event.kind,
    message = event.message,
    priority = PRIORITY[event.kind] or 3,
    tags = { event.kind == "resolve" and "white_check_mark" or "rotating_light" },
    click = event.url,
  }
end
