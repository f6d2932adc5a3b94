#!lua
-- Gives a claim back without charging the tenant a lost worker: a draining worker whose
-- handler could not finish in time, a running tenant whose run was paused, or a live worker
-- that was cut off from Redis (its renewals failed, or a claim's reply came late or not at
-- all) long enough for its lease to run out. The tenant is queued again with a new dispatch
-- number and resumes from its last checkpoint on any worker.
--
-- A claim is named by the nonce its worker sent with it (the worker knows it even when the
-- claim's reply never arrived). The tenant is queued again only while that claim is still
-- the tenant's latest and no live lease other than its own exists; if the sweep already
-- dispatched it again and charged a lost worker for that claim (`lost_by`), the charge is
-- taken back: the worker was alive, Redis was away.
--
-- KEYS[1] lease key, KEYS[2] inflight zset, KEYS[3] tenants hash
-- ARGV[1] the claim's nonce, ARGV[2] tenant, ARGV[3] now (ms), ARGV[4] dispatch grace (ms)
-- Returns {'ok', dispatch} (push it again), {'refunded'} (already dispatched again by the
-- sweep) or {'lost'} (another claim owns the tenant, or it finished).
local lease, inflight, tenants = KEYS[1], KEYS[2], KEYS[3]
local nonce, tenant, now, grace = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local raw = redis.call('HGET', tenants, tenant)
if not raw then return {'lost'} end
local cp = cjson.decode(raw)
local mine = cp.claim == nonce
local current = redis.call('GET', lease)
if current then
  if mine and current == tostring(cp.worker) .. '|' .. tostring(cp.fence) then
    redis.call('DEL', lease)
  else
    -- A live lease of another claim: hands off.
    mine = false
  end
end
local refunded = false
if cp.lost_by == nonce then
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
