-- How many leading blocks of a conversation each replica was sent, within the TTL, and how
-- many blocks each replica holds (was sent within the TTL, whatever the conversation).
-- KEYS[1..n]: each replica's held set (block key -> last send time), in ARGV order;
-- KEYS[n+1..]: the conversation's block keys in order (block i's hash covers blocks 0..i).
-- ARGV[1]: oldest send time still valid (unix s); ARGV[2..n+1]: replica names.
-- Returns n counts of leading blocks, then n held counts, in ARGV order.
local oldest = tonumber(ARGV[1])
local n = #ARGV - 1
local counts, open, left = {}, {}, n
for r = 1, n do
  counts[r] = 0
  open[r] = true
end
for i = n + 1, #KEYS do
  if left == 0 then break end
  local sent = redis.call('hmget', KEYS[i], unpack(ARGV, 2))
  for r = 1, n do
    if open[r] then
      local at = tonumber(sent[r])
      if at and at >= oldest then
        counts[r] = i - n
      else
        open[r] = false
        left = left - 1
      end
    end
  end
end
for r = 1, n do
  redis.call('zremrangebyscore', KEYS[r], '-inf', '(' .. ARGV[1])
  counts[n + r] = redis.call('zcard', KEYS[r])
end
return counts
