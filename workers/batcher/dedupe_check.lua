-- shardhouse batcher: which event ids of a batch are already committed? (read-only)
-- ARGV: prefix, ids_per_hash, base_slots, fanout, max_level, batch_key, blob
-- blob: 24 bytes per id = hour bucket (u32 BE) | id hash (u32 BE) | 16-byte binary UUID.
-- Layout (see workers/batcher/dedupe.py): hash <prefix><hour>:<level>:<hash mod slots(level)>,
-- field = binary UUID, value "". A hash that holds ids_per_hash ids also holds the field ""
-- ("full"); only then do its ids spill one level down, so the walk continues below a hash only
-- when the "" field came back. One HMGET per hash per level, not per id.
-- Returns "1" when the batch marker exists (the batch was committed by an earlier owner),
-- otherwise "0" followed by one "0"/"1" per id, in order.
local prefix = ARGV[1]
local base = tonumber(ARGV[3])
local fan = tonumber(ARGV[4])
local max_level = tonumber(ARGV[5])
local batch_key = ARGV[6]
local blob = ARGV[7]
if batch_key ~= '' and redis.call('EXISTS', batch_key) == 1 then
  return '1'
end
local TWO32 = 4294967296
local byte, sub, fmt, floor = string.byte, string.sub, string.format, math.floor
local count = #blob / 24
local keys, ids, seen, pending = {}, {}, {}, {}
for i = 1, count do
  local o = (i - 1) * 24 + 1
  local b1, b2, b3, b4, h1, h2, h3, h4 = byte(blob, o, o + 7)
  keys[i] = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
  ids[i] = ((h1 * 256 + h2) * 256 + h3) * 256 + h4
  seen[i] = '0'
  pending[i] = i
end
local slots = base
for level = 0, max_level do
  if #pending == 0 then break end
  local groups, order = {}, {}
  for _, i in ipairs(pending) do
    local g = keys[i] * TWO32 + ids[i] % slots
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
    for s = 1, #members, 4000 do
      local e = #members
      if e > s + 3999 then e = s + 3999 end
      local fields = {''}
      for j = s, e do
        local o = (members[j] - 1) * 24 + 9
        fields[#fields + 1] = sub(blob, o, o + 15)
      end
      local vals = redis.call('HMGET', key, unpack(fields))
      local full = vals[1]
      for j = s, e do
        local i = members[j]
        if vals[j - s + 2] then
          seen[i] = '1'
        elseif full then
          nxt[#nxt + 1] = i
        end
      end
    end
  end
  pending = nxt
  slots = slots * fan
end
return '0' .. table.concat(seen)
