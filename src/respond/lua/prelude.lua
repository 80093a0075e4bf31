-- Runs once in every plugin state, before the plugin, with the sandboxed globals.
-- Receives the Rust pieces it wraps; what it leaves in the globals is what plugins see.
local budget_check, budget_spent, raw_log = ...

-- A caught budget or memory error must not let the plugin carry on: every way of catching
-- an error re-raises it once the call has run out of time or memory.
local raw_pcall, raw_xpcall = pcall, xpcall
local raw_resume, raw_close = coroutine.resume, coroutine.close
pcall = function(...) return budget_check(raw_pcall(...)) end
-- Lua runs a message handler before unwinding, still inside the hook that raised the budget
-- error, where hooks are off: once the budget is spent the plugin's handler must not run.
xpcall = function(f, handler, ...)
  local function guarded(...)
    if budget_spent((...)) then return ... end
    return handler(...)
  end
  return budget_check(raw_xpcall(f, guarded, ...))
end
coroutine.resume = function(...) return budget_check(raw_resume(...)) end
coroutine.close = function(...) return budget_check(raw_close(...)) end

-- Lua runs finalizers with hooks off, so a looping __gc could never be stopped. An object
-- is only finalized if its metatable had __gc when it was set: refuse such metatables.
local raw_setmetatable, rawget, type = setmetatable, rawget, type
setmetatable = function(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("finalizers (__gc) are not available to plugins", 2)
  end
  return raw_setmetatable(t, mt)
end

-- Stopping the collector would let a plugin outgrow its memory limit unnoticed.
local raw_collect = collectgarbage
local allowed_gc = { collect = true, count = true, step = true, isrunning = true }
collectgarbage = function(opt, ...)
  opt = opt or "collect"
  if not allowed_gc[opt] then
    error("collectgarbage('" .. tostring(opt) .. "') is not available to plugins", 2)
  end
  return raw_collect(opt, ...)
end

local format, select, tostring = string.format, select, tostring
local concat, pack = table.concat, table.pack

local function message(...)
  local n = select("#", ...)
  if n == 0 then return "" end
  if n == 1 then return tostring((...)) end
  local ok, text = raw_pcall(format, ...)
  if not ok then error(text, 3) end
  return text
end

local log = {}
for _, level in ipairs({ "debug", "info", "warn", "error" }) do
  log[level] = function(...) raw_log(level, message(...)) end
end
portsentry.log = log

print = function(...)
  local t = pack(...)
  for i = 1, t.n do t[i] = tostring(t[i]) end
  raw_log("info", concat(t, "\t", 1, t.n))
end
