-- allowlist: vetoes blocking hosts in the listed networks (your gateway, your resolver,
-- your monitoring), so no responder after it acts on them — useful against forged
-- sources in stealth modes. Put it first: LUA_RESPONDERS="allowlist,…" with
-- LUA_RESPONDERS_FIRST="1" to veto the built-in responders too. Settings:
--   ALLOWLIST_NETS="192.0.2.1 10.0.0.0/8 2001:db8::/32"   addresses or networks (required)
local addr = require("portsentry.addr")

local listed = portsentry.config.nets
if not listed or not listed:find("%S") then
  error("ALLOWLIST_NETS is not set: list the addresses or networks never to block, e.g."
    .. " ALLOWLIST_NETS=\"192.0.2.1 10.0.0.0/8\" in portsentry.conf"
    .. " (with --test-plugin: --set ALLOWLIST_NETS=10.0.0.0/8)", 0)
end
local nets, err = addr.parse_list(listed)
if not nets then error("ALLOWLIST_NETS: " .. err, 0) end

portsentry.on("block", function(ev)
  local listed, net = addr.in_any(ev.ip, nets)
  if listed then
    portsentry.log.info("not blocking %s: in the allow-list (%s)", ev.ip, net)
    return false, ev.ip .. " is in the allow-list (" .. net .. ")"
  end
end)
