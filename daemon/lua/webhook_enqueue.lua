--[[
  Turn a batch of commands read by the `webhooks` consumer group into deliveries, and
  XACK them in the same step: a command acknowledged has its deliveries, one still
  pending has none yet (a crash neither loses nor doubles a delivery).

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] consumer group on the commands stream
    ARGV[11...] per command: entry id, command type, its fields as JSON, endpoint
                count k, then k endpoint ids
  Output: {now (ms), deliveries created}
  Writes: per (command, endpoint) the hash P:{p}:wh:d:<entry>.<endpoint> and a member of
  P:{p}:wh:due:<endpoint> due now; none for an endpoint marked gone (P:{p}:wh:gone:<id>,
  set by webhook_remove while its removal is recent).
]]
--- @include "common"

local group = ARGV[10]
local now = now_ms()
local i, made = 11, 0
local gone = {}
local function is_gone(wid)
  if gone[wid] == nil then gone[wid] = redis.call('EXISTS', BASE .. 'wh:gone:' .. wid) == 1 end
  return gone[wid]
end
while i <= #ARGV do
  local id, kind, data, k = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  -- An entry acknowledged before (by an earlier reader) already has its deliveries.
  if redis.call('XACK', K_COMMANDS, group, id) == 1 then
    for j = 1, k do
      local wid = ARGV[i + 3 + j]
      if not is_gone(wid) then
        local member = id .. '.' .. wid
        redis.call('HSET', BASE .. 'wh:d:' .. member, 'w', wid, 'y', kind, 'j', data, 'n', 0)
        redis.call('ZADD', BASE .. 'wh:due:' .. wid, now, member)
        made = made + 1
      end
    end
  end
  i = i + 4 + k
end
return {now, made}
