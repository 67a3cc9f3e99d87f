--[[
  Read an account: its plan, billing status, number of live sessions and credits. An
  account never written has the defaults (default plan, billing ok, no balance).

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] account id
  Output: account_reply (see includes/credits.lua)
]]
--- @include "common"

return account_reply(ARGV[10], now_ms())
