--[[
  Announce a replica as alive and count the live ones (for the fair share of leases).

  Input:
    KEYS[1] sorted set  P:replicas  member replica id, score time it counts until (ms)
    ARGV[1] replica id
    ARGV[2] how long the announcement lasts (ms); 0 removes the replica
  Output: number of live replicas
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if tonumber(ARGV[2]) > 0 then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
