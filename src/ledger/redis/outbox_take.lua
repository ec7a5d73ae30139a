-- Outbox take: leases the alerts due now to the caller, so no other replica
-- sends them until the lease ends (or the caller reschedules them).
--
-- KEYS[1]  vg:{alerts}:outbox     hash: alert id -> alert JSON
-- KEYS[2]  vg:{alerts}:due        sorted set: alert id by next attempt (ms)
-- KEYS[3]  vg:{alerts}:attempts   hash: alert id -> attempts made
-- ARGV[1]  now, Unix ms on viewgate's clock
-- ARGV[2]  the lease in ms
-- ARGV[3]  at most this many
--
-- Returns a flat list: alert JSON, attempts (this one included), ...
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local alert = redis.call('HGET', KEYS[1], id)
  if alert then
    redis.call('ZADD', KEYS[2], tonumber(ARGV[1]) + tonumber(ARGV[2]), id)
    local attempts = redis.call('HINCRBY', KEYS[3], id, 1)
    table.insert(out, alert)
    table.insert(out, attempts)
  else
    redis.call('ZREM', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
  end
end
return out
