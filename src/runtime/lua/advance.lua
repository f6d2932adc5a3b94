#!lua
-- Moves a run forward, atomically: holds a wave that needs approval until it has it,
-- checks the current wave's failure budget, dispatches pending tenants within the run's and
-- each host's concurrency limits, and when a wave is complete moves to the next one (after
-- its soak, and again through the approval gate) or finishes the run.
--
-- The approval gate is checked at the top of every wave, whatever path reached it (first
-- wave, end of a soak, resume after a pause, a restarted process): a wave that needs
-- approval dispatches nothing until `approved:{wave}` is set by `tenantry approve`.
--
-- Cost: O(tenants dispatched), not O(host groups). Only the head of the wave's ready set
-- is looked at; a group whose host is full is parked under that host (finish.lua puts it
-- back when a tenant on the host finishes), and a served group goes to the back of the set.
--
-- The run's end leaves the active set afterwards, in another step (the set is a global key,
-- in another hash slot): the caller removes a run that this script ended.
--
-- KEYS[1] run hash, KEYS[2] tenants hash, KEYS[3] hosts hash, KEYS[4] inflight zset,
-- KEYS[5] events list, KEYS[6] host limits hash,
-- then per wave w (0-based): KEYS[7 + 3w] ready zset, KEYS[8 + 3w] parked hash,
-- KEYS[9 + 3w] pending zset ("{group} {tenant}" members, see keys.rs)
-- ARGV[1] now (ms), ARGV[2] run concurrency,
-- ARGV[3] waves (JSON array of {size, max_failures, max_failure_rate, approval, soak_ms, name}),
-- ARGV[4] dispatch grace (ms): how long a dispatched task may wait for a worker.
-- Returns {state, tenant|dispatch, ...}.
local run, tenants, hosts, inflight_z, events, limits = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local now = tonumber(ARGV[1])
local run_limit = tonumber(ARGV[2])
local waves = cjson.decode(ARGV[3])
local grace = tonumber(ARGV[4])

local function event(text)
  redis.call('RPUSH', events, cjson.encode({at = now, event = text}))
  redis.call('LTRIM', events, -1000, -1)
end

local function finish(state, reason)
  redis.call('HSET', run, 'state', state, 'reason', reason, 'finished_ms', now, 'updated_ms', now)
  event('run ' .. state .. ': ' .. reason)
  return {state}
end

-- Hosts over a load limit (`[throttle]`, see defer.lua): host -> until (ms).
local throttled = cjson.decode(redis.call('HGET', run, 'throttled') or '{}')

-- The first host of `group` that is at its limit or throttled, or nil.
local function full_host(group)
  for h in string.gmatch(group, '[^+]+') do
    local used = tonumber(redis.call('HGET', hosts, h) or '0')
    local limit = tonumber(redis.call('HGET', limits, h) or run_limit)
    if used >= limit then return h end
    if (tonumber(throttled[h]) or 0) > now then return h end
  end
  return nil
end

local state = redis.call('HGET', run, 'state')
if state ~= 'running' then return {state or 'missing'} end
local soak_until = tonumber(redis.call('HGET', run, 'soak_until_ms') or '0')
if soak_until > now then return {'soaking', tostring(soak_until)} end

local wave = tonumber(redis.call('HGET', run, 'wave'))
local unparked = false
-- A throttle mark that has run out: the host's parked groups may go again (their next
-- tenant looks at the host's load before it starts, and may be deferred again).
local expired = false
for h, expiry in pairs(throttled) do
  if tonumber(expiry) <= now then
    throttled[h] = nil
    expired = true
    local waiting = redis.call('HGET', KEYS[8 + 3 * wave], h)
    if waiting then
      redis.call('HDEL', KEYS[8 + 3 * wave], h)
      for g in string.gmatch(waiting, '[^ ]+') do redis.call('ZADD', KEYS[7 + 3 * wave], 0, g) end
    end
  end
end
if expired then
  if next(throttled) == nil then redis.call('HDEL', run, 'throttled')
  else redis.call('HSET', run, 'throttled', cjson.encode(throttled)) end
end
while true do
  local w = waves[wave + 1]
  if w.approval and redis.call('HGET', run, 'approved:' .. wave) ~= '1' then
    redis.call('HSET', run, 'state', 'awaiting_approval', 'updated_ms', now)
    event('waiting for approval of wave ' .. w.name)
    return {'awaiting_approval'}
  end
  local failed = tonumber(redis.call('HGET', run, 'w' .. wave .. ':failed') or '0')
  -- The budget: more failures than max_failures, or a larger share than max_failure_rate
  -- of the wave, halts the run. Later waves stay untouched.
  local over = false
  if w.max_failures ~= cjson.null and failed > w.max_failures then over = true end
  if w.max_failure_rate ~= cjson.null and w.size > 0 and failed / w.size > w.max_failure_rate then over = true end
  if over then
    local reason = string.format('halted: wave %s exceeded its failure budget (%d of %d tenants failed); later waves were not started',
      w.name, failed, w.size)
    -- Stop dispatching at once; the run ends when the tenants already in flight have.
    local inflight = tonumber(redis.call('HGET', run, 'inflight') or '0')
    if inflight > 0 then
      if not redis.call('HGET', run, 'halting') then
        redis.call('HSET', run, 'halting', reason)
        event('halting: ' .. reason .. '; waiting for ' .. inflight .. ' tenant(s) in flight')
      end
      return {'running'}
    end
    return finish('failed', reason)
  end

  -- Dispatch within the limits, from the head of the ready set.
  local ready, parked, pending = KEYS[7 + 3 * wave], KEYS[8 + 3 * wave], KEYS[9 + 3 * wave]
  local inflight = tonumber(redis.call('HGET', run, 'inflight') or '0')
  local out = {'running'}
  while inflight < run_limit do
    local head = redis.call('ZRANGE', ready, 0, 0)
    if #head == 0 then break end
    local group = head[1]
    local full = full_host(group)
    if full then
      redis.call('ZREM', ready, group)
      local waiting = redis.call('HGET', parked, full)
      redis.call('HSET', parked, full, waiting and (waiting .. ' ' .. group) or group)
    else
      local first = redis.call('ZRANGEBYLEX', pending, '[' .. group .. ' ', '(' .. group .. '!', 'LIMIT', 0, 1)[1]
      if not first then
        redis.call('ZREM', ready, group)
      else
        redis.call('ZREM', pending, first)
        local tenant = string.sub(first, #group + 2)
        local cp = cjson.decode(redis.call('HGET', tenants, tenant))
        cp.state = 'queued'
        cp.dispatch = (cp.dispatch or 0) + 1
        cp.queued_ms = now
        redis.call('HSET', tenants, tenant, cjson.encode(cp))
        redis.call('ZADD', inflight_z, now + grace, tenant)
        for h in string.gmatch(group, '[^+]+') do redis.call('HINCRBY', hosts, h, 1) end
        inflight = inflight + 1
        table.insert(out, tenant .. '|' .. cp.dispatch)
        if #redis.call('ZRANGEBYLEX', pending, '[' .. group .. ' ', '(' .. group .. '!', 'LIMIT', 0, 1) == 0 then
          redis.call('ZREM', ready, group)
        else
          redis.call('ZADD', ready, redis.call('HINCRBY', run, 'served', 1), group)
        end
      end
    end
  end
  redis.call('HSET', run, 'inflight', inflight, 'updated_ms', now)
  if #out > 1 or inflight > 0 or redis.call('ZCARD', ready) > 0 then return out end
  -- Nothing in flight can unpark a group any more: put parked groups back (a host limit
  -- lowered mid-run, or counters repaired by hand) rather than end the wave without them.
  local leftover = redis.call('HVALS', parked)
  if #leftover > 0 then
    -- Once per call: host counters that stay wrong must not spin this script.
    if unparked then return out end
    unparked = true
    redis.call('DEL', parked)
    for _, groups in ipairs(leftover) do
      for g in string.gmatch(groups, '[^ ]+') do redis.call('ZADD', ready, 0, g) end
    end
  else
    -- The wave is complete.
    event('wave ' .. w.name .. ' complete')
    if wave + 1 >= #waves then
      local total_failed = tonumber(redis.call('HGET', run, 'failed') or '0')
      if total_failed > 0 then
        return finish('failed', string.format('completed: %d tenant(s) failed, within the failure budgets; `tenantry retry` re-runs them', total_failed))
      end
      return finish('succeeded', 'completed: every tenant succeeded')
    end
    wave = wave + 1
    redis.call('HSET', run, 'wave', wave)
    local nw = waves[wave + 1]
    event('wave ' .. nw.name .. ' is next')
    if w.soak_ms > 0 then
      redis.call('HSET', run, 'soak_until_ms', now + w.soak_ms)
      event('soaking ' .. w.soak_ms .. ' ms after wave ' .. w.name)
      return {'soaking', tostring(now + w.soak_ms)}
    end
  end
end
