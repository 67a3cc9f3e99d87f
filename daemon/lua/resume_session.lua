--[[
  Resume a paused session through the API, admitted like a create (SPEC §2 order:
  billing, then the plan's concurrency). Resuming a ready or running session changes
  nothing (code 2). A session whose deadline has already passed gets what that deadline
  does first, as in keepalive.lua: a pause_expires_at that passed terminates it
  (paused_timeout, answered -409); an inactivity deadline of on_inactivity = pause pauses
  it at that deadline, and this call then resumes it.

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] session id
    ARGV[11] consumer group of the events stream
  Output: {1, now, field, value, ...} resumed by this call
        | {2, now, field, value, ...} not paused | {-404} | {-409} terminated
        | {-402, billing status} | {-429, retry-after seconds}
  Commands: one `resume` when resumed by this call.
]]
--- @include "common"
--- @include "stream"

local sid = ARGV[10]
local now = now_ms()
local h, refused = settle(sid, ARGV[11], now, true)
if not h then return refused end
local code, value = resume(sid, now, now)
if code == 0 then return view(2, sid, now) end
if code < 0 then return {code, value} end
return view(1, sid, now)
