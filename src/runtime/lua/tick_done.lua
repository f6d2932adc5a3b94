#!lua
-- Records a schedule tick as handled: `done` = tick, and the caller's claim is given up.
-- Refused when this or a newer tick is handled already (`done` never goes back, so no
-- tick is handled twice, whatever claims expired meanwhile), or when another replica's
-- claim is alive (it is working on the workflow now).
-- Runs alone for a tick that is skipped on purpose (no run), or right after the keys of
-- the tick's run were written: then it also publishes the run (active set), so the run
-- runs exactly when its tick is recorded. A refused run is deleted by the caller; one
-- whose index entry is gone (the prune discarded a creation it took for abandoned) is
-- refused and its tick left unrecorded, to be tried again.
-- KEYS[1] the workflow's schedule hash; with a run: KEYS[2] runs zset, KEYS[3] active
-- runs set (global keys, all in the slot of the prefix's hash tag)
-- ARGV[1] tick (ms), ARGV[2] owner; with a run: ARGV[3] run id
-- Returns {'ok'} or {'refused', why}.
local with_run = #KEYS > 1
local tick = tonumber(ARGV[1])
local done = tonumber(redis.call('HGET', KEYS[1], 'done'))
if done and done >= tick then
  return {'refused', 'tick ' .. string.format('%d', done) .. ' is handled already'}
end
local claim = redis.call('HGET', KEYS[1], 'claim')
local mine = false
if claim then
  local owner, expires = string.match(claim, '^%-?%d+|(.*)|(%d+)$')
  mine = owner == ARGV[2]
  if owner and not mine then
    local time = redis.call('TIME')
    local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
    if tonumber(expires) > now then return {'refused', owner .. ' is working on the workflow'} end
  end
end
if with_run and not redis.call('ZSCORE', KEYS[2], ARGV[3]) then
  return {'refused', 'run ' .. ARGV[3] .. ' was discarded before it was published'}
end
if mine then redis.call('HDEL', KEYS[1], 'claim') end
redis.call('HSET', KEYS[1], 'done', ARGV[1])
if with_run then redis.call('SADD', KEYS[3], ARGV[3]) end
return {'ok'}
