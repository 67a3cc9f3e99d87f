--[[
  Pause a session through the API. Pausing a paused session changes nothing (code 2).
  A session whose deadline has already passed gets what that deadline does first, as
  in keepalive.lua (a terminated one answers -409).

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] session id
    ARGV[11] consumer group of the events stream
  Output: {1, now, field, value, ...} paused by this call
        | {2, now, field, value, ...} already paused | {-404} | {-409} terminated
  Commands: one `pause` (reason requested, deadline = now) when paused by this call.
]]
--- @include "common"
--- @include "stream"

local sid = ARGV[10]
local now = now_ms()
local h, refused = settle(sid, ARGV[11], now, false)
if not h then return refused end
if pause(sid, 'requested', now, now) then return view(1, sid, now) end
return view(2, sid, now)
