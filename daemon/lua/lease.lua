--[[
  Take or renew the lease of a partition: which replica consumes its events now.

  Input:
    KEYS[1] lease string  P:{p}:lease
    ARGV[1] replica id
    ARGV[2] time to live (ms)
  Output: 1 held by the caller now (taken or renewed), 0 held by another replica
]]
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if owner then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
