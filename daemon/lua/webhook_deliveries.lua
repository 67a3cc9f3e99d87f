--[[
  List an endpoint's deliveries in one partition: its dead ones (oldest death first) or
  its pending ones (soonest attempt first). Read only.

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] endpoint id
    ARGV[11] 'dead' or 'pending'
    ARGV[12] most deliveries to return
  Output: {now (ms), then per delivery: member, score (time of death or of the next
           attempt, ms), attempts made, command type, fields JSON, last error ('' if none),
           time of the last attempt (ms, '' if none)}
]]
--- @include "common"

local wid, state, limit = ARGV[10], ARGV[11], tonumber(ARGV[12])
local set = BASE .. 'wh:due:' .. wid
if state == 'dead' then set = BASE .. 'wh:dead:' .. wid end
local out = {now_ms()}
local rows = redis.call('ZRANGE', set, 0, limit - 1, 'WITHSCORES')
for i = 1, #rows, 2 do
  local h = redis.call('HMGET', BASE .. 'wh:d:' .. rows[i], 'n', 'y', 'j', 'r', 'a')
  if h[2] then
    out[#out + 1] = rows[i]
    out[#out + 1] = rows[i + 1]
    out[#out + 1] = h[1] or '0'
    out[#out + 1] = h[2]
    out[#out + 1] = h[3] or '{}'
    out[#out + 1] = h[4] or ''
    out[#out + 1] = h[5] or ''
  end
end
return out
