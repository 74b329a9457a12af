# -*- test-case-name: tests.test_redis_registry -*-
"""
The Lua scripts of the Redis registry: every change of a job is one of
them, so that it is checked and made against Redis's state atomically, and
appended to the change log in the same step.

Redis keeps, under a prefix:

  - C{jobs}: a hash, job id -> the job's row (the journal's positional
    encoding, L{gridlike.server.registry._records}), always current;
  - C{keys}: a hash, job key -> id (keys are unique across instances);
  - C{next}: the counter of submission and queue order numbers;
  - C{types}: a hash, type (C{""} for none) -> jobs ever submitted, for
    batch numbers;
  - C{owner}: a hash, running job id -> C{"<instance> <claim>"};
  - C{running:<instance>}: the ids of the jobs an instance runs;
  - C{instances} and C{alive:<instance>}: who runs, and who is still heard
    (a key that expires after C{instance_timeout});
  - C{log}: a stream of the changes, each a journal-style record C{r} with
    its number C{n} (C{lsn} counts them), which every instance tails into
    its copy of the jobs in memory.

Each script takes one JSON argument and answers C{{status, ...}}: C{"ok"}
and the log entry's id, or why nothing changed.
"""

from __future__ import annotations

LOG_LENGTH = 1_000_000
"""About how many changes the log keeps: an instance further behind than
this loads every job again."""

_PRELUDE = """
local P = KEYS[1]
local null = cjson.null
local a = cjson.decode(ARGV[1])
local function emit(record)
  local n = redis.call('INCR', P .. 'lsn')
  return redis.call('XADD', P .. 'log', 'MAXLEN', '~', %(length)d, '*',
                    'n', n, 'r', cjson.encode(record))
end
local function row_of(id)
  local raw = redis.call('HGET', P .. 'jobs', id)
  if not raw then return nil end
  return cjson.decode(raw)
end
local function save(row)
  redis.call('HSET', P .. 'jobs', row[1], cjson.encode(row))
end
local function new_job(id, key, type, priority, size, description, now, parent, bs)
  local name = type == null and '' or type
  local count = redis.call('HINCRBY', P .. 'types', name, 1) - 1
  local seq = redis.call('INCR', P .. 'next')
  local row = {id, key, type, priority, seq, math.floor(count / bs) + 1, now, size,
               description, 'pending', seq, null, null, 0, null, null, null, null,
               null, parent, null, null}
  save(row)
  redis.call('HSET', P .. 'keys', key, id)
  return row, name, count + 1
end
local function disown(id)
  local owner = redis.call('HGET', P .. 'owner', id)
  if owner then
    redis.call('HDEL', P .. 'owner', id)
    redis.call('SREM', P .. 'running:' .. string.match(owner, '^(%%S+)'), id)
  end
  return owner
end
local function fail(row, info, logs, worker, limit, for_good, now)
  local count = row[14]
  if not for_good then count = count + 1 end
  local final = for_good or count >= limit
  local order = redis.call('INCR', P .. 'next')
  row[14] = count; row[18] = info; row[19] = logs; row[17] = worker
  row[15] = worker; row[11] = order
  if final then row[10] = 'failed'; row[13] = now else row[10] = 'pending' end
  save(row)
  disown(row[1])
  return emit({op = 'fail', id = row[1], count = count, status = row[10], info = info,
               logs = logs, ended = now, worker = worker, order = order})
end
""" % {"length": LOG_LENGTH}

SUBMIT = """
for _, s in ipairs(a.specs) do
  if redis.call('HEXISTS', P .. 'keys', s[2]) == 1 then return {'conflict', s[2]} end
end
local rows, counts = {}, {}
for i, s in ipairs(a.specs) do
  local row, name, count = new_job(s[1], s[2], s[3], s[4], s[5], s[6], a.now, null, a.bs)
  rows[i] = row
  counts[name] = count
end
return {'ok', emit({op = 'put', jobs = rows, counts = counts})}
"""

START = """
local row = row_of(a.id)
if not row then return {'gone'} end
if row[10] ~= 'pending' then return {'taken'} end
-- The attempt's number: the one a worker resumes, else the next (rows made
-- before attempts were counted here count their failures).
local n = a.attempt
if n == nil or n == null then
  local last = row[23]
  if last == nil or last == null then last = row[14] end
  n = last + 1
end
row[10] = 'running'; row[12] = a.now; row[15] = a.worker; row[16] = a.name; row[23] = n
save(row)
redis.call('HSET', P .. 'owner', a.id, a.instance .. ' ' .. a.claim)
redis.call('SADD', P .. 'running:' .. a.instance, a.id)
return {'ok', emit({op = 'start', id = a.id, worker = a.worker, name = a.name,
                    started = a.now, n = n}), n}
"""

PROGRESS = """
if redis.call('HGET', P .. 'owner', a.id) ~= a.instance .. ' ' .. a.claim then
  return {'stale'}
end
return {'ok', emit({op = 'progress', id = a.id, percent = a.percent, info = a.info})}
"""

DONE = """
local row = row_of(a.id)
if not row or redis.call('HGET', P .. 'owner', a.id) ~= a.instance .. ' ' .. a.claim then
  return {'stale'}
end
local record = {op = 'done', id = a.id, ended = a.now, size = a.size, worker = a.worker}
if a.child_type ~= null then
  local key = row[2] .. '.' .. a.child_type
  if #key > 128 or redis.call('HEXISTS', P .. 'keys', key) == 1 then key = a.child_id end
  local child, name, count = new_job(a.child_id, key, a.child_type, row[4], a.size, null,
                                     a.now, row[2], a.bs)
  row[21] = key
  record.child = child
  record.counts = {[name] = count}
end
row[10] = 'done'; row[13] = a.now; row[22] = a.size; row[15] = a.worker
row[18] = null; row[19] = null
save(row)
disown(a.id)
return {'ok', emit(record)}
"""

FAIL = """
local row = row_of(a.id)
if not row or redis.call('HGET', P .. 'owner', a.id) ~= a.instance .. ' ' .. a.claim then
  return {'stale'}
end
return {'ok', fail(row, a.info, a.logs, a.worker, a.limit, a.for_good, a.now)}
"""

DELETE = """
local deleted = {}
local ids = a.ids
if a.key ~= nil then
  local id = redis.call('HGET', P .. 'keys', a.key)
  if not id then return {'notfound'} end
  ids = {id}
end
for _, id in ipairs(ids) do
  local row = row_of(id)
  if row then
    redis.call('HDEL', P .. 'jobs', id)
    if redis.call('HGET', P .. 'keys', row[2]) == id then
      redis.call('HDEL', P .. 'keys', row[2])
    end
    disown(id)
    deleted[#deleted + 1] = id
  end
end
if #deleted == 0 then return {'none'} end
if a.key ~= nil then return {'ok', emit({op = 'delete', id = deleted[1]})} end
return {'ok', emit({op = 'delete_many', ids = deleted})}
"""

RETRY = """
local ids = a.ids
if a.key ~= nil then
  local id = redis.call('HGET', P .. 'keys', a.key)
  if not id then return {'notfound'} end
  local row = row_of(id)
  if row[10] ~= 'failed' then return {'conflict', row[10]} end
  ids = {id}
end
local retries = {}
for _, id in ipairs(ids) do
  local row = row_of(id)
  if row and row[10] == 'failed' then
    local order = redis.call('INCR', P .. 'next')
    row[10] = 'pending'; row[14] = 0; row[18] = null; row[19] = null; row[13] = null
    row[17] = null; row[11] = order
    save(row)
    retries[#retries + 1] = {id, order}
  end
end
if #retries == 0 then return {'none'} end
if a.key ~= nil then
  return {'ok', emit({op = 'retry', id = retries[1][1], order = retries[1][2]})}
end
return {'ok', emit({op = 'retry_many', retries = retries})}
"""

HEARTBEAT = """
redis.call('SET', P .. 'alive:' .. a.instance, a.now, 'PX', a.ttl)
redis.call('SADD', P .. 'instances', a.instance)
local requeued = 0
for _, other in ipairs(redis.call('SMEMBERS', P .. 'instances')) do
  if redis.call('EXISTS', P .. 'alive:' .. other) == 0 then
    for _, id in ipairs(redis.call('SMEMBERS', P .. 'running:' .. other)) do
      local row = row_of(id)
      if row and row[10] == 'running' then
        local limit = a.limits[row[3] == null and '' or row[3]] or a.default_limit
        fail(row, 'instance lost', null, row[15], limit, false, a.now)
        requeued = requeued + 1
      end
      redis.call('HDEL', P .. 'owner', id)
    end
    redis.call('DEL', P .. 'running:' .. other)
    redis.call('SREM', P .. 'instances', other)
  end
end
return {'ok', requeued}
"""

TYPE_STATE = """
if a.state == 'active' then
  redis.call('HDEL', P .. 'type_states', a.type)
else
  redis.call('HSET', P .. 'type_states', a.type, a.state)
end
return {'ok', emit({op='type_state', type=a.type, state=a.state})}
"""

LOAD = """
local last = redis.call('XREVRANGE', P .. 'log', '+', '-', 'COUNT', 1)
local at = '0-0'
if last[1] then at = last[1][1] end
return {'ok', at, tonumber(redis.call('GET', P .. 'lsn') or '0'),
        redis.call('HVALS', P .. 'jobs'), redis.call('HGETALL', P .. 'type_states')}
"""

SCRIPTS = {
    name: _PRELUDE + body
    for name, body in {
        "submit": SUBMIT,
        "start": START,
        "progress": PROGRESS,
        "done": DONE,
        "fail": FAIL,
        "delete": DELETE,
        "retry": RETRY,
        "heartbeat": HEARTBEAT,
        "type_state": TYPE_STATE,
        "load": LOAD,
    }.items()
}
"""Each script, whole, by name."""
