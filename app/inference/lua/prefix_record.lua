-- Remember that a replica was sent a conversation's blocks; keep the index bounded.
-- KEYS[1]: the pool's LRU sorted set (block key -> last send time); KEYS[2]: the replica's
-- held set (block key -> last send time); KEYS[3..]: block keys.
-- ARGV[1]: replica name; ARGV[2]: now (unix s); ARGV[3]: TTL (s); ARGV[4]: most blocks kept.
local replica, now = ARGV[1], tonumber(ARGV[2])
local ttl, cap = tonumber(ARGV[3]), tonumber(ARGV[4])
for i = 3, #KEYS do
  redis.call('hset', KEYS[i], replica, ARGV[2])
  redis.call('expire', KEYS[i], ttl)
  redis.call('zadd', KEYS[1], now, KEYS[i])
  redis.call('zadd', KEYS[2], now, KEYS[i])
end
redis.call('zremrangebyscore', KEYS[2], '-inf', now - ttl)
local held_excess = redis.call('zcard', KEYS[2]) - cap
if held_excess > 0 then
  redis.call('zremrangebyrank', KEYS[2], 0, held_excess - 1)
end
redis.call('expire', KEYS[2], ttl)
redis.call('zremrangebyscore', KEYS[1], '-inf', now - ttl)
local excess = redis.call('zcard', KEYS[1]) - cap
if excess > 0 then
  local victims = redis.call('zrange', KEYS[1], 0, excess - 1)
  for i = 1, #victims, 500 do
    redis.call('del', unpack(victims, i, math.min(i + 499, #victims)))
  end
  redis.call('zremrangebyrank', KEYS[1], 0, excess - 1)
end
redis.call('expire', KEYS[1], ttl)
return excess > 0 and excess or 0
