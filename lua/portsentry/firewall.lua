-- portsentry.firewall: argument lists for nft and iptables, ready for portsentry.exec.
-- Builders only: nothing here runs a command, so plugins stay easy to read and to test.
local addr = require("portsentry.addr")

local M = { nft = {}, iptables = {} }

--- True for names nft and iptables accept as table/set/chain names without quoting.
function M.valid_name(s)
  return type(s) == "string" and #s > 0 and #s <= 28 and s:match("^[%a_][%w_]*$") ~= nil
end

local function check_name(what, s)
  if not M.valid_name(s) then
    error(what .. " '" .. tostring(s) .. "' must be letters, digits and '_' (at most 28)", 3)
  end
end

local function check_ip(ip)
  local fam = addr.family(ip)
  if not fam then error("'" .. tostring(ip) .. "' is not an IP address", 3) end
  return fam
end

--- The error text for a failed portsentry.exec result, worded as `check = true` words it:
--- "command `nft …` failed: exit 1: Error: …".
function M.failure(r)
  local how
  if r.error then how = "not started: " .. r.error
  elseif r.timed_out then how = "timed out"
  elseif r.status then how = "exit " .. r.status
  else how = "killed by signal " .. tostring(r.signal) end
  local err = (r.stderr or ""):gsub("%s+$", "")
  if err ~= "" then how = how .. ": " .. err:sub(1, 300) end
  return "command `" .. tostring(r.command) .. "` failed: " .. how
end

local function failed_saying(r, ...)
  if r.ok or r.error or r.timed_out or not r.status then return false end
  local err = r.stderr or ""
  for _, text in ipairs({ ... }) do
    if err:find(text, 1, true) then return true end
  end
  return false
end

------------------------------------------------------------------------ nftables

--- Seconds as an nft duration: 5400 -> "1h30m", 0/nil -> nil (no timeout).
function M.nft.duration(seconds)
  seconds = math.floor(tonumber(seconds) or 0)
  if seconds <= 0 then return nil end
  local out = {}
  for _, unit in ipairs({ { "d", 86400 }, { "h", 3600 }, { "m", 60 }, { "s", 1 } }) do
    local n = seconds // unit[2]
    if n > 0 then
      out[#out + 1] = n .. unit[1]
      seconds = seconds - n * unit[2]
    end
  end
  return table.concat(out)
end

--- The set an address goes in: set_for("192.0.2.7", "blocked") -> "blocked_v4".
function M.nft.set_for(ip, base)
  return base .. (check_ip(ip) == "ipv4" and "_v4" or "_v6")
end

--- A script for `nft -f -` creating (or leaving as is) an inet table with one IPv4 and one
--- IPv6 set and a base chain. Options: table, set (base name), chain, hook ("input"),
--- priority (-10), timeout (true: sets accept element timeouts; default true).
function M.nft.setup_script(o)
  check_name("table", o.table)
  check_name("set", o.set)
  check_name("chain", o.chain)
  local hook = o.hook or "input"
  if hook ~= "input" and hook ~= "forward" and hook ~= "prerouting" then
    error("hook must be input, forward or prerouting", 2)
  end
  local priority = math.tointeger(tonumber(o.priority or -10))
  if not priority then error("priority must be a whole number", 2) end
  local flags = (o.timeout == false) and "" or " flags timeout;"
  local lines = {
    "table inet " .. o.table .. " {",
    "  set " .. o.set .. "_v4 { type ipv4_addr;" .. flags .. " }",
    "  set " .. o.set .. "_v6 { type ipv6_addr;" .. flags .. " }",
    "  chain " .. o.chain .. " { type filter hook " .. hook .. " priority " .. priority
      .. "; policy accept; }",
    "}",
  }
  return table.concat(lines, "\n") .. "\n"
end

--- argv listing a chain (its output tells which rules exist).
function M.nft.list_chain(nft, tbl, chain)
  return { nft, "list", "chain", "inet", tbl, chain }
end

--- The rule matching a set, as `nft list` prints it: "ip saddr @blocked_v4 drop".
function M.nft.rule_text(set, family, verdict)
  local match = family == "ipv4" and "ip saddr" or "ip6 saddr"
  return match .. " @" .. set .. " " .. (verdict or "drop")
end

--- argv adding the drop rule for one set to a chain.
function M.nft.add_rule(nft, tbl, chain, set, family, verdict)
  local argv = { nft, "add", "rule", "inet", tbl, chain }
  for word in M.nft.rule_text(set, family, verdict):gmatch("%S+") do argv[#argv + 1] = word end
  return argv
end

--- argv adding an address to a set, with an optional timeout (seconds or nft text).
function M.nft.add_element(nft, tbl, set, ip, timeout)
  check_ip(ip)
  if type(timeout) == "number" then timeout = M.nft.duration(timeout) end
  local element = ip
  if timeout and timeout ~= "" then element = ip .. " timeout " .. timeout end
  return { nft, "add", "element", "inet", tbl, set, "{ " .. element .. " }" }
end

--- argv removing an address from a set (what an unblock runs).
function M.nft.delete_element(nft, tbl, set, ip)
  check_ip(ip)
  return { nft, "delete", "element", "inet", tbl, set, "{ " .. ip .. " }" }
end

--- True when a failed `nft delete element` says the element, its set or its table is not
--- there: an unblock finds it already gone (expired in the kernel, ruleset flushed).
function M.nft.not_found(r)
  return failed_saying(r, "No such file or directory")
end

------------------------------------------------------------------------ iptables

--- "iptables" for IPv4, "ip6tables" for IPv6 (or the given overrides).
function M.iptables.binary(ip, v4, v6)
  return check_ip(ip) == "ipv4" and (v4 or "iptables") or (v6 or "ip6tables")
end

--- argv succeeding when the chain exists.
function M.iptables.chain_exists(bin, chain)
  check_name("chain", chain)
  return { bin, "-w", "-n", "-L", chain }
end

--- argv creating a chain.
function M.iptables.new_chain(bin, chain)
  check_name("chain", chain)
  return { bin, "-w", "-N", chain }
end

local function rule(bin, op, chain, spec, pos)
  local argv = { bin, "-w", op, chain }
  if pos then argv[#argv + 1] = tostring(pos) end
  for _, a in ipairs(spec) do argv[#argv + 1] = a end
  return argv
end

--- argv succeeding when the rule exists (-C).
function M.iptables.check(bin, chain, spec) return rule(bin, "-C", chain, spec) end
--- argv appending the rule (-A).
function M.iptables.append(bin, chain, spec) return rule(bin, "-A", chain, spec) end
--- argv inserting the rule at `pos` (-I, default 1).
function M.iptables.insert(bin, chain, spec, pos) return rule(bin, "-I", chain, spec, pos or 1) end
--- argv deleting the rule (-D).
function M.iptables.delete(bin, chain, spec) return rule(bin, "-D", chain, spec) end

--- True when a failed `iptables -D` says there is no such rule (or chain): an unblock finds
--- it already gone.
function M.iptables.not_found(r)
  return failed_saying(r, "does a matching rule exist", "No chain/target/match by that name")
end

--- Rule spec dropping one host: {"-s", ip, "-j", target}.
function M.iptables.host_rule(ip, target)
  check_ip(ip)
  return { "-s", ip, "-j", target or "DROP" }
end

--- Rule spec jumping to a chain: {"-j", chain}.
function M.iptables.jump(chain)
  check_name("chain", chain)
  return { "-j", chain }
end

return M
