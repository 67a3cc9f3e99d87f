--[[
  Create a session through the API, with SPEC §2 admission in one atomic step.

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] session id
    ARGV[11] account id
    ARGV[12] timeout_seconds ('' = the plan's default)
    ARGV[13] inactivity_timeout_seconds ('' = 300)
    ARGV[14] auto_kill '1' or '0'
    ARGV[15] a field error found by the caller ('' = none), reported as 422 after the
             billing and concurrency checks, as SPEC §2 orders them
    ARGV[16] on_inactivity 'p' (pause) or '' (terminate)
    ARGV[17] the creation token: unique to one HTTP request ('' = none). The daemon sends
             the call again with the same token when the reply was lost on the way; the
             session this token created is then answered as created, not as 409.
    ARGV[18] how long the token is kept (ms)
    ARGV[19] rate limits checked first ('' = none, '2' = requests and creates; see
             includes/rate_limit.lua), ARGV[20] the caller's account scope
  Output (with ARGV[19]: wrapped by with_rate_limit):
    {1, now, wake, field, value, ...}  created; the session record, after the earliest
                                 time the expirer must look (see create_session)
    {-402, billing status} | {-429, retry-after seconds} | {-422, message} | {-409, ''}
]]
--- @include "common"
--- @include "rate_limit"

local function op()
  local now = now_ms()
  local token, token_key = ARGV[17] or '', BASE .. 'ct:' .. ARGV[10]
  if token ~= '' and redis.call('GET', token_key) == token
     and redis.call('EXISTS', session_key(ARGV[10])) == 1 then
    local out = view(1, ARGV[10], now)
    table.insert(out, 3, now)  -- the expirer was told when it was created
    return out
  end
  local code, value = create_session(ARGV[10], ARGV[11], ARGV[12], ARGV[13], ARGV[14], ARGV[15],
    now, ARGV[16])
  if code ~= 1 then return {code, value} end
  if token ~= '' then redis.call('SET', token_key, token, 'PX', tonumber(ARGV[18])) end
  local out = view(1, ARGV[10], now)
  table.insert(out, 3, value)
  return out
end
return with_rate_limit(ARGV[19], '', ARGV[11], ARGV[20], op)
