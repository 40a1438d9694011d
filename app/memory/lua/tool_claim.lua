-- One look at a deterministic tool call's cache: its result, its failure for the flight the
-- caller waits on, else the lock of the call in flight (taken when free).
-- KEYS[1]: result; KEYS[2]: lock; KEYS[3]: error ("<flight token>\n<message>").
-- ARGV[1]: the caller's token; ARGV[2]: the lock's TTL (ms); ARGV[3]: the flight waited on ('').
-- Returns {'hit', result} | {'error', message} | {'owner', token} | {'wait', owner's token}.
local value = redis.call('GET', KEYS[1])
if value then return {'hit', value} end
if ARGV[3] ~= '' then
  local failed = redis.call('GET', KEYS[3])
  if failed then
    local sep = string.find(failed, '\n', 1, true)
    if sep and string.sub(failed, 1, sep - 1) == ARGV[3] then
      return {'error', string.sub(failed, sep + 1)}
    end
  end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {'owner', ARGV[1]} end
return {'wait', redis.call('GET', KEYS[2]) or ''}
