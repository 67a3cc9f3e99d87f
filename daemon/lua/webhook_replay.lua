--[[
  Replay a dead delivery: it leaves the endpoint's dead set and is due now, with a fresh
  count of attempts (webhook_max_attempts more). Two callers replaying it at once replay
  it once: the second finds it no longer dead.

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] endpoint id
    ARGV[11] member "<entry>.<endpoint>"
  Output: {1, now (ms), command type, fields JSON, last error ('' if none), time of the
          last attempt (ms, '' if none)} | {-404} no such dead delivery
]]
--- @include "common"

local wid, member = ARGV[10], ARGV[11]
local dead_key = BASE .. 'wh:dead:' .. wid
local key = BASE .. 'wh:d:' .. member
if redis.call('ZREM', dead_key, member) == 0 then return {-404} end
if redis.call('EXISTS', key) == 0 then return {-404} end
local now = now_ms()
redis.call('HSET', key, 'n', 0)
redis.call('ZADD', BASE .. 'wh:due:' .. wid, now, member)
local h = redis.call('HMGET', key, 'y', 'j', 'r', 'a')
return {1, now, h[1] or '', h[2] or '{}', h[3] or '', h[4] or ''}
