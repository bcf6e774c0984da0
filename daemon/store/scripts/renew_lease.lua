-- Take or renew the housekeeping lease, never someone else's (ops/housekeeping.py).
-- KEYS: lease key. ARGV: our token, lease length (ms). Returns 1 while we hold the lease.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
