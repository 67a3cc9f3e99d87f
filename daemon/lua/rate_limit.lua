--[[
  Request rate limits of an account (SPEC §6): a GCRA (generic cell rate algorithm)
  per account and limit, on the server clock, checked and counted in one step.

  A limit of R per minute has the interval T = 60 s / R and the tolerance
  tau = (R - 1) * T; its key holds the theoretical arrival time TAT. A request is
  admitted when TAT - now <= tau; then TAT := max(TAT, now) + T. So a burst of R is
  admitted at once, then one request every T. Every limit the request counts against
  must admit it, or none of them changes: a refused request changes nothing.

  Key: P:{p}:rl:<account>:<limit> (string, TAT in ms with three decimals; it expires
  when TAT passes, at most tau + T after it was written, because an absent key means
  the same as a past TAT). The arithmetic is done in whole microseconds.

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] session id ('' = none): the request names the account of this session
    ARGV[11] account id (used when ARGV[10] is '')
    ARGV[12] '1': the request also counts against creates_per_minute
    ARGV[13] the caller's account scope ('' = any): an account outside it is not named
  Output:
    {0}                                  no account named (unknown session, or outside
                                         the scope): no limit applies
    {code, account, plan, retry_after, name, quota, remaining, reset, ...}
      code 1 admitted, -429 refused; retry_after whole seconds (>= 1) after which
      the same request is admitted (0 when admitted); then one (name, quota,
      remaining, reset seconds) group per limit of the plan that applies
      (unlimited limits are left out)
]]
--- @include "common"

local sid, account, creates, scope = ARGV[10], ARGV[11], ARGV[12] == '1', ARGV[13]
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
