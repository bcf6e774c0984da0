-- Admit a file's frames to the queue against max_backlog, atomically (store/queue.py
-- FrameQueue.admission): concurrent pushes cannot both see room and overshoot.
-- KEYS: stream, admissions hash (token -> "<frames>:<expires at>")
-- ARGV: token, frames, max_backlog, seconds the reservation lives (a dead API's expires)
-- Returns {1, backlog} when admitted (reserved), {0, backlog} when full; backlog counts the
-- queued frames plus the frames reserved by admissions still being queued.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local held = 0
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local n, expires = string.match(all[i + 1], '^(%d+):(.+)$')
  if n == nil or tonumber(expires) < now then
    redis.call('HDEL', KEYS[2], all[i])
  else
    held = held + tonumber(n)
  end
end
local backlog = redis.call('XLEN', KEYS[1]) + held
if backlog + tonumber(ARGV[2]) > tonumber(ARGV[3]) then return {0, backlog} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ':' .. (now + tonumber(ARGV[4])))
return {1, backlog}
