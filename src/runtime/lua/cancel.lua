#!lua
-- Cancels a run, atomically: the run ends `cancelled` at once and no tenant is left showing
-- `pending`, `queued` or `running`. Tenants that were running are marked cancelled too;
-- their workers learn it at the next lease renewal (renew.lua answers "cancelled") and stop
-- the step's statement in the database. Their late finish is a no-op (finish.lua leaves
-- finished tenants alone). The run leaves the active set in the caller's next step (a
-- global key, in another hash slot; the maintenance pass repairs a crash in between).
--
-- KEYS[1] run hash, KEYS[2] tenants hash, KEYS[3] inflight zset, KEYS[4] hosts hash,
-- KEYS[5] events list
-- ARGV[1] now (ms), ARGV[2] reason
-- Returns {'ok', previous state} or {'refused', current state}.
local run, tenants, inflight, hosts, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now, reason = tonumber(ARGV[1]), ARGV[2]
local state = redis.call('HGET', run, 'state')
if not state then return {'refused', 'missing'} end
if state ~= 'queued' and state ~= 'running' and state ~= 'awaiting_approval' and state ~= 'paused' then
  return {'refused', state}
end
local flat = redis.call('HGETALL', tenants)
local cancelled, stopped = 0, 0
for i = 1, #flat, 2 do
  local cp = cjson.decode(flat[i + 1])
  if cp.state == 'pending' or cp.state == 'queued' or cp.state == 'running' then
    if cp.state == 'running' then stopped = stopped + 1 end
    cp.state = 'cancelled'
    cp.finished_ms = now
    redis.call('HSET', tenants, flat[i], cjson.encode(cp))
    redis.call('HINCRBY', run, 'w' .. cp.wave .. ':cancelled', 1)
    cancelled = cancelled + 1
  end
end
redis.call('DEL', inflight, hosts)
redis.call('HINCRBY', run, 'cancelled', cancelled)
redis.call('HSET', run, 'state', 'cancelled', 'reason', reason, 'inflight', 0, 'finished_ms', now, 'updated_ms', now)
redis.call('HDEL', run, 'halting')
redis.call('RPUSH', events, cjson.encode({at = now, event = string.format(
  'cancel: run is now cancelled (%d tenant(s) not finished, %d of them stopped while running)', cancelled, stopped)}))
return {'ok', state}
