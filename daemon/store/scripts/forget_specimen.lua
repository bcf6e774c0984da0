-- Forget a complete specimen past its retention (store/specimens.py forget_completed).
-- KEYS: specimen hash, late set, frames zset, reviewed cells hash, order link, outbox zset,
--       parked zset, completed log, order (lks:order:<placer>, or a placeholder)
-- ARGV: specimen id, its completed-log entry id, cutoff (Unix s), placer order number ('')
-- Returns 'forgotten'; 'owed' (its LIS message is in the outbox or parked) or 'recent'
-- (completed after the cutoff by its own clock): kept; 'gone' (already forgotten) or
-- 'newer' (a later specimen of that id, open again): the stale entry goes.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  redis.call('XDEL', KEYS[8], ARGV[2])
  return 'gone'
end
if status ~= 'complete' then  -- a complete specimen never reopens: this is a later one
  redis.call('XDEL', KEYS[8], ARGV[2])
  return 'newer'
end
-- completed_at is the completing process's clock, the entry id the server's: forgotten only
-- once both say it completed before the cutoff (a skewed clock delays it, never hastens it)
local completed = tonumber(redis.call('HGET', KEYS[1], 'completed_at') or '')
if completed and completed > tonumber(ARGV[3]) then return 'recent' end
if redis.call('ZSCORE', KEYS[6], ARGV[1]) or redis.call('ZSCORE', KEYS[7], ARGV[1]) then
  return 'owed'
end
-- The order goes with the specimen only while it still names this specimen (the LIS may
-- have re-sent the placer number for another one since).
if ARGV[4] ~= '' and redis.call('GET', KEYS[5]) == ARGV[4] then
  local order = redis.call('GET', KEYS[9])
  local ok, decoded = pcall(cjson.decode, order or '')
  if ok and type(decoded) == 'table' and decoded.specimen_id == ARGV[1] then
    redis.call('DEL', KEYS[9])
  end
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call('XDEL', KEYS[8], ARGV[2])
return 'forgotten'
