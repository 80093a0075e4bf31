-- jsonlog: one JSON object per line for every alert (and/or block), for log shippers
-- (Filebeat, Vector, Fluent Bit…). The file is opened for each line, so log rotation by
-- renaming works without a signal. Settings (portsentry.conf):
--   JSONLOG_FILE="/var/log/portsentry/events.json"   where the lines go (required)
--   JSONLOG_EVENTS="alert"        alert, block, or both ("alert,block")
local text = require("portsentry.text")

local file = portsentry.config.file
if not file or file == "" then
  error("JSONLOG_FILE must name the file to write")
end

local function record(ev)
  local line = {
    event = ev.event,
    time = ev.time,
    timestamp = os.date("!%Y-%m-%dT%H:%M:%SZ", ev.time),
    ip = ev.ip,
    family = ev.family,
    port = ev.port,
    proto = ev.proto,
    mode = ev.mode,
    kind = ev.kind,
    count = ev.count,
    host = ev.host,
    already_blocked = ev.already_blocked,
    ip_options = ev.ip_options,
  }
  portsentry.append_line(file, portsentry.json(line))
  if ev.event == "block" then return "logged to " .. file end
end

for _, name in ipairs(text.split(portsentry.config.events or "alert")) do
  if name ~= "alert" and name ~= "block" then
    error("JSONLOG_EVENTS: '" .. name .. "' is not alert or block")
  end
  portsentry.on(name, record)
end
