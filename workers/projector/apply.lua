-- shardhouse projector: apply one chunk of events to the read models, idempotently.
-- ARGV[1]: msgpack [header, events, effects, entities]; ARGV[2]: gate records, 24 bytes per event
-- (second of occurred_at | slot hash | identity; format: workers/projector/plan.py).
--
-- For each target generation (live: <ns>current, created if missing, plus <ns>building while a
-- rebuild runs; or exactly the generation a rebuild names):
--   1. gate: which events are new to this generation. The applied set is keyed by the 16-byte
--      identity of (customer_id, event_id) alone (workers/idset/identity.py), filed under the
--      processing window it was applied in (w = server time // window): string
--      <gen>ap:w<w>:<level>:<slot hash mod slots(level)> = concatenated identities (the
--      batcher's layout, workers/batcher/dedupe.py), and the marker <gen>ap:w<w> (the window has
--      ids). An event found in the previous window's set (read-only walk, skipped when its marker
--      is gone) or in the current one is not new; the others are APPENDed to the current
--      window's set in the same walk as its check (one MGET per level and 1,000 keys: group()
--      and holds() of workers/idset/walk.lua, registered in front of this file). Ids go into the
--      first key on their path that has room; a key at capacity is full for good (and rewritten
--      once at its exact size), and only then do ids spill one level down, so a lookup that
--      meets a key with room and without the id knows the id is new. A window's keys expire
--      when the next window ends.
--      While an upgrade's window lasts (header[11] = 1), the old layout — hashes by second of
--      occurred_at, <gen>ap:<second>:<level>:<slot> with the count field "#", the record's own
--      bucket — is walked read-only too: an event found there was applied before the upgrade.
--   2. increments of the new events, summed per target, one HINCRBY/ZINCRBY each;
--   3. entities (one MGET for all): the chunk's highest version replaces the stored state only
--      if higher (versions are fixed-width digit/hex strings: string order is (occurred_at,
--      event_id) order); first-seen is a min; the event count adds the new events. The index
--      (calendar) follows the winning state: out of the old state's index key, into the new one,
--      collected per index key and sent as one ZREM / ZADD (+ PEXPIREAT) per key.
-- Every string that reaches Lua is hashed byte by byte (Redis' Lua interns strings), so the state
-- travels once, inside the entity's tail, and is stored without being taken apart.
-- A script runs alone, and Redis refuses one for OOM only before its first write, so a chunk is
-- applied entirely or not at all (a Redis crash mid-script loses the models anyway: rebuild).
--
-- Entity value: version(50) first-seen(18) count(10), then the tail built by plan.py:
--               len(type tag)(3) len(index key)(5) type tag, index key, state JSON.
-- Returns {new events in the first target, events, target generations...}; {-1} when a rebuild's
-- generation is no longer the one being built.
local m = cmsgpack.unpack(ARGV[1])
local hdr, ev, eff, ents = m[1], m[2], m[3], m[4]
local gate = ARGV[2]
local ns, target, shard, seq = hdr[1], hdr[2], hdr[3], hdr[4]
local window, cap, base, fan, max_level, ent_ttl = hdr[5], hdr[6], hdr[7], hdr[8], hdr[9], hdr[10]
local old_on, old_cap, old_base, old_fan, old_max = hdr[11] == 1, hdr[12], hdr[13], hdr[14], hdr[15]
local full_len = cap * 16
local call = redis.call
local tonumber = tonumber  -- string.sub, format and math.floor come with walk.lua
local n = #gate / 24
-- numbers become strings at every redis.call (sprintf): convert the constant ones once, as
-- absolute expiry times (ms, SET … PXAT / PEXPIREAT) taken from the server clock
local now = call('TIME')
local now_ms = tonumber(now[1]) * 1000 + floor(tonumber(now[2]) / 1000)
local window_no = floor(tonumber(now[1]) / window)
local gate_at, ent_at = fmt('%d', (window_no + 2) * window * 1000), fmt('%d', now_ms + ent_ttl * 1000)

local gens = {}
if target == '' then
  local cur = call('GET', ns .. 'current')
  if not cur then
    cur = tostring(call('INCR', ns .. 'genseq'))
    call('SET', ns .. 'current', cur)
    call('SET', ns .. 'origin', 'live:' .. now[1])
  end
  gens[1] = cur
  local building = call('GET', ns .. 'building')
  if building and building ~= cur then gens[2] = building end
else
  if call('GET', ns .. 'building') ~= target then return {-1} end
  gens[1] = target
end

local seconds, hashes = decode(gate)
local ids, this_win, last_win = {}, {}, {}
for i = 1, n do
  ids[i] = sub(gate, i * 24 - 15, i * 24)
  this_win[i] = window_no
  last_win[i] = window_no - 1
end

-- The old layout (hashes, read-only): found[i] = true for the pending events it holds. HMGET
-- of the count field '#' and the members' ids, 4,000 at a time (unpack's stack limit).
local function lookup_old(prefix, pending, found)
  walk(prefix, old_base, old_fan, old_max, seconds, hashes, pending, function(level, keys, lists)
    local nxt = {}
    for k, key in ipairs(keys) do
      local members = lists[k]
      for s = 1, #members, 4000 do
        local e = #members
        if e > s + 3999 then e = s + 3999 end
        local fields = {'#'}
        for j = s, e do fields[#fields + 1] = ids[members[j]] end
        local vals = call('HMGET', key, unpack(fields))
        local full = level < old_max and (tonumber(vals[1]) or 0) >= old_cap
        for j = s, e do
          if vals[j - s + 2] then found[members[j]] = true elseif full then nxt[#nxt + 1] = members[j] end
        end
      end
    end
    return nxt
  end)
end

-- One level of a window's walk: the values of its keys, one MGET per 1,000 keys;
-- each(n, value) for every key (value false when the key does not exist).
local function values_of(keys, each)
  for first = 1, #keys, 1000 do
    local last = #keys
    if last > first + 999 then last = first + 999 end
    local values = call('MGET', unpack(keys, first, last))
    for n = first, last do each(n, values[n - first + 1]) end
  end
end

local function unfound(found)
  local pending = {}
  for i = 1, n do if not found[i] then pending[#pending + 1] = i end end
  return pending
end

-- 1. the gate: fresh[i] = true for the events not applied to this generation before.
local function admit(gp)
  local fresh, found = {}, {}
  local wp = gp .. 'w'
  if call('EXISTS', wp .. (window_no - 1)) == 1 then
    walk(wp, base, fan, max_level, last_win, hashes, unfound(found), function(level, keys, lists)
      local nxt = {}
      values_of(keys, function(k, value)
        if value then
          local full = level < max_level and #value >= full_len
          for _, i in ipairs(lists[k]) do
            if holds(value, ids[i]) then found[i] = true elseif full then nxt[#nxt + 1] = i end
          end
        end
      end)
      return nxt
    end)
  end
  if old_on then lookup_old(gp, unfound(found), found) end
  local pending = unfound(found)
  if #pending == 0 then return fresh end
  call('SET', wp .. window_no, '1', 'PXAT', gate_at)
  walk(wp, base, fan, max_level, this_win, hashes, pending, function(level, keys, lists)
    local nxt = {}
    values_of(keys, function(k, value)
      local members, missing, held = lists[k], {}, 0
      if value then
        held = #value / 16
        for _, i in ipairs(members) do
          if not holds(value, ids[i]) then missing[#missing + 1] = i end
        end
      else
        missing = members
      end
      local take = #missing
      if take == 0 then return end
      if level < max_level and cap - held < take then take = cap - held end
      if take > 0 then
        local parts = {}
        for j = 1, take do
          local i = missing[j]
          parts[j] = ids[i]
          fresh[i] = true
        end
        local key = keys[k]
        call('APPEND', key, concat(parts))
        if level < max_level and held + take == cap then
          call('SET', key, call('GET', key), 'PXAT', gate_at) -- full for good: at its exact size
        else
          call('PEXPIREAT', key, gate_at)
        end
      else
        take = 0
      end
      for j = take + 1, #missing do nxt[#nxt + 1] = missing[j] end
    end)
    return nxt
  end)
  return fresh
end

local function apply(g)
  local fresh = admit(g .. 'ap:')
  -- 2. increments of the new events
  local acc, entn = {}, {}
  local new = 0
  for i = 1, n do
    if fresh[i] then
      new = new + 1
      local o = (i - 1) * 5
      local h, d, t, e = ev[o + 1], ev[o + 2], ev[o + 3], ev[o + 5]
      if h > 0 then acc[h] = (acc[h] or 0) + 1 end
      if d > 0 then acc[d] = (acc[d] or 0) + 1 end
      if t > 0 then acc[t] = (acc[t] or 0) + ev[o + 4] end
      entn[e] = (entn[e] or 0) + 1
    end
  end
  local expiring = {}
  for idx, amount in pairs(acc) do
    local o = (idx - 1) * 4
    local key = g .. eff[o + 2]
    if eff[o + 1] == 1 then
      call('HINCRBY', key, eff[o + 3], amount)
    else
      call('ZINCRBY', key, amount, eff[o + 3])
    end
    local at = eff[o + 4]
    if at > 0 and not expiring[key] then
      expiring[key] = true
      call('EXPIREAT', key, at)
    end
  end
  -- 3. entities
  local count = #ents / 7
  local zrem, zadd = {}, {} -- index key -> members to remove / score, member pairs to add
  for s = 1, count, 4000 do
    local e = count
    if e > s + 3999 then e = s + 3999 end
    local names = {}
    for j = s, e do names[#names + 1] = g .. ents[(j - 1) * 7 + 1] end
    local stored = call('MGET', unpack(names))
    for j = s, e do
      local o = (j - 1) * 7
      local cur = stored[j - s + 1]
      local ver, first, tail, ix = ents[o + 2], ents[o + 3], ents[o + 4], ents[o + 5]
      local added = entn[j] or 0
      -- an entity none of whose events in this chunk is new stays as it is: a gated copy may
      -- differ from the one applied (a re-stamped occurred_at), so it lends no version, no
      -- first-seen and no state (an exact copy would not change them anyway)
      if added > 0 then
        local win, events = true, added
        if cur then
          -- cur starts with its 50-char version, so comparing with the whole value compares versions
          win = ver > cur
          local cur_first = sub(cur, 51, 68)
          events = tonumber(sub(cur, 69, 78)) + added
          if win then
            local xlen = tonumber(sub(cur, 82, 86))
            if xlen > 0 then
              local ylen = tonumber(sub(cur, 79, 81))
              local cur_ix = sub(cur, 87 + ylen, 86 + ylen + xlen)
              if cur_ix ~= ix then
                cur_ix = g .. cur_ix
                local out = zrem[cur_ix]
                if out == nil then zrem[cur_ix] = {ents[o + 7]} else out[#out + 1] = ents[o + 7] end
              end
            end
          else
            ver, tail = sub(cur, 1, 50), sub(cur, 79)
          end
          if cur_first < first then first = cur_first end
        end
        do
          local value = ver .. first .. fmt('%010d', events) .. tail
          if ent_ttl > 0 then
            call('SET', names[j - s + 1], value, 'PXAT', ent_at)
          else
            call('SET', names[j - s + 1], value)
          end
          if win and ix ~= '' then
            local key = g .. ix
            local into = zadd[key]
            if into == nil then into = {}; zadd[key] = into end
            into[#into + 1] = ents[o + 6]
            into[#into + 1] = ents[o + 7]
          end
        end
      end
    end
  end
  -- index moves, one call per index key: an entity is in one chunk entry, and its old and new
  -- index keys differ, so removals and additions of different members commute
  for key, members in pairs(zrem) do
    for s = 1, #members, 4000 do call('ZREM', key, unpack(members, s, math.min(s + 3999, #members))) end
  end
  for key, pairs_ in pairs(zadd) do
    for s = 1, #pairs_, 4000 do call('ZADD', key, unpack(pairs_, s, math.min(s + 3999, #pairs_))) end
    if ent_ttl > 0 then call('PEXPIREAT', key, ent_at) end
  end
  return new
end

local result = {0, n}
for k, g in ipairs(gens) do
  local new = apply(ns .. g .. ':')
  if k == 1 then result[1] = new end
  result[#result + 1] = g
end

if target == '' and shard ~= '' and seq ~= '' then
  local pos = ns .. 'pos'
  local cur = call('HGET', pos, shard)
  if not cur or #seq > #cur or (#seq == #cur and seq > cur) then call('HSET', pos, shard, seq) end
end
return result
