--[[
  Terminate a session on request (API DELETE). Idempotent: an already terminated
  session is returned as it is and no second command is written.

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] session id
    ARGV[11] reason ('requested')
    ARGV[12] consumer group of the events stream ('' = do not look for a passed deadline)
  Output: {1, now, field, value, ...} terminated by this call
        | {2, now, field, value, ...} already terminated | {-404}
  Commands: one `terminate` with deadline = now, unless already terminated. A request
  that comes after the session's deadline has passed (the expirer had not reached it
  yet) comes too late: the session ends at that deadline, with its reason, as the
  expirer would end it (still code 1: this call ended it); a deadline that pauses
  it pauses it there, and the request then ends the paused session.
]]
--- @include "common"
--- @include "stream"

local sid = ARGV[10]
local now = now_ms()
local h = deadline_record(sid)
if not h[1] then return {-404} end
if h[1] ~= 't' and (ARGV[12] or '') ~= '' then
  local deadline, reason, pauses = passed_deadline(h, ARGV[12], now)
  if deadline and fire(sid, deadline, reason, pauses, now) and not pauses then
    return view(1, sid, now)
  end
end
if terminate(sid, ARGV[11], now, now) then return view(1, sid, now) end
return view(2, sid, now)
