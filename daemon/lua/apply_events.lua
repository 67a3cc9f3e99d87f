--[[
  Apply a batch of events of one partition (entries in id order), in stream order, and
  acknowledge exactly
  the entries applied, in the same atomic step: an event's effect and its XACK are
  never separated by a crash.

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] lease token; the batch is refused unless the partition's lease is held
             under it (fencing: a paused or superseded consumer cannot apply anything)
    ARGV[11] consumer group
    ARGV[12...] entries, each: entry id, op, argument count n, n arguments
      'C' created    session, account, timeout, inactivity, auto_kill, plan,
                     on_inactivity ('p' pause, '' terminate)
      'A' activity   session, account, ts ('' = the entry's time), source ('' = stream)
      'K' keepalive  session, account, ts, source
      'P' pause      session, account
      'R' resume     session, account         (admitted like a create)
      'T' terminate  session, account, reason
      'X' terminated session, account       (reported gone: reason external, no command)
      'B' billing    account, billing status, plan ('' = unchanged)
      'M' credits    account, amount (micro-credits), idempotency key (SPEC §7)
      'D' dead       error, then the entry's original field/value pairs
  Output:
    {-1} the lease is not held under this token
    {-2} an entry older than the batch is pending (the caller claims and applies it first)
    {now, earliest new deadline or -1, outcome per entry...}; outcomes: 'applied',
    'ended:<reason>' (terminate, terminated), 'ended:<count>' (billing: sessions held),
    'paused:<reason>' (pause; or a deadline that pauses, passed before the entry
    arrived), 'resumed', 'ignored:<reason>', 'rejected:<code>', 'dead', 'skipped' (no
    longer pending: an earlier call applied it)
  Streams written: commands (terminate, pause, resume, rejected), dead (dead-lettered
  entries; a credits top-up that would take the balance over its maximum too).
  The events stream is trimmed to the earliest entry some group has not applied.
]]
--- @include "common"
--- @include "stream"

if redis.call('GET', K_LEASE) ~= ARGV[10] then return {-1} end
local group = ARGV[11]

-- Stream order: no entry older than this batch may still be waiting, whoever read it
-- (a superseded holder may have read entries it can no longer apply).
if ARGV[12] then
  local oldest = redis.call('XPENDING', K_EVENTS, group, '-', '+', 1)
  if #oldest > 0 and id_less(oldest[1][1], ARGV[12]) then return {-2} end
end
-- A refused create or resume: its `rejected` command; returns the outcome.
local function reject(sid, account, code, value)
  local message
  if code == -402 then message = 'payment required: billing status is ' .. value
  elseif code == -429 then message = 'concurrent session limit reached; retry in '
    .. value .. ' s'
  elseif code == -409 then message = 'session ' .. sid .. ' already exists'
  else message = value end
  emit('type', 'rejected', 'session_id', sid, 'account_id', account,
    'code', tostring(-code), 'error', message)
  return 'rejected:' .. tostring(-code)
end

-- The record of a live session of ``account`` named by an entry (as deadline_record
-- reads it), or nil and the outcome for an unknown or terminated one.
local function live_target(sid, account)
  local h = deadline_record(sid)
  if not h[1] or h[8] ~= account then return nil, 'ignored:unknown_session' end
  if h[1] == 't' then return nil, 'ignored:terminated' end
  return h
end

local now = now_ms()
local wake = -1
local out = {now, 0}

local i = 12
while i <= #ARGV do
  local id, op, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local a = i + 3
  i = a + n
  local outcome
  if redis.call('XACK', K_EVENTS, group, id) == 0 then
    outcome = 'skipped'
  else
    local at = id_ms(id)
    if op == 'A' or op == 'K' then
      local ts = at
      if ARGV[a + 2] ~= '' then ts = tonumber(ARGV[a + 2]) end
      if ts > now + SKEW_MS then ts = now end
      local source = ARGV[a + 3]
      if source == nil or source == '' then source = 'stream' end
      outcome = touch(ARGV[a], ARGV[a + 1], ts, op == 'A', at, now, source)
    elseif op == 'C' then
      local sid, account, plan = ARGV[a], ARGV[a + 1], ARGV[a + 5]
      if plan ~= '' then redis.call('HSETNX', account_key(account), 'plan', plan) end
      local code, value = create_session(sid, account, ARGV[a + 2], ARGV[a + 3], ARGV[a + 4],
        '', at, ARGV[a + 6])
      if code == 1 then
        outcome = 'applied'
        if wake < 0 or value < wake then wake = value end
      else
        outcome = reject(sid, account, code, value)
      end
    elseif op == 'T' or op == 'X' then
      local sid = ARGV[a]
      local h
      h, outcome = live_target(sid, ARGV[a + 1])
      if h then
        -- An end that came after the session's deadline: the deadline ended it (or paused
        -- it, and then this ends the paused session).
        outcome = overdue(sid, h, at, now)
        if outcome == nil or outcome == 'paused:inactivity' then
          local reason = 'external'
          if op == 'T' then reason = ARGV[a + 2] end
          if terminate(sid, reason, at, now) then outcome = 'ended:' .. reason
          else outcome = 'ignored:terminated' end
        end
      end
    elseif op == 'P' or op == 'R' then
      local sid, account = ARGV[a], ARGV[a + 1]
      local h
      h, outcome = live_target(sid, account)
      if h then
        outcome = overdue(sid, h, at, now)
        -- A resume that came after an inactivity pause's deadline resumes that pause.
        if op == 'R' and outcome == 'paused:inactivity' then outcome = nil end
      end
      if outcome then  -- decided above
      elseif op == 'P' then
        if pause(sid, 'requested', at, now) then outcome = 'paused:requested'
        else outcome = 'ignored:paused' end
      else
        local code, value = resume(sid, at, now)
        if code == 1 then
          outcome = 'resumed'
          if wake < 0 or value < wake then wake = value end
        elseif code == 0 then
          outcome = 'ignored:not_paused'
        else
          outcome = reject(sid, account, code, value)
        end
      end
    elseif op == 'B' then
      outcome = 'ended:' .. set_billing(ARGV[a], ARGV[a + 1], ARGV[a + 2], at, now)
    elseif op == 'M' then
      local reply, problem = top_up(ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2], now)
      if reply then
        outcome = 'applied'
        local dep = tonumber(reply[7])  -- a first top-up may start a depletion
        if dep and (wake < 0 or dep - LOWBAL_MS < wake) then wake = dep - LOWBAL_MS end
      else
        redis.call('XADD', K_DEAD, '*', 'type', 'credits', 'account_id', ARGV[a],
          'amount', credits_text(tonumber(ARGV[a + 1])), 'idempotency_key', ARGV[a + 2],
          'error', 'field amount: ' .. problem)
        outcome = 'dead'
      end
    else -- 'D'
      local fields = {}
      for j = a + 1, a + n - 1 do fields[#fields + 1] = ARGV[j] end
      fields[#fields + 1] = 'error'
      fields[#fields + 1] = ARGV[a]
      redis.call('XADD', K_DEAD, '*', unpack(fields))
      outcome = 'dead'
    end
  end
  out[#out + 1] = outcome
end
out[2] = wake

-- Entries every group has applied are no longer needed.
local floor = nil
for name, last in pairs(groups_of_events()) do
  local first = first_unapplied(name, last)
  if first == nil then
    local ms, seq = string.match(last, '^(%d+)-(%d+)$')
    first = ms .. '-' .. tostring(tonumber(seq) + 1)
  end
  if floor == nil or id_less(first, floor) then floor = first end
end
if floor ~= nil then redis.call('XTRIM', K_EVENTS, 'MINID', '~', floor) end
return out
