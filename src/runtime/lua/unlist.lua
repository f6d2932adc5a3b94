#!lua
-- The prune takes a run that was never published (its creator died between writing its
-- keys and publishing it) out of the index, so that a creator that was only slow can no
-- longer publish it (publish.lua refuses a run that is not in the index), and marks it
-- doomed so that a prune cut short still deletes its keys next time.
-- KEYS[1] runs zset, KEYS[2] active runs set, KEYS[3] doomed runs set (global keys, one slot)
-- ARGV[1] run id
-- Returns {'ok'}, or {'published'} when the run was published after all (left alone).
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return {'published'} end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
return {'ok'}
