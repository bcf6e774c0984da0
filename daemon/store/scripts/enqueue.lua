-- Queue a frame once (store/queue.py FrameQueue.enqueue).
-- KEYS: result key, inflight hash, stream, metrics hash
-- ARGV: frame_id, inflight json, metric field, then stream field/value pairs
-- Returns 'stored' (a result exists), 'queued' (already waiting) or {'new', the stream's
-- length after it}: capture keeps within queue.max_backlog without an XLEN per frame.
if redis.call('EXISTS', KEYS[1]) == 1 then return 'stored' end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 'queued' end
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[3], '*', unpack(fields))
redis.call('HINCRBYFLOAT', KEYS[4], ARGV[3], 1)
return {'new', redis.call('XLEN', KEYS[3])}
