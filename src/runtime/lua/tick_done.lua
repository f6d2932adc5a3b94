-- Records a schedule tick as handled: `done` = tick, and the caller's claim is given up.
-- Refused when this or a newer tick is handled already (`done` never goes back, so no
-- tick is handled twice, whatever claims expired meanwhile), or when another replica's
-- claim is alive (it is working on the workflow now).
-- Runs alone for a tick that is skipped on purpose (no run), or as the last command of
-- the MULTI/EXEC that writes a scheduled run: then it also publishes the run (runs index,
-- active set) or, when refused, deletes what that transaction wrote, so nobody ever sees
-- a refused run and the run exists exactly when its tick is done.
-- KEYS[1] the workflow's schedule hash; with a run: KEYS[2] runs zset, KEYS[3] active
-- runs set, KEYS[4..] every key the transaction wrote for the run
-- ARGV[1] tick (ms), ARGV[2] owner; with a run: ARGV[3] run id, ARGV[4] created (ms)
-- Returns {'ok'} or {'refused', why}.
local with_run = #KEYS > 1
local function refuse(why)
  if with_run then
    for i = 4, #KEYS do redis.call('DEL', KEYS[i]) end
  end
  return {'refused', why}
end
local tick = tonumber(ARGV[1])
local done = tonumber(redis.call('HGET', KEYS[1], 'done'))
if done and done >= tick then
  return refuse('tick ' .. string.format('%d', done) .. ' is handled already')
end
local claim = redis.call('HGET', KEYS[1], 'claim')
if claim then
  local owner, expires = string.match(claim, '^%-?%d+|(.*)|(%d+)$')
  if owner == ARGV[2] then
    redis.call('HDEL', KEYS[1], 'claim')
  elseif owner then
    local time = redis.call('TIME')
    local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
    if tonumber(expires) > now then return refuse(owner .. ' is working on the workflow') end
  end
end
redis.call('HSET', KEYS[1], 'done', ARGV[1])
if with_run then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
  redis.call('SADD', KEYS[3], ARGV[3])
end
return {'ok'}
