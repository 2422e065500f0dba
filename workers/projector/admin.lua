-- shardhouse projector: generation pointers (atomic switches for rebuild-projections).
-- ARGV: namespace, op, args...
--   begin ttl force       -> {1, gen, positions (flat hash), current or ""} | {0, building gen}
--   heartbeat gen ttl     -> 1 if gen is still the one being built (its TTL refreshed), else 0
--   switch gen origin     -> {1, previous current or ""} | {0}
--   abort gen             -> 1 if the building marker was ours and is gone, else 0
local ns, op = ARGV[1], ARGV[2]
local call = redis.call
local building = call('GET', ns .. 'building')
if op == 'begin' then
  if building and ARGV[4] ~= '1' then return {0, building} end
  local cur = call('GET', ns .. 'current')
  local gen = call('INCR', ns .. 'genseq')
  if cur and gen <= tonumber(cur) then
    gen = tonumber(cur) + 1
    call('SET', ns .. 'genseq', gen)
  end
  call('SET', ns .. 'building', gen, 'EX', tonumber(ARGV[3]))
  return {1, tostring(gen), call('HGETALL', ns .. 'pos'), cur or ''}
elseif op == 'heartbeat' then
  if building ~= ARGV[3] then return 0 end
  call('EXPIRE', ns .. 'building', tonumber(ARGV[4]))
  return 1
elseif op == 'switch' then
  if building ~= ARGV[3] then return {0} end
  local old = call('GET', ns .. 'current')
  call('SET', ns .. 'current', ARGV[3])
  call('SET', ns .. 'origin', ARGV[4])
  call('DEL', ns .. 'building')
  return {1, old or ''}
elseif op == 'abort' then
  if building ~= ARGV[3] then return 0 end
  call('DEL', ns .. 'building')
  return 1
end
return redis.error_reply('admin.lua: unknown op ' .. tostring(op))
