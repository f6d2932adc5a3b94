-- An operator's state change of a run (approve, pause, resume, cancel), only from the
-- states it is allowed from.
-- KEYS[1] run hash, KEYS[2] events list, KEYS[3] active runs set
-- ARGV[1] run id, ARGV[2] allowed from-states (comma separated), ARGV[3] new state,
-- ARGV[4] now (ms), ARGV[5] event text, ARGV[6..] extra field/value pairs to set
-- Returns {'ok', previous state} or {'refused', current state}.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'refused', 'missing'} end
local allowed = false
for s in string.gmatch(ARGV[2], '[^,]+') do if s == state then allowed = true end end
if not allowed then return {'refused', state} end
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'updated_ms', ARGV[4])
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[3] == 'succeeded' or ARGV[3] == 'failed' or ARGV[3] == 'cancelled' then
  redis.call('HSET', KEYS[1], 'finished_ms', ARGV[4])
  redis.call('SREM', KEYS[3], ARGV[1])
end
redis.call('RPUSH', KEYS[2], cjson.encode({at = tonumber(ARGV[4]), event = ARGV[5]}))
return {'ok', state}
