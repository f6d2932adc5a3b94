#!lua
-- Claims a schedule tick, so that one replica at a time works on a workflow's ticks
-- (reads the catalog, checks overlap, creates the run). The claim expires, by Redis's
-- clock so that replicas with skewed clocks agree, and a replica that died between the
-- claim and the run's creation holds the workflow only until then. The owner may claim
-- again (a retry, or a newer tick), which renews the claim.
-- KEYS[1] the workflow's schedule hash
-- ARGV[1] tick (ms), ARGV[2] owner (worker id), ARGV[3] claim lifetime (ms)
-- Returns {'ok'}, {'done', done (ms)} when the tick is handled already, or
-- {'busy', claimed tick, owner, ms until that claim expires}.
local tick = tonumber(ARGV[1])
local done = tonumber(redis.call('HGET', KEYS[1], 'done'))
if done and done >= tick then return {'done', string.format('%d', done)} end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local claim = redis.call('HGET', KEYS[1], 'claim')
if claim then
  local claimed, owner, expires = string.match(claim, '^(%-?%d+)|(.*)|(%d+)$')
  if owner and owner ~= ARGV[2] and tonumber(expires) > now then
    return {'busy', claimed, owner, string.format('%d', tonumber(expires) - now)}
  end
end
redis.call('HSET', KEYS[1], 'claim', ARGV[1] .. '|' .. ARGV[2] .. '|' .. string.format('%d', now + tonumber(ARGV[3])))
return {'ok'}
