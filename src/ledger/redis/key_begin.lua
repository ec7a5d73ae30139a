-- Idempotency begin: claims a key for a request, or says what it holds, in
-- one step, so two replicas claiming at once never both start.
--
-- KEYS[1]  vg:{t:<tenant>}:i:<key, hex>  the key (hash)
-- ARGV[1]  the request's fingerprint (32 bytes)
-- ARGV[2]  milliseconds the key is kept (PEXPIRE)
-- ARGV[3]  milliseconds after which a claim still in flight is orphaned
-- ARGV[4]  this call's claim token (random): a resent call whose first
--          attempt was applied finds its own claim and starts
--
-- Returns {'started'}, {'in_flight'}, {'orphaned'}, {'mismatch'}, or
-- {'replay', status, body}.
local held = redis.call('HMGET', KEYS[1], 'fingerprint', 'state', 'status', 'body',
  'started_ms', 'claim')
-- The server's clock, so that replicas with skewed clocks agree on ages.
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if held[1] then
  if held[1] ~= ARGV[1] then
    return {'mismatch'}
  end
  if held[2] == 'done' then
    return {'replay', held[3], held[4]}
  end
  if held[6] == ARGV[4] then
    return {'started'}
  end
  if now_ms - tonumber(held[5] or '0') >= tonumber(ARGV[3]) then
    return {'orphaned'}
  end
  return {'in_flight'}
end
redis.call('HSET', KEYS[1], 'fingerprint', ARGV[1], 'state', 'in_flight',
  'started_ms', string.format('%d', now_ms), 'claim', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {'started'}
