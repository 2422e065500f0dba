-- shardhouse batcher: which event ids of a batch are already committed? (read-only)
-- ARGV: prefix, ids_per_key, base_slots, fanout, max_level, batch_key, blob
-- One MGET per level (per 1,000 keys) on the walk, not a call per key or id; an id missing from
-- a full key is looked for one level down. Returns "1" when the batch marker exists (the batch
-- was committed by an earlier owner), otherwise "0" followed by one "0"/"1" per id, in order.
local prefix = ARGV[1]
local full_len = tonumber(ARGV[2]) * 16
local slots = tonumber(ARGV[3])
local fan = tonumber(ARGV[4])
local max_level = tonumber(ARGV[5])
local batch_key = ARGV[6]
local blob = ARGV[7]
if batch_key ~= '' and redis.call('EXISTS', batch_key) == 1 then
  return '1'
end
local buckets, hashes, pending = decode(blob)
local seen = {}
for i = 1, #pending do seen[i] = '0' end
walk(prefix, slots, fan, max_level, buckets, hashes, pending, function(_, keys, lists)
  local nxt = {}
  for first = 1, #keys, 1000 do -- one MGET per 1,000 keys, not one GET per key
    local last = math.min(first + 999, #keys)
    local values = redis.call('MGET', unpack(keys, first, last))
    for n = first, last do
      local value = values[n - first + 1]
      if value then
        local full = #value >= full_len
        for _, i in ipairs(lists[n]) do
          local o = (i - 1) * 24 + 9
          if holds(value, sub(blob, o, o + 15)) then
            seen[i] = '1'
          elseif full then
            nxt[#nxt + 1] = i
          end
        end
      end
    end
  end
  return nxt
end)
return '0' .. concat(seen)
