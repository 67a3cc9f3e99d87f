--[[
  Top up an account's prepaid credits through the API (SPEC §7), once per idempotency
  key: the same key for the account again answers what the first top-up answered.

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] account id
    ARGV[11] amount, micro-credits (> 0; the caller checks it)
    ARGV[12] idempotency key
  Output: {1, now, account_reply...} (see includes/credits.lua) | {-422, message}
]]
--- @include "common"

local now = now_ms()
local reply, problem = top_up(ARGV[10], tonumber(ARGV[11]), ARGV[12], now)
if not reply then return {-422, problem} end
table.insert(reply, 1, now)
table.insert(reply, 1, 1)
return reply
