-- Join the line for a pool's capacity (limiter.lua's kind 5), or stay in it: the waiter's
-- place is by priority (higher first), then by arrival (Redis's clock), kept from its first
-- join; it gives up (and is dropped by limiter.lua) after its wait. Refused (0) when
-- max_length others wait already; else 1.
-- KEYS: the pool's capacity counter. ARGV: lease, priority, wait (seconds), max_length.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local line, exp = KEYS[1] .. ':line', KEYS[1] .. ':exp'
local lease = ARGV[1]
local priority, wait, max_length = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('ZSCORE', line, lease) then return 1 end
if redis.call('ZCARD', line) >= max_length then return 0 end
-- Priorities are small integers; arrival times fit below 1e10 s, so this orders by both.
redis.call('ZADD', line, -priority * 1e10 + now, lease)
redis.call('ZADD', exp, now + wait, lease)
local ttl = math.ceil(wait * 1000) + 60000
if redis.call('PTTL', line) < ttl then
  redis.call('PEXPIRE', line, ttl)
  redis.call('PEXPIRE', exp, ttl)
end
return 1
