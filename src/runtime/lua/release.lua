-- Gives a tenant back without charging it a lost worker: a draining worker whose handler
-- could not finish in time, or a live worker that was cut off from Redis (its renewals
-- failed, or a claim's reply came late or not at all) long enough for its lease to run out.
-- The tenant is queued again with a new dispatch number and resumes from its last
-- checkpoint on any worker.
--
-- A claim is identified by the worker and the dispatch number it claimed (and, when the
-- worker got the claim's reply, its fencing token). The tenant is queued again only while
-- that claim is still the tenant's latest and no live lease other than its own exists; if
-- the sweep already dispatched it again and charged a lost worker for that claim
-- (`lost_by`), the charge is taken back: the worker was alive, Redis was away.
--
-- KEYS[1] lease key, KEYS[2] inflight zset, KEYS[3] tenants hash
-- ARGV[1] worker id, ARGV[2] dispatch number, ARGV[3] fencing token or "" (unknown),
-- ARGV[4] tenant, ARGV[5] now (ms), ARGV[6] dispatch grace (ms)
-- Returns {'ok', dispatch} (push it again), {'refunded'} (already dispatched again by the
-- sweep) or {'lost'} (another claim owns the tenant, or it finished).
local lease, inflight, tenants = KEYS[1], KEYS[2], KEYS[3]
local worker, dispatch, fence = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local tenant, now, grace = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local raw = redis.call('HGET', tenants, tenant)
if not raw then return {'lost'} end
local cp = cjson.decode(raw)
local mine = cp.worker == worker and tonumber(cp.dispatch) == dispatch and (fence == nil or tonumber(cp.fence) == fence)
local current = redis.call('GET', lease)
if current then
  local ours = current == worker .. '|' .. tostring(fence)
  -- Without the token (the claim's reply never came), a lease of this worker on this
  -- claim's dispatch is taken to be that claim's.
  if fence == nil and mine and string.sub(current, 1, #worker + 1) == worker .. '|' then
    ours = tonumber(string.sub(current, #worker + 2)) == tonumber(cp.fence)
  end
  if ours then
    redis.call('DEL', lease)
  else
    -- A live lease that is not this claim's (another worker, or a later claim): hands off.
    mine = false
  end
end
local refunded = false
if cp.lost_by == worker .. '#' .. dispatch then
  cp.lost = math.max((cp.lost or 1) - 1, 0)
  cp.lost_by = nil
  refunded = true
end
if mine and cp.state == 'running' then
  cp.state = 'queued'
  cp.dispatch = (cp.dispatch or 0) + 1
  cp.queued_ms = now
  redis.call('HSET', tenants, tenant, cjson.encode(cp))
  redis.call('ZADD', inflight, now + grace, tenant)
  return {'ok', tostring(cp.dispatch)}
end
if refunded then
  redis.call('HSET', tenants, tenant, cjson.encode(cp))
  return {'refunded'}
end
return {'lost'}
