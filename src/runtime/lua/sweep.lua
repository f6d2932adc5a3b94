-- Finds tenants whose dispatch was never picked up or whose worker stopped renewing its
-- lease (crashed, killed, partitioned), and dispatches them again with a new dispatch
-- number, so the stale queue entry and the dead worker's fencing token are both refused.
--
-- KEYS[1] tenants hash, KEYS[2] inflight zset, KEYS[3] lease key stem ("...:lease:")
-- ARGV[1] now (ms), ARGV[2] dispatch grace (ms)
-- Returns {tenant|dispatch, ...} to push again.
local tenants, inflight = KEYS[1], KEYS[2]
local now, grace = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for _, tenant in ipairs(redis.call('ZRANGEBYSCORE', inflight, '-inf', now, 'LIMIT', 0, 500)) do
  local ttl = redis.call('PTTL', KEYS[3] .. tenant)
  if ttl > 0 then
    redis.call('ZADD', inflight, now + ttl, tenant)
  else
    local cp = cjson.decode(redis.call('HGET', tenants, tenant))
    if cp.state == 'queued' or cp.state == 'running' then
      -- A worker vanished with the lease: charged to the lost-lease budget, and noted with
      -- the claim's nonce so that a worker that was only cut off from Redis can take the
      -- charge back (release.lua).
      if cp.state == 'running' then
        cp.lost = (cp.lost or 0) + 1
        cp.lost_by = cp.claim
      end
      cp.state = 'queued'
      cp.dispatch = (cp.dispatch or 0) + 1
      cp.queued_ms = now
      redis.call('HSET', tenants, tenant, cjson.encode(cp))
      redis.call('ZADD', inflight, now + grace, tenant)
      table.insert(out, tenant .. '|' .. cp.dispatch)
    else
      redis.call('ZREM', inflight, tenant)
    end
  end
end
return out
