--[[
  Session timeline (SPEC §9): a capped list per session, P:{p}:tl:<session>, one small
  JSON object per entry, oldest first, written by the script that makes the change.
  Times are ms; the reader turns "at", "deadline" and "*_at" fields into RFC 3339.
  OPT.timeline_max_entries caps the list (0 = keep no timeline).
]]
local TIMELINE_MAX = tonumber(OPT.timeline_max_entries) or 200

local function timeline_key(sid) return BASE .. 'tl:' .. sid end

local function timeline_push(key, entry)
  if redis.call('RPUSH', key, entry) > TIMELINE_MAX then
    redis.call('LTRIM', key, -TIMELINE_MAX, -1)
  end
end

-- An entry {type, at, extra fields...}; a terminated entry gives the timeline the
-- record's retention.
local function timeline_add(sid, kind, at, extra)
  if TIMELINE_MAX <= 0 then return end
  local entry = extra or {}
  entry.type, entry.at = kind, at
  local key = timeline_key(sid)
  timeline_push(key, cjson.encode(entry))
  if kind == 'terminated' then redis.call('PEXPIRE', key, RETENTION_MS) end
end

-- A keepalive or activity from source at time at: coalesced into the last entry when it
-- is a run of the same type and source (count + 1, last_at), without decoding it.
local function timeline_touch(sid, kind, source, at)
  if TIMELINE_MAX <= 0 then return end
  local key = timeline_key(sid)
  local head = '{"type":"' .. kind .. '","source":"' .. source .. '","count":'
  local last = redis.call('LINDEX', key, -1)
  if last and string.sub(last, 1, #head) == head then
    local count, first = string.match(last, '^(%d+),"at":(%d+),', #head + 1)
    if count then
      redis.call('LSET', key, -1, head .. (tonumber(count) + 1) .. ',"at":' .. first
        .. ',"last_at":' .. string.format('%d', at) .. '}')
      return
    end
  end
  local t = string.format('%d', at)
  timeline_push(key, head .. '1,"at":' .. t .. ',"last_at":' .. t .. '}')
end
