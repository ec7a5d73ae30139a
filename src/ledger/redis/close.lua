-- Settle or release: closes a reservation, once.
--
-- KEYS[1]  vg:{t:<tenant>}:r:<id>      the reservation (hash)
-- KEYS[2]  vg:{t:<tenant>}:open        open reservations (zset)
-- KEYS[3]  vg:{t:<tenant>}:p:<period>  the period the reservation was made in
-- KEYS[4]  vg:{t:<tenant>}:p:<period>  the current period, for the reply
-- KEYS[5]  vg:{t:<tenant>}:s:<hour>    the spend history of the current hour
-- ARGV[1]  the reservation id
-- ARGV[2]  credits actually spent (settle), or '' to release
-- ARGV[3]  the history field of the current minute, c<minute of the hour>
-- ARGV[4]  milliseconds the history hash lives after this write
--
-- Returns {closed, used, reserved}: closed is 1 when the reservation was open,
-- 0 when it was already settled, released or swept (then nothing changed, so
-- a retried call never charges twice); used and reserved are KEYS[4]'s.
local closed = 0
local amount = redis.call('HGET', KEYS[1], 'amount')
if amount then
  -- 0 - x, not -x: -0 would be sent as '-0', which HINCRBY refuses.
  redis.call('HINCRBY', KEYS[3], 'reserved', 0 - tonumber(amount))
  if ARGV[2] ~= '' then
    redis.call('HINCRBY', KEYS[3], 'used', ARGV[2])
    redis.call('HINCRBY', KEYS[3], 'requests', 1)
    if tonumber(ARGV[2]) > 0 then
      redis.call('HINCRBY', KEYS[5], ARGV[3], ARGV[2])
      redis.call('PEXPIRE', KEYS[5], ARGV[4])
    end
  end
  redis.call('DEL', KEYS[1])
  closed = 1
end
redis.call('ZREM', KEYS[2], ARGV[1])
local counters = redis.call('HMGET', KEYS[4], 'used', 'reserved')
return {closed, tonumber(counters[1] or '0'), tonumber(counters[2] or '0')}
