-- Reserve: holds credits in a tenant's period if its budget covers them.
--
-- KEYS[1]  vg:{t:<tenant>}:p:<period>  the period's counters (hash)
-- KEYS[2]  vg:{t:<tenant>}:r:<id>      the reservation (hash)
-- KEYS[3]  vg:{t:<tenant>}:open        open reservations by creation time (zset)
-- ARGV[1]  the budget in credits, or -1 when unlimited
-- ARGV[2]  the estimate: credits to hold
-- ARGV[3]  the reservation id (16 hex digits)
-- ARGV[4]  the period key, e.g. 2026-11-27
-- ARGV[5]  the request id, for audit
-- ARGV[6]  milliseconds until the period's keys expire, or 0 for never
-- ARGV[7]  the tenant
--
-- Returns {status, used, reserved} as they are after the call: status 1 when
-- the credits are held, 0 when the budget cannot cover them (nothing changed).
-- Idempotent on the id: a retried call whose first attempt was applied finds
-- its reservation and holds nothing more.
local counters = redis.call('HMGET', KEYS[1], 'used', 'reserved')
local used = tonumber(counters[1] or '0')
local reserved = tonumber(counters[2] or '0')
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {1, used, reserved}
end
local limit = tonumber(ARGV[1])
if limit >= 0 and used + reserved + tonumber(ARGV[2]) > limit then
  return {0, used, reserved}
end
-- The server's clock, so that replicas with skewed clocks agree on ages.
local time = redis.call('TIME')
local now_ms = time[1] .. string.format('%03d', math.floor(tonumber(time[2]) / 1000))
reserved = redis.call('HINCRBY', KEYS[1], 'reserved', ARGV[2])
redis.call('HSET', KEYS[2], 'tenant', ARGV[7], 'period', ARGV[4], 'amount', ARGV[2],
  'created_ms', now_ms, 'request_id', ARGV[5])
redis.call('ZADD', KEYS[3], now_ms, ARGV[3])
if tonumber(ARGV[6]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
end
return {1, used, reserved}
