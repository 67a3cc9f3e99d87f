--[[
  Terminate the sessions of one partition whose deadline has passed, each with its
  terminate command, in batches (a session with on_inactivity = pause is paused at its
  inactivity deadline instead, with its pause command); and send due `expiring`
  warnings. A paused session's deadline is its pause_expires_at (paused_timeout).

  Lag-safe rule: an inactivity deadline D fires only when every events-stream entry
  whose time is <= D has been applied (not pending, not undelivered), so activity
  that arrived in time always counts. Max-lifetime deadlines never wait.

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] consumer group
    ARGV[11] batch size (most terminations in one call)
  Depletions (SPEC §7): an account whose depletion moment has passed is settled to
  exactly 0, set balance_depleted (from ok) and every live session of it terminates with
  reason billing, deadline = that moment; due low_balance warnings are sent.

  Output: {terminated, next deadline (ms, -1 if none), now, held, warned,
  Output: {terminated, next deadline (ms, -1 if none), now, held, warned,
           terminated for inactivity, terminated for paused_timeout, paused for
           inactivity, terminated at depletions, depletions, low_balance warnings,
           lateness of each termination or pause (ms)...}
    held = 1 when a passed inactivity deadline waits for the consumer; the next deadline
    leaves it out
  Commands: terminate (max_lifetime | inactivity | paused_timeout, deadline = the
  deadline that passed; billing at a depletion), pause (inactivity, deadline = the
  inactivity deadline), expiring, low_balance.
]]
--- @include "common"
--- @include "stream"

local group = ARGV[10]
local batch = tonumber(ARGV[11])
local now = now_ms()

local idle_limit = inactivity_limit(group, now)

local done, by_inactivity, by_paused, paused, lateness = 0, 0, 0, 0, {}
local batch_done = {}
local gone = {}  -- members to take out of the deadlines set, once for the whole batch

-- A live session's record ({s, a, c, n, y, qa, qt, ...}, as terminate reads it), its
-- deadline, the reason it ends with and whether it pauses instead; nil for a session
-- unknown, terminated, or paused with no pause deadline.
local function live(sid)
  local h = redis.call('HMGET', session_key(sid), 's', 'a', 'c', 'n', 'y', 'qa', 'qt',
    'e', 'l', 'i', 'k', 'o', 'qe', 'ma')
  if not h[1] or h[1] == 't' or (h[1] == 'p' and not h[13]) then return nil end
  local deadline, reason, pauses = next_deadline({h[1], h[8], h[9], h[10], h[11], h[12], h[13]})
  return h, deadline, reason, pauses
end

-- Depletion moments already passed, as the pass starts (account -> ms).
local passed = {}
local due_now = redis.call('ZRANGEBYSCORE', K_DEPLETIONS, '-inf', now, 'WITHSCORES')
for j = 1, #due_now, 2 do passed[due_now[j]] = tonumber(due_now[j + 1]) end

-- Returns true when the session leaves the deadlines set (terminated); a paused one
-- stays in it under its pause deadline. A running metered one whose account's balance
-- ran out at or before its deadline is left (false, true): it ends at that depletion
-- (below).
local function expire(sid, reason, deadline, h, pauses)
  if h[14] and passed[h[2]] and passed[h[2]] <= deadline then return false, true end
  if pauses then
    if pause(sid, 'inactivity', deadline, now) then
      paused = paused + 1
      lateness[#lateness + 1] = now - deadline
    end
    return false
  end
  if terminate(sid, reason, deadline, now, h, batch_done) then
    done = done + 1
    if reason == 'inactivity' then by_inactivity = by_inactivity + 1 end
    if reason == 'paused_timeout' then by_paused = by_paused + 1 end
    lateness[#lateness + 1] = now - deadline
  end
  return true
end

-- A session whose inactivity deadline has passed but is held (lag-safe rule) stays in
-- the deadlines set under its max-lifetime deadline, which never waits, and goes into
-- the held set under its inactivity deadline. Held entries the consumer has caught up
-- with fire first. An entry whose record moved on (activity applied, limits changed,
-- session ended) is dropped: the deadlines set holds that session's current deadline.
local held_due = redis.call('ZRANGEBYSCORE', K_HELD, '-inf', idle_limit, 'LIMIT', 0, batch)
local still_held = {}
for _, sid in ipairs(held_due) do
  local h, deadline, reason, pauses = live(sid)
  if h and deadline <= idle_limit then
    local leaves, deferred = expire(sid, reason, deadline, h, pauses)
    if leaves then
      gone[#gone + 1] = sid
    elseif deferred then
      still_held[#still_held + 1] = {deadline, sid}
    end
  end
end
if #held_due > 0 then redis.call('ZREM', K_HELD, unpack(held_due)) end
for _, entry in ipairs(still_held) do redis.call('ZADD', K_HELD, entry[1], entry[2]) end

local room = batch - #held_due
if room > 0 then
  local due = redis.call('ZRANGEBYSCORE', K_DEADLINES, '-inf', now, 'LIMIT', 0, room)
  for _, sid in ipairs(due) do
    local h, deadline, reason, pauses = live(sid)
    if not h then
      gone[#gone + 1] = sid
    else
      local e = tonumber(h[8])
      if reason == 'inactivity' and deadline > idle_limit then
        if e <= now then
          if expire(sid, 'max_lifetime', e, h, false) then gone[#gone + 1] = sid end
        else
          redis.call('ZADD', K_HELD, deadline, sid)
          redis.call('ZADD', K_DEADLINES, e, sid)
        end
      elseif deadline <= now then
        if expire(sid, reason, deadline, h, pauses) then gone[#gone + 1] = sid end
      else
        redis.call('ZADD', K_DEADLINES, deadline, sid)  -- a stale score: repair it
      end
    end
  end
end
if #gone > 0 then redis.call('ZREM', K_DEADLINES, unpack(gone)) end
flush_batch(batch_done)

-- Depletions: after the sessions' own deadlines, so that a session whose deadline came
-- first ends for that.
local by_billing, depletions = 0, 0
room = batch - done
if room > 0 then
  local due = redis.call('ZRANGEBYSCORE', K_DEPLETIONS, '-inf', now, 'WITHSCORES', 'LIMIT', 0, room)
  for j = 1, #due, 2 do
    local ended, dep = deplete(due[j], tonumber(due[j + 1]), now)
    if ended then
      depletions = depletions + 1
      by_billing = by_billing + ended
      for _ = 1, ended do lateness[#lateness + 1] = now - dep end
    end
  end
end

local low_warned = 0
for _, account in ipairs(redis.call('ZRANGEBYSCORE', K_LOWBAL, '-inf', now, 'LIMIT', 0, batch)) do
  redis.call('ZREM', K_LOWBAL, account)
  local dep = tonumber(redis.call('ZSCORE', K_DEPLETIONS, account))
  if dep and redis.call('HGET', account_key(account), 'mw') ~= '1' then
    redis.call('HSET', account_key(account), 'mw', '1')
    emit('type', 'low_balance', 'account_id', account,
      'balance', credits_text((credit_state(account, now))), 'depletes_at', int_str(dep))
    low_warned = low_warned + 1
  end
end

local warned = 0
if WARN_MS > 0 then
  for _, sid in ipairs(redis.call('ZRANGEBYSCORE', K_WARN, '-inf', now, 'LIMIT', 0, batch)) do
    redis.call('ZREM', K_WARN, sid)
    local key = session_key(sid)
    local h = redis.call('HMGET', key, 's', 'a', 'e', 'l', 'i', 'k')
    if h[1] and h[1] ~= 't' and h[1] ~= 'p' then
      local deadline, reason = deadline_of(tonumber(h[3]), tonumber(h[4]), tonumber(h[5]), h[6])
      redis.call('HSET', key, 'w', deadline)
      emit('type', 'expiring', 'session_id', sid, 'account_id', h[2], 'reason', reason,
        'terminates_at', deadline)
      timeline_add(sid, 'expiring', now, {reason = reason, terminates_at = deadline})
      warned = warned + 1
    end
  end
end

local next_due = -1
local held = 0
local head = redis.call('ZRANGE', K_DEADLINES, 0, 0, 'WITHSCORES')
if #head > 0 then next_due = tonumber(head[2]) end
-- A held deadline waits for the consumer, not for the clock: it is reported apart. Entries
-- whose session moved on are dropped here, so that held says a session really waits.
while true do
  head = redis.call('ZRANGE', K_HELD, 0, 0, 'WITHSCORES')
  if #head == 0 then break end
  local d = tonumber(head[2])
  if d <= idle_limit then
    if next_due < 0 or d < next_due then next_due = d end  -- more than a batch was due
    break
  end
  local h, deadline, reason = live(head[1])
  if h and deadline == d and reason == 'inactivity' then
    held = 1
    break
  end
  redis.call('ZREM', K_HELD, head[1])
end
if WARN_MS > 0 then
  head = redis.call('ZRANGE', K_WARN, 0, 0, 'WITHSCORES')
  if #head > 0 and (next_due < 0 or tonumber(head[2]) < next_due) then
    next_due = tonumber(head[2])
  end
end
for _, key in ipairs({K_DEPLETIONS, K_LOWBAL}) do
  head = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if #head > 0 and (next_due < 0 or tonumber(head[2]) < next_due) then
    next_due = tonumber(head[2])
  end
end
local out = {done, next_due, now, held, warned, by_inactivity, by_paused, paused, by_billing,
  depletions, low_warned}
for _, ms in ipairs(lateness) do out[#out + 1] = ms end
return out
