-- Record a reviewer's class for one cell (store/review.py ReviewStore.reclassify).
-- KEYS: specimen hash, the specimen's cell-review hash
-- ARGV: field "<frame_id>:<index>", entry JSON {class, model, by, at}
-- Returns {'ok', previous entry JSON or ''}, or {'missing'} / {'verified'}.
-- Bumps the specimen's review_version, so a sign-off computed from an older state retries.
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
if redis.call('HGET', KEYS[1], 'verified_at') then return {'verified'} end
local before = redis.call('HGET', KEYS[2], ARGV[1]) or ''
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'review_version', 1)
return {'ok', before}
