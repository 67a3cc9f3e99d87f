--[[
  Give up a partition's lease, if the caller holds it, so a peer takes over at once.

  Input:
    KEYS[1] lease string  P:{p}:lease
    ARGV[1] token the lease was taken under
  Output: 1 released, 0 not held by the caller
]]
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
