--[[
  Keepalive or activity through the API: last_activity_at = now (never backwards, never
  past expires_at); a keepalive leaves the status as it is, an activity turns a ready
  session running. A paused session stays paused (a no-op). A keepalive after the
  session's deadline has passed comes too late: what the deadline does happens at that
  deadline, as the expirer would do it (an inactivity deadline held by the lag-safe rule
  has not passed yet): a terminated session answers -409, a paused one its record.

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] session id
    ARGV[11] consumer group of the events stream
    ARGV[12] '1' for an activity, '0' for a keepalive
    ARGV[13] what acted ('' = 'api')
    ARGV[14] rate limits checked first ('' = none, '1' = requests; see
             includes/rate_limit.lua), ARGV[15] the caller's account scope
  Output (with ARGV[14]: wrapped by with_rate_limit): {1, now, field, value, ...} | {-404} | {-402, billing status} | {-409}
]]
--- @include "common"
--- @include "stream"
--- @include "rate_limit"

local sid = ARGV[10]
local function op()
  local now = now_ms()
  local h, refused = settle(sid, ARGV[11], now, true)
  if not h then return refused end
  local source = ARGV[13]
  if source == nil or source == '' then source = 'api' end
  touch(sid, h[8], now, ARGV[12] == '1', nil, now, source)
  return view(1, sid, now)
end
return with_rate_limit(ARGV[14], sid, '', ARGV[15], op)
