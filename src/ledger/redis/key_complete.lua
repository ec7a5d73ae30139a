-- Idempotency complete: stores a key's answer, replacing its claim (an
-- orphaned one included). Idempotent: sent twice, it stores the same.
--
-- KEYS[1]  vg:{t:<tenant>}:i:<key, hex>  the key (hash)
-- ARGV[1]  the request's fingerprint (32 bytes)
-- ARGV[2]  the answer's HTTP status
-- ARGV[3]  the answer's body, byte for byte
-- ARGV[4]  milliseconds the key is kept from now (PEXPIRE)
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'fingerprint', ARGV[1], 'state', 'done',
  'status', ARGV[2], 'body', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
