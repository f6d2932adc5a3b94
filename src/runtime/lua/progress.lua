#!lua
-- Records a tenant's progress (next unit, attempts, last error, a unit's output), only for
-- the holder of the lease.
-- KEYS[1] run hash, KEYS[2] tenants hash, KEYS[3] lease key
-- ARGV[1] tenant, ARGV[2] "worker|fence", ARGV[3] checkpoint patch (JSON object; keys set,
-- `outputs` entries merged)
-- Returns {'ok', run state} or {'fenced'}.
if redis.call('GET', KEYS[3]) ~= ARGV[2] then return {'fenced'} end
local cp = cjson.decode(redis.call('HGET', KEYS[2], ARGV[1]))
local patch = cjson.decode(ARGV[3])
for k, v in pairs(patch) do
  if k == 'outputs' then
    if cp.outputs == nil or cp.outputs == cjson.null then cp.outputs = {} end
    for ok, ov in pairs(v) do cp.outputs[ok] = ov end
  else
    cp[k] = v
  end
end
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(cp))
return {'ok', redis.call('HGET', KEYS[1], 'state') or 'missing'}
