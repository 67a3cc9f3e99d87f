--[[
  Claim the due deliveries of some endpoints for one attempt each: every claimed member
  moves to now + claim_ms, so no other replica takes it while the attempt is in flight.

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] claim_ms (how long a claimed attempt holds its delivery)
    ARGV[11...] pairs: endpoint id, most deliveries to claim for it
  Output: {now, next due (ms, -1 if none) of the endpoints with room,
           deliveries of the named endpoints not yet delivered nor dead (the backlog),
           their dead deliveries,
           then per claimed delivery: member, endpoint id, attempt number, type, JSON}
]]
--- @include "common"

local claim_ms = tonumber(ARGV[10])
local now = now_ms()
local out = {now, -1, 0, 0}
local next_due, backlog, dead = -1, 0, 0
for i = 11, #ARGV, 2 do
  local wid, room = ARGV[i], tonumber(ARGV[i + 1])
  if room > 0 then
    local due_key = BASE .. 'wh:due:' .. wid
    for _, member in ipairs(redis.call('ZRANGEBYSCORE', due_key, '-inf', now, 'LIMIT', 0, room)) do
      local key = BASE .. 'wh:d:' .. member
      local h = redis.call('HMGET', key, 'y', 'j')
      if not h[1] then
        redis.call('ZREM', due_key, member)
      else
        local n = redis.call('HINCRBY', key, 'n', 1)
        redis.call('ZADD', due_key, now + claim_ms, member)
        out[#out + 1] = member
        out[#out + 1] = wid
        out[#out + 1] = n
        out[#out + 1] = h[1]
        out[#out + 1] = h[2]
      end
    end
    local head = redis.call('ZRANGE', due_key, 0, 0, 'WITHSCORES')
    if #head > 0 and (next_due < 0 or tonumber(head[2]) < next_due) then
      next_due = tonumber(head[2])
    end
  end
  backlog = backlog + redis.call('ZCARD', BASE .. 'wh:due:' .. wid)
  dead = dead + redis.call('ZCARD', BASE .. 'wh:dead:' .. wid)
end
out[2], out[3], out[4] = next_due, backlog, dead
return out
