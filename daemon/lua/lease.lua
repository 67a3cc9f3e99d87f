--[[
  Take or renew the lease of a partition: which replica consumes its events now.

  A lease is held under a token unique to one taking (replica id and a counter), so a
  replica that lost its lease and took it again is a new holder: its earlier consumer
  is fenced off and the new one first claims what any holder left pending.

  Input:
    KEYS[1] lease string  P:{p}:lease
    ARGV[1] token
    ARGV[2] time to live (ms)
    ARGV[3] 'renew' (extend only if held under this token) or 'take' (only if free)
  Output: 1 held under the token now, 0 not
]]
local owner = redis.call('GET', KEYS[1])
if ARGV[3] == 'renew' then
  if owner ~= ARGV[1] then return 0 end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if owner then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
