--[[
  Live sessions read with the server's clock: an account's, or a page of a partition's.

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] account id: its live sessions; '' for a page of the partition's:
    ARGV[11] ZSCAN cursor over the deadlines set, which holds one member per live
             session (0.2's layout too), so a page costs about its size however many
             sessions the partition holds ('0' = from the start)
    ARGV[12] COUNT hint (members to look at)
  Output: an account's: {now, {session id, field, value, ...}, ...} in no particular order;
    a page: {now, next cursor ('0' = the partition is done), {session id, ...}, ...};
    members without a record are left out
]]
--- @include "common"

local now = now_ms()
local out = {now}
local sids, stride = nil, 1
if ARGV[10] ~= '' then
  sids = redis.call('SMEMBERS', live_key(ARGV[10]))
else
  local step = redis.call('ZSCAN', K_DEADLINES, ARGV[11], 'COUNT', tonumber(ARGV[12]))
  out[2], sids, stride = step[1], step[2], 2  -- members and their scores
end
for j = 1, #sids, stride do
  local sid = sids[j]
  local record = redis.call('HGETALL', session_key(sid))
  if #record > 0 then
    table.insert(record, 1, sid)
    table.insert(out, record)
  end
end
return out
