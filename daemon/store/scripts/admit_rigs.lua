-- Admit rig ids as metric label values while the set holds fewer than the cap.
-- KEYS[1]: the admitted-rigs set. ARGV[1]: cap; ARGV[2..]: rig ids. Returns the members.
local cap = tonumber(ARGV[1])
for i = 2, #ARGV do
  if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 0 and redis.call('SCARD', KEYS[1]) < cap then
    redis.call('SADD', KEYS[1], ARGV[i])
  end
end
return redis.call('SMEMBERS', KEYS[1])
