-- portsentry.text: small string helpers for plugins (templates, lists, trimming).
local M = {}

--- Removes leading and trailing white space.
function M.trim(s)
  return (tostring(s):gsub("^%s+", ""):gsub("%s+$", ""))
end

--- Splits on commas and/or white space (or the Lua pattern `sep`), dropping empty items.
function M.split(s, sep)
  local out = {}
  if s == nil then return out end
  if sep then
    for item in (tostring(s) .. sep):gmatch("(.-)" .. sep) do
      item = M.trim(item)
      if item ~= "" then out[#out + 1] = item end
    end
  else
    for item in tostring(s):gmatch("[^,%s]+") do out[#out + 1] = item end
  end
  return out
end

--- Fills a template from a table: "{ip} on {proto}/{port}" with the event's fields. The
--- 1.2 macros $TARGET$, $PORT$ and $MODE$ work too. Unknown names are left as written.
function M.expand(template, values)
  local out = tostring(template):gsub("{([%w_]+)}", function(name)
    local v = values[name]
    if v == nil then return nil end
    return tostring(v)
  end)
  local macros = { TARGET = values.ip, PORT = values.port, MODE = values.mode }
  out = out:gsub("%$(%u+)%$", function(name)
    local v = macros[name]
    if v == nil then return nil end
    return tostring(v)
  end)
  return out
end

--- True when `s` is one of the items of list `list` (table or comma/space separated text).
function M.contains(list, s)
  if type(list) ~= "table" then list = M.split(list) end
  for _, item in ipairs(list) do
    if item == s then return true end
  end
  return false
end

return M
