--[[
  Prepaid credits (SPEC §7) that end sessions, included by common.lua after `terminate`:
  the depletion of an account, and top-ups.
]]

--[[
  The account's balance ran out at ``dep`` (its depletion moment, now or before): settled
  to exactly 0, balance_depleted (from ok), and every live session terminated with reason
  billing, deadline ``dep``. Returns the number of sessions ended, or nil when the
  moment was stale (the balance is not used up at it: rescheduled).
]]
local function deplete(account, dep, now)
  -- Sessions whose maximum lifetime came before the moment end at it first, as the
  -- expirer would have ended them had it reached them (it may be behind: a burst, an
  -- outage); that moves the moment later, so read it again.
  for _, sid in ipairs(redis.call('SMEMBERS', live_key(account))) do
    local e = tonumber(redis.call('HGET', session_key(sid), 'e'))
    if e and e < dep then terminate(sid, 'max_lifetime', e, now) end
  end
  dep = tonumber(redis.call('ZSCORE', K_DEPLETIONS, account))
  if not dep or dep > now then return nil end
  redis.call('ZREM', K_DEPLETIONS, account)
  redis.call('ZREM', K_LOWBAL, account)
  local key = account_key(account)
  local bal, at, burn = settle_credits(account, dep)
  if not bal then return nil end
  if bal > 0 then
    reschedule(account, bal, at, burn)
    return nil
  end
  local _, billing = account_state(account)
  if billing == 'ok' then redis.call('HSET', key, 'billing', 'balance_depleted') end
  local ended = 0
  for _, sid in ipairs(redis.call('SMEMBERS', live_key(account))) do
    if terminate(sid, 'billing', dep, now) then ended = ended + 1 end
  end
  -- Sessions stopped at the moment give back what was charged after it (when the
  -- account was settled later); that was never charged, the balance having run out.
  local left = tonumber(redis.call('HGET', key, 'mb'))
  if left > 0 then
    redis.call('HSET', key, 'mb', '0')
    redis.call('HINCRBY', key, 'mc', int_str(left))
    redis.call('INCRBY', K_CONSUMED, int_str(left))
  end
  redis.call('ZREM', K_DEPLETIONS, account)
  redis.call('ZREM', K_LOWBAL, account)
  return ended, dep
end

-- Top-ups: the answer to an idempotency key is kept this long (SPEC §7: 7 days), and a
-- balance stays at most MAX_BALANCE micro-credits (10^9 credits: exact in doubles, and
-- as a JSON number, to the micro-credit).
local TOPUP_KEY_TTL_MS = 7 * 86400000
local MAX_BALANCE = 1e15 - 1

--[[
  Credit ``amount`` micro-credits (> 0) to the account at now, once per idempotency key.
  The first top-up makes the account's balance (and so a metered plan meters it: its
  live sessions start consuming now). A balance_depleted account left positive is ok
  again; a low_balance warning re-arms when the depletion moves out of its window.
  Returns account_reply (the first answer again for a key already used), or nil and a
  message when the balance would go over MAX_BALANCE. A depletion moment that has passed
  (and the expirer has not reached yet) happens first.
]]
local function top_up(account, amount, idem, now)
  local ikey = BASE .. 'topup:' .. account .. '/' .. idem
  local prev = redis.call('GET', ikey)
  if prev then return cjson.decode(prev) end
  -- A depletion moment already passed ends the sessions first: a top-up after it
  -- comes too late for them (see deplete).
  local due = tonumber(redis.call('ZSCORE', K_DEPLETIONS, account))
  if due and due <= now then deplete(account, due, now) end
  local akey = account_key(account)
  local bal, at, burn = settle_credits(account, now)
  local first = not bal
  if first then bal, at, burn = 0, now, 0 end
  if bal + amount > MAX_BALANCE then
    return nil, 'the balance would be over the maximum of ' .. credits_text(MAX_BALANCE)
      .. ' credits'
  end
  bal = bal + amount
  redis.call('HSET', akey, 'mb', int_str(bal), 'mt', int_str(at))
  local _, billing = account_state(account)
  if billing == 'balance_depleted' then redis.call('HSET', akey, 'billing', 'ok') end
  if first then
    for _, sid in ipairs(redis.call('SMEMBERS', live_key(account))) do
      if redis.call('HEXISTS', session_key(sid), 'ma') == 0 then meter_start(account, sid, now) end
    end
    bal, at, burn = settle_credits(account, now)
  end
  if redis.call('HGET', akey, 'mw') == '1'
     and (burn <= 0 or depletion_time(bal, at, burn) - now > LOWBAL_MS) then
    redis.call('HDEL', akey, 'mw')
  end
  reschedule(account, bal, at, burn)
  local reply = account_reply(account, now)
  redis.call('SET', ikey, cjson.encode(reply), 'PX', TOPUP_KEY_TTL_MS, 'NX')
  return reply
end
