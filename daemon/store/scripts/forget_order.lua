-- Forget an order whose specimen never came (store/orders.py forget_unmatched), or drop an
-- orders-log entry that no longer stands for a stored order.
-- KEYS: order (lks:order:<placer>), orders log, specimen hash, the specimen's order link
-- ARGV: placer order number, specimen id of the log entry, entry id, cutoff (Unix s)
-- Returns 'forgotten'; 'kept' (its specimen is in Redis: it goes with it; or it was
-- received after the cutoff); 'gone' or 'stale' (the order was forgotten, or re-sent for
-- another specimen: a later entry stands for it): the entry goes.
local raw = redis.call('GET', KEYS[1])
if not raw then
  redis.call('XDEL', KEYS[2], ARGV[3])
  return 'gone'
end
local ok, order = pcall(cjson.decode, raw)
if not ok or type(order) ~= 'table' then return 'kept' end  -- unreadable: leave it be
if order.specimen_id ~= ARGV[2] then  -- re-sent for another specimen: a later entry stands
  redis.call('XDEL', KEYS[2], ARGV[3])
  return 'stale'
end
-- re-sent since (or received by a clock ahead of the server's): kept until it is this old
if (tonumber(order.received_at) or 0) > tonumber(ARGV[4]) then return 'kept' end
if redis.call('EXISTS', KEYS[3]) == 1 then return 'kept' end
redis.call('DEL', KEYS[1])
if redis.call('GET', KEYS[4]) == ARGV[1] then redis.call('DEL', KEYS[4]) end
redis.call('XDEL', KEYS[2], ARGV[3])
return 'forgotten'
