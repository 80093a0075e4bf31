-- portsentry.mail: builds a plain-text message for `sendmail -t`, safe against header
-- injection (an attacker controls the reverse-DNS name that may end up in a subject).
local M = {}

--- A header value on one line: CR, LF and other control characters become spaces.
function M.header_value(s)
  return (tostring(s):gsub("[%c]", " "))
end

--- Checks and joins addresses ("a@example.org, b@example.org"); nil and an error when one
--- is malformed. Accepts a table or a comma/space separated string.
function M.addresses(list)
  local items = {}
  if type(list) == "table" then
    items = list
  else
    for item in tostring(list or ""):gmatch("[^,%s]+") do items[#items + 1] = item end
  end
  if #items == 0 then return nil, "no address given" end
  for _, a in ipairs(items) do
    if not a:match("^[%w%.%+%-_=]+@[%w%.%-]+$") and not a:match("^[%w%.%-_]+$") then
      return nil, "'" .. a .. "' is not a mail address"
    end
  end
  return table.concat(items, ", ")
end

--- The message text. Fields: from, to (string or table), subject, body, headers (table
--- of extra name -> value), date (seconds since the epoch, default now).
function M.message(m)
  local to, err = M.addresses(m.to)
  if not to then error("mail.message: to: " .. err, 2) end
  local from = M.addresses(m.from or "root")
  if not from then error("mail.message: from: not a mail address", 2) end
  local lines = {
    "From: " .. from,
    "To: " .. to,
    "Subject: " .. M.header_value(m.subject or "portsentry"),
    "Date: " .. os.date("!%a, %d %b %Y %H:%M:%S +0000", m.date or os.time()),
    "MIME-Version: 1.0",
    "Content-Type: text/plain; charset=utf-8",
    "Content-Transfer-Encoding: 8bit",
    "Auto-Submitted: auto-generated",
  }
  local extra = {}
  for name in pairs(m.headers or {}) do extra[#extra + 1] = name end
  table.sort(extra)
  for _, name in ipairs(extra) do
    if not tostring(name):match("^[%w%-]+$") then
      error("mail.message: bad header name '" .. tostring(name) .. "'", 2)
    end
    lines[#lines + 1] = name .. ": " .. M.header_value(m.headers[name])
  end
  local body = tostring(m.body or ""):gsub("\r\n", "\n")
  return table.concat(lines, "\n") .. "\n\n" .. body .. (body:sub(-1) == "\n" and "" or "\n")
end

return M
