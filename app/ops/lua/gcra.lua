-- One request against a limit (GCRA): allowed when the limit's theoretical arrival time, less
-- the burst's tolerance, is not after now. Redis's clock, so every replica shares one.
-- KEYS[1]: the limit's key; ARGV[1]: ms between requests at the sustained rate;
-- ARGV[2]: the burst (requests allowed at once).
-- Returns {allowed (1/0), ms to wait before a retry is allowed, requests left at once}.
local interval = tonumber(ARGV[1])
local tolerance = interval * (tonumber(ARGV[2]) - 1)
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait > 0 then return {0, math.ceil(wait), 0} end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil(tat - now))
return {1, 0, math.floor((now + tolerance - tat) / interval) + 1}
