-- iptables: blocks a host with one rule in a dedicated chain (iptables for IPv4, ip6tables
-- for IPv6), creating the chain and the jump to it when missing. Idempotent: a host already
-- in the chain is not added twice. When a block ends (expiry or `portsentry unblock`) the
-- host's rule is deleted; a rule already gone is fine. Settings (portsentry.conf):
--   IPTABLES_CHAIN="portsentry"   the chain holding one rule per blocked host
--   IPTABLES_PARENT="INPUT"       the built-in chain that jumps to it (inserted first)
--   IPTABLES_TARGET="DROP"        DROP or REJECT
--   IPTABLES_IPTABLES="iptables"  program for IPv4
--   IPTABLES_IP6TABLES="ip6tables" program for IPv6
--   IPTABLES_NETNS=""             run them in this network namespace (ip netns exec)
local fw = require("portsentry.firewall")
local ipt = fw.iptables

local cfg = portsentry.config
local chain = cfg.chain or "portsentry"
local parent = cfg.parent or "INPUT"
local target = cfg.target or "DROP"
local opts = { netns = cfg.netns, timeout = "5s" }
local checked = { netns = cfg.netns, timeout = "5s", check = true }

if not fw.valid_name(chain) or not fw.valid_name(parent) then
  error("IPTABLES_CHAIN and IPTABLES_PARENT must be chain names")
end
if target ~= "DROP" and target ~= "REJECT" then
  error("IPTABLES_TARGET must be DROP or REJECT, not '" .. target .. "'")
end

local ready = {} -- per program: chain and jump known to exist

local function ensure_chain(bin)
  if ready[bin] then return end
  if not portsentry.exec(ipt.chain_exists(bin, chain), opts).ok then
    portsentry.exec(ipt.new_chain(bin, chain), checked)
  end
  if not portsentry.exec(ipt.check(bin, parent, ipt.jump(chain)), opts).ok then
    portsentry.exec(ipt.insert(bin, parent, ipt.jump(chain)), checked)
  end
  ready[bin] = true
end

portsentry.on("block", function(ev)
  local bin = ipt.binary(ev.ip, cfg.iptables, cfg.ip6tables)
  ensure_chain(bin)
  local spec = ipt.host_rule(ev.ip, target)
  local present = portsentry.exec(ipt.check(bin, chain, spec), opts)
  if present.ok then
    portsentry.log.info("%s already in %s chain %s", ev.ip, bin, chain)
    return present.command .. " (already present)"
  end
  local r = portsentry.exec(ipt.append(bin, chain, spec), opts)
  if not r.ok then
    -- The chain may have been flushed or deleted since: create it again once and retry.
    ready[bin] = nil
    ensure_chain(bin)
    r = portsentry.exec(ipt.append(bin, chain, spec), checked)
  end
  portsentry.log.info("%s dropped by %s chain %s", ev.ip, bin, chain)
  return r.command
end)

-- At most this many copies of a host's rule are deleted (rules added by hand, or by an
-- older version, may repeat it).
local MAX_COPIES = 16

portsentry.on("unblock", function(ev)
  local bin = ipt.binary(ev.ip, cfg.iptables, cfg.ip6tables)
  local del = ipt.delete(bin, chain, ipt.host_rule(ev.ip, target))
  local first
  for _ = 1, MAX_COPIES do
    local r = portsentry.exec(del, opts)
    if not r.ok then
      if not ipt.not_found(r) then error(fw.failure(r)) end
      if not first then return r.command .. " (already gone)" end
      break
    end
    first = first or r
  end
  portsentry.log.info("%s no longer dropped by %s chain %s (%s)", ev.ip, bin, chain, ev.reason)
  return first.command
end)
