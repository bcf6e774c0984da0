-- Sign a complete specimen; the last required signature verifies it (store/review.py).
-- KEYS: specimen hash, outbox zset, control counter
-- ARGV: signer, role, now, signatures required, reviewed fields JSON {field: value},
--       '1' to queue the final report for MLLP, the review_version the fields were counted at
-- Returns 'verified', 'signed', 'already', 'same_signer', 'open', 'stale' or 'missing'.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status ~= 'complete' then return 'open' end
if redis.call('HGET', KEYS[1], 'verified_at') then return 'already' end
if (redis.call('HGET', KEYS[1], 'review_version') or '0') ~= ARGV[7] then return 'stale' end
local signatures = cjson.decode(redis.call('HGET', KEYS[1], 'signatures') or '[]')
for _, s in ipairs(signatures) do
  if s.by == ARGV[1] then return 'same_signer' end
end
table.insert(signatures, {by = ARGV[1], role = ARGV[2], at = tonumber(ARGV[3])})
redis.call('HSET', KEYS[1], 'signatures', cjson.encode(signatures))
if #signatures < tonumber(ARGV[4]) then return 'signed' end
for f, v in pairs(cjson.decode(ARGV[5])) do redis.call('HSET', KEYS[1], f, v) end
-- The final report is a new message: a new HL7 control id (MSH-10).
local control = 'LKS' .. redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], 'verified_at', ARGV[3], 'verified_by', ARGV[1],
  'preliminary_control_id', redis.call('HGET', KEYS[1], 'control_id') or '', 'control_id', control)
if ARGV[6] == '1' then
  redis.call('ZADD', KEYS[2], ARGV[3], redis.call('HGET', KEYS[1], 'specimen_id'))
  redis.call('HSET', KEYS[1], 'outbox_state', 'pending', 'outbox_attempts', 0)
end
return 'verified'
