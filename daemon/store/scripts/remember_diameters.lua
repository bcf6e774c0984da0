-- Append red-cell diameters to a rig's history, bounded in length and in rigs, so every
-- API process (and every decoding child it hands the history to) checks with the same one.
-- KEYS[1]: the histories hash (rig -> diameters, space-separated, oldest first);
-- KEYS[2]: the rigs' last-use zset. ARGV[1]: rig; ARGV[2]: diameters kept per rig;
-- ARGV[3]: rigs kept; ARGV[4..]: the new diameters. Returns the rig's history after it.
local rig = ARGV[1]
local keep = tonumber(ARGV[2])
local values = {}
local old = redis.call('HGET', KEYS[1], rig)
if old then
  for value in string.gmatch(old, '%S+') do values[#values + 1] = value end
end
for i = 4, #ARGV do values[#values + 1] = ARGV[i] end
local kept = table.concat(values, ' ', math.max(1, #values - keep + 1), #values)
redis.call('HSET', KEYS[1], rig, kept)
-- the server's clock: API hosts' clocks never decide which rig is the least recent
local now = redis.call('TIME')
redis.call('ZADD', KEYS[2], tonumber(now[1]) + tonumber(now[2]) / 1e6, rig)
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
if excess > 0 then
  local gone = redis.call('ZRANGE', KEYS[2], 0, excess - 1)
  redis.call('ZREM', KEYS[2], unpack(gone))
  redis.call('HDEL', KEYS[1], unpack(gone))
end
return kept
