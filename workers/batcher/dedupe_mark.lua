-- shardhouse batcher: remember a committed batch's event ids, and the batch marker.
-- ARGV: prefix, ids_per_key, base_slots, fanout, max_level, ttl_seconds, batch_key, blob
-- Level by level, each id goes into the first key on its path that has room (the deepest level
-- takes any number). The ids were checked unseen just before, so presence is not re-tested (a
-- race with another shard can at worst store an id twice). Ids are APPENDed (no copy of what the
-- key holds); a key that becomes full is rewritten once at its exact size, because APPEND grows
-- an allocation by doubling (keys still filling carry that slack). Every key on a walked path
-- gets its TTL refreshed, so a parent never expires before its children and the check's walk
-- stays valid. Returns the number of ids stored.
local prefix = ARGV[1]
local cap = tonumber(ARGV[2])
local slots = tonumber(ARGV[3])
local fan = tonumber(ARGV[4])
local max_level = tonumber(ARGV[5])
local ttl = ARGV[6]
local batch_key = ARGV[7]
local blob = ARGV[8]
local buckets, hashes, pending = decode(blob)
local stored = 0
walk(prefix, slots, fan, max_level, buckets, hashes, pending, function(level, keys, lists)
  local nxt = {}
  for n, key in ipairs(keys) do
    local members = lists[n]
    local take = #members
    local held = 0
    if level < max_level then
      held = redis.call('STRLEN', key) / 16
      if cap - held < take then take = cap - held end
      if take < 0 then take = 0 end
    end
    if take > 0 then
      local parts = {}
      for j = 1, take do
        local o = (members[j] - 1) * 24 + 9
        parts[j] = sub(blob, o, o + 15)
      end
      redis.call('APPEND', key, concat(parts))
      if held + take == cap then
        -- full for good: rewritten once at its exact size (APPEND grows by doubling)
        redis.call('SET', key, redis.call('GET', key), 'EX', ttl)
      else
        redis.call('EXPIRE', key, ttl)
      end
      stored = stored + take
    else
      redis.call('EXPIRE', key, ttl)
    end
    for j = take + 1, #members do nxt[#nxt + 1] = members[j] end
  end
  return nxt
end)
if batch_key ~= '' then
  redis.call('SET', batch_key, '1', 'EX', ttl)
end
return stored
