-- Check and charge every limit of one request, or none: the Redis twin of
-- store/counters.py (MemoryCounters.take_now), same arithmetic (limits/gcra.py, windows.py).
-- KEYS: one counter per check. ARGV: lease, tokens, then per check: kind, limit, period, burst.
-- kind 0: GCRA (string: the theoretical arrival time); 1: requests in a sliding window
-- (sorted set of leases by time); 2: tokens in a sliding window (sorted set of
-- "lease|amount" by time, plus KEY..":sum"); 3: concurrency leases (sorted set by expiry);
-- 4: a budget (string: the spend of the current period, its key named after the period;
-- its "period" is the seconds left in it). A budget is only checked here: settle.lua charges;
-- 5: a pool's capacity across the fleet: concurrency leases like 3, with a line of waiters
-- (KEY..":line", by priority then arrival; KEY..":exp", when each waiter gives up, both
-- kept by line.lua): a free slot goes to a waiter of the line before any newcomer.
-- Time is Redis's own (``now``, from the batch), so that replicas' clocks do not matter.
-- Loaded as part of one script with settle.lua and batch.lua (store/redis_counters.py).

local replicas_key  -- set by batch.lua: the sorted set of the replicas alive

-- A full concurrency or capacity counter: drop the leases of replicas that are not marked alive
-- any more (a lease is "<replica id>:<n>"); how many went.
local function drop_dead(key)
  if not replicas_key then return 0 end
  local dropped = 0
  for _, member in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    local owner = string.match(member, '^([^:]+):')
    if owner and not redis.call('ZSCORE', replicas_key, owner) then
      redis.call('ZREM', key, member)
      dropped = dropped + 1
    end
  end
  return dropped
end

local function amount_of(member)
  return tonumber(string.match(member, '|([%d%.]+)$')) or 0
end

local function trim_tokens(key, horizon)
  local old = redis.call('ZRANGEBYSCORE', key, '-inf', horizon)
  if #old > 0 then
    local freed = 0
    for _, member in ipairs(old) do freed = freed + amount_of(member) end
    redis.call('ZREMRANGEBYSCORE', key, '-inf', horizon)
    redis.call('DECRBY', key .. ':sum', freed)
  end
end

local function window_wait(key, kind, total, cost, limit, period, now)
  local excess = total + cost - limit
  if excess <= 0 then return 0 end
  if cost > limit then return -1 end
  if kind == 1 then
    local at = redis.call('ZRANGE', key, excess - 1, excess - 1, 'WITHSCORES')
    return math.max(tonumber(at[2]) + period - now, 0.001)
  end
  local entries = redis.call('ZRANGE', key, 0, 4999, 'WITHSCORES')
  local freed = 0
  for j = 1, #entries, 2 do
    freed = freed + amount_of(entries[j])
    if freed >= excess then return math.max(tonumber(entries[j + 1]) + period - now, 0.001) end
  end
  return period
end

local function take(KEYS, ARGV, now)
local lease = ARGV[1]
local tokens = tonumber(ARGV[2])
local n = #KEYS
local refused, longest = -1, 0
local held_count, queued = {}, {}  -- per check: its set's size once trimmed; in the line
for i = 1, n do
  local key = KEYS[i]
  local b = 2 + (i - 1) * 4
  local kind, limit = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local period, burst = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local wait = 0
  if kind == 0 then
    local tat = tonumber(redis.call('GET', key) or '0')
    local allowed_at = math.max(tat, now) + period - burst * period
    if allowed_at > now then wait = allowed_at - now end
  elseif kind == 4 then
    if tonumber(redis.call('GET', key) or '0') >= limit then wait = period end
  elseif kind == 5 then
    local line, ahead = key .. ':line', 0
    if redis.call('EXISTS', line) == 1 then  -- only a saturated pool has a line
      local exp = key .. ':exp'
      local gone = redis.call('ZRANGEBYSCORE', exp, '-inf', now)
      for _, member in ipairs(gone) do redis.call('ZREM', line, member) end
      if #gone > 0 then redis.call('ZREMRANGEBYSCORE', exp, '-inf', now) end
      ahead = redis.call('ZRANK', line, lease)
      if ahead then queued[i] = true else ahead = redis.call('ZCARD', line) end
    end
    local held = redis.call('ZCARD', key)
    if ahead >= limit - held then  -- expired leases and those of dead replicas leave first
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
      held = redis.call('ZCARD', key)
      if ahead >= limit - held then held = held - drop_dead(key) end
    end
    held_count[i] = held
    -- The shortest wait of all: any other refusal (a 429) wins over waiting for capacity.
    if ahead >= limit - held then wait = 0.000001 end
  elseif kind == 3 then
    local held = redis.call('ZCARD', key)
    if held >= limit then
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
      held = redis.call('ZCARD', key)
      if held >= limit then held = held - drop_dead(key) end
      if held >= limit then wait = 1 end
    end
    held_count[i] = held
  elseif kind == 1 then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - period)
    local held = redis.call('ZCARD', key)
    held_count[i] = held
    wait = window_wait(key, kind, held, 1, limit, period, now)
  else
    trim_tokens(key, now - period)
    local total = tonumber(redis.call('GET', key .. ':sum') or '0')
    wait = window_wait(key, kind, total, tokens, limit, period, now)
  end
  if wait ~= 0 and longest ~= -1 and (wait == -1 or wait > longest) then
    refused, longest = i, wait
  end
end
if refused >= 0 then return {refused - 1, tostring(longest)} end

local out = {-1, '0'}
local resets = {}
for i = 1, n do
  local key = KEYS[i]
  local b = 2 + (i - 1) * 4
  local kind, limit = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local period, burst = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local ttl = math.ceil(period * 1000) + 1000
  if kind == 0 then
    local tat = math.max(tonumber(redis.call('GET', key) or '0'), now) + period
    redis.call('SET', key, tostring(tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
    out[#out + 1] = tostring(math.max(0, math.floor((now + burst * period - tat) / period + 1e-9)))
    resets[i] = tostring(tat - now)
  elseif kind == 4 then
    out[#out + 1] = tostring(math.max(0, limit - tonumber(redis.call('GET', key) or '0')))
    resets[i] = tostring(period)
  elseif kind == 3 or kind == 5 then
    redis.call('ZADD', key, now + period, lease)
    redis.call('PEXPIRE', key, ttl)
    if queued[i] then
      redis.call('ZREM', key .. ':line', lease)
      redis.call('ZREM', key .. ':exp', lease)
    end
    out[#out + 1] = tostring(math.max(0, limit - held_count[i] - 1))  -- leases are unique
    resets[i] = '0'
  elseif kind == 1 then
    redis.call('ZADD', key, now, lease)
    redis.call('PEXPIRE', key, ttl)
    out[#out + 1] = tostring(math.max(0, limit - held_count[i] - 1))
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    resets[i] = tostring(tonumber(oldest[2]) + period - now)
  else
    redis.call('ZADD', key, now, lease .. '|' .. tokens)
    local total = redis.call('INCRBY', key .. ':sum', tokens)
    redis.call('PEXPIRE', key, ttl)
    redis.call('PEXPIRE', key .. ':sum', ttl)
    out[#out + 1] = tostring(math.max(0, limit - total))
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    resets[i] = tostring(tonumber(oldest[2]) + period - now)
  end
end
for i = 1, n do out[#out + 1] = resets[i] end
return out
end
