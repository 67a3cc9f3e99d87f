--[[
  Terminate a session on request (API DELETE). Idempotent: an already terminated
  session is returned as it is and no second command is written.

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] session id
    ARGV[11] reason ('requested')
  Output: {1, now, field, value, ...} terminated by this call
        | {2, now, field, value, ...} already terminated | {-404}
  Commands: one `terminate` with deadline = now, unless already terminated.
]]
--- @include "common"

local sid = ARGV[10]
local now = now_ms()
if redis.call('EXISTS', session_key(sid)) == 0 then return {-404} end
if terminate(sid, ARGV[11], now, now) then return view(1, sid, now) end
return view(2, sid, now)
