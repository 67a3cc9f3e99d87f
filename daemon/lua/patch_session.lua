--[[
  Change a live session's limits through the API (PATCH): its maximum lifetime
  within the account's plan and never below the time it has already run, its
  inactivity timeout, its auto_kill. Not an activity: last_activity_at stays.

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] session id
    ARGV[11] timeout_seconds (s; '' = unchanged)
    ARGV[12] inactivity_timeout_seconds (s; '' = unchanged)
    ARGV[13] auto_kill '1' or '0' ('' = unchanged)
    ARGV[14] account id the caller is limited to ('' = any); another account's
             session is reported as unknown
  Output:
    {1, now, field, value, ...}  changed; the session record (terminated, with reason and
                                 deadline = now, when the new limits' deadline has passed)
    {-404} | {-409} terminated | {-422, message}
]]
--- @include "common"

local sid = ARGV[10]
local timeout, inactivity, auto_kill, scope = ARGV[11], ARGV[12], ARGV[13], ARGV[14]
local now = now_ms()
local key = session_key(sid)
local h = redis.call('HMGET', key, 'a', 's', 'c', 'e', 'l', 'i', 'k', 'w')
if not h[1] or (scope ~= '' and scope ~= h[1]) then return {-404} end
if h[2] == 't' then return {-409} end

local c, e, l = tonumber(h[3]), tonumber(h[4]), tonumber(h[5])
local i, k = tonumber(h[6]), h[7]
if timeout ~= '' then
  local plan_name = account_state(h[1])
  local plan = plan_limits(plan_name)
  local wanted = tonumber(timeout)
  if wanted > plan.max_duration then
    return {-422, 'timeout_seconds ' .. timeout .. ' is over the maximum of plan ' .. plan_name
      .. ' (' .. plan.max_duration .. ' seconds)'}
  end
  if c + wanted * 1000 < now then
    return {-422, 'timeout_seconds ' .. timeout .. ' is below the time the session has already run ('
      .. math.ceil((now - c) / 1000) .. ' seconds)'}
  end
  e = c + wanted * 1000
end
if inactivity ~= '' then i = tonumber(inactivity) end
if auto_kill ~= '' then k = auto_kill end

redis.call('HSET', key, 'e', e, 'i', i, 'k', k)
local deadline, reason = deadline_of(e, l, i, k)
if deadline <= now then
  -- The new limits put the deadline in the past: the session ends now, at the PATCH's own
  -- time, never back-dated to a moment it was still allowed to run.
  terminate(sid, reason, now, now)
  return view(1, sid, now)
end
schedule(sid, e, l, i, k, h[8])
local changed = {timeout_seconds = tonumber(timeout), inactivity_timeout_seconds = tonumber(inactivity)}
if auto_kill ~= '' then changed.auto_kill = auto_kill == '1' end
timeline_add(sid, 'extended', now, changed)
return view(1, sid, now)
