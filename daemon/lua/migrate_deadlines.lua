--[[
  Move live sessions written by lifecycled 0.1 into the deadlines set, a batch per call.

  0.1 kept two sorted sets per partition, P:{p}:life (max-lifetime deadlines) and
  P:{p}:idle (inactivity deadlines); since 0.2 one member per live session in the
  deadlines set carries its effective deadline. Each call takes up to a batch of members
  of the old sets, schedules each live one from its record (the record is the truth; the
  old scores are not read) and removes them from the old sets. An overdue session is
  scheduled in the past and so is terminated by the next expire_due with its original
  deadline. Run with no 0.1 daemon left: a 0.1 daemon would keep writing the old sets.

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] batch size (members per call)
  Output: {members moved by this call, members of the old sets still to move}
]]
--- @include "common"

local batch = tonumber(ARGV[10])
local moved = 0
for _, old in ipairs({BASE .. 'life', BASE .. 'idle'}) do
  local sids = redis.call('ZRANGE', old, 0, batch - moved - 1)
  for _, sid in ipairs(sids) do
    local h = redis.call('HMGET', session_key(sid), 's', 'e', 'l', 'i', 'k', 'w')
    if h[1] and h[1] ~= 't' then
      schedule(sid, tonumber(h[2]), tonumber(h[3]), tonumber(h[4]), h[5], h[6])
    end
  end
  if #sids > 0 then redis.call('ZREM', old, unpack(sids)) end
  moved = moved + #sids
  if moved >= batch then break end
end
return {moved, redis.call('ZCARD', BASE .. 'life') + redis.call('ZCARD', BASE .. 'idle')}
