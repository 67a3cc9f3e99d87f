--[[
  Read a session record with the server's clock.

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] session id
  Output: {1, now, field, value, ...} | {-404}
]]
--- @include "common"

local now = now_ms()
if redis.call('EXISTS', session_key(ARGV[10])) == 0 then return {-404} end
return view(1, ARGV[10], now)
