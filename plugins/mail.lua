-- mail: sends a message through `sendmail -t` when a host is blocked (or on every alert),
-- at most MAIL_MAX messages per MAIL_PER; the next message says how many were held back.
-- Blocks re-applied after a restart are not mailed again. Settings (portsentry.conf):
--   MAIL_TO="root"                recipients, comma separated (required: the plugin does
--                                 not load without it)
--   MAIL_FROM="root"              sender
--   MAIL_SUBJECT="portsentry: {ip} blocked ({kind} to {proto}/{port})"
--                                 template: {ip} {port} {proto} {mode} {kind} {count} {host}
--   MAIL_EVENTS="block"           block, alert, or both ("alert,block")
--   MAIL_MAX="10"                 messages allowed per window…
--   MAIL_PER="1h"                 …of this length
--   MAIL_SENDMAIL="/usr/sbin/sendmail"
--   MAIL_TIMEOUT="10s"            sendmail is killed after this long
local mail = require("portsentry.mail")
local text = require("portsentry.text")
local ratelimit = require("portsentry.ratelimit")

local cfg = portsentry.config
if not cfg.to or cfg.to == "" then
  error("MAIL_TO is not set: name who gets the mail, e.g. MAIL_TO=\"root\" in portsentry.conf"
    .. " (with --test-plugin: --set MAIL_TO=root)", 0)
end
local to, bad_to = mail.addresses(cfg.to)
if not to then error("MAIL_TO: " .. bad_to, 0) end
local from, bad_from = mail.addresses(cfg.from or "root")
if not from then error("MAIL_FROM: " .. bad_from, 0) end
local subject = cfg.subject or "portsentry: {ip} blocked ({kind} to {proto}/{port})"
local sendmail = cfg.sendmail or "/usr/sbin/sendmail"
local timeout = cfg.timeout or "10s"
portsentry.duration(timeout) -- fails here, at load, when malformed
local limiter = ratelimit.new { max = tonumber(cfg.max or "10"), per = cfg.per or "1h" }

local function body(ev, held_back)
  local lines = {
    "PortSentry " .. (ev.event == "block" and "blocked" or "saw") .. " a scan.",
    "",
    "Host:     " .. ev.ip .. (ev.host and (" (" .. mail.header_value(ev.host) .. ")") or ""),
    "Probe:    " .. ev.kind .. " to " .. ev.proto .. "/" .. ev.port,
    "Mode:     " .. ev.mode,
    "Probes:   " .. ev.count,
    "Time:     " .. os.date("!%Y-%m-%d %H:%M:%S UTC", ev.time),
  }
  if held_back > 0 then
    lines[#lines + 1] = ""
    lines[#lines + 1] = held_back .. " earlier message(s) were held back by the rate limit."
  end
  return table.concat(lines, "\n")
end

local function send(ev)
  -- A block re-applied after a restart is not news: it was mailed when it was made.
  if ev.restored then return "restored block: no mail" end
  local allowed, held_back = limiter:allow()
  if not allowed then
    portsentry.log.info("mail for %s held back by the rate limit", ev.ip)
    return "held back by the rate limit (" .. limiter:suppressed() .. " so far)"
  end
  local message = mail.message {
    from = from,
    to = to,
    subject = text.expand(subject, ev),
    body = body(ev, held_back),
    date = ev.time,
  }
  portsentry.exec({ sendmail, "-t", "-oi" }, { stdin = message, timeout = timeout, check = true })
  return "mailed " .. to
end

local events = text.split(cfg.events or "block")
for _, name in ipairs(events) do
  if name ~= "alert" and name ~= "block" then
    error("MAIL_EVENTS: '" .. name .. "' is not alert or block")
  end
  portsentry.on(name, send)
end
if text.contains(events, "block") then
  -- Nothing to take back when a block ends; saying so keeps the block's record undoable.
  portsentry.on("unblock", function() return "nothing to undo (a mail cannot be unsent)" end)
end
