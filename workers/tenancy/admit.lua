-- One admission decision for (customer, arrival hour), made once for the whole fleet.
-- KEYS[1] decisions of the hour (hash customer -> 1|0), KEYS[2] admitted (hash customer -> first
-- hour), KEYS[3] new customers admitted in the hour (counter).
-- ARGV: customer, hour, limit per hour (0 = none), ttl seconds of the hour's keys.
local decided = redis.call('HGET', KEYS[1], ARGV[1])
if decided then return tonumber(decided) end
local first = redis.call('HGET', KEYS[2], ARGV[1])
local ok = 1
if not (first and tonumber(first) <= tonumber(ARGV[2])) then
  local limit = tonumber(ARGV[3])
  if limit > 0 then
    local n = redis.call('INCR', KEYS[3])
    redis.call('EXPIRE', KEYS[3], ARGV[4])
    if n > limit then
      ok = 0
      redis.call('DECR', KEYS[3])
    end
  end
  if ok == 1 and not first then redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) end
end
redis.call('HSET', KEYS[1], ARGV[1], ok)
redis.call('EXPIRE', KEYS[1], ARGV[4])
return ok
