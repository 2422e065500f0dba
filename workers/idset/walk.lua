-- shardhouse: the id-set walk shared by the batcher's dedupe_check.lua and dedupe_mark.lua and the
-- projector's apply.lua (each is registered with this file in front; Redis scripts cannot import).
-- blob: 24 bytes per id = bucket (u32 BE) | id hash (u32 BE) | 16-byte binary UUID.
-- Key of an id at a level: <prefix><bucket>:<level>:<id hash mod slots(level)>, slots(level) =
-- base * fanout^level (the batcher's keys are strings of 16-byte ids, the projector's gate keys
-- hashes). A key holding `cap` ids is full, and only then do ids continue one level down, so a
-- walk stops at the first key that is not full.
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
-- The group number bucket * slots + slot is exact below 2^53 (Lua numbers are doubles): hour
-- buckets (< 2^20) with up to 2^32 slots, or second buckets (< 2^32) with up to 2^20 (GateConfig).
local function group(prefix, level, slots, buckets, hashes, pending)
  local groups, order = {}, {}
  for _, i in ipairs(pending) do
    local g = buckets[i] * slots + hashes[i] % slots
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
    keys[n] = fmt('%s%d:%d:%d', prefix, floor(g / slots), level, g % slots)
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

-- The walk: level by level, visit(level, keys, lists) sees the pending ids grouped by key and
-- returns those that continue one level down (the ones that met a full key).
local function walk(prefix, slots, fan, max_level, buckets, hashes, pending, visit)
  for level = 0, max_level do
    if #pending == 0 then break end
    local keys, lists = group(prefix, level, slots, buckets, hashes, pending)
    pending = visit(level, keys, lists)
    slots = slots * fan
  end
end
