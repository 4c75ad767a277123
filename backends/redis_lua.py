"""The Lua scripts of the Redis backend: every write is one atomic script per key.

Scripts run by EVALSHA; a server that lost them (restart, ``SCRIPT FLUSH``) answers
NOSCRIPT and the caller re-sends the same call as EVAL, which caches the script again.
Each script touches only keys of one owner (one hash tag), all declared in ``KEYS``, so
each runs on one Redis Cluster node. Values are laid out as in :mod:`backends.redis_format`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

_STAMP = """
local function held(cur)
  if not cur then return nil end
  local tag, v, c = string.match(cur, '^(%a)%d:(%d+):(%d+):')
  return tag, tonumber(c), tonumber(v)
end
local function newer(cur, c, v, or_equal)
  local tag, hc, hv = held(cur)
  if not tag then return true end
  if c ~= hc then return c > hc end
  if or_equal then return v >= hv end
  return v > hv
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
    _STAMP
    + """
-- KEYS: record, index, namespaces; ARGV: 'now_us:expected:px:expires_us' (expected -1:
-- none; px 0: no expiry; expires_us 0: never), value, member, namespace.
-- Returns {ok, version, created_us}.
local now, expected, px, expires = string.match(ARGV[1], '^(%d+):(-?%d+):(%d+):(%d+)$')
local cur = redis.call('GET', KEYS[1])
local tag, created, version = held(cur)
if tag ~= 'e' then version = 0; created = nil end
expected = tonumber(expected)
if expected >= 0 and expected ~= version then return {0, version, ''} end
version = version + 1
local created_s = created and string.format('%d', created) or now
local value = 'e1:' .. string.format('%d', version) .. ':' .. created_s .. ':' .. now
  .. ':' .. expires .. ':' .. ARGV[2]
store(KEYS[1], value, px, KEYS[2], ARGV[3], KEYS[3], ARGV[4], cur)
return {1, version, created_s}
"""
)

DELETE = Script(
    _STAMP
    + """
-- KEYS: record, index; ARGV: expected (-1: none), member. Returns {ok, live version}.
local tag, created, version = held(redis.call('GET', KEYS[1]))
if tag ~= 'e' then version = 0 end
local expected = tonumber(ARGV[1])
if expected >= 0 and expected ~= version then return {0, version} end
if version > 0 then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[2])
end
return {1, version}
"""
)

LEASE = Script(
    """
-- After a missed GET. KEYS: record, lease, index, namespaces; ARGV: token, lease_ms,
-- member, namespace. Returns the value on a (late) hit, 1 if the lease was taken, else 0.
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, 1) == 'e' then return cur end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('ZADD', KEYS[3], 0, ARGV[3])
  redis.call('SADD', KEYS[4], ARGV[4])
  return 1
end
return 0
"""
)

FILL = Script(
    _STAMP
    + """
-- KEYS: record, lease, index, namespaces; ARGV: token, packed, px, created_us, version,
-- member, namespace. Stores only with the valid lease (consumed) and a newer stamp.
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
local cur = redis.call('GET', KEYS[1])
if not newer(cur, tonumber(ARGV[4]), tonumber(ARGV[5]), false) then
  return 0
end
store(KEYS[1], ARGV[2], ARGV[3], KEYS[3], ARGV[6], KEYS[4], ARGV[7], cur)
return 1
"""
)

WRITE = Script(
    _STAMP
    + """
-- KEYS and ARGV as FILL minus the token (ARGV[1] unused). Revokes the lease; stores
-- if newer by stamp.
redis.call('DEL', KEYS[2])
local cur = redis.call('GET', KEYS[1])
if not newer(cur, tonumber(ARGV[4]), tonumber(ARGV[5]), false) then
  return 0
end
store(KEYS[1], ARGV[2], ARGV[3], KEYS[3], ARGV[6], KEYS[4], ARGV[7], cur)
return 1
"""
)

TOMBSTONE = Script(
    _STAMP
    + """
-- KEYS and ARGV as WRITE; ARGV[2] is a packed tombstone. Replaces an entry of the same
-- stamp (the one deleted), keeps anything newer.
redis.call('DEL', KEYS[2])
local cur = redis.call('GET', KEYS[1])
if not newer(cur, tonumber(ARGV[4]), tonumber(ARGV[5]), true) then
  return 0
end
store(KEYS[1], ARGV[2], ARGV[3], KEYS[3], ARGV[6], KEYS[4], ARGV[7], cur)
return 1
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
-- Erase one owner, if its keys are still exactly what the caller read.
-- KEYS: namespaces set, n indexes, m records, m leases. ARGV: n, m, then per index its
-- member count, then every member in ZRANGE order. Returns the number of live records
-- removed, or -1 when the owner's keys changed since (the caller reads again).
local n, m = tonumber(ARGV[1]), tonumber(ARGV[2])
if redis.call('SCARD', KEYS[1]) ~= n then return -1 end
local at = 2 + n
for i = 1, n do
  local got = redis.call('ZRANGE', KEYS[1 + i], 0, -1)
  local want = tonumber(ARGV[2 + i])
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
return removed
"""
)

RESTORE = Script(
    _STAMP
    + """
-- Bulk import. KEYS: record, index, namespaces; ARGV: packed entry, px, version, member,
-- namespace. Writes the entry as given unless the key holds a live entry of this version
-- or newer. Returns 1 if written.
local cur = redis.call('GET', KEYS[1])
local tag, created, version = held(cur)
if tag == 'e' and version >= tonumber(ARGV[3]) then return 0 end
store(KEYS[1], ARGV[1], ARGV[2], KEYS[2], ARGV[4], KEYS[3], ARGV[5], cur)
return 1
"""
)

ALL_SCRIPTS = (PUT, DELETE, LEASE, FILL, WRITE, TOMBSTONE, FORGET, ERASE, RESTORE)
