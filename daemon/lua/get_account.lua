--[[
  Read an account: its plan, billing status and number of live sessions. An account
  never written has the defaults (default plan, billing ok).

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] account id
  Output: {plan, billing status, live sessions}
]]
--- @include "common"

local account = ARGV[10]
local plan, billing = account_state(account)
return {plan, billing, redis.call('SCARD', live_key(account))}
