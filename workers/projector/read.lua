-- shardhouse read API: read one model from the current generation, in one atomic round trip
-- (a rebuild's switch can never make a reader mix two generations or read a deleted one).
-- ARGV: namespace, op, args...     Returns {generation or false, data}.
--   hmget  k, (key, nfields, fields...) x k   -> one array of values per key
--   get    key                                -> the value (an entity)
--   top    key, n                             -> {ZREVRANGE 0 n-1 WITHSCORES, ZCARD}
--   range  key, min, max, offset, count, entity prefix
--                                             -> {ZRANGEBYSCORE WITHSCORES LIMIT, the members'
--                                                entity values (MGET <entity prefix><member>)}
local ns, op = ARGV[1], ARGV[2]
local call = redis.call
local gen = call('GET', ns .. 'current')
if not gen then return {false, {}} end
local g = ns .. gen .. ':'
if op == 'hmget' then
  local out, a = {}, 4
  for k = 1, tonumber(ARGV[3]) do
    local key, nf = ARGV[a], tonumber(ARGV[a + 1])
    local fields = {}
    for f = 1, nf do fields[f] = ARGV[a + 1 + f] end
    out[k] = call('HMGET', g .. key, unpack(fields))
    a = a + 2 + nf
  end
  return {gen, out}
elseif op == 'get' then
  return {gen, call('GET', g .. ARGV[3])}
elseif op == 'top' then
  local key = g .. ARGV[3]
  return {gen, {call('ZREVRANGE', key, 0, tonumber(ARGV[4]) - 1, 'WITHSCORES'), call('ZCARD', key)}}
elseif op == 'range' then
  local hits = call('ZRANGEBYSCORE', g .. ARGV[3], ARGV[4], ARGV[5], 'WITHSCORES', 'LIMIT', ARGV[6], ARGV[7])
  local names = {}
  for i = 1, #hits, 2 do names[#names + 1] = g .. ARGV[8] .. hits[i] end
  local values = {}
  if #names > 0 then values = call('MGET', unpack(names)) end
  return {gen, {hits, values}}
end
return redis.error_reply('read.lua: unknown op ' .. tostring(op))
