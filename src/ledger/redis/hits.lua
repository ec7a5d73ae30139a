-- Hits: adds a replica's cache-hit counts of the last second to a period.
--
-- KEYS[1]  vg:{t:<tenant>}:p:<period>  the period's counters (hash)
-- ARGV[1]  hits served
-- ARGV[2]  credits those hits saved
-- ARGV[3]  milliseconds until the period's keys expire, or 0 for never
--
-- The expiry is set only on a key that has none yet (one these counts just
-- created): a key holding spend got its expiry from a reservation.
redis.call('HINCRBY', KEYS[1], 'cache_hits', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'credits_saved', ARGV[2])
if tonumber(ARGV[3]) > 0 and redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
