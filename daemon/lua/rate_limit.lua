--[[
  Request rate limits of an account (SPEC §6): a GCRA (generic cell rate algorithm)
  per account and limit, on the server clock, checked and counted in one step.

  A limit of R per minute has the interval T = 60 s / R and the tolerance
  tau = (R - 1) * T; its key holds the theoretical arrival time TAT. A request is
  admitted when TAT - now <= tau; then TAT := max(TAT, now) + T. So a burst of R is
  admitted at once, then one request every T. Every limit the request counts against
  must admit it, or none of them changes: a refused request changes nothing.

  Key: P:{p}:rl:<account>:<limit> (string, TAT in ms with three decimals; it expires
  when TAT passes, at most tau + T after it was written, because an absent key means
  the same as a past TAT). The arithmetic is done in whole microseconds.

  Input: KEYS and ARGV[1..9] as in includes/common.lua, then
    ARGV[10] session id ('' = none): the request names the account of this session
    ARGV[11] account id (used when ARGV[10] is '')
    ARGV[12] '1': the request also counts against creates_per_minute
    ARGV[13] the caller's account scope ('' = any): an account outside it is not named
  Output:
    {0}                                  no account named (unknown session, or outside
                                         the scope): no limit applies
    {code, account, plan, retry_after, name, quota, remaining, reset, ...}
      code 1 admitted, -429 refused; retry_after whole seconds (>= 1) after which
      the same request is admitted (0 when admitted); then one (name, quota,
      remaining, reset seconds) group per limit of the plan that applies
      (unlimited limits are left out)
]]
--- @include "common"
--- @include "rate_limit"

return rate_limit_check(ARGV[10], ARGV[11], ARGV[12] == '1', ARGV[13])
