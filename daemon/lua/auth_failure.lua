--[[
  Failed-authentication blocking, shared by every replica: failures of one client
  address in a sliding window. While `limit` failures are younger than the window,
  every request from the address is refused and no further failure is recorded, so
  the block ends when the oldest of them reaches the window's age.

  Input:
    KEYS[1] sorted set  P:authfail:<address>  member a unique token, score failure time (ms)
    ARGV[1] window (ms)
    ARGV[2] limit (failures within the window that block the address)
    ARGV[3] '1' record a failure, '0' only check
    ARGV[4] unique member token for a recorded failure
  Output: {blocked 1 or 0, ms until the block ends (0 when not blocked), failures in window}
]]
local key = KEYS[1]
local window, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- A failure exactly `window` old no longer counts.
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local count = redis.call('ZCARD', key)
if count >= limit then
  -- The block lasts until only limit - 1 failures remain in the window.
  local pivot = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
  return {1, tonumber(pivot[2]) + window - now, count}
end
if ARGV[3] == '1' then
  redis.call('ZADD', key, now, ARGV[4])
  redis.call('PEXPIRE', key, window)
  count = count + 1
end
return {0, 0, count}
