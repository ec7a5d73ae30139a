-- Budget alert fire: claims a (tenant, period key, budget, threshold) once across
-- every replica and, with a webhook, queues the alert in the same step.
--
-- KEYS[1]  vg:{alerts}:fired:<alert id>   the claim (string: the claimer's token)
-- KEYS[2]  vg:{alerts}:outbox             hash: alert id -> alert JSON
-- KEYS[3]  vg:{alerts}:due                sorted set: alert id by next attempt (ms)
-- ARGV[1]  the alert id
-- ARGV[2]  the alert JSON, or '' when there is no webhook
-- ARGV[3]  now, Unix ms on viewgate's clock (the first attempt's time)
-- ARGV[4]  the claim's lifetime in ms (0: never expires)
-- ARGV[5]  the caller's random token: a resend after a lost answer finds its own claim
--
-- Returns 1 when this caller fired the alert, else 0.
if not redis.call('SET', KEYS[1], ARGV[5], 'NX') then
  if redis.call('GET', KEYS[1]) == ARGV[5] then
    return 1
  end
  return 0
end
if tonumber(ARGV[4]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
end
return 1
