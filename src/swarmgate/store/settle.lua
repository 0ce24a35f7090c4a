-- Settle one admitted request: release its concurrency leases, and settle its token
-- reservation to the usage (less: the reservation's entry is lowered while still in its
-- window; more: the excess is a new entry at now, debt the next admissions pay first), and
-- charge its cost to its budgets (the period's counter; "period" is its lifetime in seconds).
-- A pool's capacity (kind 5): its lease is released and it leaves the line if it was in it;
-- while others wait, the pool's key is published on the channel so that every replica's
-- waiters try again.
-- KEYS: the request's token, concurrency, budget and capacity counters. ARGV: lease,
-- reserved, used, cost, the channel, then per key: kind, period.
local function settle(KEYS, ARGV, now)
local lease, reserved, used = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local cost, channel = ARGV[4], ARGV[5]
for i = 1, #KEYS do
  local key = KEYS[i]
  local kind, period = tonumber(ARGV[4 + i * 2]), tonumber(ARGV[5 + i * 2])
  if kind == 5 then
    redis.call('ZREM', key, lease)
    redis.call('ZREM', key .. ':line', lease)
    redis.call('ZREM', key .. ':exp', lease)
    if redis.call('EXISTS', key .. ':line') == 1 then redis.call('PUBLISH', channel, key) end
  elseif kind == 4 then
    redis.call('INCRBYFLOAT', key, cost)
    redis.call('PEXPIRE', key, math.ceil(period * 1000))
  elseif kind == 3 then
    redis.call('ZREM', key, lease)
  elseif kind == 2 and used < reserved then
    local member = lease .. '|' .. reserved
    local score = redis.call('ZSCORE', key, member)
    if score and tonumber(score) > now - period then
      redis.call('ZREM', key, member)
      redis.call('ZADD', key, score, lease .. '|' .. used)
      redis.call('DECRBY', key .. ':sum', reserved - used)
    end
  elseif kind == 2 and used > reserved then
    local ttl = math.ceil(period * 1000) + 1000
    redis.call('ZADD', key, now, lease .. '|o|' .. (used - reserved))
    redis.call('INCRBY', key .. ':sum', used - reserved)
    redis.call('PEXPIRE', key, ttl)
    redis.call('PEXPIRE', key .. ':sum', ttl)
  end
end
return 1
end
