-- Sweep: counts a tenant's reservations open for too long as spent.
--
-- Their replica crashed between reserve and settle; the upstream may have
-- billed the call, so the credits count as used and as orphaned. Atomic, so
-- several replicas may sweep the same tenant at once: each reservation is
-- counted by whichever call finds it first.
--
-- KEYS[1]  vg:{t:<tenant>}:open  open reservations by creation time (zset)
-- ARGV[1]  the tenant's key prefix, vg:{t:<tenant>}:
-- ARGV[2]  age in milliseconds from which a reservation is swept
-- ARGV[3]  the most reservations to look at in one call
-- ARGV[4]  now on the ledger's clock, Unix milliseconds
-- ARGV[5]  how far back, in milliseconds, spend history minutes are kept
-- ARGV[6]  milliseconds a spend history hash lives after a write
--
-- Each swept reservation's credits are also added to the spend history
-- (vg:{t:<tenant>}:s:<hour>, field c<minute of the hour>), at the minute it
-- was made: its age on the server's clock taken back from the ledger's now,
-- so replicas' clocks and the server's need not agree. A reservation older
-- than the history keeps counts at the ledger's current minute.
--
-- The reservation and period keys are built here rather than passed: they
-- carry the same hash tag as KEYS[1], so they live in its Cluster slot.
--
-- Returns {swept, credits, looked_at}; looked_at equal to ARGV[3] means more
-- may remain.
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local cutoff = string.format('%d', now_ms - tonumber(ARGV[2]))
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff, 'LIMIT', 0, ARGV[3])
local swept, credits = 0, 0
for _, id in ipairs(ids) do
  local key = ARGV[1] .. 'r:' .. id
  local hold = redis.call('HMGET', key, 'period', 'amount', 'created_ms')
  if hold[1] and hold[2] then
    local period = ARGV[1] .. 'p:' .. hold[1]
    local amount = tonumber(hold[2])
    -- 0 - x, not -x: -0 would be sent as '-0', which HINCRBY refuses.
    redis.call('HINCRBY', period, 'reserved', 0 - amount)
    redis.call('HINCRBY', period, 'used', amount)
    redis.call('HINCRBY', period, 'orphaned', amount)
    if amount > 0 then
      local at = tonumber(ARGV[4])
      local age = now_ms - (tonumber(hold[3] or '') or now_ms)
      if age > 0 and age < tonumber(ARGV[5]) then
        at = at - age
      end
      local minute = math.floor(at / 60000)
      local hour = math.floor(minute / 60)
      local history = ARGV[1] .. 's:' .. string.format('%d', hour)
      redis.call('HINCRBY', history, 'c' .. string.format('%d', minute - hour * 60), amount)
      redis.call('PEXPIRE', history, ARGV[6])
    end
    redis.call('DEL', key)
    swept = swept + 1
    credits = credits + amount
  end
  -- A reservation whose hash expired with its period leaves only its id.
  redis.call('ZREM', KEYS[1], id)
end
return {swept, credits, #ids}
