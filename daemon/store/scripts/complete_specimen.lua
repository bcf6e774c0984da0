-- Complete a specimen once (store/specimens.py SpecimenStore.complete).
-- KEYS: specimen hash, completed log, open zset, requested zset, outbox zset, control counter
-- ARGV: specimen id, now, completed_by, '1' to queue for MLLP
-- Returns 'completed', 'already' or 'missing'.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status == 'complete' then return 'already' end
local control = 'LKS' .. redis.call('INCR', KEYS[6])
redis.call('HSET', KEYS[1], 'status', 'complete', 'completed_at', ARGV[2],
  'completed_by', ARGV[3], 'control_id', control)
redis.call('XADD', KEYS[2], '*', 'specimen_id', ARGV[1], 'control_id', control)
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
if ARGV[4] == '1' then
  redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1])
  redis.call('HSET', KEYS[1], 'outbox_state', 'pending', 'outbox_attempts', 0)
end
return 'completed'
