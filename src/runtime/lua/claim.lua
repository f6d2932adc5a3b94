-- A worker claims a dispatched tenant: takes its lease with a fresh fencing token.
--
-- KEYS[1] run hash, KEYS[2] tenants hash, KEYS[3] lease key, KEYS[4] fence counter,
-- KEYS[5] inflight zset
-- ARGV[1] tenant, ARGV[2] worker id, ARGV[3] dispatch number, ARGV[4] lease (ms), ARGV[5] now (ms)
-- Returns {'ok', fence, checkpoint JSON} or {reason}: 'gone', 'done', 'stale' (a newer
-- dispatch exists), 'busy' (another worker holds the lease), 'stopped' (the run no
-- longer runs; the caller releases the tenant).
local run, tenants, lease, fence_key, inflight = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local tenant, worker, dispatch, lease_ms, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])

local raw = redis.call('HGET', tenants, tenant)
if not raw then return {'gone'} end
local cp = cjson.decode(raw)
if cp.state == 'succeeded' or cp.state == 'failed' or cp.state == 'cancelled' or cp.state == 'skipped' then return {'done'} end
if cp.state == 'pending' or (cp.dispatch or 0) ~= dispatch then return {'stale'} end
if redis.call('EXISTS', lease) == 1 then return {'busy'} end
local run_state = redis.call('HGET', run, 'state')
-- A run halting on its failure budget starts nothing new, even what was already dispatched.
if redis.call('HEXISTS', run, 'halting') == 1 then return {'stopped', 'failed'} end
if run_state ~= 'running' and run_state ~= 'awaiting_approval' and run_state ~= 'paused' then
  return {'stopped', run_state or 'missing'}
end
local fence = redis.call('INCR', fence_key)
redis.call('SET', lease, worker .. '|' .. fence, 'PX', lease_ms)
cp.state = 'running'
cp.worker = worker
cp.fence = fence
if cp.started_ms == nil or cp.started_ms == cjson.null then cp.started_ms = now end
cp.claimed_ms = now
local encoded = cjson.encode(cp)
redis.call('HSET', tenants, tenant, encoded)
redis.call('ZADD', inflight, now + lease_ms, tenant)
return {'ok', tostring(fence), encoded}
