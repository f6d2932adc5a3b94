#!lua
-- Extends a lease, only for the holder of the given fencing token, and tells the holder
-- when its run was cancelled so it stops the step's database work at once.
-- KEYS[1] lease key, KEYS[2] inflight zset, KEYS[3] run hash; ARGV[1] "worker|fence",
-- ARGV[2] lease (ms), ARGV[3] tenant, ARGV[4] now (ms).
-- Returns 1 (renewed), 0 (the lease is lost) or 2 (the run was cancelled: stop).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local state = redis.call('HGET', KEYS[3], 'state')
if state == 'cancelled' or not state then return 2 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], tonumber(ARGV[4]) + tonumber(ARGV[2]), ARGV[3])
return 1
