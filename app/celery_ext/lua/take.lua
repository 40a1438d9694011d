-- The fetch (app/celery_ext/transport.py): pop messages and record them as unacknowledged
-- in one atomic step, so every message is always either waiting in its list or restorable.
-- KEYS: unacked hash, unacked index, then the lists in the order BRPOP would read them.
-- ARGV[1]: now (Unix time, as kombu scores the index); ARGV[2]: how many messages at most.
-- Returns {list, message, list, message ...}, oldest first, empty when every list is.
-- The unacked entry is kombu's [message, exchange, routing_key], built from the message
-- text itself so it restores byte for byte.
local limit = tonumber(ARGV[2])
local taken = {}
for i = 3, #KEYS do
  while #taken < 2 * limit do
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
    end
    taken[#taken + 1] = KEYS[i]
    taken[#taken + 1] = item
  end
end
return taken
