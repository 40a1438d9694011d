-- A run of the session succeeded: add its turn to the cached history, if the cache holds the
-- version just before (KEYS[1] the version, KEYS[2] the list of turns).
-- ARGV: the version before, the version after, the turn (JSON), turns kept, TTL in seconds.
-- Returns 1 when added; 0 when the cache holds another version or none (a reader fills it).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[4]), -1)
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 1
