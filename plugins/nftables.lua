-- nftables: blocks a host by adding it to a set of an inet table, IPv4 and IPv6.
--
-- On the first block it creates (or leaves as they are) the table, one set per family and
-- a base chain with one drop rule per set. Elements expire in the kernel: after the block's
-- own time left when BLOCK_TIMEOUT gives it one, else after NFTABLES_TIMEOUT when set. When
-- a block ends (expiry or `portsentry unblock`), the element is deleted from its set; one
-- that is already gone is fine. For the usual layout, the built-in responder
-- (KILL_NFTABLES) does the same without running nft; this plugin is for custom layouts.
-- Settings (portsentry.conf):
--   NFTABLES_PLUGIN_TABLE="portsentry_lua"   inet table (NFTABLES_TABLE is the
--                                 built-in responder's key, not this plugin's)
--   NFTABLES_SET="blocked"        base name: sets blocked_v4 and blocked_v6
--   NFTABLES_CHAIN="input"        base chain holding the drop rules
--   NFTABLES_HOOK="input"         hook of that chain (input, forward, prerouting)
--   NFTABLES_PRIORITY="-10"       its priority (before the usual filter chains)
--   NFTABLES_VERDICT="drop"       drop or reject
--   NFTABLES_TIMEOUT=""           e.g. "1h": blocked hosts are let in again after this
--                                 (blocks with a BLOCK_TIMEOUT use their own time left)
--   NFTABLES_NFT="nft"            the nft program
--   NFTABLES_NETNS=""             run nft in this network namespace (ip netns exec)
local fw = require("portsentry.firewall")

local cfg = portsentry.config
local nft = cfg.nft or "nft"
local tbl = cfg.plugin_table or "portsentry_lua"
local set = cfg.set or "blocked"
local chain = cfg.chain or "input"
local verdict = cfg.verdict or "drop"
local opts = { netns = cfg.netns, timeout = "5s" }
local checked = { netns = cfg.netns, timeout = "5s", check = true }

if verdict ~= "drop" and verdict ~= "reject" then
  error("NFTABLES_VERDICT must be drop or reject, not '" .. verdict .. "'")
end
local timeout = nil
if cfg.timeout and cfg.timeout ~= "" then
  timeout = fw.nft.duration(portsentry.duration(cfg.timeout))
end
-- Checks names, hook and priority now, so a bad setting fails when the plugin loads.
local setup = fw.nft.setup_script {
  table = tbl, set = set, chain = chain, hook = cfg.hook, priority = cfg.priority,
}

local ready = false

local function ensure_ready()
  if ready then return end
  portsentry.exec({ nft, "-f", "-" }, { stdin = setup, netns = cfg.netns, check = true })
  local listing = portsentry.exec(fw.nft.list_chain(nft, tbl, chain), checked).stdout
  for _, family in ipairs({ "ipv4", "ipv6" }) do
    local s = set .. (family == "ipv4" and "_v4" or "_v6")
    if not listing:find(fw.nft.rule_text(s, family, verdict), 1, true) then
      portsentry.exec(fw.nft.add_rule(nft, tbl, chain, s, family, verdict), checked)
    end
  end
  ready = true
end

portsentry.on("block", function(ev)
  ensure_ready()
  local s = fw.nft.set_for(ev.ip, set)
  local ttl = timeout
  if ev.timeout then ttl = fw.nft.duration(ev.timeout) end
  local add = fw.nft.add_element(nft, tbl, s, ev.ip, ttl)
  local r = portsentry.exec(add, opts)
  if not r.ok then
    -- Someone may have flushed the ruleset since: set up again once and retry.
    ready = false
    ensure_ready()
    r = portsentry.exec(add, checked)
  end
  portsentry.log.info("%s added to inet %s %s%s", ev.ip, tbl, s,
    ttl and (" for " .. ttl) or "")
  return r.command
end)

portsentry.on("unblock", function(ev)
  local s = fw.nft.set_for(ev.ip, set)
  local r = portsentry.exec(fw.nft.delete_element(nft, tbl, s, ev.ip), opts)
  if r.ok then
    portsentry.log.info("%s removed from inet %s %s (%s)", ev.ip, tbl, s, ev.reason)
    return r.command
  end
  if fw.nft.not_found(r) then return r.command .. " (already gone)" end
  error(fw.failure(r))
end)
