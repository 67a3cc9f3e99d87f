--[[
  Keepalive through the API: last_activity_at = now (never backwards, never past
  expires_at); the status stays as it is.

  Input: KEYS and ARGV[1..8] as in includes/common.lua, then
    ARGV[9] session id
  Output: {1, now, field, value, ...} | {-404} | {-402, billing status} | {-409}
]]
--- @include "common"

local sid = ARGV[9]
local now = now_ms()
local h = redis.call('HMGET', session_key(sid), 'a', 's')
if not h[1] then return {-404} end
local _, billing = account_state(h[1])
if billing ~= 'ok' then return {-402, billing} end
if h[2] == 't' then return {-409} end
touch(sid, h[1], now, false)
return view(1, sid, now)
