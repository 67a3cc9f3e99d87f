--[[
  Replay a dead letter: add its original fields to the events stream and delete it from
  the dead-letter stream, in one atomic step. Two callers replaying the same entry at
  once replay it once: the second finds it gone.

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] the dead letter's entry id
  Output: {1, id of the new events-stream entry} | {-404} no such dead letter
        | {-422} the entry holds no field but the error, so there is nothing to replay
]]
--- @include "common"

local found = redis.call('XRANGE', K_DEAD, ARGV[10], ARGV[10])
if #found == 0 then return {-404} end
local flat = found[1][2]
local n = #flat
-- The daemon appends the error last; an original field of the same name comes before it.
if n >= 2 and flat[n - 1] == 'error' then n = n - 2 end
if n == 0 then return {-422} end
local fields = {}
for j = 1, n do fields[j] = flat[j] end
local id = redis.call('XADD', K_EVENTS, '*', unpack(fields))
redis.call('XDEL', K_DEAD, ARGV[10])
return {1, id}
