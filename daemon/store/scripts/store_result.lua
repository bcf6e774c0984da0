-- Store a frame's result once, count it, fold it into its specimen and ack the queue entry
-- (store/results.py ResultStore.store).
-- KEYS: result key, log stream, metrics hash, frames stream, then
--       daemon.store.specimens.store_keys (KEYS[5..9]), the unassigned log (KEYS[10])
-- ARGV: result json, frame_id, status, rig, group, entry id ('' = nothing to ack),
--       specimen update JSON ('' = none, 'unassigned' = log it in KEYS[10] instead, see
--       fold_specimen.lua), metric field/amount pairs...
-- Returns 1 when the result is new, 0 when one was stored before.
local stored = 0
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('XADD', KEYS[2], '*', 'frame_id', ARGV[2], 'status', ARGV[3], 'rig', ARGV[4])
  for i = 8, #ARGV, 2 do
    redis.call('HINCRBYFLOAT', KEYS[3], ARGV[i], ARGV[i + 1])
  end
  if ARGV[7] == 'unassigned' then
    redis.call('XADD', KEYS[10], '*', 'frame_id', ARGV[2], 'status', ARGV[3])
  elseif ARGV[7] ~= '' then
-- SPECIMEN UPDATE --
  end
  stored = 1
end
if ARGV[6] ~= '' then
  redis.call('XACK', KEYS[4], ARGV[5], ARGV[6])
  redis.call('XDEL', KEYS[4], ARGV[6])
end
return stored
