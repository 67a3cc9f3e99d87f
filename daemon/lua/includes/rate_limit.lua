--[[
  Request rate limits of an account (SPEC §6): the GCRA of lua/rate_limit.lua, as a
  function the operation scripts call first, so that one request is one script call.

  rate_limit_check(sid, account, creates, scope): the reply of lua/rate_limit.lua
  (see there); ``sid`` '' = none.
  with_rate_limit(mode, sid, account, scope, op): ``mode`` '' runs op() alone and
  answers its reply; '1' (requests) or '2' (requests and creates) checks the limits
  first and answers {rate reply} when refused (op not run: nothing changes), else
  {rate reply, op()}.
]]
local function rate_limit_check(sid, account, creates, scope)
  if sid ~= '' then
    account = redis.call('HGET', session_key(sid), 'a')
    if not account then return {0} end
  end
  if scope ~= '' and account ~= scope then return {0} end

  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local plan_name = account_state(account)
  local plan = plan_limits(plan_name)

  local limits = {}
  local function add(name, per_minute)
    if per_minute and per_minute > 0 then
      local interval = math.floor(60000000 / per_minute)
      local key = BASE .. 'rl:' .. account .. ':' .. name
      local stored = redis.call('GET', key)
      local tat = stored and math.floor(tonumber(stored) * 1000 + 0.5) or 0
      limits[#limits + 1] = {name = name, quota = per_minute, interval = interval,
        tolerance = (per_minute - 1) * interval, key = key, tat = tat}
    end
  end
  add('requests', plan.requests_per_minute)
  if creates then add('creates', plan.creates_per_minute) end

  local retry_us = 0
  for _, l in ipairs(limits) do
    local wait = l.tat - l.tolerance - now
    if wait > retry_us then retry_us = wait end
  end

  local code = -429
  if retry_us <= 0 then
    code = 1
    for _, l in ipairs(limits) do
      l.tat = math.max(l.tat, now) + l.interval
      local ttl_ms = math.ceil((l.tat - now) / 1000)
      redis.call('SET', l.key, string.format('%.3f', l.tat / 1000), 'PX', ttl_ms)
    end
  end

  local out = {code, account, plan_name, code == 1 and 0 or math.max(1, math.ceil(retry_us / 1000000))}
  for _, l in ipairs(limits) do
    local ahead = math.max(0, l.tat - now)
    local remaining = math.max(0, math.floor((l.tolerance + l.interval - ahead) / l.interval))
    out[#out + 1] = l.name
    out[#out + 1] = l.quota
    out[#out + 1] = remaining
    out[#out + 1] = math.ceil(ahead / 1000000)
  end
  return out
end

local function with_rate_limit(mode, sid, account, scope, op)
  if mode == nil or mode == '' then return op() end
  local rate = rate_limit_check(sid, account or '', mode == '2', scope or '')
  if rate[1] == -429 then return {rate} end
  return {rate, op()}
end
