--[[
  A page of the partition's dead letters (P:{p}:dead), oldest first.

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] the entry id the page starts after ('' = from the first entry)
    ARGV[11] at most this many entries
  Output: {{entry id, error, field, value, ...}, ...}; error is the value of the last
    field when it is named "error" (the daemon appends it when dead-lettering), else ''
    and the entry's fields are all returned. An entry's own earlier "error" field stays
    among its fields.
]]
--- @include "common"

local start = '-'
if ARGV[10] ~= '' then start = '(' .. ARGV[10] end
local out = {}
for _, entry in ipairs(redis.call('XRANGE', K_DEAD, start, '+', 'COUNT', tonumber(ARGV[11]))) do
  local flat = entry[2]
  local n = #flat
  local error = ''
  if n >= 2 and flat[n - 1] == 'error' then
    error = flat[n]
    n = n - 2
  end
  local row = {entry[1], error}
  for j = 1, n do row[#row + 1] = flat[j] end
  out[#out + 1] = row
end
return out
