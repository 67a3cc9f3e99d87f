--[[
  Metering of prepaid credits (SPEC §7), included by common.lua after `emit`.

  meter_start: a session starts running (create, resume): its rate joins the account's
  burn and the depletion deadline moves.
  meter_stop: a session stops running (every termination path, pause): its rate leaves
  the burn; returns the credits it used while running, in micro-credits.

  Until metering lands both only keep the call sites in place.
]]
local function meter_start(account, sid, now) end

local function meter_stop(account, sid, now) return 0 end
