-- notify_discord: a Discord webhook message (an embed coloured by the event) for an alert event.
--
--   notifier "discord" { type = "webhook", url = env("DISCORD_WEBHOOK_URL"),
--                        format = script "notify_discord" }

local COLOUR = { open = 15158332, reminder = 15105570, resolve = 3066993,
                 flapping = 16776960, flap_ended = 3066993 }

return function(event)
  return {
    content = event.message,
    embeds = { {
      title = event.site .. ": " .. event.kind,
      url = event.url,
      description = event.message,
      color = COLOUR[event.kind] or 9807270,
      footer = { text = "dedup " .. event.dedup_key },
    } },
  }
end
