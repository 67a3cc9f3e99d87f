--[[
  Set an account's plan and/or billing status through the API (PUT). A billing
  status other than ok terminates every live session of the account with reason
  billing (when billing_hold_terminates), one terminate command each, in this step.

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] account id
    ARGV[11] plan ('' = unchanged); the caller checks it is a known plan
    ARGV[12] billing status ('' = unchanged); the caller checks it is a known status
  Output: {sessions terminated, account_reply...} (see includes/credits.lua)
  Commands: one `terminate` (reason billing, deadline = now) per session ended.
]]
--- @include "common"

local account, plan, billing = ARGV[10], ARGV[11], ARGV[12]
local now = now_ms()
local ended = 0
if billing ~= '' then
  ended = set_billing(account, billing, plan, now, now)
elseif plan ~= '' then
  redis.call('HSET', account_key(account), 'plan', plan)
end
local out = account_reply(account, now)
table.insert(out, 1, ended)
return out
