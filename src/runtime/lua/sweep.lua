#!lua
-- Finds tenants whose dispatch was never picked up or whose worker stopped renewing its
-- lease (crashed, killed, partitioned), and dispatches them again with a new dispatch
-- number, so the stale queue entry and the dead worker's fencing token are both refused.
--
-- The candidates (tenants past their deadline in the inflight zset) are read by the caller
-- first, so that their lease keys can be given here: a script receives every key it
-- touches. Each is checked again here, atomically; one whose deadline moved meanwhile
-- (renewed, finished) is left alone.
--
-- KEYS[1] tenants hash, KEYS[2] inflight zset, KEYS[2 + i] lease key of ARGV[2 + i]
-- ARGV[1] now (ms), ARGV[2] dispatch grace (ms), ARGV[3..] the candidate tenants
-- Returns {tenant|dispatch, ...} to push again.
local tenants, inflight = KEYS[1], KEYS[2]
local now, grace = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV do
  local tenant, lease = ARGV[i], KEYS[i]
  local deadline = tonumber(redis.call('ZSCORE', inflight, tenant))
  if deadline and deadline <= now then
    local ttl = redis.call('PTTL', lease)
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
end
return out
