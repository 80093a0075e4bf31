-- jsonlog: one JSON object per line for every alert (and/or block, unblock), for log shippers
-- (Filebeat, Vector, Fluent Bit…). The file is opened for each line, so log rotation by
-- renaming works without a signal. Settings (portsentry.conf):
--   JSONLOG_FILE="/var/log/portsentry/alerts.jsonl"  where the lines go (this is the
--                                 default; its directory must exist)
--   JSONLOG_EVENTS="alert"        alert, block, unblock, or several ("alert,block,unblock")
local text = require("portsentry.text")

local file = portsentry.setting("file", "/var/log/portsentry/alerts.jsonl")
if file == "" then
  error("JSONLOG_FILE is empty: name the file to write, or remove the key for the default"
    .. " /var/log/portsentry/alerts.jsonl", 0)
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
    timeout = ev.timeout,
    restored = ev.restored,
    reason = ev.reason,
  }
  portsentry.append_line(file, portsentry.json(line))
  if ev.event ~= "alert" then return "logged to " .. file end
end

for _, name in ipairs(text.split(portsentry.config.events or "alert")) do
  if name ~= "alert" and name ~= "block" and name ~= "unblock" then
    error("JSONLOG_EVENTS: '" .. name .. "' is not alert, block or unblock")
  end
  portsentry.on(name, record)
end
