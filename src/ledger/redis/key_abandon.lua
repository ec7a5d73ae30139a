-- Idempotency abandon: frees a claim still in flight for this fingerprint
-- (and, when a claim token is given, only that claim), so a retry may run.
-- An answered key, or another request's claim, is left alone.
--
-- KEYS[1]  vg:{t:<tenant>}:i:<key, hex>  the key (hash)
-- ARGV[1]  the request's fingerprint (32 bytes)
-- ARGV[2]  the claim token, or '' for any claim of this fingerprint
--
-- Returns 1 when it freed the claim, else 0.
local held = redis.call('HMGET', KEYS[1], 'fingerprint', 'state', 'claim')
if held[1] == ARGV[1] and held[2] == 'in_flight' and (ARGV[2] == '' or held[3] == ARGV[2]) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
