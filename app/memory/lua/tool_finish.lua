-- The end of a call in flight: its result stored (or its failure kept for its waiters), its
-- lock released if still the caller's (an expired lock may be another caller's now).
-- KEYS[1]: result; KEYS[2]: lock; KEYS[3]: error.
-- ARGV[1]: the caller's token; ARGV[2]: 'result' | 'error' | 'none'; ARGV[3]: the value;
-- ARGV[4]: its TTL (ms).
if ARGV[2] == 'result' then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
elseif ARGV[2] == 'error' then
  redis.call('SET', KEYS[3], ARGV[1] .. '\n' .. ARGV[3], 'PX', ARGV[4])
end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
