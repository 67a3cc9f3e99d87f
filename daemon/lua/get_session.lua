--[[
  Read a session record with the server's clock.

  Input: KEYS and ARGV[1..8] as in includes/common.lua, then
    ARGV[9] session id
  Output: {1, now, field, value, ...} | {-404}
]]
--- @include "common"

local now = now_ms()
if redis.call('EXISTS', session_key(ARGV[9])) == 0 then return {-404} end
return view(1, ARGV[9], now)
