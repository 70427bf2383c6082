"""The Redis side of the limits store: one Lua script that runs a batch of operations.

Redis runs a script atomically, so every operation in a batch is its own atomic decision (the
batch only saves round trips). `memory.py` is this script in Python, operation for operation;
change both together (tests/admission/test_equivalence.py compares them).

KEYS, two per operation: the tenant's buckets (a string) and its lease sorted set. Both carry the tenant
id as a hash tag, so they share a Cluster slot.
ARGV[1]: the clock in microseconds, or '' for the server's TIME (the one clock all replicas share).
ARGV[2..]: one operation each, as one space-separated string (one argument, not nine: encoding
and parsing arguments is most of a client's cost):
  op ('a' admit, 's' settle, 'r' renew), requests/min, input tokens/min, output tokens/min,
  max concurrent, input tokens, output tokens (admit: the cost; settle: the refund), lease ttl us,
  lease id.
Reply: one string, for the same reason: the operations' results separated by ';', then the
clock. An admission's result is ten comma-separated integers: allowed, limiting dimension (0 none,
1 requests, 2 input, 3 output, 4 concurrency), retry-after us, remaining and reset us of requests,
of input and of output tokens, leases in flight. A settlement's or renewal's is 1 or 0. A
malformed operation's is E.
"""

from __future__ import annotations

BATCH = r"""
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local MINUTE = 60000000
local call = redis.call
local NOW = string.format('%d', now)
local function fmt(x) return string.format('%.17g', x) end

-- A tenant's buckets are one string, "requests input output stamp" ('-' for a dimension not
-- limited when last written): one GET and one SET (with its expiry) instead of a hash's HMGET,
-- HSET and PEXPIRE.
local function load(bk)
  local value = call('GET', bk)
  if not value then return nil end
  local r, i, o, t = string.match(value, '^(%S+) (%S+) (%S+) (%S+)$')
  return {tonumber(r), tonumber(i), tonumber(o), tonumber(t)}
end

local function level(stored, d, limit)
  if not stored or not stored[d] then return limit end
  local elapsed = now - stored[4]
  if elapsed < 0 then elapsed = 0 end
  local l = stored[d] + elapsed * (limit / MINUTE)
  if l > limit then l = limit end
  return l
end

-- the value expires once every bucket would be full again, which is what a missing value means
local function store(bk, stored, limits, levels)
  local parts, longest = {'-', '-', '-', NOW}, 0
  for d = 1, 3 do
    if limits[d] > 0 then
      parts[d] = fmt(levels[d])
      local full = (limits[d] - levels[d]) / (limits[d] / MINUTE)
      if full > longest then longest = full end
    end
  end
  if parts[1] ~= '-' or parts[2] ~= '-' or parts[3] ~= '-' then
    call('SET', bk, table.concat(parts, ' '), 'PX', math.floor(longest / 1000) + 1000)
  elseif stored then  -- no rate limits any more (the plan changed): nothing to remember
    call('DEL', bk)
  end
end

-- the lease set lives until its last lease expires (relative, so a test clock works too); GT
-- never shortens it, so replicas configured with different TTLs cannot cut each other's leases
local function keep_leases(lk, expiry, created)
  local ms = math.max(1, math.floor((expiry - now) / 1000) + 1000)
  if created then
    call('PEXPIRE', lk, ms)
  else
    call('PEXPIRE', lk, ms, 'GT')
  end
end

local function bucket(l, limit)
  if limit == 0 then return 0, 0 end
  return math.floor(l), math.ceil((limit - l) / (limit / MINUTE))
end

local function admit(bk, lk, op)
  local limits = op.limits
  local need = {1, op.tokens_in, op.tokens_out}
  local stored = load(bk)
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
  call('ZREMRANGEBYSCORE', lk, '-inf', NOW)
  local in_flight = call('ZCARD', lk)
  -- a lease that exists already means this is a retry of an admission that was applied (its reply
  -- was lost): answer it again, take nothing twice
  local replay = call('ZSCORE', lk, op.lease)
  if replay then code, wait = 0, 0 end
  if code == 0 and not replay and op.concurrency > 0 and in_flight >= op.concurrency then code = 4 end
  if code == 0 and not replay then
    for d = 1, 3 do
      if limits[d] > 0 then levels[d] = levels[d] - need[d] end
    end
    store(bk, stored, limits, levels)
    call('ZADD', lk, fmt(now + op.ttl), op.lease)
    keep_leases(lk, now + op.ttl, in_flight == 0)
    in_flight = in_flight + 1
  end
  local r1, r2 = bucket(levels[1], limits[1])
  local i1, i2 = bucket(levels[2], limits[2])
  local o1, o2 = bucket(levels[3], limits[3])
  local allowed = 0
  if code == 0 then allowed = 1 end
  return string.format('%d,%d,%d,%d,%d,%d,%d,%d,%d,%d', allowed, code, wait, r1, r2, i1, i2, o1, o2, in_flight)
end

local function settle(bk, lk, op)
  if call('ZREM', lk, op.lease) == 0 then return '0' end
  local limits = op.limits
  local adjust = {0, op.tokens_in, op.tokens_out}
  local stored = load(bk)
  local levels = {0, 0, 0}
  for d = 1, 3 do
    if limits[d] > 0 then
      local l = level(stored, d, limits[d]) + adjust[d]
      if l > limits[d] then l = limits[d] end
      levels[d] = l
    end
  end
  store(bk, stored, limits, levels)
  return '1'
end

local function renew(lk, op)
  local expiry = call('ZSCORE', lk, op.lease)
  if not expiry then return '0' end
  if tonumber(expiry) <= now then
    call('ZREM', lk, op.lease)
    return '0'
  end
  call('ZADD', lk, fmt(now + op.ttl), op.lease)
  keep_leases(lk, now + op.ttl, false)
  return '1'
end

local PATTERN = '^(%a) (%d+) (%d+) (%d+) (%d+) (%-?%d+) (%-?%d+) (%d+) (%S+)$'
local out = {}
for k = 1, #ARGV - 1 do
  local kind, rpm, ipm, opm, concurrency, tokens_in, tokens_out, ttl, lease = string.match(ARGV[k + 1], PATTERN)
  -- a malformed operation fails alone: failing the script would hide the effects of the others
  if not kind then kind = 'E' end
  local op = {
    limits = {tonumber(rpm), tonumber(ipm), tonumber(opm)},
    concurrency = tonumber(concurrency),
    tokens_in = tonumber(tokens_in),
    tokens_out = tonumber(tokens_out),
    ttl = tonumber(ttl),
    lease = lease,
  }
  local bk, lk = KEYS[2 * k - 1], KEYS[2 * k]
  if kind == 'a' then
    out[k] = admit(bk, lk, op)
  elseif kind == 's' then
    out[k] = settle(bk, lk, op)
  elseif kind == 'r' then
    out[k] = renew(lk, op)
  else
    out[k] = 'E'
  end
end
out[#out + 1] = NOW
return table.concat(out, ';')
"""
