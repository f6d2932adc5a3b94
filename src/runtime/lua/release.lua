-- Gives a lease back (a draining worker that could not finish in time): the tenant is
-- dispatched again by the next sweep, and resumes from its last checkpoint.
-- KEYS[1] lease key, KEYS[2] inflight zset; ARGV[1] "worker|fence", ARGV[2] tenant, ARGV[3] now (ms)
-- Returns 1, or 0 when the lease was no longer ours.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]), ARGV[2])
return 1
