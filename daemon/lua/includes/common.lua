--[[
  Shared by every lifecycled script: the partition context, the session record,
  scheduling of deadlines, admission and termination.

  Every script receives the same KEYS and leading ARGV, so that one table in
  daemon/scripts.py can call any of them:

  Input:
    KEYS[1] events stream        P:{p}:events
    KEYS[2] commands stream      P:{p}:commands
    KEYS[3] dead-letter stream   P:{p}:dead
    KEYS[4] deadlines sorted set P:{p}:deadlines  member session id (every live session),
            score its effective deadline (ms); while an inactivity deadline is held by the
            lag-safe rule, its max-lifetime deadline
    KEYS[5] held sorted set      P:{p}:held   member session id, score the inactivity
            deadline the lag-safe rule holds (ms); checked lazily against the record
    KEYS[6] warn sorted set      P:{p}:warn   member session id, score warning time (ms)
    KEYS[7] lease string         P:{p}:lease  replica id of the partition's consumer

    ARGV[1] key base "P:{p}:"; session, account and live-set keys are built from it and
            share the partition's hash tag, so every script touches a single slot
    ARGV[2] plans "name:max_concurrent:max_duration_seconds:requests_per_minute:
            creates_per_minute:credits_per_hour_micro:max_paused_seconds,..."
            (-1 = unlimited, or not metered); see daemon/plans.py encode_plans
    ARGV[3] default plan name
    ARGV[4] warn_before_ms (0 = no expiring warnings)
    ARGV[5] terminated_retention_ms
    ARGV[6] commands_maxlen (approximate trim of the commands stream)
    ARGV[7] billing_hold_terminates "1" or "0"
    ARGV[8] max_clock_skew_ms
    ARGV[9] further settings, "name=value,..." (read as OPT.name; see Store.options)
    ARGV[10...] the script's own arguments

  Session hash fields: a account, p plan, s status (r ready, u running, p paused,
  t terminated), c created_at, e expires_at, l last_activity_at (ms), i inactivity
  timeout (s), k auto_kill "1"/"0", t terminated_at (ms), x termination reason, w the
  deadline an expiring warning was sent for; pause and resume (absent = the value of a
  session never paused): o on_inactivity ("p" pause; absent: terminate), n running ms
  before the current run (0; the total once terminated), y start of the current run
  (resumed_at; c), qa paused_at, qe pause_expires_at (absent: the pause never times
  out), qt paused ms before the current pause (0), qs source of the last activity or
  keepalive, qc count of activities and keepalives applied.
  While running, e = y + (max lifetime - n): the maximum lifetime is (e - y + n) / 1000,
  not stored, and e is the session's deadline as in 0.2. While paused, e is left as it
  was at the pause (the maximum lifetime is (e - qa + n) / 1000) and the session's
  deadlines member is qe; it is in no live set.
  Credit fields (m...) of sessions and accounts: see includes/credits.lua.
]]
local K_EVENTS, K_COMMANDS, K_DEAD = KEYS[1], KEYS[2], KEYS[3]
local K_DEADLINES, K_HELD, K_WARN, K_LEASE = KEYS[4], KEYS[5], KEYS[6], KEYS[7]

local BASE = ARGV[1]
local DEFAULT_PLAN = ARGV[3]
local WARN_MS = tonumber(ARGV[4])
local RETENTION_MS = tonumber(ARGV[5])
local COMMANDS_MAXLEN = ARGV[6]
local BILLING_HOLD = ARGV[7] == '1'
local SKEW_MS = tonumber(ARGV[8])
local OPT = {}
for name, value in string.gmatch(ARGV[9], '([%w_]+)=([^,]*)') do OPT[name] = value end

local PLANS = {}
for name, concurrent, duration, rpm, cpm, credits, paused in
    string.gmatch(ARGV[2], '([^:,]+):(-?%d+):(%d+):(-?%d+):(-?%d+):(-?%d+):(-?%d+)') do
  PLANS[name] = {max_concurrent = tonumber(concurrent), max_duration = tonumber(duration),
    requests_per_minute = tonumber(rpm), creates_per_minute = tonumber(cpm),
    credits_per_hour_micro = tonumber(credits), max_paused = tonumber(paused)}
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Stream entry id "<ms>-<seq>" -> its time in ms.
local function id_ms(id)
  return tonumber(string.match(id, '^(%d+)'))
end

local function session_key(sid) return BASE .. 's:' .. sid end
local function account_key(account) return BASE .. 'a:' .. account end
local function live_key(account) return BASE .. 'live:' .. account end
--- @include "timeline"

-- Plan name and billing status of an account; an account never written has the defaults.
local function account_state(account)
  local v = redis.call('HMGET', account_key(account), 'plan', 'billing')
  return v[1] or DEFAULT_PLAN, v[2] or 'ok'
end

local function plan_limits(name)
  return PLANS[name] or PLANS[DEFAULT_PLAN]
end

local function deadline_of(e, l, i, k)
  if k == '1' then
    local idle = l + i * 1000
    if idle < e then return idle, 'inactivity' end
  end
  return e, 'max_lifetime'
end

-- (Re)write a live session's deadline and warning time after a change of e, l, i or k.
-- Returns its effective deadline.
local function schedule(sid, e, l, i, k, warned)
  local deadline = deadline_of(e, l, i, k)
  redis.call('ZADD', K_DEADLINES, deadline, sid)
  if WARN_MS > 0 and tostring(deadline) ~= warned then
    redis.call('ZADD', K_WARN, deadline - WARN_MS, sid)
  end
  return deadline
end

local function emit(...)
  return redis.call('XADD', K_COMMANDS, 'MAXLEN', '~', COMMANDS_MAXLEN, '*', ...)
end
--- @include "credits"

-- The single place a session becomes terminated. Returns false (and writes nothing)
-- when it is unknown or already terminated: this check is what makes the terminate
-- command exactly-once across retries, crashes and replicas.
-- ``loaded``: the session's {s, a, c, n, y, qa, qt} when the caller has read them.
-- ``batch``: expire_due's batch, which takes the session out of the deadlines set and
-- its account's live set once for the whole batch (see flush_batch). A held entry of
-- the session is left for expire_due to drop when it next reads it.
-- The record keeps the session's running time in n (running_ms of the command) and,
-- when it ends paused, its paused time in qt. A session never ends before its current
-- run or pause began (a stream entry older than the API call that started it ends it
-- at that start).
local function terminate(sid, reason, deadline, now, loaded, batch)
  local key = session_key(sid)
  local h = loaded or redis.call('HMGET', key, 's', 'a', 'c', 'n', 'y', 'qa', 'qt')
  if not h[1] or h[1] == 't' then return false end
  local created = tonumber(h[3])
  local run = tonumber(h[4] or '0')
  local since = tonumber(h[5] or h[3])
  if h[1] == 'p' then since = tonumber(h[6]) end
  if deadline < since then deadline = since end
  if h[1] == 'p' then
    local qt = tonumber(h[7] or '0') + (deadline - since)
    redis.call('HSET', key, 's', 't', 't', deadline, 'x', reason, 'n', run, 'qt', qt)
  else
    run = run + (deadline - since)
    redis.call('HSET', key, 's', 't', 't', deadline, 'x', reason, 'n', run)
  end
  local used = meter_stop(h[2], sid, deadline)
  if batch then
    local of_account = batch[h[2]]
    if not of_account then
      of_account = {}
      batch[h[2]] = of_account
    end
    of_account[#of_account + 1] = sid
  else
    redis.call('ZREM', K_DEADLINES, sid)
    redis.call('SREM', live_key(h[2]), sid)
  end
  if WARN_MS > 0 then redis.call('ZREM', K_WARN, sid) end
  redis.call('PEXPIRE', key, RETENTION_MS)
  timeline_add(sid, 'terminated', now, {reason = reason, deadline = deadline})
  if reason ~= 'external' then
    emit('type', 'terminate', 'session_id', sid, 'account_id', h[2], 'reason', reason,
      'deadline', deadline, 'emitted_at', now, 'created_at', created,
      'duration_ms', math.max(0, deadline - created), 'running_ms', run,
      'credits_used', credits_text(used))
  end
  return true
end

-- Finish a batch of terminations: one SREM per account.
local function flush_batch(batch)
  for account, sids in pairs(batch) do
    redis.call('SREM', live_key(account), unpack(sids))
  end
end
--- @include "topups"

-- Seconds until the earliest live session of the account ends (at least 1).
local function retry_after_seconds(account, now)
  local earliest = nil
  for _, sid in ipairs(redis.call('SMEMBERS', live_key(account))) do
    local h = redis.call('HMGET', session_key(sid), 'e', 'l', 'i', 'k')
    if h[1] then
      local d = deadline_of(tonumber(h[1]), tonumber(h[2]), tonumber(h[3]), h[4])
      if earliest == nil or d < earliest then earliest = d end
    end
  end
  if earliest == nil then return 1 end
  return math.max(1, math.ceil((earliest - now) / 1000))
end

-- Admission (SPEC §2, in its order) of one more live session of the account at time at:
-- plan name and limits, then nil, or -402, billing status | -429, retry-after seconds.
local function admit(account, at)
  local plan_name, billing = account_state(account)
  local plan = plan_limits(plan_name)
  if billing ~= 'ok' then return plan_name, plan, -402, billing end
  if plan.credits_per_hour_micro >= 0 then
    -- Used up, before the expirer has reached the depletion (SPEC §7).
    local balance = credit_state(account, at)
    if balance and balance <= 0 then return plan_name, plan, -402, 'balance_depleted' end
  end
  if plan.max_concurrent >= 0
     and redis.call('SCARD', live_key(account)) >= plan.max_concurrent then
    return plan_name, plan, -429, retry_after_seconds(account, at)
  end
  return plan_name, plan
end

--[[
  Admission (SPEC §2, in its order) and creation of a session.
  timeout and inactivity are strings ('' = default); auto_kill '1'/'0'; on_inactivity
  'p' (pause) or '' (terminate);
  deferred_error: a field error found by the caller, reported after billing and limits.
  Returns 1, the earliest time the expirer must look (the session's deadline, or sooner its
  account's depletion or low-balance warning) | -402, billing status | -429, retry-after seconds
        | -422, message | -409, ''
]]
local function create_session(sid, account, timeout, inactivity, auto_kill, deferred_error,
                              created_at, on_inactivity)
  local plan_name, plan, code, value = admit(account, created_at)
  if code then return code, value end
  if deferred_error ~= '' then return -422, deferred_error end
  local m = tonumber(timeout) or math.min(3600, plan.max_duration)
  if m > plan.max_duration then
    -- The number as sent: tostring of a large Lua number would print it as a float.
    return -422, 'timeout_seconds ' .. timeout .. ' is over the maximum of plan ' .. plan_name
      .. ' (' .. plan.max_duration .. ' seconds)'
  end
  local key = session_key(sid)
  if redis.call('EXISTS', key) == 1 then return -409, '' end
  local i = tonumber(inactivity) or 300
  local e = created_at + m * 1000
  redis.call('HSET', key, 'a', account, 'p', plan_name, 's', 'r', 'c', created_at,
    'e', e, 'l', created_at, 'i', i, 'k', auto_kill)
  if on_inactivity == 'p' then redis.call('HSET', key, 'o', 'p') end
  redis.call('SADD', live_key(account), sid)
  local metering = meter_start(account, sid, created_at)
  timeline_add(sid, 'created', created_at)
  local deadline = schedule(sid, e, created_at, i, auto_kill, nil)
  return 1, math.min(deadline, metering or deadline)
end

--[[
  The single place a ready or running session becomes paused, at time ``at`` (an
  inactivity deadline, or the time of the request), with its `pause` command. Returns
  false (and writes nothing) unless the session is ready or running: as for terminate,
  this check makes the command exactly-once. Otherwise returns the session's new
  deadline, its pause_expires_at (at + the plan's max_paused_seconds), or -1 when the
  plan's pauses never time out. The run since y is added to n; the session leaves its
  account's live set.
]]
local function pause(sid, reason, at, now)
  local key = session_key(sid)
  local h = redis.call('HMGET', key, 's', 'a', 'c', 'n', 'y')
  if h[1] ~= 'r' and h[1] ~= 'u' then return false end
  local since = tonumber(h[5] or h[3])
  if at < since then at = since end
  local run = tonumber(h[4] or '0') + (at - since)
  local limit = plan_limits((account_state(h[2]))).max_paused
  local expires = -1
  if limit >= 0 then
    expires = at + limit * 1000
    redis.call('HSET', key, 's', 'p', 'n', run, 'qa', at, 'qe', expires)
    redis.call('ZADD', K_DEADLINES, expires, sid)
  else
    redis.call('HSET', key, 's', 'p', 'n', run, 'qa', at)
    redis.call('HDEL', key, 'qe')
    redis.call('ZREM', K_DEADLINES, sid)
  end
  redis.call('SREM', live_key(h[2]), sid)
  if WARN_MS > 0 then redis.call('ZREM', K_WARN, sid) end
  meter_stop(h[2], sid, at)
  timeline_add(sid, 'paused', at, {reason = reason})
  emit('type', 'pause', 'session_id', sid, 'account_id', h[2], 'reason', reason,
    'deadline', at, 'emitted_at', now)
  return expires
end

--[[
  Admission (SPEC §2 order, as for a create) and resumption of a paused session at time
  ``at`` (never before it paused): the lifetime left is what it was at the pause, the
  inactivity deadline starts again from ``at`` (last_activity_at = at), and the session
  rejoins its account's live set; one `resume` command.
  Returns 1, the earliest time the expirer must look (as create_session) | 0 not paused (nothing written) | -402, billing status
        | -429, retry-after seconds
]]
local function resume(sid, at, now)
  local key = session_key(sid)
  local h = redis.call('HMGET', key, 's', 'a', 'e', 'i', 'k', 'w', 'qa', 'qt')
  if h[1] ~= 'p' then return 0 end
  local account = h[2]
  local _, _, code, value = admit(account, now)
  if code then return code, value end
  local qa = tonumber(h[7])
  if at < qa then at = qa end
  local e = tonumber(h[3]) + (at - qa)
  redis.call('HSET', key, 's', 'u', 'e', e, 'y', at, 'l', at,
    'qt', tonumber(h[8] or '0') + (at - qa))
  redis.call('HDEL', key, 'qa', 'qe')
  redis.call('SADD', live_key(account), sid)
  local metering = meter_start(account, sid, at)
  timeline_add(sid, 'resumed', at)
  emit('type', 'resume', 'session_id', sid, 'account_id', account, 'emitted_at', now)
  local deadline = schedule(sid, e, at, tonumber(h[4]), h[5], h[6])
  return 1, math.min(deadline, metering or deadline)
end

-- What a live session's next deadline is and what it does: deadline (ms or nil), reason,
-- and whether it pauses instead of terminating. h: {s, e, l, i, k, o, qe}.
local function next_deadline(h)
  if h[1] == 'p' then return tonumber(h[7]), 'paused_timeout', false end
  local deadline, reason = deadline_of(tonumber(h[2]), tonumber(h[3]), tonumber(h[4]), h[5])
  return deadline, reason, reason == 'inactivity' and h[6] == 'p'
end

-- A session's record as next_deadline reads it, then its account (h[8]); h[1] is nil
-- for an unknown session.
local function deadline_record(sid)
  return redis.call('HMGET', session_key(sid), 's', 'e', 'l', 'i', 'k', 'o', 'qe', 'a')
end

-- Let a passed deadline do what it does, at that deadline: pause or terminate.
-- Returns the outcome: 'paused:inactivity', 'ended:<reason>', or nil if nothing changed.
local function fire(sid, deadline, reason, pauses, now)
  if pauses then
    if pause(sid, 'inactivity', deadline, now) then return 'paused:inactivity' end
  elseif terminate(sid, reason, deadline, now) then
    return 'ended:' .. reason
  end
  return nil
end

-- A stream entry that arrived after the session's deadline came too late: the deadline
-- passed without it (every earlier entry has been applied, in stream order), so what
-- the deadline does happens now, at that deadline. h as next_deadline reads it.
-- Returns the outcome, or nil when the entry arrived in time.
local function overdue(sid, h, arrived, now)
  local deadline, reason, pauses = next_deadline(h)
  if deadline == nil or deadline >= arrived then return nil end
  return fire(sid, deadline, reason, pauses, now)
end

--[[
  Activity or keepalive at time ts (ms), from ``source``. Moves last_activity_at forward
  only; an activity also turns a ready session running; counts it (qc) and records its
  source (qs). A paused session is not resumed by it. Returns 'applied' or
  'ignored:<why>'.
  arrived: when a stream entry entered the stream (nil through the API). An entry that
  arrived after the session's deadline came too late (see overdue): its outcome is that
  of the deadline.
]]
local function touch(sid, account, ts, is_activity, arrived, now, source)
  local key = session_key(sid)
  local h = redis.call('HMGET', key, 's', 'e', 'l', 'i', 'k', 'o', 'qe', 'a', 'w')
  if not h[1] or h[8] ~= account then return 'ignored:unknown_session' end
  if h[1] == 't' then return 'ignored:terminated' end
  if arrived then
    local outcome = overdue(sid, h, arrived, now)
    if outcome then return outcome end
  end
  if h[1] == 'p' then return 'ignored:paused' end
  local l = tonumber(h[3])
  if ts < l then return 'ignored:stale' end
  redis.call('HINCRBY', key, 'qc', 1)
  local fields = {'qs', source}
  if is_activity and h[1] == 'r' then
    fields[3], fields[4] = 's', 'u'
    timeline_add(sid, 'running', ts, {source = source})
  else
    timeline_touch(sid, is_activity and 'activity' or 'keepalive', source, ts)
  end
  if ts > l then
    fields[#fields + 1], fields[#fields + 2] = 'l', ts
    -- Without auto_kill the deadline is the maximum lifetime, which activity never moves.
    if h[5] == '1' then schedule(sid, tonumber(h[2]), ts, tonumber(h[4]), h[5], h[9]) end
  end
  redis.call('HSET', key, unpack(fields))
  return 'applied'
end

-- Billing status (and optionally plan) of an account; a hold terminates its live sessions.
local function set_billing(account, status, plan, at, now)
  if plan ~= '' then
    redis.call('HSET', account_key(account), 'plan', plan, 'billing', status)
  else
    redis.call('HSET', account_key(account), 'billing', status)
  end
  local ended = 0
  if status ~= 'ok' and BILLING_HOLD then
    for _, sid in ipairs(redis.call('SMEMBERS', live_key(account))) do
      -- A session whose own deadline passed before the hold ends (or pauses) at that
      -- deadline, as the expirer would have done had it reached it first.
      local h = deadline_record(sid)
      if h[1] and h[1] ~= 't' and not overdue(sid, h, at, now)
         and terminate(sid, 'billing', at, now) then
        ended = ended + 1
      end
    end
  end
  return ended
end

-- A session's record for the caller: {code, now, field, value, ...}.
local function view(code, sid, now)
  local out = redis.call('HGETALL', session_key(sid))
  table.insert(out, 1, now)
  table.insert(out, 1, code)
  return out
end
