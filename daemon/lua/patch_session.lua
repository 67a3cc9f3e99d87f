--[[
  Change a live session's limits through the API (PATCH): its maximum lifetime
  within the account's plan and never below the time it has already run (running
  time: paused time does not count), its inactivity timeout, its auto_kill, its
  on_inactivity. Not an activity: last_activity_at stays. A paused session keeps its
  pause deadline; the new limits take effect when it resumes.

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] session id
    ARGV[11] timeout_seconds (s; '' = unchanged)
    ARGV[12] inactivity_timeout_seconds (s; '' = unchanged)
    ARGV[13] auto_kill '1' or '0' ('' = unchanged)
    ARGV[14] account id the caller is limited to ('' = any); another account's
             session is reported as unknown
    ARGV[15] on_inactivity 'p' (pause), 't' (terminate) or '' (unchanged)
  Output:
    {1, now, field, value, ...}  changed; the session record (terminated, with reason and
                                 deadline = now, when the new limits' deadline has passed;
                                 paused at now instead when it is an inactivity deadline
                                 and on_inactivity is pause)
    {-404} | {-409} terminated | {-422, message}
]]
--- @include "common"

local sid = ARGV[10]
local timeout, inactivity, auto_kill, scope = ARGV[11], ARGV[12], ARGV[13], ARGV[14]
local now = now_ms()
local key = session_key(sid)
local h = redis.call('HMGET', key, 'a', 's', 'c', 'e', 'l', 'i', 'k', 'w', 'n', 'y', 'qa', 'o')
if not h[1] or (scope ~= '' and scope ~= h[1]) then return {-404} end
if h[2] == 't' then return {-409} end

local e, l = tonumber(h[4]), tonumber(h[5])
local i, k = tonumber(h[6]), h[7]
local paused = h[2] == 'p'
-- The current run started at y (c if never paused); while paused, at the pause.
local since = tonumber((paused and h[11]) or h[10] or h[3])
local ran = tonumber(h[9] or '0')
if not paused then ran = ran + (now - since) end
if timeout ~= '' then
  local plan_name = account_state(h[1])
  local plan = plan_limits(plan_name)
  local wanted = tonumber(timeout)
  if wanted > plan.max_duration then
    return {-422, 'timeout_seconds ' .. timeout .. ' is over the maximum of plan ' .. plan_name
      .. ' (' .. plan.max_duration .. ' seconds)'}
  end
  if wanted * 1000 < ran then
    return {-422, 'timeout_seconds ' .. timeout .. ' is below the time the session has already run ('
      .. math.ceil(ran / 1000) .. ' seconds)'}
  end
  e = since + wanted * 1000 - tonumber(h[9] or '0')
end
if inactivity ~= '' then i = tonumber(inactivity) end
if auto_kill ~= '' then k = auto_kill end

redis.call('HSET', key, 'e', e, 'i', i, 'k', k)
local o = h[12]
if ARGV[15] == 'p' then
  o = 'p'
  redis.call('HSET', key, 'o', 'p')
elseif ARGV[15] == 't' then
  o = nil
  redis.call('HDEL', key, 'o')
end
local changed = {timeout_seconds = tonumber(timeout), inactivity_timeout_seconds = tonumber(inactivity)}
if auto_kill ~= '' then changed.auto_kill = auto_kill == '1' end
if ARGV[15] ~= '' then changed.on_inactivity = o == 'p' and 'pause' or 'terminate' end
if not paused then
  local deadline, reason = deadline_of(e, l, i, k)
  if deadline <= now then
    -- The new limits put the deadline in the past: what it does happens now, at the
    -- PATCH's own time, never back-dated to a moment the session was still allowed to run.
    timeline_add(sid, 'extended', now, changed)
    fire(sid, now, reason, reason == 'inactivity' and o == 'p', now)
    return view(1, sid, now)
  end
  schedule(sid, e, l, i, k, h[8])
end
timeline_add(sid, 'extended', now, changed)
return view(1, sid, now)
