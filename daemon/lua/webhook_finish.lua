--[[
  Record the outcome of one delivery attempt.

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] member "<entry>.<endpoint>"
    ARGV[11] endpoint id
    ARGV[12] attempt number (as the claim returned it)
    ARGV[13] 'ok' (a 2xx), 'fail', or 'gone' (the endpoint was removed)
    ARGV[14] delay before the next attempt (ms)
    ARGV[15] most attempts
    ARGV[16] the attempt's error, for listings
  Output: 'delivered', 'retry', 'dead', 'gone', or 'stale' (a later claim took the
  delivery over, or it was removed: this outcome changes nothing)
]]
--- @include "common"

local member, wid, attempt, outcome = ARGV[10], ARGV[11], tonumber(ARGV[12]), ARGV[13]
local key = BASE .. 'wh:d:' .. member
local due_key = BASE .. 'wh:due:' .. wid
local now = now_ms()
if outcome == 'ok' or outcome == 'gone' then
  redis.call('DEL', key)
  redis.call('ZREM', due_key, member)
  if outcome == 'ok' then return 'delivered' end
  return 'gone'
end
local n = redis.call('HGET', key, 'n')
if not n or tonumber(n) ~= attempt then return 'stale' end
redis.call('HSET', key, 'r', ARGV[16], 'a', now)
if attempt >= tonumber(ARGV[15]) then
  redis.call('ZREM', due_key, member)
  redis.call('ZADD', BASE .. 'wh:dead:' .. wid, now, member)
  return 'dead'
end
redis.call('ZADD', due_key, now + tonumber(ARGV[14]), member)
return 'retry'
