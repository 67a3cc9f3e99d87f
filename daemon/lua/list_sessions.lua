--[[
  The live (ready or running) sessions of an account, read with the server's clock.

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] account id
  Output: {now, {session id, field, value, ...}, ...} in no particular order
]]
--- @include "common"

local now = now_ms()
local out = {now}
for _, sid in ipairs(redis.call('SMEMBERS', live_key(ARGV[10]))) do
  local record = redis.call('HGETALL', session_key(sid))
  if #record > 0 then
    table.insert(record, 1, sid)
    table.insert(out, record)
  end
end
return out
