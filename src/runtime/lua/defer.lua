#!lua
-- Gives a claimed tenant back because its host is over a load limit (`[throttle]`): the
-- tenant goes back to its wave's pending list with the reason (it resumes from its
-- checkpoint when dispatched again), its run and host slots are freed, and the host is
-- marked throttled in the run until `expiry`, so `advance` dispatches none of its tenants
-- meanwhile (their groups are parked under the host) while other hosts' tenants take the
-- slots. No attempt and no lost worker is charged.
--
-- KEYS[1] run hash, KEYS[2] tenants hash, KEYS[3] lease key, KEYS[4] inflight zset,
-- KEYS[5] hosts hash, KEYS[6] the pending zset of the tenant's wave, KEYS[7] its ready zset
-- ARGV[1] tenant, ARGV[2] "worker|fence", ARGV[3] the tenant's host group ("a+b"),
-- ARGV[4] the throttled host, ARGV[5] expiry (ms), ARGV[6] reason, ARGV[7] now (ms)
-- Returns {'ok'} or {'fenced'}.
local run, tenants, lease, inflight, hosts, pending, ready = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local tenant, holder, group, host, expiry, reason, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
if redis.call('GET', lease) ~= holder then return {'fenced'} end
local cp = cjson.decode(redis.call('HGET', tenants, tenant))
redis.call('DEL', lease)
cp.state = 'pending'
cp.queued_ms = nil
cp.throttled = reason
if cp.throttled_since_ms == nil or cp.throttled_since_ms == cjson.null then cp.throttled_since_ms = now end
redis.call('HSET', tenants, tenant, cjson.encode(cp))
if redis.call('ZREM', inflight, tenant) == 1 then
  for h in string.gmatch(group, '[^+]+') do redis.call('HINCRBY', hosts, h, -1) end
  redis.call('HINCRBY', run, 'inflight', -1)
end
local marks = cjson.decode(redis.call('HGET', run, 'throttled') or '{}')
if (tonumber(marks[host]) or 0) < expiry then marks[host] = expiry end
redis.call('HSET', run, 'throttled', cjson.encode(marks), 'updated_ms', now)
redis.call('ZADD', pending, 0, group .. ' ' .. tenant)
redis.call('ZADD', ready, 0, group)
return {'ok'}
