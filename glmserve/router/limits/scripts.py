"""The Redis side of the limits store: one Lua script that runs a batch of operations.

Redis runs a script atomically, so every operation in a batch is its own atomic decision (the
batch only saves round trips). `memory.py` is this script in Python, operation for operation;
change both together (tests/limits/test_equivalence.py compares them).

KEYS, two per operation: the tenant's bucket hash and its lease sorted set. Both carry the tenant
id as a hash tag, so they share a Cluster slot.
ARGV[1]: the clock in microseconds, or '' for the server's TIME (the one clock all replicas share).
ARGV[2..]: WIDTH fields per operation:
  op ('a' admit, 's' settle, 'r' renew), requests/min, input tokens/min, output tokens/min,
  max concurrent, input tokens, output tokens (admit: cost; settle: refund), lease id, lease ttl us.
Reply: RESULT_WIDTH integers per operation, then the clock. Admit: allowed, limiting dimension
(0 none, 1 requests, 2 input, 3 output, 4 concurrency), retry-after us, then remaining and reset us
of requests, input and output, then leases in flight. Settle and renew: 1 or 0, then zeros.
"""

from __future__ import annotations

WIDTH = 9
RESULT_WIDTH = 10

BATCH = (
    f"local WIDTH, RESULT_WIDTH = {WIDTH}, {RESULT_WIDTH}\n"
    + r"""
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local MINUTE = 60000000
local FIELDS = {'r', 'rt', 'i', 'it', 'o', 'ot'}
local function fmt(x) return string.format('%.17g', x) end

local function level(stored, d, limit)
  local value = stored[2 * d - 1]
  if not value then return limit end
  local elapsed = now - tonumber(stored[2 * d])
  if elapsed < 0 then elapsed = 0 end
  local l = tonumber(value) + elapsed * (limit / MINUTE)
  if l > limit then l = limit end
  return l
end

-- writes the limited dimensions and lets the hash expire once every bucket would be full again,
-- which is what a missing hash means
local function store(bk, limits, levels)
  local args, longest = {}, 0
  for d = 1, 3 do
    if limits[d] > 0 then
      args[#args + 1] = FIELDS[2 * d - 1]
      args[#args + 1] = fmt(levels[d])
      args[#args + 1] = FIELDS[2 * d]
      args[#args + 1] = fmt(now)
      local full = (limits[d] - levels[d]) / (limits[d] / MINUTE)
      if full > longest then longest = full end
    end
  end
  if #args > 0 then
    redis.call('HSET', bk, unpack(args))
    redis.call('PEXPIRE', bk, math.floor(longest / 1000) + 1000)
  end
end

-- the lease set lives until its last lease expires (relative, so a test clock works too)
local function keep_leases(lk)
  local last = redis.call('ZRANGE', lk, -1, -1, 'WITHSCORES')
  if last[2] then
    redis.call('PEXPIRE', lk, math.max(1, math.floor((tonumber(last[2]) - now) / 1000) + 1000))
  end
end

local function bucket(l, limit)
  if limit == 0 then return 0, 0 end
  return math.floor(l), math.ceil((limit - l) / (limit / MINUTE))
end

local function admit(bk, lk, a)
  local limits = {tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])}
  local concurrency = tonumber(ARGV[a + 4])
  local need = {1, tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6])}
  local stored = redis.call('HMGET', bk, unpack(FIELDS))
  local levels = {0, 0, 0}
  local code, wait = 0, 0
  for d = 1, 3 do
    if limits[d] > 0 then
      levels[d] = level(stored, d, limits[d])
      if levels[d] < need[d] then
        local w = math.ceil((need[d] - levels[d]) / (limits[d] / MINUTE))
        if w > wait then code, wait = d, w end
      end
    end
  end
  redis.call('ZREMRANGEBYSCORE', lk, '-inf', fmt(now))
  local in_flight = redis.call('ZCARD', lk)
  if code == 0 and concurrency > 0 and in_flight >= concurrency then code = 4 end
  if code == 0 then
    for d = 1, 3 do
      if limits[d] > 0 then levels[d] = levels[d] - need[d] end
    end
    store(bk, limits, levels)
    redis.call('ZADD', lk, fmt(now + tonumber(ARGV[a + 8])), ARGV[a + 7])
    keep_leases(lk)
    in_flight = in_flight + 1
  end
  local r1, r2 = bucket(levels[1], limits[1])
  local i1, i2 = bucket(levels[2], limits[2])
  local o1, o2 = bucket(levels[3], limits[3])
  local allowed = 0
  if code == 0 then allowed = 1 end
  return {allowed, code, wait, r1, r2, i1, i2, o1, o2, in_flight}
end

local function settle(bk, lk, a)
  if redis.call('ZREM', lk, ARGV[a + 7]) == 0 then return 0 end
  local limits = {tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])}
  local adjust = {0, tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6])}
  local stored = redis.call('HMGET', bk, unpack(FIELDS))
  local levels = {0, 0, 0}
  for d = 1, 3 do
    if limits[d] > 0 then
      local l = level(stored, d, limits[d]) + adjust[d]
      if l > limits[d] then l = limits[d] end
      levels[d] = l
    end
  end
  store(bk, limits, levels)
  return 1
end

local function renew(lk, a)
  local id = ARGV[a + 7]
  local expiry = redis.call('ZSCORE', lk, id)
  if not expiry then return 0 end
  if tonumber(expiry) <= now then
    redis.call('ZREM', lk, id)
    return 0
  end
  redis.call('ZADD', lk, fmt(now + tonumber(ARGV[a + 8])), id)
  keep_leases(lk)
  return 1
end

local out = {}
for k = 0, (#ARGV - 1) / WIDTH - 1 do
  local a = 2 + k * WIDTH  -- ARGV[a] is the op, ARGV[a + 1 .. a + 8] its fields
  local bk, lk = KEYS[2 * k + 1], KEYS[2 * k + 2]
  local result
  if ARGV[a] == 'a' then
    result = admit(bk, lk, a)
  elseif ARGV[a] == 's' then
    result = {settle(bk, lk, a)}
  else
    result = {renew(lk, a)}
  end
  for j = 1, RESULT_WIDTH do out[#out + 1] = result[j] or 0 end
end
out[#out + 1] = now
return out
"""
)
