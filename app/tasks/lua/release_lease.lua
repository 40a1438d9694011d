-- Delete the lease key only if we still own it, so an expired lease taken over by another
-- worker is never released by the first one.
-- KEYS[1]: the run's lease key; ARGV[1]: our token. Returns 1 when released, else 0.
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
