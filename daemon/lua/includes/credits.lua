--[[
  Metering of prepaid credits (SPEC §7), included by common.lua after `emit`.

  meter_start(account, sid, t): a session starts running (create, resume): its rate
  joins the account's burn and the depletion deadline moves.
  meter_stop(account, sid, t): a session stops running (every termination path, pause):
  its rate leaves the burn; returns the credits it used while running, in micro-credits.

  Every change of burn or balance settles first (settle_credits), then changes, then reschedules
  the depletion (reschedule).

  Session hash fields: mr the rate the session consumes (micro-credits per running hour,
  the plan's at its start; absent: not metered), ma when it started running metered (ms;
  absent while not running), mu micro-credits used by earlier runs (and, once
  terminated, in all).

  Account hash fields: mb balance (micro-credits) at mt, mt the time of the last settle
  (ms), mr burn (micro-credits per hour: the rates of its running metered sessions), mn
  running metered sessions, mc micro-credits consumed in all, ms metered
  session-milliseconds in all, mw '1' once a low_balance warning was sent (cleared by a
  top-up that moves the depletion out of the warning window). An account is metered
  once it has mb (its first top-up) and its plan has a rate. mb + mc is every
  micro-credit ever topped up.
]]
-- Accounts' depletion moments and low-balance warning times: member account id. Sorted
-- sets of their own, not members of the deadlines set: a session id may contain ':' and
-- so may look like any account member, and a 0.2 expire_due drops deadlines members it
-- finds no session record for.
local K_DEPLETIONS = BASE .. 'depletions'
local K_LOWBAL = BASE .. 'lowbal'
local K_CONSUMED = BASE .. 'consumed'  -- micro-credits consumed in the partition, in all
local LOWBAL_MS = (tonumber(OPT.low_balance_warn_ms) or 0)

-- An integer as Redis should store it: Lua's own conversion keeps only 14 digits.
local function int_str(n) return string.format('%.0f', n) end

-- Micro-credits a burn of ``burn`` micro-credits per hour consumes in ``dt`` ms, rounded
-- down; exact while the result is below 2^53 (balances are capped well below it), since
-- every partial product is: burn = q*H + r, dt = dh*H + dm.
local HOUR_MS = 3600000
local function consumed(burn, dt)
  if burn <= 0 or dt <= 0 then return 0 end
  local q = math.floor(burn / HOUR_MS)
  local r = burn - q * HOUR_MS
  local dh = math.floor(dt / HOUR_MS)
  local dm = dt - dh * HOUR_MS
  return burn * dh + q * dm + math.floor(r * dm / HOUR_MS)
end

-- The first ms at which ``bal`` micro-credits settled at ``at`` are used up at ``burn``:
-- a double estimate corrected against consumed(), so the deadline is never early.
local function depletion_time(bal, at, burn)
  if bal <= 0 then return at end
  local dt = math.ceil(bal * HOUR_MS / burn)
  if dt > 1e15 then return at + 1e15 end
  while consumed(burn, dt) < bal do dt = dt + 1 end
  while dt > 0 and consumed(burn, dt - 1) >= bal do dt = dt - 1 end
  return at + dt
end

-- Bring a metered account's balance to time t (no-op when t is not after its last settle).
-- Returns bal, at, burn after it; nil for an account without a balance.
local function settle_credits(account, t)
  local key = account_key(account)
  local v = redis.call('HMGET', key, 'mb', 'mt', 'mr', 'mn')
  if not v[1] then return nil end
  local bal, at, burn, n = tonumber(v[1]), tonumber(v[2]), tonumber(v[3]) or 0, tonumber(v[4]) or 0
  if t > at then
    local used = math.min(bal, consumed(burn, t - at))
    bal = bal - used
    redis.call('HSET', key, 'mb', int_str(bal), 'mt', int_str(t))
    if used > 0 then
      redis.call('HINCRBY', key, 'mc', int_str(used))
      redis.call('INCRBY', K_CONSUMED, int_str(used))
    end
    if n > 0 then redis.call('HINCRBY', key, 'ms', int_str(n * (t - at))) end
    at = t
  end
  return bal, at, burn
end

-- Move an account's depletion (and low-balance warning) to match bal, at and burn.
-- Returns the earliest of the two times (nil when the account does not burn), for the
-- caller to wake the expirer. A balance already used up keeps the depletion moment it
-- had: the one its sessions end with.
local function reschedule(account, bal, at, burn)
  if burn <= 0 then
    redis.call('ZREM', K_DEPLETIONS, account)
    redis.call('ZREM', K_LOWBAL, account)
    return nil
  end
  local dep
  if bal <= 0 then
    local old = tonumber(redis.call('ZSCORE', K_DEPLETIONS, account))
    dep = (old and old <= at) and old or at
  else
    dep = depletion_time(bal, at, burn)
  end
  redis.call('ZADD', K_DEPLETIONS, int_str(dep), account)
  local wake = dep
  if LOWBAL_MS > 0 and redis.call('HGET', account_key(account), 'mw') ~= '1' then
    wake = dep - LOWBAL_MS
    redis.call('ZADD', K_LOWBAL, int_str(wake), account)
  end
  return wake
end

-- Charge (sign 1) or refund (sign -1) the run of a rate between t and the account's last
-- settle ``at`` when a session starts or stops at t < at (a lagging entry, a late expiry).
local function backdate(account, rate, t, at, bal, sign)
  if t >= at then return bal end
  local amount = consumed(rate, at - t)
  if sign > 0 then amount = math.min(amount, bal) end
  bal = bal - sign * amount
  local key = account_key(account)
  redis.call('HSET', key, 'mb', int_str(bal))
  redis.call('HINCRBY', key, 'mc', int_str(sign * amount))
  redis.call('INCRBY', K_CONSUMED, int_str(sign * amount))
  redis.call('HINCRBY', key, 'ms', int_str(sign * (at - t)))
  return bal
end

-- A session starts running at t (create; resume): when its account is metered and its
-- plan has a rate, the session keeps that rate (a later plan change does not rewrite it).
-- Returns the time the expirer must next look at the account (nil: none).
local function meter_start(account, sid, t)
  local plan = plan_limits((account_state(account)))
  local skey = session_key(sid)
  local rate = tonumber(redis.call('HGET', skey, 'mr')) or plan.credits_per_hour_micro
  if rate < 0 then return end
  local bal, at, burn = settle_credits(account, t)
  if not bal then return end
  if t < at and bal > 0 and consumed(rate, at - t) >= bal then
    -- Started before the last settle (a lagging entry), with too little left to pay for
    -- the run since: the balance ran out in the past, at the moment the burn with this
    -- session would have used up what was left at t.
    local past = depletion_time(bal + consumed(burn, at - t), t, burn + rate)
    local old = tonumber(redis.call('ZSCORE', K_DEPLETIONS, account))
    if not old or past < old then redis.call('ZADD', K_DEPLETIONS, int_str(past), account) end
  end
  bal = backdate(account, rate, t, at, bal, 1)
  redis.call('HSET', skey, 'mr', int_str(rate), 'ma', int_str(t))
  redis.call('HINCRBY', account_key(account), 'mn', 1)
  burn = burn + rate
  redis.call('HSET', account_key(account), 'mr', int_str(burn))
  return reschedule(account, bal, at, burn)
end

-- A session stops running at t (every termination; pause). Returns the micro-credits it
-- has used in all (0 when not metered) and records them as mu.
local function meter_stop(account, sid, t)
  local skey = session_key(sid)
  local v = redis.call('HMGET', skey, 'mr', 'ma', 'mu')
  local used = tonumber(v[3]) or 0
  if not v[1] or not v[2] then return used end
  local rate, started = tonumber(v[1]), tonumber(v[2])
  -- A stop after the account's balance ran out (its depletion not yet handled: the
  -- expirer is behind) used nothing past that moment: there was nothing left to use.
  local ran_out = tonumber(redis.call('ZSCORE', K_DEPLETIONS, account))
  local until_ms = t
  if ran_out and ran_out < until_ms then until_ms = ran_out end
  used = used + consumed(rate, math.max(0, until_ms - started))
  redis.call('HSET', skey, 'mu', int_str(used))
  redis.call('HDEL', skey, 'ma')
  local bal, at, burn = settle_credits(account, t)
  if not bal then return used end
  local key = account_key(account)
  local rest = math.max(0, burn - rate)
  local dep = tonumber(redis.call('ZSCORE', K_DEPLETIONS, account))
  if t < at and bal <= 0 and dep and dep <= at then
    -- Stopped before the last settle, the balance having run out at dep in between: of
    -- the run since t only the part before dep was charged. Given back at dep, it is used
    -- by the sessions still running from then on, and they run out when it is gone.
    local back = consumed(rate, math.max(0, dep - t))
    local again = math.min(back, consumed(rest, at - dep))
    bal = back - again
    redis.call('HSET', key, 'mb', int_str(bal))
    redis.call('HINCRBY', key, 'mc', int_str(again - back))
    redis.call('INCRBY', K_CONSUMED, int_str(again - back))
    redis.call('HINCRBY', key, 'ms', int_str(t - at))
    if bal <= 0 and back > 0 and rest > 0 then
      redis.call('ZADD', K_DEPLETIONS, int_str(depletion_time(back, dep, rest)), account)
    end
  else
    bal = backdate(account, rate, t, at, bal, -1)
  end
  redis.call('HINCRBY', key, 'mn', -1)
  redis.call('HSET', key, 'mr', int_str(rest))
  reschedule(account, bal, at, rest)
  return used
end

-- Micro-credits as a decimal number of credits: 12500000 -> "12.5".
local function credits_text(micro)
  local whole = math.floor(micro / 1000000)
  local frac = micro - whole * 1000000
  if frac == 0 then return int_str(whole) end
  return int_str(whole) .. '.' .. (string.gsub(string.format('%06d', frac), '0+$', ''))
end

-- An account's credits projected to now, without writing: balance, burn, metered
-- session-milliseconds and micro-credits consumed in all; nil without a balance.
local function credit_state(account, now)
  local v = redis.call('HMGET', account_key(account), 'mb', 'mt', 'mr', 'mn', 'ms', 'mc')
  if not v[1] then return nil end
  local bal, burn, n = tonumber(v[1]), tonumber(v[3]) or 0, tonumber(v[4]) or 0
  local dt = math.max(0, now - tonumber(v[2]))
  local used = math.min(bal, consumed(burn, dt))
  return bal - used, burn, (tonumber(v[5]) or 0) + n * dt, (tonumber(v[6]) or 0) + used
end

-- The account as the API shows it, every value a string (it is also stored as a
-- top-up's answer, as JSON):
-- {plan, billing status, live sessions, metered '1'/'0', balance (micro-credits; ''
--  before the first top-up), burn (micro-credits per hour), depletes_at (ms; '' when
--  not burning), metered session-milliseconds, micro-credits consumed}
local function account_reply(account, now)
  local plan, billing = account_state(account)
  local live = tostring(redis.call('SCARD', live_key(account)))
  local bal, burn, ms, mc = credit_state(account, now)
  if not bal then return {plan, billing, live, '0', '', '0', '', '0', '0'} end
  local metered = plan_limits(plan).credits_per_hour_micro >= 0 and '1' or '0'
  local dep = redis.call('ZSCORE', K_DEPLETIONS, account)
  if dep then dep = int_str(tonumber(dep)) else dep = '' end
  return {plan, billing, live, metered, int_str(bal), int_str(burn), dep, int_str(ms),
    int_str(mc)}
end
