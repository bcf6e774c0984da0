-- Move hash fields onto other fields, atomically (an increment racing the move is never lost).
-- KEYS[1]: the hash. ARGV: from-field, to-field, from-field, to-field, ...
for i = 1, #ARGV, 2 do
  local value = redis.call('HGET', KEYS[1], ARGV[i])
  if value then
    redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i + 1], value)
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return 1
