#!lua
-- An operator's state change of a run (approve, pause, resume, cancel), only from the
-- states it is allowed from. A run that ends here leaves the active set in the caller's
-- next step (a global key, in another hash slot).
-- KEYS[1] run hash, KEYS[2] events list
-- ARGV[1] allowed from-states (comma separated), ARGV[2] new state,
-- ARGV[3] now (ms), ARGV[4] event text, ARGV[5..] extra field/value pairs to set
-- Returns {'ok', previous state} or {'refused', current state}.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'refused', 'missing'} end
local allowed = false
for s in string.gmatch(ARGV[1], '[^,]+') do if s == state then allowed = true end end
if not allowed then return {'refused', state} end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'updated_ms', ARGV[3])
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[2] == 'succeeded' or ARGV[2] == 'failed' or ARGV[2] == 'cancelled' then
  redis.call('HSET', KEYS[1], 'finished_ms', ARGV[3])
end
redis.call('RPUSH', KEYS[2], cjson.encode({at = tonumber(ARGV[3]), event = ARGV[4]}))
return {'ok', state}
