-- mail: sends a message through `sendmail -t` (or an SMTP relay) when a host is blocked (or
-- on every alert), at most MAIL_MAX messages per MAIL_PER; the next message says how many
-- were held back. Blocks re-applied after a restart are not mailed again.
--
-- Under the shipped systemd unit (NoNewPrivileges=yes, a read-only /var/spool) a local MTA
-- that queues through a setuid or setgid helper (Postfix's postdrop, Exim) cannot take the
-- mail: the plugin says so when it loads, with the two ways out (MAIL_SMTP, or a drop-in
-- relaxing the unit). Settings (portsentry.conf):
--   MAIL_TO="root"                recipients, comma separated (required: the plugin does
--                                 not load without it)
--   MAIL_FROM="root"              sender
--   MAIL_SUBJECT="portsentry: {ip} blocked ({kind} to {proto}/{port})"
--                                 template: {ip} {port} {proto} {mode} {kind} {count} {host}
--   MAIL_EVENTS="block"           block, alert, or both ("alert,block")
--   MAIL_MAX="10"                 messages allowed per window…
--   MAIL_PER="1h"                 …of this length
--   MAIL_SENDMAIL="/usr/sbin/sendmail"
--   MAIL_SMTP=""                  send through this SMTP relay instead, with curl (no local
--                                 MTA needed): "host", "host:port", or an smtp:// or
--                                 smtps:// URL
--   MAIL_CURL="curl"              the curl program MAIL_SMTP uses
--   MAIL_TIMEOUT="10s"            sendmail (or curl) is killed after this long
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
local default_sendmail = "/usr/sbin/sendmail"
local sendmail = cfg.sendmail or default_sendmail
local curl = cfg.curl or "curl"

-- MAIL_SMTP as a URL curl takes, checked now so that a typo fails the load.
local function relay_url(s)
  if s:find("[%s%c]") then
    error("MAIL_SMTP: '" .. s .. "' holds spaces or control characters", 0)
  end
  if s:match("^smtps?://[%w%.%-%[%]:]+/?$") then return s end
  if s:match("^[%w%.%-]+$") or s:match("^[%w%.%-]+:%d+$") or s:match("^%[[%x:]+%]:%d+$") then
    return "smtp://" .. s
  end
  error("MAIL_SMTP: '" .. s .. "' is not host, host:port or an smtp:// or smtps:// URL"
    .. " (e.g. MAIL_SMTP=\"relay.example.org:25\")", 0)
end
local relay = nil
if cfg.smtp and cfg.smtp ~= "" then relay = relay_url(cfg.smtp) end

-- Without a relay, mail goes to the local MTA. Under no_new_privs (the unit's
-- NoNewPrivileges=yes) a setuid or setgid program runs without that identity, so an MTA that
-- queues through one (Postfix's sendmail runs the setgid postdrop, Exim's sendmail is setuid)
-- cannot take the mail: say so now, with the fixes, rather than at every block.
if not relay and portsentry.no_new_privs() then
  local helpers = { sendmail }
  if sendmail == default_sendmail then helpers[2] = "/usr/sbin/postdrop" end
  for _, helper in ipairs(helpers) do
    local bit = portsentry.setid(helper)
    if bit then
      portsentry.log.warn("%s is %s, but portsentry runs with no_new_privs (the systemd unit's"
        .. " NoNewPrivileges=yes), so the local MTA cannot queue mail and every message would"
        .. " fail. Either send through an SMTP relay: MAIL_SMTP=\"relay.example.org:25\" (curl"
        .. " talks to it, no local MTA needed); or relax the unit with a drop-in (systemctl edit"
        .. " portsentry): [Service] NoNewPrivileges=no and ReadWritePaths= the MTA's queue"
        .. " (Postfix: /var/spool/postfix/maildrop), then systemctl restart portsentry",
        helper, bit)
      break
    end
  end
end
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
  if relay then
    -- The envelope: the first sender, every recipient. --crlf: SMTP wants CRLF lines.
    local argv = { curl, "--silent", "--show-error", "--crlf", "--url", relay,
      "--mail-from", from:match("^[^,%s]+") }
    for rcpt in to:gmatch("[^,%s]+") do
      argv[#argv + 1] = "--mail-rcpt"
      argv[#argv + 1] = rcpt
    end
    argv[#argv + 1] = "--upload-file"
    argv[#argv + 1] = "-"
    portsentry.exec(argv, { stdin = message, timeout = timeout, check = true })
    return "mailed " .. to .. " through " .. relay
  end
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
