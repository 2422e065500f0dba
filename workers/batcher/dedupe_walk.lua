-- shardhouse batcher: the id-set walk shared by dedupe_check.lua and dedupe_mark.lua (dedupe.py
-- prepends this file to each script when registering it; Redis scripts cannot import).
-- blob: 24 bytes per id = bucket (u32 BE) | id hash (u32 BE) | 16-byte binary UUID.
-- Key of an id at a level: <prefix><bucket>:<level>:<id hash mod slots(level)>, a string of
-- 16-byte ids; slots(level) = base * fanout^level. A key holding `cap` ids is full, and only then
-- do ids continue one level down, so a walk stops at the first key that is not full.
local TWO32 = 4294967296
local byte, sub, fmt, floor, find, concat = string.byte, string.sub, string.format, math.floor, string.find, table.concat

-- Bucket and id hash of each id, and the list 1..count of ids still walking.
local function decode(blob)
  local buckets, hashes, pending = {}, {}, {}
  for i = 1, #blob / 24 do
    local o = (i - 1) * 24 + 1
    local b1, b2, b3, b4, h1, h2, h3, h4 = byte(blob, o, o + 7)
    buckets[i] = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
    hashes[i] = ((h1 * 256 + h2) * 256 + h3) * 256 + h4
    pending[i] = i
  end
  return buckets, hashes, pending
end

-- The pending ids grouped by their key at a level: (key name, member indexes) in first-seen order.
local function group(prefix, level, slots, buckets, hashes, pending)
  local groups, order = {}, {}
  for _, i in ipairs(pending) do
    local g = buckets[i] * TWO32 + hashes[i] % slots
    local members = groups[g]
    if members == nil then
      groups[g] = {i}
      order[#order + 1] = g
    else
      members[#members + 1] = i
    end
  end
  local keys, lists = {}, {}
  for n, g in ipairs(order) do
    keys[n] = fmt('%s%d:%d:%d', prefix, floor(g / TWO32), level, g % TWO32)
    lists[n] = groups[g]
  end
  return keys, lists
end

-- Is the 16-byte id stored in the key's value? Only at an offset that is a multiple of 16.
local function holds(value, id)
  local p = find(value, id, 1, true)
  while p and (p - 1) % 16 ~= 0 do p = find(value, id, p + 1, true) end
  return p ~= nil
end
