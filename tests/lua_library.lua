-- Tests of the Lua library (lua/portsentry/*), run as a plugin by tests/lua_plugins.rs.
-- Every check runs at load time: a failing check names its line in the load error.
local addr = require("portsentry.addr")
local fw = require("portsentry.firewall")
local ratelimit = require("portsentry.ratelimit")
local text = require("portsentry.text")
local mail = require("portsentry.mail")

local function eq(got, want)
  if got ~= want then
    error(string.format("expected %q, got %q", tostring(want), tostring(got)), 2)
  end
end

-- addr: parsing and families
eq(addr.family("192.0.2.7"), "ipv4")
eq(addr.family("2001:db8::7"), "ipv6")
eq(addr.family("::"), "ipv6")
eq(addr.family("::ffff:192.0.2.7"), "ipv6")
eq(addr.family("256.1.1.1"), nil)
eq(addr.family("1.2.3"), nil)
eq(addr.family("1:2:3:4:5:6:7:8:9"), nil)
eq(addr.family("1::2::3"), nil)
eq(addr.family(":1::"), nil)
eq(addr.family("fe80::1%eth0"), nil)
eq(addr.family("example.org"), nil)
eq(addr.family(nil), nil)
eq(addr.is_ipv4("10.0.0.1"), true)
eq(addr.is_ipv6("10.0.0.1"), false)

-- addr: canonical text (RFC 5952), expansion, reverse names
eq(addr.normalize("2001:0DB8:0000:0000:0000:0000:0000:0001"), "2001:db8::1")
eq(addr.normalize("2001:db8:0:0:1:0:0:1"), "2001:db8::1:0:0:1")
eq(addr.normalize("0:0:0:0:0:0:0:0"), "::")
eq(addr.normalize("::1"), "::1")
eq(addr.normalize("1::"), "1::")
eq(addr.normalize("2001:db8:0:1:1:1:1:1"), "2001:db8:0:1:1:1:1:1")
eq(addr.normalize("::ffff:c000:0207"), "::ffff:192.0.2.7")
eq(addr.expand("2001:db8::1"), "2001:0db8:0000:0000:0000:0000:0000:0001")
eq(addr.expand("192.0.2.7"), "192.0.2.7")
eq(addr.reverse_name("192.0.2.7"), "7.2.0.192.in-addr.arpa")
eq(addr.reverse_name("2001:db8::1"),
  "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa")

-- addr: networks
eq(addr.in_network("192.0.2.77", "192.0.2.0/24"), true)
eq(addr.in_network("192.0.3.1", "192.0.2.0/24"), false)
eq(addr.in_network("10.200.1.1", "10.128.0.0/9"), true)
eq(addr.in_network("10.100.1.1", "10.128.0.0/9"), false)
eq(addr.in_network("2001:db8:1::5", "2001:db8::/32"), true)
eq(addr.in_network("2001:db9::5", "2001:db8::/32"), false)
eq(addr.in_network("192.0.2.7", "2001:db8::/32"), false)
eq(addr.in_network("192.0.2.7", "192.0.2.7"), true)
eq(addr.in_network("192.0.2.7", "0.0.0.0/0"), true)
eq(addr.network("192.0.2.77", 24), "192.0.2.0/24")
eq(addr.network("2001:db8:aaaa:bbbb::1", 48), "2001:db8:aaaa::/48")
eq(addr.network("10.1.2.3", 9), "10.0.0.0/9")
eq(addr.with_port("2001:db8::1", 80), "[2001:db8::1]:80")
eq(addr.with_port("192.0.2.7", 80), "192.0.2.7:80")
local nets = assert(addr.parse_list("10.0.0.0/8, 2001:db8::/32 192.0.2.1"))
eq(#nets, 3)
local hit, which = addr.in_any("2001:db8::9", nets)
eq(hit, true)
eq(which, "2001:db8::/32")
eq((addr.in_any("192.0.2.2", nets)), false)
eq((addr.in_any("10.9.9.9", "10.0.0.0/8")), true)
local bad, err = addr.parse_list("10.0.0.0/33")
eq(bad, nil)
assert(err:find("prefix longer"), err)

-- firewall: nft
eq(fw.nft.duration(5400), "1h30m")
eq(fw.nft.duration(90061), "1d1h1m1s")
eq(fw.nft.duration(0), nil)
eq(fw.nft.set_for("192.0.2.7", "blocked"), "blocked_v4")
eq(fw.nft.set_for("::1", "blocked"), "blocked_v6")
eq(table.concat(fw.nft.add_element("nft", "t", "blocked_v4", "192.0.2.7", 3600), " "),
  "nft add element inet t blocked_v4 { 192.0.2.7 timeout 1h }")
eq(table.concat(fw.nft.add_element("nft", "t", "s", "192.0.2.7"), " "),
  "nft add element inet t s { 192.0.2.7 }")
eq(table.concat(fw.nft.delete_element("nft", "t", "s", "::1"), " "),
  "nft delete element inet t s { ::1 }")
eq(table.concat(fw.nft.add_rule("nft", "t", "input", "blocked_v6", "ipv6"), " "),
  "nft add rule inet t input ip6 saddr @blocked_v6 drop")
local script = fw.nft.setup_script { table = "t", set = "b", chain = "input" }
assert(script:find("set b_v4 { type ipv4_addr; flags timeout; }", 1, true), script)
assert(script:find("type filter hook input priority -10; policy accept;", 1, true), script)
assert(not pcall(fw.nft.setup_script, { table = "t; flush ruleset", set = "b", chain = "c" }))
assert(not pcall(fw.nft.add_element, "nft", "t", "s", "not-an-ip"))

-- firewall: iptables
eq(fw.iptables.binary("192.0.2.7"), "iptables")
eq(fw.iptables.binary("2001:db8::1"), "ip6tables")
eq(fw.iptables.binary("2001:db8::1", "a", "b"), "b")
eq(table.concat(fw.iptables.append("iptables", "ps", fw.iptables.host_rule("192.0.2.7")), " "),
  "iptables -w -A ps -s 192.0.2.7 -j DROP")
eq(table.concat(fw.iptables.insert("iptables", "INPUT", fw.iptables.jump("ps")), " "),
  "iptables -w -I INPUT 1 -j ps")
eq(table.concat(fw.iptables.check("ip6tables", "ps", fw.iptables.host_rule("::1", "REJECT")), " "),
  "ip6tables -w -C ps -s ::1 -j REJECT")
eq(table.concat(fw.iptables.delete("iptables", "ps", fw.iptables.host_rule("192.0.2.7")), " "),
  "iptables -w -D ps -s 192.0.2.7 -j DROP")

-- firewall: telling "already gone" from other failures of a delete
local function result(status, stderr)
  return { ok = status == 0, status = status, stderr = stderr, command = "x y" }
end
eq(fw.nft.not_found(result(1, "Error: Could not process rule: No such file or directory\n")), true)
eq(fw.nft.not_found(result(1, "Error: Operation not permitted\n")), false)
eq(fw.nft.not_found(result(0, "No such file or directory")), false)
eq(fw.nft.not_found({ ok = false, error = "nft: not found", stderr = "", command = "nft" }), false)
eq(fw.iptables.not_found(result(1, "iptables: Bad rule (does a matching rule exist in that chain?).\n")), true)
eq(fw.iptables.not_found(result(1, "iptables: No chain/target/match by that name.\n")), true)
eq(fw.iptables.not_found(result(4, "iptables: Permission denied\n")), false)
eq(fw.failure(result(1, "Error: boom\n")), "command `x y` failed: exit 1: Error: boom")
eq(fw.failure({ ok = false, timed_out = true, stderr = "", command = "x" }), "command `x` failed: timed out")
eq(fw.failure({ ok = false, error = "x: not found", stderr = "", command = "x" }),
  "command `x` failed: not started: x: not found")

-- ratelimit: window, per-key, suppressed count, bounded keys
local now = 1000
local rl = ratelimit.new { max = 2, per = "1m", keys = 2, clock = function() return now end }
eq(rl:allow("a"), true)
eq(rl:allow("a"), true)
eq(rl:allow("a"), false)
eq(rl:allow("a"), false)
eq(rl:suppressed("a"), 2)
eq(rl:allow("b"), true)
now = now + 61
local ok, held = rl:allow("a")
eq(ok, true)
eq(held, 2)
eq(rl:suppressed("a"), 0)
rl:allow("c") -- a third key evicts the least recently seen ("b")
eq(rl.count, 2)
eq(rl.entries["b"], nil)
assert(not pcall(ratelimit.new, { max = 0 }))

-- text
eq(text.trim("  a b  "), "a b")
eq(table.concat(text.split("a, b  c,,d"), "|"), "a|b|c|d")
eq(table.concat(text.split("a; b ;c", ";"), "|"), "a|b|c")
eq(text.expand("{ip} on {proto}/{port} {nope}", { ip = "192.0.2.7", proto = "tcp", port = 22 }),
  "192.0.2.7 on tcp/22 {nope}")
eq(text.expand("$TARGET$:$PORT$ ($MODE$)", { ip = "192.0.2.7", port = 22, mode = "stcp" }),
  "192.0.2.7:22 (stcp)")
eq(text.contains("alert, block", "block"), true)
eq(text.contains({ "alert" }, "block"), false)

-- mail: header injection is neutralised, addresses checked
eq(mail.header_value("a\r\nBcc: x@example.org"), "a  Bcc: x@example.org")
eq(mail.addresses("a@example.org, b@example.org"), "a@example.org, b@example.org")
eq(mail.addresses("root"), "root")
eq((mail.addresses("a@example.org\nBcc: x@example.org")), nil)
eq((mail.addresses("")), nil)
local msg = mail.message { to = "root", subject = "hi\nBcc: evil@example.org", body = "line",
  date = 0, headers = { ["X-Portsentry-Host"] = "192.0.2.7" } }
assert(msg:find("\nSubject: hi Bcc: evil@example.org\n", 1, true), msg)
assert(not msg:find("\nBcc:", 1, true), msg)
assert(msg:find("Date: Thu, 01 Jan 1970 00:00:00 +0000", 1, true), msg)
assert(msg:sub(-#"X-Portsentry-Host: 192.0.2.7\n\nline\n") == "X-Portsentry-Host: 192.0.2.7\n\nline\n", msg)

portsentry.on("block", function() return "library ok" end)
