-- How many leading blocks of a conversation each replica was sent, within the TTL.
-- KEYS: the conversation's block keys in order (block i's hash covers blocks 0..i).
-- ARGV[1]: oldest send time still valid (unix s); ARGV[2..]: replica names.
-- Returns one count per replica, in ARGV order.
local oldest = tonumber(ARGV[1])
local counts, open, left = {}, {}, #ARGV - 1
for r = 1, left do
  counts[r] = 0
  open[r] = true
end
for i = 1, #KEYS do
  if left == 0 then break end
  local sent = redis.call('hmget', KEYS[i], unpack(ARGV, 2))
  for r = 1, #ARGV - 1 do
    if open[r] then
      local at = tonumber(sent[r])
      if at and at >= oldest then
        counts[r] = i
      else
        open[r] = false
        left = left - 1
      end
    end
  end
end
return counts
