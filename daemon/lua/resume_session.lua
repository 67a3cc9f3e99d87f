--[[
  Resume a paused session through the API, admitted like a create (SPEC §2 order:
  billing, then the plan's concurrency). Resuming a ready or running session changes
  nothing (code 2). A paused session whose pause_expires_at has passed is terminated at
  it (paused_timeout) and answers -409.

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] session id
  Output: {1, now, field, value, ...} resumed by this call
        | {2, now, field, value, ...} not paused | {-404} | {-409} terminated
        | {-402, billing status} | {-429, retry-after seconds}
  Commands: one `resume` when resumed by this call.
]]
--- @include "common"

local sid = ARGV[10]
local now = now_ms()
local h = redis.call('HMGET', session_key(sid), 's', 'a', 'qe')
if not h[1] then return {-404} end
local _, billing = account_state(h[2])
if billing ~= 'ok' then return {-402, billing} end
if h[1] == 't' then return {-409} end
if h[1] == 'p' and h[3] and tonumber(h[3]) <= now then
  terminate(sid, 'paused_timeout', tonumber(h[3]), now)
  return {-409}
end
local code, value = resume(sid, now, now)
if code == 0 then return view(2, sid, now) end
if code < 0 then return {code, value} end
return view(1, sid, now)
