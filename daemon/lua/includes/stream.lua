--[[
  Where a consumer group stands in the events stream.
  Needs K_EVENTS and id_ms from includes/common.lua.
]]

-- Fields of each consumer group of the events stream: name -> last-delivered-id.
local function groups_of_events()
  local out = {}
  if redis.call('EXISTS', K_EVENTS) == 0 then return out end
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', K_EVENTS)) do
    local name, last
    for j = 1, #g, 2 do
      if g[j] == 'name' then name = g[j + 1]
      elseif g[j] == 'last-delivered-id' then last = g[j + 1] end
    end
    out[name] = last
  end
  return out
end

local function id_less(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, bm = tonumber(am), tonumber(bm)
  if am ~= bm then return am < bm end
  return tonumber(as) < tonumber(bs)
end

-- The id of the earliest entry the group has not applied yet (pending, or not yet
-- delivered), or nil when it has applied everything.
local function first_unapplied(group, last_delivered)
  local first = nil
  local pending = redis.call('XPENDING', K_EVENTS, group)
  if pending[1] > 0 then first = pending[2] end
  local after = redis.call('XRANGE', K_EVENTS, '(' .. last_delivered, '+', 'COUNT', 1)
  if #after > 0 and (first == nil or id_less(after[1][1], first)) then first = after[1][1] end
  return first
end

-- The latest inactivity deadline that may fire now: one before the time of the earliest
-- entry the group has not applied (lag-safe rule), and never later than now.
local function inactivity_limit(group, now)
  local last = groups_of_events()[group]
  local first
  if last then
    first = first_unapplied(group, last)
  elseif redis.call('EXISTS', K_EVENTS) == 1 then
    local head = redis.call('XRANGE', K_EVENTS, '-', '+', 'COUNT', 1)
    if #head > 0 then first = head[1][1] end
  end
  if first then return math.min(now, id_ms(first) - 1) end
  return now
end

-- The deadline of a live session (h as next_deadline reads it), its reason and whether
-- it pauses, when it has passed by now; nil otherwise. A passed inactivity deadline held
-- by the lag-safe rule has not passed: only the maximum lifetime can have.
local function passed_deadline(h, group, now)
  local deadline, reason, pauses = next_deadline(h)
  if deadline and deadline <= now and reason == 'inactivity'
     and deadline > inactivity_limit(group, now) then
    deadline, reason, pauses = tonumber(h[2]), 'max_lifetime', false
  end
  if deadline and deadline <= now then return deadline, reason, pauses end
  return nil
end

--[[
  A request through the API for session sid at time now, after what its passed deadline
  does (as the expirer would do it): returns the record {s, e, l, i, k, o, qe, a} as it
  was read, or nil and the reply for a session unknown (-404), of an account not in
  good standing when ``billing`` is checked (-402), or terminated, before or by its
  deadline (-409). A deadline that pauses the session leaves it paused.
]]
local function settle(sid, group, now, billing)
  local h = deadline_record(sid)
  if not h[1] then return nil, {-404} end
  if billing then
    local _, status = account_state(h[8])
    if status ~= 'ok' then return nil, {-402, status} end
  end
  if h[1] == 't' then return nil, {-409} end
  local deadline, reason, pauses = passed_deadline(h, group, now)
  if deadline then
    fire(sid, deadline, reason, pauses, now)
    if not pauses then return nil, {-409} end
  end
  return h
end
