-- portsentry.ratelimit: "at most N per period" limiters with bounded memory, e.g. one mail
-- per host per hour, or ten mails an hour in total.
local M = {}
M.__index = M

--- Creates a limiter. Options: max (events allowed per window, default 1), per (window, a
--- duration like "1h" or seconds, default "1h"), keys (distinct keys remembered, default
--- 1000; the least recently seen is forgotten first), clock (function returning seconds,
--- default portsentry.now).
function M.new(opts)
  opts = opts or {}
  local max = tonumber(opts.max or 1)
  if not max or max < 1 or max ~= math.floor(max) then
    error("ratelimit.new: max must be a whole number of at least 1", 2)
  end
  local per = portsentry.duration(opts.per or "1h")
  if per <= 0 then error("ratelimit.new: per must be more than zero", 2) end
  local keys = tonumber(opts.keys or 1000)
  if not keys or keys < 1 then error("ratelimit.new: keys must be at least 1", 2) end
  return setmetatable({
    max = max,
    per = per,
    keys = keys,
    clock = opts.clock or portsentry.now,
    entries = {}, -- key -> { times = {...}, suppressed = n, seen = t }
    count = 0,
  }, M)
end

local function evict_oldest(self)
  local oldest_key, oldest_seen
  for k, e in pairs(self.entries) do
    if not oldest_seen or e.seen < oldest_seen then oldest_key, oldest_seen = k, e.seen end
  end
  if oldest_key ~= nil then
    self.entries[oldest_key] = nil
    self.count = self.count - 1
  end
end

--- Records an event for `key` (default "all") if allowed. Returns true and the number of
--- events suppressed for that key since the last allowed one, or false when over the limit.
function M:allow(key)
  key = key == nil and "all" or key
  local now = self.clock()
  local e = self.entries[key]
  if not e then
    if self.count >= self.keys then evict_oldest(self) end
    e = { times = {}, suppressed = 0, seen = now }
    self.entries[key] = e
    self.count = self.count + 1
  end
  e.seen = now
  local kept = {}
  for _, t in ipairs(e.times) do
    if now - t < self.per then kept[#kept + 1] = t end
  end
  e.times = kept
  if #kept >= self.max then
    e.suppressed = e.suppressed + 1
    return false
  end
  kept[#kept + 1] = now
  local suppressed = e.suppressed
  e.suppressed = 0
  return true, suppressed
end

--- Events suppressed for `key` since the last allowed one.
function M:suppressed(key)
  local e = self.entries[key == nil and "all" or key]
  return e and e.suppressed or 0
end

return M
