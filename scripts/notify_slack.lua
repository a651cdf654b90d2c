-- notify_slack: a Slack (or Mattermost) incoming-webhook message for an alert event.
--
--   notifier "slack" { type = "webhook", url = env("SLACK_WEBHOOK_URL"),
--                      format = script "notify_slack" }
--
-- The event fields are those of docs/alerts.md ("What a notification carries").

local ICON = { open = ":red_circle:", reminder = ":hourglass:", resolve = ":large_green_circle:",
               flapping = ":warning:", flap_ended = ":white_check_mark:" }

return function(event)
  local text = (ICON[event.kind] or ":bell:") .. " " .. event.message
  local fields = {}
  if event.severity ~= json.null and event.severity ~= nil then
    fields[#fields + 1] = { type = "mrkdwn", text = "*Severity*\n" .. event.severity }
  end
  if event.started_at ~= json.null and event.started_at ~= nil then
    fields[#fields + 1] = { type = "mrkdwn", text = "*Since*\n" .. event.started_at }
  end
  local blocks = { { type = "section", text = { type = "mrkdwn", text = text } } }
  if #fields > 0 then
    blocks[2] = { type = "section", fields = fields }
  end
  return { text = text, blocks = blocks, sitewatch_dedup_key = event.dedup_key }
end
