-- Hits: adds a replica's cache-hit counts of the last second to a period.
--
-- KEYS[1]  vg:{t:<tenant>}:p:<period>  the period's counters (hash)
-- ARGV[1]  hits served
-- ARGV[2]  credits those hits saved
-- ARGV[3]  milliseconds until the period's keys expire, or 0 for never
-- ARGV[4]  coalesced answers served (absent from older callers: 0)
-- ARGV[5]  credits those coalesced answers saved
--
-- The expiry is set only on a key that has none yet (one these counts just
-- created): a key holding spend got its expiry from a reservation.
redis.call('HINCRBY', KEYS[1], 'cache_hits', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'credits_saved', ARGV[2])
if tonumber(ARGV[4] or '0') > 0 then
  redis.call('HINCRBY', KEYS[1], 'coalesced', ARGV[4])
  redis.call('HINCRBY', KEYS[1], 'credits_saved_coalesced', ARGV[5])
end
if tonumber(ARGV[3]) > 0 and redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
