--[[
  Terminate the sessions of one partition whose deadline has passed, each with its
  terminate command, in batches; and send due `expiring` warnings.

  Lag-safe rule: an inactivity deadline D fires only when every events-stream entry
  whose time is <= D has been applied (not pending, not undelivered), so activity
  that arrived in time always counts. Max-lifetime deadlines never wait.

  Input: KEYS and ARGV[1..8] as in includes/common.lua, then
    ARGV[9]  consumer group
    ARGV[10] batch size (most terminations in one call)
  Output: {terminated, next deadline (ms, -1 if none), now, held, warned,
           terminated for inactivity, lateness of each termination (ms)...}
    held = 1 when a passed inactivity deadline waits for the consumer
  Commands: terminate (max_lifetime | inactivity, deadline = the deadline that
  passed), expiring.
]]
--- @include "common"
--- @include "stream"

local group = ARGV[9]
local batch = tonumber(ARGV[10])
local now = now_ms()

local idle_limit = inactivity_limit(group, now)

local done, by_inactivity, lateness = 0, 0, {}
local batch_done = {}
-- Every member read here leaves both deadline sets (terminated now, or gone already):
-- one ZREM per set and batch instead of two per session.
local function unschedule(sids)
  if #sids > 0 then
    redis.call('ZREM', K_LIFE, unpack(sids))
    redis.call('ZREM', K_IDLE, unpack(sids))
  end
end

local life_due = redis.call('ZRANGEBYSCORE', K_LIFE, '-inf', now, 'LIMIT', 0, batch)
for _, sid in ipairs(life_due) do
  local h = redis.call('HMGET', session_key(sid), 's', 'a', 'c', 'e', 'l', 'i', 'k')
  if h[1] then
    local deadline, reason = deadline_of(tonumber(h[4]), tonumber(h[5]), tonumber(h[6]), h[7])
    if reason == 'inactivity' and deadline > idle_limit then
      deadline, reason = tonumber(h[4]), 'max_lifetime'
    end
    if terminate(sid, reason, deadline, now, h, batch_done) then
      done = done + 1
      if reason == 'inactivity' then by_inactivity = by_inactivity + 1 end
      lateness[#lateness + 1] = now - deadline
    end
  end
end
unschedule(life_due)

if #life_due < batch then
  local due = redis.call('ZRANGEBYSCORE', K_IDLE, '-inf', idle_limit, 'WITHSCORES',
    'LIMIT', 0, batch - #life_due)
  local sids = {}
  for j = 1, #due, 2 do
    sids[#sids + 1] = due[j]
    if terminate(due[j], 'inactivity', tonumber(due[j + 1]), now, nil, batch_done) then
      done = done + 1
      by_inactivity = by_inactivity + 1
      lateness[#lateness + 1] = now - tonumber(due[j + 1])
    end
  end
  unschedule(sids)
end
flush_batch(batch_done)

local warned = 0
if WARN_MS > 0 then
  for _, sid in ipairs(redis.call('ZRANGEBYSCORE', K_WARN, '-inf', now, 'LIMIT', 0, batch)) do
    redis.call('ZREM', K_WARN, sid)
    local key = session_key(sid)
    local h = redis.call('HMGET', key, 's', 'a', 'e', 'l', 'i', 'k')
    if h[1] and h[1] ~= 't' then
      local deadline, reason = deadline_of(tonumber(h[3]), tonumber(h[4]), tonumber(h[5]), h[6])
      redis.call('HSET', key, 'w', deadline)
      emit('type', 'expiring', 'session_id', sid, 'account_id', h[2], 'reason', reason,
        'terminates_at', deadline)
      warned = warned + 1
    end
  end
end

local next_due = -1
local held = 0
local head = redis.call('ZRANGE', K_LIFE, 0, 0, 'WITHSCORES')
if #head > 0 then next_due = tonumber(head[2]) end
head = redis.call('ZRANGE', K_IDLE, 0, 0, 'WITHSCORES')
if #head > 0 then
  local d = tonumber(head[2])
  if d <= now and d > idle_limit then held = 1 end
  if next_due < 0 or d < next_due then next_due = d end
end
if WARN_MS > 0 then
  head = redis.call('ZRANGE', K_WARN, 0, 0, 'WITHSCORES')
  if #head > 0 and (next_due < 0 or tonumber(head[2]) < next_due) then
    next_due = tonumber(head[2])
  end
end
local out = {done, next_due, now, held, warned, by_inactivity}
for _, ms in ipairs(lateness) do out[#out + 1] = ms end
return out
