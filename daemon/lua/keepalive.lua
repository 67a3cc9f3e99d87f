--[[
  Keepalive or activity through the API: last_activity_at = now (never backwards, never
  past expires_at); a keepalive leaves the status as it is, an activity turns a ready
  session running. A keepalive after the session's deadline has
  passed comes too late: the session ends at that deadline, as the expirer would end it
  (an inactivity deadline held by the lag-safe rule has not passed yet).

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] session id
    ARGV[11] consumer group of the events stream
    ARGV[12] '1' for an activity, '0' for a keepalive
    ARGV[13] what acted, for the timeline ('' = 'api')
  Output: {1, now, field, value, ...} | {-404} | {-402, billing status} | {-409}
]]
--- @include "common"
--- @include "stream"

local sid = ARGV[10]
local now = now_ms()
local h = redis.call('HMGET', session_key(sid), 'a', 's', 'e', 'l', 'i', 'k')
if not h[1] then return {-404} end
local _, billing = account_state(h[1])
if billing ~= 'ok' then return {-402, billing} end
if h[2] == 't' then return {-409} end
local deadline, reason = deadline_of(tonumber(h[3]), tonumber(h[4]), tonumber(h[5]), h[6])
if deadline <= now and reason == 'inactivity' and deadline > inactivity_limit(ARGV[11], now) then
  -- Held by the lag-safe rule: only the maximum lifetime can have passed.
  deadline, reason = tonumber(h[3]), 'max_lifetime'
end
if deadline <= now then
  terminate(sid, reason, deadline, now)
  return {-409}
end
local source = ARGV[13]
if source == nil or source == '' then source = 'api' end
touch(sid, h[1], now, ARGV[12] == '1', nil, now, source)
return view(1, sid, now)
