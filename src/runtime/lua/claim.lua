#!lua
-- A worker claims a dispatched tenant: takes its lease with a fresh fencing token, unless
-- the run is paused or the tenant's wave waits for approval, in which case the tenant goes
-- back to its wave's pending list (it was queued, it has not started) and is dispatched
-- again when the run resumes or the wave is approved.
--
-- KEYS[1] run hash, KEYS[2] tenants hash, KEYS[3] lease key, KEYS[4] fence counter,
-- KEYS[5] inflight zset, KEYS[6] hosts hash, KEYS[7] the pending zset of the tenant's wave,
-- KEYS[8] the wave's ready zset of host groups, KEYS[9] its parked hash
-- ARGV[1] tenant, ARGV[2] worker id, ARGV[3] dispatch number, ARGV[4] lease (ms), ARGV[5] now (ms),
-- ARGV[6] the tenant's host group ("a+b"), ARGV[7] a nonce unique to this claim attempt
-- (kept in the checkpoint: a worker whose claim's reply never arrived can still name the
-- claim exactly when it gives it back)
-- Returns {'ok', fence, checkpoint JSON} or {reason}: 'gone', 'done', 'stale' (a newer
-- dispatch exists), 'busy' (another worker holds the lease), 'held' (paused or not
-- approved: back to pending), 'stopped' (the run no longer runs; the caller releases the tenant).
local run, tenants, lease, fence_key, inflight = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local hosts, pending, ready, parked = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local tenant, worker, dispatch, lease_ms, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local group, nonce = ARGV[6], ARGV[7]

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
local gated = redis.call('HGET', run, 'gate:' .. cp.wave) == '1' and redis.call('HGET', run, 'approved:' .. cp.wave) ~= '1'
if run_state == 'paused' or gated then
  cp.state = 'pending'
  cp.queued_ms = nil
  redis.call('HSET', tenants, tenant, cjson.encode(cp))
  if redis.call('ZREM', inflight, tenant) == 1 then
    for h in string.gmatch(group, '[^+]+') do
      redis.call('HINCRBY', hosts, h, -1)
      local waiting = redis.call('HGET', parked, h)
      if waiting then
        redis.call('HDEL', parked, h)
        for g in string.gmatch(waiting, '[^ ]+') do redis.call('ZADD', ready, 0, g) end
      end
    end
    redis.call('HINCRBY', run, 'inflight', -1)
  end
  -- Back in its group's place (members sort by tenant id within a group, and the ones
  -- before it were dispatched already): the next one its group dispatches.
  redis.call('ZADD', pending, 0, group .. ' ' .. tenant)
  redis.call('ZADD', ready, 0, group)
  return {'held'}
end
local fence = redis.call('INCR', fence_key)
redis.call('SET', lease, worker .. '|' .. fence, 'PX', lease_ms)
cp.state = 'running'
cp.worker = worker
cp.fence = fence
cp.claim = nonce
if cp.started_ms == nil or cp.started_ms == cjson.null then cp.started_ms = now end
cp.claimed_ms = now
local encoded = cjson.encode(cp)
redis.call('HSET', tenants, tenant, encoded)
redis.call('ZADD', inflight, now + lease_ms, tenant)
return {'ok', tostring(fence), encoded}
