-- Increment once per (run, step): a step re-run after a crash returns the first result.
-- KEYS[1]: the counter; KEYS[2]: the step's effect record; ARGV[1]: the record's TTL (s).
local done = redis.call('GET', KEYS[2])
if done then return tonumber(done) end
local value = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], value, 'EX', ARGV[1])
return value
