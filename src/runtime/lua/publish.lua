#!lua
-- Publishes a run whose keys are all written: adds it to the active set, which workers
-- keep moving. Refused when the run left the index meanwhile (the prune discarded a
-- creation it took for abandoned): the caller then deletes what it wrote.
-- KEYS[1] runs zset, KEYS[2] active runs set (global keys, one slot)
-- ARGV[1] run id
-- Returns {'ok'} or {'gone'}.
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return {'gone'} end
redis.call('SADD', KEYS[2], ARGV[1])
return {'ok'}
