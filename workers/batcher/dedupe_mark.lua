-- shardhouse batcher: remember a committed batch's event ids, and the batch marker.
-- ARGV: prefix, ids_per_hash, base_slots, fanout, max_level, ttl_seconds, batch_key, blob
-- (layout in dedupe_check.lua). Level by level, each id goes into the first hash on its path that
-- has room; a hash that reaches ids_per_hash ids gets the "full" field "". The ids were checked
-- unseen just before, so presence is not re-tested (a race with another shard can at worst store
-- an id twice). Every hash on a walked path gets its TTL refreshed, so a parent never expires
-- before its children and the check's walk stays valid. Returns the number of ids stored.
local prefix = ARGV[1]
local per_hash = tonumber(ARGV[2])
local base = tonumber(ARGV[3])
local fan = tonumber(ARGV[4])
local max_level = tonumber(ARGV[5])
local ttl = tonumber(ARGV[6])
local batch_key = ARGV[7]
local blob = ARGV[8]
local TWO32 = 4294967296
local byte, sub, fmt, floor = string.byte, string.sub, string.format, math.floor
local count = #blob / 24
local hours, hashes, pending = {}, {}, {}
for i = 1, count do
  local o = (i - 1) * 24 + 1
  local b1, b2, b3, b4, h1, h2, h3, h4 = byte(blob, o, o + 7)
  hours[i] = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
  hashes[i] = ((h1 * 256 + h2) * 256 + h3) * 256 + h4
  pending[i] = i
end
local stored = 0
local slots = base
for level = 0, max_level do
  if #pending == 0 then break end
  local groups, order = {}, {}
  for _, i in ipairs(pending) do
    local g = hours[i] * TWO32 + hashes[i] % slots
    local members = groups[g]
    if members == nil then
      groups[g] = {i}
      order[#order + 1] = g
    else
      members[#members + 1] = i
    end
  end
  local nxt = {}
  for _, g in ipairs(order) do
    local members = groups[g]
    local key = fmt('%s%d:%d:%d', prefix, floor(g / TWO32), level, g % TWO32)
    local take = #members
    local becomes_full = false
    if level < max_level then
      local n = redis.call('HLEN', key)
      if per_hash - n < take then take = per_hash - n end
      if take < 0 then take = 0 end
      becomes_full = n <= per_hash and n + take >= per_hash
    end
    for s = 1, take, 2000 do
      local e = take
      if e > s + 1999 then e = s + 1999 end
      local args = {}
      for j = s, e do
        local o = (members[j] - 1) * 24 + 9
        args[#args + 1] = sub(blob, o, o + 15)
        args[#args + 1] = ''
      end
      redis.call('HSET', key, unpack(args))
    end
    stored = stored + take
    if becomes_full then
      redis.call('HSET', key, '', '')
    end
    for j = take + 1, #members do nxt[#nxt + 1] = members[j] end
    redis.call('EXPIRE', key, ttl)
  end
  pending = nxt
  slots = slots * fan
end
if batch_key ~= '' then
  redis.call('SET', batch_key, '1', 'EX', ttl)
end
return stored
