-- Extends a lease, only for the holder of the given fencing token.
-- KEYS[1] lease key, KEYS[2] inflight zset; ARGV[1] "worker|fence", ARGV[2] lease (ms),
-- ARGV[3] tenant, ARGV[4] now (ms). Returns 1, or 0 when the lease is lost.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], tonumber(ARGV[4]) + tonumber(ARGV[2]), ARGV[3])
return 1
