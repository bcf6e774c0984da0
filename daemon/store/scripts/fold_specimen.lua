-- Spliced into store_result.lua: runs only for a newly stored result, so a frame
-- re-processed after a worker crash is never counted twice.
-- KEYS[5] specimen hash, KEYS[6] opened log, KEYS[7] open zset, KEYS[8] late set,
-- KEYS[9] the specimen's frames (zset: the review station's gallery)
-- ARGV[7] JSON: {id, at, now, threshold, frame_id, incr: {field: n}, set: {field: value}}
local spec = cjson.decode(ARGV[7])
local skey = KEYS[5]
local sstatus = redis.call('HGET', skey, 'status')
if not sstatus then
  redis.call('HSET', skey, 'specimen_id', spec.id, 'status', 'open', 'opened_at', spec.now,
    'first_frame_at', spec.at, 'last_frame_at', spec.at,
    'low_confidence_threshold', spec.threshold)
  redis.call('XADD', KEYS[6], '*', 'specimen_id', spec.id)
  sstatus = 'open'
end
if sstatus == 'open' then
  for f, v in pairs(spec.incr) do redis.call('HINCRBYFLOAT', skey, f, v) end
  for f, v in pairs(spec.set) do redis.call('HSET', skey, f, v) end
  if tonumber(spec.at) < tonumber(redis.call('HGET', skey, 'first_frame_at')) then
    redis.call('HSET', skey, 'first_frame_at', spec.at)
  end
  if tonumber(spec.at) > tonumber(redis.call('HGET', skey, 'last_frame_at')) then
    redis.call('HSET', skey, 'last_frame_at', spec.at)
  end
  redis.call('HSET', skey, 'last_activity_at', spec.now)
  redis.call('ZADD', KEYS[7], spec.now, spec.id)
  redis.call('ZADD', KEYS[9], spec.at, spec.frame_id)
else
  redis.call('HINCRBY', skey, 'late_frames', 1)
  redis.call('SADD', KEYS[8], spec.frame_id)
end
