-- One round trip of the limiter: the settlements, then the admissions, of one event-loop
-- tick, in one script run (loaded after limiter.lua and settle.lua, which define ``take``
-- and ``settle``). Each operation is a slice of KEYS and of ARGV, as its own script would
-- have them. ARGV: the number of settlements, the number of admissions, the replicas' marks
-- (a sorted set: limiter.lua drops the leases of replicas not in it), then per operation: its
-- key count, its argument count, its arguments; KEYS: every operation's keys in order.
-- The reply: each admission's answer (take's), in order.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000

local function slice(list, from, count)
  local out = {}
  for i = 1, count do out[i] = list[from + i - 1] end
  return out
end

local settles, takes = tonumber(ARGV[1]), tonumber(ARGV[2])
replicas_key = ARGV[3]
local k, a = 1, 4
for _ = 1, settles do
  local nk, na = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  settle(slice(KEYS, k, nk), slice(ARGV, a + 2, na), now)
  k, a = k + nk, a + 2 + na
end
local answers = {}
for i = 1, takes do
  local nk, na = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  answers[i] = take(slice(KEYS, k, nk), slice(ARGV, a + 2, na), now)
  k, a = k + nk, a + 2 + na
end
return answers
