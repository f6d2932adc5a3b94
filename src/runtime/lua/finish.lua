#!lua
-- Ends a tenant's work in a run: records the outcome, releases its concurrency slots and
-- its lease. With a fencing token, only the lease holder may finish; without one (a
-- tenant released because its run stopped) the tenant must not be leased.
--
-- KEYS[1] run hash, KEYS[2] tenants hash, KEYS[3] lease key, KEYS[4] hosts hash,
-- KEYS[5] inflight zset, KEYS[6] the tenant's wave's ready zset, KEYS[7] its parked hash
-- (host groups waiting for room on a host: put back in the ready set when a tenant on that
-- host finishes)
-- ARGV[1] tenant, ARGV[2] "worker|fence" or "", ARGV[3] outcome (succeeded, failed,
-- cancelled, skipped), ARGV[4] error or "", ARGV[5] now (ms), ARGV[6] hosts ("a+b"),
-- ARGV[7] checkpoint patch (JSON object)
-- Returns {'ok'} or {'fenced'}.
local run, tenants, lease, hosts, inflight = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local tenant, holder, outcome, err, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
if holder ~= '' then
  if redis.call('GET', lease) ~= holder then return {'fenced'} end
elseif redis.call('EXISTS', lease) == 1 then
  return {'fenced'}
end
local cp = cjson.decode(redis.call('HGET', tenants, tenant))
-- Already finished (e.g. cancelled while it ran): nothing to count, only the lease to drop.
if cp.state == 'succeeded' or cp.state == 'failed' or cp.state == 'cancelled' or cp.state == 'skipped' then
  if holder ~= '' then redis.call('DEL', lease) end
  return {'ok'}
end
for k, v in pairs(cjson.decode(ARGV[7])) do
  if k == 'outputs' then
    if cp.outputs == nil or cp.outputs == cjson.null then cp.outputs = {} end
    for ok, ov in pairs(v) do cp.outputs[ok] = ov end
  else
    cp[k] = v
  end
end
cp.state = outcome
cp.finished_ms = now
if err ~= '' then cp.last_error = err end
redis.call('HSET', tenants, tenant, cjson.encode(cp))
redis.call('DEL', lease)
redis.call('ZREM', inflight, tenant)
for h in string.gmatch(ARGV[6], '[^+]+') do
  redis.call('HINCRBY', hosts, h, -1)
  local waiting = redis.call('HGET', KEYS[7], h)
  if waiting then
    redis.call('HDEL', KEYS[7], h)
    for g in string.gmatch(waiting, '[^ ]+') do redis.call('ZADD', KEYS[6], 0, g) end
  end
end
redis.call('HINCRBY', run, 'inflight', -1)
redis.call('HINCRBY', run, outcome, 1)
redis.call('HINCRBY', run, 'w' .. cp.wave .. ':' .. outcome, 1)
redis.call('HSET', run, 'updated_ms', now)
return {'ok'}
