-- portsentry.addr: IP address helpers for plugins (parsing, formatting, networks).
-- Pure Lua; addresses are handled as arrays of bytes (4 for IPv4, 16 for IPv6).
local M = {}

local tonumber, format, concat = tonumber, string.format, table.concat

local function parse4(s)
  local a, b, c, d = s:match("^(%d%d?%d?)%.(%d%d?%d?)%.(%d%d?%d?)%.(%d%d?%d?)$")
  if not a then return nil end
  local bytes = { tonumber(a), tonumber(b), tonumber(c), tonumber(d) }
  for i = 1, 4 do
    if bytes[i] > 255 then return nil end
  end
  return bytes
end

local function split_groups(part, allow_v4_tail)
  local out = {}
  if part == "" then return out end
  local pieces = {}
  for p in (part .. ":"):gmatch("([^:]*):") do pieces[#pieces + 1] = p end
  for i, p in ipairs(pieces) do
    if i == #pieces and allow_v4_tail and p:find(".", 1, true) then
      local b = parse4(p)
      if not b then return nil end
      out[#out + 1] = b[1] * 256 + b[2]
      out[#out + 1] = b[3] * 256 + b[4]
    else
      if not p:match("^%x%x?%x?%x?$") then return nil end
      out[#out + 1] = tonumber(p, 16)
    end
  end
  return out
end

local function parse6(s)
  if s:find("%", 1, true) then return nil end -- zone ids (fe80::1%eth0) are not addresses
  local head, tail = s, ""
  local dbl = s:find("::", 1, true)
  if dbl then
    if s:find("::", dbl + 1, true) then return nil end
    head, tail = s:sub(1, dbl - 1), s:sub(dbl + 2)
  end
  local h = split_groups(head, not dbl)
  if not h then return nil end
  local t = split_groups(tail, true)
  if not t then return nil end
  local n = #h + #t
  if (dbl and n > 7) or (not dbl and n ~= 8) then return nil end
  local groups = {}
  for _, v in ipairs(h) do groups[#groups + 1] = v end
  for _ = 1, 8 - n do groups[#groups + 1] = 0 end
  for _, v in ipairs(t) do groups[#groups + 1] = v end
  local bytes = {}
  for i = 1, 8 do
    bytes[2 * i - 1] = groups[i] // 256
    bytes[2 * i] = groups[i] % 256
  end
  return bytes
end

--- Parses an address; returns its bytes and "ipv4"/"ipv6", or nil.
function M.parse(s)
  if type(s) ~= "string" then return nil end
  local b = parse4(s)
  if b then return b, "ipv4" end
  b = parse6(s)
  if b then return b, "ipv6" end
  return nil
end

--- "ipv4", "ipv6" or nil when `s` is not an address.
function M.family(s)
  local _, fam = M.parse(s)
  return fam
end

function M.is_ipv4(s) return M.family(s) == "ipv4" end
function M.is_ipv6(s) return M.family(s) == "ipv6" end

local function format_bytes(b)
  if #b == 4 then return concat(b, ".") end
  local g = {}
  for i = 1, 8 do g[i] = b[2 * i - 1] * 256 + b[2 * i] end
  -- IPv4-mapped addresses print with their IPv4 tail, as the daemon does.
  if g[1] == 0 and g[2] == 0 and g[3] == 0 and g[4] == 0 and g[5] == 0 and g[6] == 0xffff then
    return format("::ffff:%d.%d.%d.%d", b[13], b[14], b[15], b[16])
  end
  -- RFC 5952: compress the longest run (first on ties) of two or more zero groups.
  local best_start, best_len, i = 0, 0, 1
  while i <= 8 do
    if g[i] == 0 then
      local j = i
      while j <= 8 and g[j] == 0 do j = j + 1 end
      if j - i > best_len then best_start, best_len = i, j - i end
      i = j
    else
      i = i + 1
    end
  end
  local parts = {}
  for k = 1, 8 do parts[k] = format("%x", g[k]) end
  if best_len < 2 then return concat(parts, ":") end
  local left = concat(parts, ":", 1, best_start - 1)
  local right = concat(parts, ":", best_start + best_len, 8)
  return left .. "::" .. right
end

--- Canonical text of an address (RFC 5952 for IPv6), or nil when it is not one.
function M.normalize(s)
  local b = M.parse(s)
  return b and format_bytes(b) or nil
end

--- IPv6 written out in full (2001:0db8:0000:…); IPv4 unchanged; nil when not an address.
function M.expand(s)
  local b, fam = M.parse(s)
  if not b then return nil end
  if fam == "ipv4" then return concat(b, ".") end
  local g = {}
  for i = 1, 8 do g[i] = format("%04x", b[2 * i - 1] * 256 + b[2 * i]) end
  return concat(g, ":")
end

--- Parses "net/bits" (bits default to the full length); returns a network table or nil, err.
function M.parse_cidr(s)
  if type(s) ~= "string" then return nil, "not a string" end
  local ip, bits = s:match("^%s*([^/%s]+)/(%d+)%s*$")
  if not ip then ip = s:match("^%s*(%S+)%s*$") end
  local b, fam = M.parse(ip or "")
  if not b then return nil, "'" .. s .. "' is not an address or network" end
  local max = #b * 8
  bits = bits and tonumber(bits) or max
  if bits > max then return nil, "'" .. s .. "': prefix longer than " .. max end
  return { bytes = b, bits = bits, family = fam }
end

local function prefix_equal(a, b, bits)
  local full = bits // 8
  for i = 1, full do
    if a[i] ~= b[i] then return false end
  end
  local rest = bits % 8
  if rest == 0 then return true end
  local mask = 256 - (1 << (8 - rest))
  return (a[full + 1] & mask) == (b[full + 1] & mask)
end

--- True when address `ip` lies in network `cidr` ("10.0.0.0/8", "2001:db8::/32", "192.0.2.7").
function M.in_network(ip, cidr)
  local b, fam = M.parse(ip)
  local net = type(cidr) == "table" and cidr or M.parse_cidr(cidr)
  if not b or not net or net.family ~= fam then return false end
  return prefix_equal(b, net.bytes, net.bits)
end

--- Parses a list of networks (a table, or a string separated by commas/spaces).
--- Returns the list of network tables, or nil and the first error.
function M.parse_list(list)
  local items = {}
  if type(list) == "string" then
    for item in list:gmatch("[^,%s]+") do items[#items + 1] = item end
  elseif type(list) == "table" then
    items = list
  end
  local nets = {}
  for _, item in ipairs(items) do
    local net, err = M.parse_cidr(item)
    if not net then return nil, err end
    net.text = item
    nets[#nets + 1] = net
  end
  return nets
end

--- True and the matching entry when `ip` is in any network of `list` (see parse_list).
function M.in_any(ip, list)
  local nets = list
  if type(list) == "string" or (type(list) == "table" and type(list[1]) == "string") then
    nets = assert(M.parse_list(list))
  end
  for _, net in ipairs(nets) do
    if M.in_network(ip, net) then return true, net.text or net end
  end
  return false
end

--- The network of `ip` with a prefix of `bits`, as text: network("192.0.2.77", 24) -> "192.0.2.0/24".
function M.network(ip, bits)
  local b = M.parse(ip)
  if not b then return nil end
  bits = math.max(0, math.min(bits, #b * 8))
  local out = {}
  for i = 1, #b do
    local keep = math.max(0, math.min(8, bits - (i - 1) * 8))
    local mask = keep == 0 and 0 or (256 - (1 << (8 - keep)))
    out[i] = b[i] & mask
  end
  return format_bytes(out) .. "/" .. bits
end

--- "ip:port", bracketing IPv6: with_port("2001:db8::1", 80) -> "[2001:db8::1]:80".
function M.with_port(ip, port)
  if M.is_ipv6(ip) then return "[" .. ip .. "]:" .. port end
  return ip .. ":" .. port
end

--- The reverse-DNS name: 7.2.0.192.in-addr.arpa, or the nibble form under ip6.arpa.
function M.reverse_name(ip)
  local b, fam = M.parse(ip)
  if not b then return nil end
  local parts = {}
  if fam == "ipv4" then
    for i = 4, 1, -1 do parts[#parts + 1] = tostring(b[i]) end
    return concat(parts, ".") .. ".in-addr.arpa"
  end
  for i = 16, 1, -1 do
    parts[#parts + 1] = format("%x", b[i] % 16)
    parts[#parts + 1] = format("%x", b[i] // 16)
  end
  return concat(parts, ".") .. ".ip6.arpa"
end

return M
