-- The fetch (app/celery_ext/transport.py): pop messages and record them as unacknowledged
-- in one atomic step, so every message is always either waiting in its list or restorable.
-- KEYS: unacked hash, unacked index, dead letters hash, dead letters index, quarantine
--   counter, then the lists in the order BRPOP would read them.
-- ARGV[1]: now (Unix time, as kombu scores the index); ARGV[2]: how many messages at most;
--   ARGV[3]: how many bytes of a quarantined message to keep; ARGV[4]: the worker's name.
-- Returns {list, delivery tag, message, list, delivery tag, message ...}, oldest first,
-- empty when every list is.
-- The unacked entry is kombu's [message, exchange, routing_key], built from the message
-- text itself so it restores byte for byte.
-- A message that cannot be recorded (not JSON, not an object, no delivery tag) goes to the
-- dead letters instead, as a quarantined entry of its own; its place in the reply holds
-- {false, reason, entry id}. The entry's fields are those of intake.quarantine_entry.
local limit = tonumber(ARGV[2])
local keep = tonumber(ARGV[3])

-- Bytes outside printable ASCII, and the backslash, as \xHH: valid JSON, safe on a terminal.
local function escaped(raw)
  return (string.gsub(raw, '[%z\1-\31\92\127-\255]', function(c)
    return string.format('\\x%02x', string.byte(c))
  end))
end

local function quarantine(list, item, reason)
  local id = 'quarantine-' .. redis.call('INCR', KEYS[5])
  local queue = string.match(list, '^(.-)\6\22') or list
  redis.call('HSET', KEYS[3], id, cjson.encode({
    run_id = id, agent = '', step = 0, kind = 'quarantined', reason = reason, retries = 0,
    kwargs = {}, task_id = '', failed_at = tonumber(ARGV[1]), traceback = cjson.null,
    raw = escaped(string.sub(item, 1, keep)), raw_length = #item, queue = queue,
    worker = ARGV[4],
  }))
  redis.call('ZADD', KEYS[4], ARGV[1], id)
  return id
end

local taken = {}
for i = 6, #KEYS do
  while #taken < 3 * limit do
    local item = redis.call('RPOP', KEYS[i])
    if not item then break end
    local ok, message = pcall(cjson.decode, item)
    local props = ok and type(message) == 'table' and message.properties
    if type(props) == 'table' and type(props.delivery_tag) == 'string'
        and type(props.delivery_info) == 'table' then
      local info = props.delivery_info
      redis.call('HSET', KEYS[1], props.delivery_tag, '[' .. item .. ',' ..
        cjson.encode(info.exchange) .. ',' .. cjson.encode(info.routing_key) .. ']')
      redis.call('ZADD', KEYS[2], ARGV[1], props.delivery_tag)
      taken[#taken + 1] = KEYS[i]
      taken[#taken + 1] = props.delivery_tag
      taken[#taken + 1] = item
    else
      local reason = 'no_delivery_tag'
      if not ok then reason = 'not_json'
      elseif type(message) ~= 'table' or not string.find(item, '^%s*{') then
        reason = 'not_an_object' end
      taken[#taken + 1] = false
      taken[#taken + 1] = reason
      taken[#taken + 1] = quarantine(KEYS[i], item, reason)
    end
  end
end
return taken
