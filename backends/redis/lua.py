"""The Lua scripts of the Redis backend: every write is one atomic script per key (the
feed's tombstones: one script for many keys, each handled as the single-key write would).

Scripts run by EVALSHA; a server that lost them (restart, ``SCRIPT FLUSH``) answers
NOSCRIPT and the caller re-sends the same call as EVAL, which caches the script again.
Each script touches only keys of one owner (one hash tag), all declared in ``KEYS``, so
each runs on one Redis Cluster node; ``TOMBSTONES`` takes many owners' keys on a standalone
server and one owner's a call on a Cluster. Values are laid out as in
:mod:`backends.redis.format`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

_COMMON = """
local function parse(cur)
  if not cur then return nil end
  local tag, rev, v, c = string.match(cur, '^(%a)2:(%d+):(%d+):(%d+):')
  if tag then return tag, tonumber(rev), tonumber(v), c end
  tag, v, c = string.match(cur, '^(%a)1:(%d+):(%d+):')
  return tag, 0, tonumber(v), c
end
-- the cache's one ordering rule (backends.cache_base.lands)
local function lands(cur, rev, tombstone)
  local tag, held = parse(cur)
  if not tag then return true end
  if tombstone or tag == 'e' then return rev > held end
  return rev >= held
end
-- a cache that lost its generation marker (flushed, evicted) may have lost tombstones too
local function lost(i)
  return #KEYS >= i and redis.call('EXISTS', KEYS[i]) == 0
end
-- a lease names the owner's erase epoch it was taken in: an erase since fences it
local function epoch()
  return redis.call('GET', KEYS[5]) or '0'
end
-- a fenced write (KEYS[k] the lock's fence, ARGV[a] the write's token): the newest token
-- if a newer lock was granted since, else nil
local function fenced(k, a)
  if #KEYS < k then return nil end
  local newest = tonumber(redis.call('GET', KEYS[k]) or '0')
  if newest > tonumber(ARGV[a]) then return newest end
  return nil
end
local function store(k, value, px, idx, member, nsset, ns, indexed)
  if px ~= '0' then
    redis.call('SET', k, value, 'PX', px)
  else
    redis.call('SET', k, value)
  end
  if not indexed then
    redis.call('ZADD', idx, 0, member)
    redis.call('SADD', nsset, ns)
  end
end
"""


@dataclass(frozen=True)
class Script:
    """A Lua script and its SHA1 (what EVALSHA needs)."""

    body: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        sha = hashlib.sha1(self.body.encode(), usedforsecurity=False).hexdigest()
        object.__setattr__(self, "sha", sha)


PUT = Script(
    _COMMON
    + """
-- KEYS: record, index, namespaces, owner's revision counter[, the lock's fence]; ARGV:
-- 'now_us:expected:px:expires_us' (expected -1: none; px 0: no expiry; expires_us 0:
-- never), value, member, namespace[, fence token]. Returns {ok, version, created_us,
-- revision}; ok -1: fenced off, and the version is the newest token.
local now, expected, px, expires = string.match(ARGV[1], '^(%d+):(-?%d+):(%d+):(%d+)$')
local newest = fenced(5, 5)
if newest then return {-1, newest, '', 0} end
local cur = redis.call('GET', KEYS[1])
local tag, _, version, created = parse(cur)
if tag ~= 'e' then version = 0; created = nil end
expected = tonumber(expected)
if expected >= 0 and expected ~= version then return {0, version, '', 0} end
version = version + 1
local created_s = created or now
local revision = redis.call('INCR', KEYS[4])
local value = 'e2:' .. string.format('%d', revision) .. ':' .. string.format('%d', version)
  .. ':' .. created_s
  .. ':' .. now .. ':' .. expires .. ':' .. ARGV[2]
store(KEYS[1], value, px, KEYS[2], ARGV[3], KEYS[3], ARGV[4], cur)
return {1, version, created_s, revision}
"""
)

DELETE = Script(
    _COMMON
    + """
-- KEYS: record, index, owner's revision counter[, the lock's fence]; ARGV: expected (-1:
-- none), member[, fence token]. Returns {ok, live version, revision of the deletion (0:
-- nothing removed)}; ok -1: fenced off, and the version is the newest token.
local newest = fenced(4, 3)
if newest then return {-1, newest, 0} end
local tag, _, version = parse(redis.call('GET', KEYS[1]))
if tag ~= 'e' then version = 0 end
local expected = tonumber(ARGV[1])
if expected >= 0 and expected ~= version then return {0, version, 0} end
if version > 0 then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[2])
  return {1, version, redis.call('INCR', KEYS[3])}
end
return {1, 0, 0}
"""
)

LEASE = Script(
    _COMMON
    + """
-- After a missed GET. KEYS: record, lease, index, namespaces, owner's erase epoch; ARGV:
-- token, lease_ms. Returns the value on a (late) hit, 1 if the lease was taken, else 0.
-- Only the lease key is written, and it expires: a read never grows the owner's index.
-- A lease of an earlier epoch (taken before an erase) is replaced.
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, 1) == 'e' then return cur end
local now = epoch()
local held = redis.call('GET', KEYS[2])
if held and string.match(held, '|(.*)$') == now then return 0 end
redis.call('SET', KEYS[2], ARGV[1] .. '|' .. now, 'PX', ARGV[2])
return 1
"""
)

_LAND = """
-- The body FILL and WRITE share. KEYS: record, lease, index, namespaces, owner's erase
-- epoch[, generation marker]; ARGV: token, packed, px, revision, member, namespace.
-- Stores ARGV[2] where it lands by revision ARGV[4]; returns 1 if stored, else 0.
local function land(tombstone)
  local cur = redis.call('GET', KEYS[1])
  if not lands(cur, tonumber(ARGV[4]), tombstone) then return 0 end
  store(KEYS[1], ARGV[2], ARGV[3], KEYS[3], ARGV[5], KEYS[4], ARGV[6], cur)
  return 1
end
"""
"""FILL and WRITE (which also writes tombstones) differ only in their lease rule, which is
opposite: a fill needs the key's valid lease and consumes it, a write revokes whatever
lease is out. They stay two scripts so that no argument can turn a fill whose lease is
missing or wrong into a write."""

FILL = Script(
    _COMMON
    + _LAND
    + """
-- A fill after a miss: only with the valid lease (taken since the owner's last erase),
-- which it consumes, and only an entry. Returns 1 if stored, 0 if not, -1 if the
-- generation marker is gone.
if lost(6) then return -1 end
if redis.call('GET', KEYS[2]) ~= ARGV[1] .. '|' .. epoch() then return 0 end
redis.call('DEL', KEYS[2])
return land(false)
"""
)

WRITE = Script(
    _COMMON
    + _LAND
    + """
-- The writer's update after a commit: revokes the lease (the token ARGV[1] is unused) and
-- stores an entry (ARGV[2] starts with 'e') or a tombstone ('t'). Returns as FILL.
if lost(6) then return -1 end
redis.call('DEL', KEYS[2])
return land(string.sub(ARGV[2], 1, 1) == 't')
"""
)

TOMBSTONES = Script(
    _COMMON
    + """
-- WRITE's tombstones for many keys in one call (the change feed's, a repair's).
-- KEYS: per tombstone its record, lease, index and namespaces (4 each)[, generation
-- marker]; ARGV: px, then per tombstone its packed tombstone, revision, member and
-- namespace (4 each). Each revokes its key's lease and lands by revision, in order.
-- Returns how many landed, -1 if the generation marker is gone.
local n = (#ARGV - 1) / 4
if #KEYS > 4 * n and redis.call('EXISTS', KEYS[#KEYS]) == 0 then return -1 end
local landed = 0
for i = 0, n - 1 do
  local k, a = 4 * i, 1 + 4 * i
  local record = KEYS[k + 1]
  redis.call('DEL', KEYS[k + 2])
  local cur = redis.call('GET', record)
  if lands(cur, tonumber(ARGV[a + 2]), true) then
    store(record, ARGV[a + 1], ARGV[1], KEYS[k + 3], ARGV[a + 3], KEYS[k + 4], ARGV[a + 4], cur)
    landed = landed + 1
  end
end
return landed
"""
)

FORGET = Script(
    """
-- Lazy index cleanup. KEYS: index, record, lease; ARGV: member. Drops the member when
-- neither the record nor its lease exists any more.
if redis.call('EXISTS', KEYS[2]) == 0 and redis.call('EXISTS', KEYS[3]) == 0 then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""
)

ERASE = Script(
    """
-- Erase one owner, if its keys are still exactly what the caller read, and start a new
-- erase epoch (leases taken before cannot fill).
-- KEYS: namespaces set, n indexes, m records, m leases, the owner's revision counter,
-- the owner's erase epoch. ARGV: n, m, the epoch's lifetime (ms), then per index its
-- member count, then every member in ZRANGE order. Returns the number of live records
-- removed, or -1 when the owner's keys changed since (the caller reads again).
local n, m = tonumber(ARGV[1]), tonumber(ARGV[2])
if redis.call('SCARD', KEYS[1]) ~= n then return -1 end
local at = 3 + n
for i = 1, n do
  local got = redis.call('ZRANGE', KEYS[1 + i], 0, -1)
  local want = tonumber(ARGV[3 + i])
  if #got ~= want then return -1 end
  for j = 1, want do
    if got[j] ~= ARGV[at + j] then return -1 end
  end
  at = at + want
end
local removed = 0
for offset = 0, m - 1, 1000 do
  local first, last = 2 + n + offset, 1 + n + math.min(offset + 1000, m)
  removed = removed + redis.call('UNLINK', unpack(KEYS, first, last))
  redis.call('UNLINK', unpack(KEYS, first + m, last + m))
end
redis.call('UNLINK', unpack(KEYS, 1, 1 + n))
redis.call('UNLINK', KEYS[#KEYS - 1])
redis.call('INCR', KEYS[#KEYS])
redis.call('PEXPIRE', KEYS[#KEYS], ARGV[3])
return removed
"""
)

RESTORE = Script(
    _COMMON
    + """
-- Bulk import. KEYS: record, index, namespaces, owner's revision counter; ARGV: packed
-- entry without its revision (everything after 'e2:<revision>:'), px, version, member,
-- namespace. Writes the entry as given, with a new revision, unless the key holds a live
-- entry of this version or newer. Returns 1 if written.
local cur = redis.call('GET', KEYS[1])
local tag, _, version = parse(cur)
if tag == 'e' and version >= tonumber(ARGV[3]) then return 0 end
local value = 'e2:' .. string.format('%d', redis.call('INCR', KEYS[4])) .. ':' .. ARGV[1]
store(KEYS[1], value, ARGV[2], KEYS[2], ARGV[4], KEYS[3], ARGV[5], cur)
return 1
"""
)


_LOCKS = """
-- KEYS: the lock's queue (ticket -> ticket), expiries (ticket -> ms), fence; times are the
-- server's (TIME), so clients whose clocks disagree agree on which tickets are live
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function expire_head()
  while true do
    local head = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
    if not head then return nil end
    if tonumber(redis.call('HGET', KEYS[2], head) or '0') > now then return head end
    redis.call('ZREM', KEYS[1], head)
    redis.call('HDEL', KEYS[2], head)
  end
end
local function keep(ms)
  for i = 1, 2 do
    if redis.call('PTTL', KEYS[i]) < ms then redis.call('PEXPIRE', KEYS[i], ms) end
  end
end
"""

LOCK_TICKET = Script(
    _LOCKS
    + """
-- KEYS: queue, expiries, fence, the owner's lock counter; ARGV: hold_ms. Returns the ticket.
local ticket = redis.call('INCR', KEYS[4])
redis.call('ZADD', KEYS[1], ticket, ticket)
redis.call('HSET', KEYS[2], ticket, now + tonumber(ARGV[1]))
keep(tonumber(ARGV[1]))
return ticket
"""
)

LOCK_TURN = Script(
    _LOCKS
    + """
-- KEYS: queue, expiries, fence; ARGV: ticket, hold_ms, lease_ms, fence_ttl_ms. Returns 1
-- granted (the fence is raised to the ticket), 0 waiting (renewed), -1 the ticket expired.
local mine = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if mine <= now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  return -1
end
if expire_head() ~= ARGV[1] then
  redis.call('HSET', KEYS[2], ARGV[1], now + tonumber(ARGV[2]))
  keep(tonumber(ARGV[2]))
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], now + tonumber(ARGV[3]))
keep(tonumber(ARGV[3]))
if tonumber(redis.call('GET', KEYS[3]) or '0') < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[4])
else
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
end
return 1
"""
)

LOCK_RELEASE = Script(
    """
-- KEYS: queue, expiries; ARGV: ticket.
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""
)
