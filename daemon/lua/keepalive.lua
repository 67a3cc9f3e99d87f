--[[
  Keepalive or activity through the API: last_activity_at = now (never backwards, never
  past expires_at); an activity also turns a ready session running. A paused session
  stays paused (a no-op). A keepalive after the session's deadline has passed comes too
  late: what the deadline does happens at that deadline, as the expirer would do it (an
  inactivity deadline held by the lag-safe rule has not passed yet): a terminated
  session answers -409, a paused one its record.

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] session id
    ARGV[11] consumer group of the events stream
    ARGV[12] '1' activity, '0' keepalive
    ARGV[13] source
  Output: {1, now, field, value, ...} | {-404} | {-402, billing status} | {-409}
]]
--- @include "common"
--- @include "stream"

local sid = ARGV[10]
local now = now_ms()
local h = redis.call('HMGET', session_key(sid), 's', 'e', 'l', 'i', 'k', 'o', 'qe', 'a')
if not h[1] then return {-404} end
local _, billing = account_state(h[8])
if billing ~= 'ok' then return {-402, billing} end
if h[1] == 't' then return {-409} end
local deadline, reason, pauses = passed_deadline(h, ARGV[11], now)
if deadline then
  fire(sid, deadline, reason, pauses, now)
  if not pauses then return {-409} end
else
  touch(sid, h[8], now, ARGV[12] == '1', nil, now, ARGV[13])
end
return view(1, sid, now)
