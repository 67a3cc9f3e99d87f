--[[
  Read a session's timeline (SPEC §9), oldest first.

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] session id
  Output: {1, account id, entry, ...} (each entry a JSON object, see includes/timeline.lua)
        | {-404}
]]
--- @include "common"

local sid = ARGV[10]
local account = redis.call('HGET', session_key(sid), 'a')
if not account then return {-404} end
local out = redis.call('LRANGE', timeline_key(sid), 0, -1)
table.insert(out, 1, account)
table.insert(out, 1, 1)
return out
