--[[
  Clean up after a removed webhook endpoint in one partition, a batch at a time: mark the
  endpoint gone (webhook_enqueue makes no delivery for it while the mark lasts, so a
  reader that listed the endpoints just before its removal adds nothing behind this
  cleanup), then delete up to a batch of its pending and dead deliveries.

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] endpoint id
    ARGV[11] most deliveries to delete in this call
    ARGV[12] how long the gone mark lasts (ms)
  Output: {deliveries deleted, deliveries left (call again while > 0)}
  Writes: P:{p}:wh:gone:<endpoint>; deletes P:{p}:wh:d:<entry>.<endpoint> and members of
  P:{p}:wh:due:<endpoint> and P:{p}:wh:dead:<endpoint>.
]]
--- @include "common"

local wid, batch = ARGV[10], tonumber(ARGV[11])
redis.call('SET', BASE .. 'wh:gone:' .. wid, '1', 'PX', tonumber(ARGV[12]))
local deleted = 0
for _, set in ipairs({BASE .. 'wh:due:' .. wid, BASE .. 'wh:dead:' .. wid}) do
  if deleted < batch then
    local members = redis.call('ZRANGE', set, 0, batch - deleted - 1)
    for _, member in ipairs(members) do
      redis.call('DEL', BASE .. 'wh:d:' .. member)
    end
    if #members > 0 then
      redis.call('ZREM', set, unpack(members))
      deleted = deleted + #members
    end
  end
end
local left = redis.call('ZCARD', BASE .. 'wh:due:' .. wid)
  + redis.call('ZCARD', BASE .. 'wh:dead:' .. wid)
return {deleted, left}
