"""One pace per destination for every process and machine on one key: the cooldown's state in Redis.

With ``LLM_RETRY_REDIS_URL`` set, each destination's pace lives in Redis, so that
gunicorn workers, Celery workers, pods and batch jobs on one API key take their
turns from one schedule:

- **Each reservation is one atomic Lua script** that reads Redis's own clock
  (``TIME``, never a client's), computes the turn as :meth:`Pace.next_turn
  <aicoder.http.pace.Pace.next_turn>` does (hold, lanes, bucket mirrors, feedback
  rate, slow start), takes it, and returns the wait. No lock is held across a
  wait: the client sleeps once. That is the one round trip of a request.
- **Learning** from a success (its quotas, the feedback rate's regrowth) rides
  with the process's next reservation: no round trip of its own. What must stop
  the others at once goes at once: a hint's hold, a bucket found empty, and a
  429's cut. A cut is computed by the same Python code as in one process
  (:class:`~aicoder.http.pace.Feedback`), from the samples every process has
  recorded, and written only if no other process cut meanwhile (compare and set).
- **Turns follow holds and cuts made elsewhere.** A hold or a cut reschedules
  every process's turns to come, in the same script. A thread whose turn comes
  after a wait asks whether it moved (one small call), and sleeps on if it did:
  a hold made elsewhere a moment before is a floor here too.
- **Keys** are ``aicoder:{fingerprint}:…``: the hash tag keeps a destination's
  keys in one slot of a Redis Cluster. Every script renews their TTL, so an
  idle destination leaves nothing behind, and a worker that crashes holds
  nothing: its unused turns simply pass.
- **No API key reaches Redis.** The fingerprint is a keyed BLAKE2b of the
  origin and the credentials, the same in every process (see
  :func:`~aicoder.http.cooldown.destination_key`).
- **Redis down is not an outage.** Any Redis error switches every destination
  to its in-process pace, with one WARNING; a background thread reconnects and
  says so once. While cut off, a process takes its share of every rate learnt
  (the quotas' and the feedback rate): one over the number of live clients,
  which the processes count through heartbeats. Once Redis is back, a process
  gives it what it knew, in case Redis lost everything; Redis grants no turn and
  makes no cut before the turns the process granted itself have gone.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from aicoder.http.pace import HURRY_STEP, Feedback, Grant, Pace, PendingTurn, Refusal, requests_remaining
from aicoder.http.quotas import Quota
from aicoder.http.redaction import safe_url
from aicoder.http.tokens import RequestCost

if TYPE_CHECKING:
    from aicoder.http.destinations import DestinationKey

__all__ = ["RedisPace", "RedisPaces"]

log = logging.getLogger(__name__)

_DIMENSIONS = ("requests", "tokens", "input-tokens", "output-tokens")

# Three functions the scripts below share. KEYS: pace hash, sends zset.
# reschedule(now) moves every turn not yet due (the sends to come) behind the hold, and at most the
# feedback rate apart (and the lanes', once what remained is no longer spent, 'B:off', as Pace.reschedule
# does, or once, 'L:new', when a lane is first known while nothing is spent: slow start's turns go through
# it): a hold or a cut takes effect for every process's queue at once. The processes
# follow their turns. apply(now, first) learns what answers told, from triples in ARGV[first], ...:
# (field, value, how), where how is 'set', 'max' (the larger of the stored value and now + value), or
# 'start' (now, from the rate value, if neither slow start nor a feedback rate is there), or 'init' (the
# value, if the field is not there: what a process knew before Redis lost it), or 'spend' (the answer to
# turn number `field` said that turns up to number `value` may spend what remains, unless a later turn's
# answer has said already).
# A hold that moves reschedules.
# regrow(now, successes) regrows the feedback rate after that many successes of requests it held back,
# along the cubic, to at most twice the send rate measured over the last four sends.
_FUNCTIONS = """
-- the token lanes the server has stated: {dimension, rate, index into a ticket's costs}
local function known_token_lanes()
  local lanes = {}
  for index, dimension in ipairs({'tokens', 'input-tokens', 'output-tokens'}) do
    local token_rate = tonumber(redis.call('HGET', KEYS[1], 'L:' .. dimension .. ':rate') or '0')
    if token_rate > 0 then table.insert(lanes, {dimension, token_rate, index}) end
  end
  return lanes
end

-- the token costs a ticket names: tokens, input tokens, output tokens
local function ticket_costs(ticket)
  local t, input, output = string.match(ticket, '|([%d.]+)|([%d.]+)|([%d.]+)$')
  return {tonumber(t or '0'), tonumber(input or '0'), tonumber(output or '0')}
end

-- no sooner than the token lanes allow after a turn at `last` of `costs`
local function after_tokens(at, last, costs, lanes)
  for _, token_lane in ipairs(lanes) do
    at = math.max(at, last + costs[token_lane[3]] / token_lane[2])
  end
  return at
end

local function reschedule(now)
  local hold = tonumber(redis.call('HGET', KEYS[1], 'hold') or '0')
  local rate = tonumber(redis.call('HGET', KEYS[1], 'F:rate') or '0')
  local interval = rate > 0 and 1 / rate or 0
  -- once what remained is no longer spent, the turns granted while it was go at every lane's rate too: one
  -- request apart on the requests lane, the previous turn's tokens (named in its ticket) apart on the others
  local relane = redis.call('HGET', KEYS[1], 'B:off') or redis.call('HGET', KEYS[1], 'L:new')
  redis.call('HDEL', KEYS[1], 'L:new')
  local lane = tonumber(redis.call('HGET', KEYS[1], 'L:requests:rate') or '0')
  local step = (lane > 0 and relane) and 1 / lane or 0
  local token_lanes = relane and known_token_lanes() or {}
  local turns = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. string.format('%.17g', now), '+inf', 'WITHSCORES')
  local last, last_costs = nil, {0, 0, 0}
  for i = 1, #turns, 2 do
    local at = math.max(tonumber(turns[i + 1]), hold)
    if last then
      -- at least a microsecond apart: a sorted set orders equal times by member, which would lose their order
      at = after_tokens(math.max(at, last + math.max(interval, step, 1e-6)), last, last_costs, token_lanes)
    end
    redis.call('ZADD', KEYS[2], string.format('%.17g', at), turns[i])
    last = at
    last_costs = ticket_costs(turns[i])
  end
  for _, token_lane in ipairs(token_lanes) do
    local field = 'L:' .. token_lane[1] .. ':tat'
    local after = last and last + last_costs[token_lane[3]] / token_lane[2]
    if after and after > tonumber(redis.call('HGET', KEYS[1], field) or '0') then
      redis.call('HSET', KEYS[1], field, string.format('%.17g', after))
    end
  end
  local tat = tonumber(redis.call('HGET', KEYS[1], 'F:tat') or '0')
  if last and interval > 0 and last + interval > tat then
    redis.call('HSET', KEYS[1], 'F:tat', string.format('%.17g', last + interval))
  end
  local lane_tat = tonumber(redis.call('HGET', KEYS[1], 'L:requests:tat') or '0')
  if last and step > 0 and last + step > lane_tat then
    redis.call('HSET', KEYS[1], 'L:requests:tat', string.format('%.17g', last + step))
  end
end

local function apply(now, first)
  local held, new_lane = 0, false
  for i = first, #ARGV, 3 do
    local field, value, how = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
    if how == 'set' then
      if string.match(field, '^L:.+:rate$') and not redis.call('HGET', KEYS[1], field) then new_lane = true end
      redis.call('HSET', KEYS[1], field, ARGV[i + 1])
    elseif how == 'max' then
      local stored = tonumber(redis.call('HGET', KEYS[1], field) or '0')
      if now + value > stored then
        redis.call('HSET', KEYS[1], field, string.format('%.17g', now + value))
        if field == 'hold' then
          held = 1
          -- the hold before it, if it has ended: the sends since then measure the server, not a silence
          if stored > 0 and stored <= now then redis.call('HSET', KEYS[1], 'quiet', string.format('%.17g', stored)) end
        end
      end
    elseif how == 'spend' then
      if tonumber(field) > tonumber(redis.call('HGET', KEYS[1], 'B:said') or '-1') then
        redis.call('HSET', KEYS[1], 'B:said', field, 'B:until', ARGV[i + 1])
      end
    elseif how == 'init' then
      if not redis.call('HGET', KEYS[1], field) then redis.call('HSET', KEYS[1], field, ARGV[i + 1]) end
    elseif how == 'start' then
      if not redis.call('HGET', KEYS[1], 'S:start') and not redis.call('HGET', KEYS[1], 'F:rate') then
        redis.call('HSET', KEYS[1], 'S:start', string.format('%.17g', now), 'S:granted', 0, 'S:from', ARGV[i + 1])
      end
    end
  end
  -- a lane first known while nothing is spent: the turns slow start handed out go through it, once
  if new_lane and not redis.call('HGET', KEYS[1], 'B:said') then redis.call('HSET', KEYS[1], 'L:new', 1) end
  if held == 1 then reschedule(now) end
  return held
end

local function regrow(now, successes, measured_sends, min_window)
  local raw = redis.call('HMGET', KEYS[1], 'F:rate', 'F:w_max', 'F:scale', 'F:k')
  local rate, w_max, scale, k = tonumber(raw[1]), tonumber(raw[2]), tonumber(raw[3]), tonumber(raw[4])
  if successes < 1 or not rate then return end
  local n = redis.call('HINCRBY', KEYS[1], 'F:n', successes)
  local grown = w_max * (1 + scale * (n - k) ^ 3)
  local past = string.format('%.17g', now)
  local recent = redis.call('ZREVRANGEBYSCORE', KEYS[2], past, '-inf', 'WITHSCORES', 'LIMIT', 0, measured_sends)
  if #recent >= 4 then  -- two sends or more, each with its score
    local measured = (#recent / 2) / math.max(now - tonumber(recent[#recent]), min_window)
    grown = math.min(grown, math.max(2 * measured, rate))
  end
  if grown > rate then redis.call('HSET', KEYS[1], 'F:rate', string.format('%.17g', grown)) end
end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
"""

# KEYS: pace hash, sends zset. ARGV: max_wait, ttl, ticket, tokens, input-tokens, output-tokens,
# slow start rate, its doubling time, its end, samples kept, then what answers told since the last
# reservation: the successes the feedback rate held back; the sends the send rate is measured over and the
# least span it is measured over (Feedback.MEASURED_SENDS, MIN_WINDOW); then triples (see apply). Learning
# from answers rides with the next reservation.
_RESERVE = (
    _FUNCTIONS
    + """
regrow(now, tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13]))
apply(now, 14)
local max_wait, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local costs = {requests = 1, tokens = tonumber(ARGV[4]), ['input-tokens'] = tonumber(ARGV[5]),
               ['output-tokens'] = tonumber(ARGV[6])}
local slow, doubling, slow_end, samples = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local serial = redis.call('HINCRBY', KEYS[1], 'B:serial', 1)
local raw = redis.call('HGETALL', KEYS[1])
local f = {}
for i = 1, #raw, 2 do f[raw[i]] = tonumber(raw[i + 1]) end
-- Within what an answer said remains (and unless the server refused such a turn), no lane but the mirrors.
local spending = not f['B:off'] and serial <= (f['B:until'] or 0)
local at = now
local hold = f['hold'] or 0
if hold - now <= max_wait then at = math.max(at, hold) end
local taken, resumed = {}, {}
for dimension, units in pairs(costs) do
  for _, kind in ipairs({'L', 'M'}) do
    local prefix = kind .. ':' .. dimension .. ':'
    local rate = f[prefix .. 'rate']
    if rate and rate > 0 and spending and kind == 'L' then
      table.insert(resumed, {prefix .. 'tat', f[prefix .. 'tat'] or 0, units / rate})
    elseif rate and rate > 0 and units / rate <= max_wait then
      local tat = f[prefix .. 'tat'] or 0
      at = math.max(at, tat - math.max((f[prefix .. 'burst'] or 0) - units, 0) / rate)
      table.insert(taken, {prefix .. 'tat', tat, units / rate})
    end
  end
end
local held_back, ready = 0, nil
local from = f['S:from'] or slow
if f['S:start'] then
  ready = f['S:start'] + doubling * math.log(1 + (f['S:granted'] or 0) * math.log(2) / (from * doubling)) / math.log(2)
elseif f['F:rate'] and f['F:rate'] > 0 and not spending then
  ready = f['F:tat'] or 0
end
if ready and ready - now <= max_wait then
  if ready >= at then held_back = 1 end
  at = math.max(at, ready)
end
for _, lane in ipairs(taken) do
  redis.call('HSET', KEYS[1], lane[1], string.format('%.17g', math.max(lane[2], at) + lane[3]))
end
-- the sustained lanes resume one step after the last turn spent
for _, lane in ipairs(resumed) do
  redis.call('HSET', KEYS[1], lane[1], string.format('%.17g', math.max(lane[2], at + lane[3])))
end
if f['S:start'] then
  redis.call('HINCRBY', KEYS[1], 'S:granted', 1)
  if from * 2 ^ ((at - f['S:start']) / doubling) > slow_end then
    redis.call('HDEL', KEYS[1], 'S:start', 'S:granted', 'S:from')
  end
elseif f['F:rate'] and f['F:rate'] > 0 and not spending then
  redis.call('HSET', KEYS[1], 'F:tat', string.format('%.17g', math.max(f['F:tat'] or 0, at) + 1 / f['F:rate']))
end
redis.call('ZADD', KEYS[2], string.format('%.17g', at), ARGV[3])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -samples - 1)
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
-- the first turn past all an answer said remained asks: the turns after it wait for its answer
local probe = (not spending and not f['B:off'] and f['B:said'] and serial == (f['B:until'] or 0) + 1) and 1 or 0
return {string.format('%.17g', at - now), held_back, string.format('%.17g', now),
        string.format('%.17g', f['F:rate'] or 0), serial, probe}
"""
)

# KEYS: pace hash, sends zset. ARGV: ttl, then what an answer told (see apply), at once: a hold, or a
# bucket found empty. Returns whether a hold moved.
_LEARN = (
    _FUNCTIONS
    + """
local held = apply(now, 2)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return held
"""
)

# KEYS: pace hash, sends zset, refusals zset. ARGV: ttl, member, sent at, granted at, samples kept, the
# refused turn's number, 1 if the refusal says a window ran out. Records the refusal; while what an answer
# said remains is spent, a refusal cuts nothing, and one within it ends the spending; one that says a window
# ran out cuts nothing and ends nothing.
# If the request was granted its turn after the last cut, and after 'calm' (when the turns processes
# granted themselves while Redis was away have gone), returns the state and the samples for the client to
# compute the cut; else the state alone, to pace by.
_REFUSE = (
    _FUNCTIONS
    + """
redis.call('ZADD', KEYS[3], tonumber(ARGV[3]), ARGV[2])
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -tonumber(ARGV[5]) - 1)
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[1]))
local serial = tonumber(ARGV[6])
local spend = redis.call('HMGET', KEYS[1], 'B:until', 'B:said', 'B:off')
-- While what an answer said remains is spent, a refusal cuts nothing: within it, it ends the spending;
-- past it, a window ran out.
local past = ARGV[7] == '1'
if not past and serial > 0 and spend[2] and not spend[3] then
  past = true
  if serial <= tonumber(spend[1] or '0') then
    redis.call('HSET', KEYS[1], 'B:off', 1)
    reschedule(now)  -- the turns handed out while spending go through the lanes now
  end
end
local cut = tonumber(redis.call('HGET', KEYS[1], 'F:cut') or '-1e308')
local calm = tonumber(redis.call('HGET', KEYS[1], 'calm') or '-1e308')
if past or tonumber(ARGV[4]) < math.max(cut, calm) then
  return {0, string.format('%.17g', now), redis.call('HGETALL', KEYS[1])}
end
return {1, string.format('%.17g', now), redis.call('HGETALL', KEYS[1]),
        redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES'), redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')}
"""
)

# KEYS: pace hash, sends zset. ARGV: ttl, the cut the client computed from (or '' for none), then
# field/value pairs. Writes them only if no other client cut meanwhile, and reschedules the turns to come.
_CUT = (
    _FUNCTIONS
    + """
local stored = redis.call('HGET', KEYS[1], 'F:cut') or ''
if stored ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], 'S:start', 'S:granted', 'S:from')
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
reschedule(now)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""
)

# KEYS: pace hash, sends zset. ARGV: the hold the asking process knows (0: none), then tickets of turns it has
# yet to take. Their times now, or nil for those no longer kept. A hold counts a turn whose time had come as
# gone, but these have not gone: one due before the hold here or there moves to it, where a later hold, made
# anywhere, moves it again; those it moves, and the turns after them, are spaced as a hold spaces them.
_WHEN = (
    _FUNCTIONS
    + """
local floor = math.max(tonumber(ARGV[1]), tonumber(redis.call('HGET', KEYS[1], 'hold') or '0'))
local scores = redis.call('ZMSCORE', KEYS[2], unpack(ARGV, 2))
local moved = false
for i, score in ipairs(scores) do
  if score and tonumber(score) < floor then
    moved = true
    redis.call('ZADD', KEYS[2], 'XX', string.format('%.17g', floor), ARGV[i + 1])
  end
end
if not moved then return scores end
-- moved to the hold together, they would go at once: spaced as every turn to come is
reschedule(now)
return redis.call('ZMSCORE', KEYS[2], unpack(ARGV, 2))
"""
)

# KEYS: pace hash, sends zset. ARGV: ttl, the successes the feedback rate held back since the last reservation,
# the sends the send rate is measured over and its least span (as for regrow), then the tickets of the asking
# process's turns to come. Regrows the feedback rate, then brings those turns forward to it, as Pace.hurry
# does: each follows the turn before it (any process's) one interval apart and a lane's step apart (that
# turn's tokens apart on a token lane), never later than before, never before the hold. Other processes'
# turns keep their times: their sleepers would not wake for new ones. Only where the feedback rate paces the
# turns: not in slow start, not while what remained is spent, not before slow start's turns have gone
# through a new lane. Returns the feedback rate the turns now follow, or 0 if none.
_HURRY = (
    _FUNCTIONS
    + """
regrow(now, tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
local raw = redis.call('HGETALL', KEYS[1])
local f = {}
for i = 1, #raw, 2 do f[raw[i]] = raw[i + 1] end
local rate = tonumber(f['F:rate'] or '0')
if rate <= 0 or f['S:start'] or f['L:new'] or (f['B:said'] and not f['B:off']) then return '0' end
local hold, interval = tonumber(f['hold'] or '0'), 1 / rate
local lane = tonumber(f['L:requests:rate'] or '0')
local step = lane > 0 and 1 / lane or 0
local token_lanes = known_token_lanes()
local ours = {}
for i = 5, #ARGV do ours[ARGV[i]] = true end
local turns = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. string.format('%.17g', now), '+inf', 'WITHSCORES')
local last, last_costs = nil, {0, 0, 0}
for i = 1, #turns, 2 do
  local before = tonumber(turns[i + 1])
  local at = before
  if last and ours[turns[i]] then
    at = math.max(last + math.max(interval, step, 1e-6), hold)
    at = math.min(after_tokens(at, last, last_costs, token_lanes), before)
  end
  if at < before then redis.call('ZADD', KEYS[2], string.format('%.17g', at), turns[i]) end
  last = at
  last_costs = ticket_costs(turns[i])
end
if last then
  redis.call('HSET', KEYS[1], 'F:tat', string.format('%.17g', last + interval))
  if step > 0 then redis.call('HSET', KEYS[1], 'L:requests:tat', string.format('%.17g', last + step)) end
  for _, token_lane in ipairs(token_lanes) do
    local after = last + last_costs[token_lane[3]] / token_lane[2]
    redis.call('HSET', KEYS[1], 'L:' .. token_lane[1] .. ':tat', string.format('%.17g', after))
  end
end
return string.format('%.17g', rate)
"""
)

# KEYS: sends zset. ARGV: a ticket whose turn will not be taken: it is no send, and holds no place.
_CANCEL = """
return redis.call('ZREM', KEYS[1], ARGV[1])
"""

# KEYS: the clients zset. ARGV: this client, how long a client counts as live. Returns the live clients.
_HEARTBEAT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return redis.call('ZCARD', KEYS[1])
"""


class RedisPaces:
    """A connection to Redis, its scripts, its health, and this process's heartbeat. Thread-safe.

    ``url`` is ``redis://``, ``rediss://`` or ``unix://``; ``client`` replaces the
    connection (for tests). ``TTL`` is how long a destination's state outlives its
    last request, in seconds.
    """

    TTL = 600
    #: Seconds between heartbeats while Redis is up, between tries to reconnect while it is down.
    HEARTBEAT, RECONNECT = 2.0, 1.0
    #: A client whose heartbeat is older than this many seconds no longer counts as live.
    LIVE = 10
    #: The most one Redis call may take before Redis counts as down, in seconds.
    TIMEOUT = 0.25
    SAMPLES = Feedback.SAMPLES

    def __init__(self, url: str, *, client: Any = None) -> None:
        if client is None:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            # No retries and short timeouts: a Redis that is down must cost a request a fraction of a second
            # once, not redis-py's default of three retries with backoff on every call.
            client = redis.Redis.from_url(
                url, socket_timeout=self.TIMEOUT, socket_connect_timeout=self.TIMEOUT, retry=Retry(NoBackoff(), 0)
            )
        self.url = url
        self.client = client
        self._scripts = {
            name: client.register_script(source)
            for name, source in (
                ("reserve", _RESERVE),
                ("learn", _LEARN),
                ("refuse", _REFUSE),
                ("cut", _CUT),
                ("when", _WHEN),
                ("hurry", _HURRY),
                ("cancel", _CANCEL),
                ("heartbeat", _HEARTBEAT),
            )
        }
        self.client_id = uuid.uuid4().hex
        self.live_clients = 1
        self._healthy = True
        self._stopped = False
        self._lock = threading.Condition()
        self._thread = threading.Thread(target=self._watch, name="aicoder-redis", daemon=True)
        self._thread.start()

    @property
    def healthy(self) -> bool:
        """Whether Redis answered the last call: if not, every pace is the in-process one."""
        return self._healthy

    def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run script ``name``; on any Redis error, mark Redis down and return ``None``."""
        if not self._healthy:
            return None
        try:
            return self._scripts[name](keys=keys, args=args)
        except Exception as error:  # redis-py raises its own errors, and OSErrors from the socket
            self._down(error)
            return None

    def close(self) -> None:
        """Stop the heartbeat and close the connection."""
        with self._lock:
            self._stopped = True
            self._lock.notify()
        self._thread.join(timeout=5)
        self.client.close()

    def _down(self, error: BaseException) -> None:
        with self._lock:
            if self._healthy:
                self._healthy = False
                self._lock.notify()  # start trying to reconnect now, not after the next heartbeat
                log.warning(
                    "Redis at %s is unreachable (%s): pacing in this process alone, as one of %d clients, "
                    "until it is back",
                    safe_url(self.url),
                    type(error).__name__,
                    self.live_clients,
                )

    def _watch(self) -> None:
        """Heartbeat while Redis is up, from the start; try to reconnect while it is down."""
        while True:
            try:
                live = self._scripts["heartbeat"](keys=["aicoder:clients"], args=[self.client_id, self.LIVE])
            except Exception as error:
                self._down(error)
            else:
                self.live_clients = max(int(live), 1)
                with self._lock:
                    if not self._healthy:
                        self._healthy = True
                        log.warning("Redis at %s is back: the pace is shared again", safe_url(self.url))
            with self._lock:
                if not self._stopped:
                    self._lock.wait(self.HEARTBEAT if self._healthy else self.RECONNECT)
                if self._stopped:
                    return


class RedisPace:
    """A destination's pace in Redis, behind the interface of :class:`~aicoder.http.pace.Pace`: a
    :class:`~aicoder.http.pace.RemotePace`.

    What it learns goes to Redis and also to ``local``, the in-process pace that
    takes over whenever Redis is down: then it paces at its share of every rate
    learnt, one over the number of live clients. Times go between this process's
    clock and Redis's ``TIME`` through the offset the last reservation saw.
    """

    REMOTE: ClassVar[bool] = True

    def __init__(
        self,
        paces: RedisPaces,
        key: DestinationKey,
        local: Pace,
        lock: threading.Lock,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.paces = paces
        self.local = local
        #: Guards ``local`` and what waits to go with the next reservation: the Cooldowns' lock, which it
        #: holds around every other call.
        self._lock = lock
        tag = f"aicoder:{{{key.fingerprint}}}"
        self._pace, self._sends, self._refusals = f"{tag}:pace", f"{tag}:sends", f"{tag}:refusals"
        self._clock = clock
        #: Redis's time minus this process's, read when an answer has arrived: a time in Redis converts to one
        #: here no earlier than it is, so a turn never comes before the time Redis gave it.
        self._offset: float | None = None
        #: What answers told since the last reservation, and when; and the successes the feedback rate held
        #: back meanwhile. They go to Redis with the next reservation.
        self._told: list[tuple[str, float, str]] = []
        self._told_at = 0.0
        self._regrowths = 0
        #: The feedback rate in Redis at the last reservation; what this process knew when Redis went, and the
        #: last turn it granted itself while Redis was away.
        self._redis_rate: float | None = None
        self._alone = False
        self._before_alone: dict[str, float] | None = None
        self._alone_until = -math.inf
        #: The feedback rate the shared schedule's turns to come were last spaced at: the latest cut's this
        #: process adopted, or the latest hurry's.
        self._spaced_at = math.inf

    @property
    def held_until(self) -> float:
        return self.local.held_until

    @property
    def counts_tokens(self) -> bool:
        return self.local.counts_tokens

    @property
    def knows_rate(self) -> bool:
        return self.local.knows_rate

    @property
    def rate(self) -> float | None:
        return self.local.rate

    def next_turn(self, now: float, cost: RequestCost | None, max_wait: float = math.inf) -> Grant:
        """Take the next turn from the shared schedule; from the local one, at its share, if Redis is down.

        Called without the Cooldowns' lock (``REMOTE``): it is taken only around local state.
        """
        tokens = [cost.of(dimension) if cost is not None else 0 for dimension in _DIMENSIONS[1:]]
        feedback = (Feedback.SLOW_START, Feedback.DOUBLING, Feedback.SLOW_START_END)
        with self._lock:
            if self._alone:  # cut off: all that is known goes with each try, for a Redis that lost it
                self._told, self._told_at = self._known(now), now
            ticket, told, regrowths = _ticket(tokens), self._told_since(now), self._regrowths
            self._regrowths = 0
        answer = self.paces.run(
            "reserve",
            [self._pace, self._sends],
            [
                *(min(max_wait, 1e9), self.paces.TTL, ticket, *tokens, *feedback, self.paces.SAMPLES, regrowths),
                *(Feedback.MEASURED_SENDS, Feedback.MIN_WINDOW, *told),
            ],
        )
        with self._lock:
            if answer is None:
                if not self._alone:
                    self._go_alone(now)
                grant = self.local.next_turn(now, cost, max_wait)
                self._alone_until = max(self._alone_until, grant.at)
                return grant
            wait, held_back, remote_now = float(answer[0]), bool(int(answer[1])), float(answer[2])
            serial, probe = int(answer[4]), bool(int(answer[5]))
            self.local.awaiting(serial)
            arrived = self._clock()  # the wait counts from when Redis reckoned it, which is no later than this
            self._offset = remote_now - arrived
            self._redis_rate = float(answer[3]) or None
            seed = self._rejoin(now) if self._alone else None
        if seed:
            self.paces.run("learn", [self._pace, self._sends], [self.paces.TTL, *seed])
        return Grant(arrived + wait, held_back, ticket, serial, probe)

    def _go_alone(self, now: float) -> None:
        """Redis is gone: from now on, this process takes only its share of every rate, its
        share of the clients that were live, the quotas' and the feedback rate's alike.

        The feedback rate is the latest one Redis gave, not the one this process adopted at its last 429.
        """
        self._alone = True
        share = self.local.share = 1 / self.paces.live_clients
        state = self.local.feedback.state()
        state.pop("rate", None)
        if self._redis_rate is not None:
            state["rate"], state["w_max"] = self._redis_rate, max(state.get("w_max", 0.0), self._redis_rate)
        self._before_alone = dict(state)
        if "rate" in state:
            state["rate"], state["w_max"] = state["rate"] * share, state["w_max"] * share
        self.local.feedback.adopt(state, now)

    def _rejoin(self, now: float) -> list[str]:
        """Redis is back: pace at the whole shared rate again. Return what Redis must learn at once.

        - **calm**: until the turns this process granted itself while alone have gone, a 429 says how
          the return went, not what the rate is: it cuts nothing, here or in any other process. Nor
          does Redis grant turns before then: those turns are the rate's until then.
        - If Redis came back empty (restarted), the feedback rate known before it went, so that what
          was learnt together is not lost (each field only if no other process has put it back first).
        """
        self._alone, self.local.share = False, 1.0
        state, self._before_alone = self._before_alone or self.local.feedback.state(), None
        backlog = repr(max(self._alone_until - now, 0.0))
        seed = ["calm", backlog, "max", "F:tat", backlog, "max"]
        for dimension in self.local.lanes:
            seed += [f"L:{dimension}:tat", backlog, "max"]
        if self._redis_rate is not None:
            state["rate"] = self._redis_rate
        elif "rate" in state:
            for name in ("rate", "w_max", "scale", "k", "measured"):
                if name in state:
                    seed += [_STATE_FIELDS[name], repr(state[name]), "init"]
        self._alone_until = -math.inf
        self.local.feedback.adopt(state, now)
        return seed

    def learn(self, now: float, quotas: Iterable[Quota], first: bool = False, serial: int = 0) -> bool:
        """Learn the quotas here and in Redis: lane rates, bucket levels, a spent window's hold, slow start, and
        what remains to spend after turn ``serial`` (numbered in Redis).

        A hold, or a bucket found empty, goes to Redis at once; anything else rides
        with this process's next reservation, and a newer answer's replaces it.
        Returns ``False``: the shared schedule keeps the turns it has handed out.
        """
        quotas = tuple(quotas)
        # The turns are numbered in Redis: it spends, not this; the server counts them all.
        self.local.learn(now, quotas, first, serial=-1, counted=serial)
        told = self._known(now)
        remaining, _ = requests_remaining(quotas)
        if remaining is not None and serial > 0:  # less this process's unanswered turns (others' are not known)
            told.append((str(serial), float(self.local.last_to_spend(serial, remaining)), "spend"))
        if (first and self.local.feedback.slow_start is not None) or any(how == "start" for *_, how in self._told):
            told.append(("S:start", self.local.feedback.slow_from, "start"))
        self._told, self._told_at = told, now
        if self.local.held_until > now or any(quota.remaining is not None and quota.remaining < 1 for quota in quotas):
            self.paces.run("learn", [self._pace, self._sends], [self.paces.TTL, *self._told_since(now)])
        return False

    def _known(self, now: float) -> list[tuple[str, float, str]]:
        """What the local pace knows of the server, as triples for ``apply``: lane rates, bucket levels, the hold."""
        told: list[tuple[str, float, str]] = []
        for dimension, lane in self.local.lanes.items():
            told.append((f"L:{dimension}:rate", lane.rate, "set"))
        for dimension, mirror in self.local.mirrors.items():
            level = max(mirror.tat - now, 0.0)  # the time until the server's bucket is full, as last learnt
            told += [(f"M:{dimension}:rate", mirror.rate, "set"), (f"M:{dimension}:burst", mirror.burst, "set")]
            told.append((f"M:{dimension}:tat", level, "max"))
        if self.local.held_until > now:
            told.append(("hold", self.local.held_until - now, "max"))
        return told

    def _told_since(self, now: float) -> list[str]:
        """What answers told since the last reservation, as ``apply`` in the scripts takes it, and forget it."""
        told, self._told = self._told, []
        shift = now - self._told_at  # 'max' values are times from when they were told
        return [
            item for field, value, how in told for item in (field, repr(value - shift if how == "max" else value), how)
        ]

    def hold(self, until: float, now: float) -> bool:
        """Hold here and in Redis, with what answers told since the last reservation (a 429's stated rate
        among it): the turns the hold moves are moved at that rate."""
        moved = self.local.hold(until, now)
        hold = [self.paces.TTL, *self._told_since(now), "hold", repr(max(until - now, 0.0)), "max"]
        answer = self.paces.run("learn", [self._pace, self._sends], hold)
        return bool(answer) if answer is not None else moved

    def sent(self, at: float) -> None:
        self.local.sent(at)  # the reservation has recorded the shared sample already

    def answered(self, serial: int) -> None:
        self.local.answered(serial)

    def cancel(self, ticket: str) -> None:
        """Withdraw the turn named ``ticket`` from the shared schedule: it was never sent."""
        self.paces.run("cancel", [self._sends], [ticket])

    def refused(self, refusal: Refusal) -> bool:
        """Cut the shared rate as :meth:`Feedback.refused` would, from every process's samples, unless another
        process has cut meanwhile or the refusal says its window ran out (:meth:`Pace.refused`). The local pace
        adopts the shared rate either way, to reschedule by."""
        now, sent_at, granted_at, next_token, serial, window_ran_out, costly = refusal
        answer = None
        if self._offset is not None:
            keys = [self._pace, self._sends, self._refusals]
            remote = [sent_at + self._offset, granted_at + self._offset]
            told = [self.paces.TTL, _member(), *remote, self.paces.SAMPLES, serial, int(window_ran_out)]
            answer = self.paces.run("refuse", keys, told)
        if answer is None:
            if self._alone and (self.local.feedback.rate is not None or self.local.lanes):
                # Cut off, this process paces at its share of the rates learnt together. A 429 now says as much
                # about the turns the others took as about its own, which are a fraction of them: it cuts nothing.
                self.local.feedback.refusal(sent_at)
                return False
            return self.local.refused(refusal._replace(serial=0))
        self.local.feedback.refusal(sent_at)
        remote_now, stored = float(answer[1]), _pairs(answer[2])
        state = {name: float(stored[field]) for name, field in _STATE_FIELDS.items() if field in stored}
        if not int(answer[0]):
            self._adopt(state, remote_now, now)
            return False
        feedback = Feedback.restore(state, _scores(answer[3]), _scores(answer[4]), self.local.feedback.min_rate)
        hold, quiet = (float(stored.get(field, "-inf")) for field in ("hold", "quiet"))
        since = hold if hold <= remote[0] else quiet
        ceiling = self.local.stated_rate(granted_at)
        if not feedback.refused(remote_now, remote[0], remote[1], next_token, since, costly, ceiling):
            return False
        written = {_STATE_FIELDS[name]: value for name, value in feedback.state().items()}
        written |= {"F:n": 0, "F:tat": max(float(stored.get("F:tat", "0")), remote_now)}
        pairs = [item for field, value in written.items() for item in (field, repr(value))]
        if not self.paces.run("cut", [self._pace, self._sends], [self.paces.TTL, stored.get("F:cut", ""), *pairs]):
            return False
        self._adopt(feedback.state(), remote_now, now)
        return True

    def _adopt(self, state: dict[str, float], remote_now: float, now: float) -> None:
        """Take the shared feedback's rate and curve into the local pace; its times move to this process's clock."""
        state = dict(state)
        for moment in ("cut_at", "slow_start"):
            if moment in state:
                state[moment] += now - remote_now
        self.local.feedback.adopt(state, now)
        self._spaced_at = self.local.rate or math.inf

    def accepted(self, now: float, held_back: bool, sent_at: float = -math.inf) -> bool:
        """Regrow the rate after a success it held back: here at once, in Redis with the next reservation or
        hurry. Returns whether it has grown enough (``HURRY_STEP``) since the shared schedule was spaced for the
        turns to come to follow it (:meth:`hurry`)."""
        self.local.accepted(now, held_back, sent_at)
        # Slow start's turns regrow no rate, nor do the successes Pace.regrows turns down.
        self._regrowths += self.local.rate is not None and self.local.regrows(held_back, sent_at)
        rate = self.local.rate
        return self._offset is not None and rate is not None and rate >= self._spaced_at * (1 + HURRY_STEP)

    def hurry(self, turns: Sequence[PendingTurn]) -> list[float]:
        """Bring ``turns``, this process's, forward to the feedback rate, regrown in Redis with the successes
        since the last reservation, as :meth:`Pace.hurry` does in one process, behind every process's turns
        before them; return their new times. Other processes' turns keep theirs."""
        offset = self._offset
        named = [turn.ticket for turn in turns if turn.ticket is not None]
        if offset is None or not named:
            return [turn.due for turn in turns]
        successes, self._regrowths = self._regrowths, 0
        args = [self.paces.TTL, successes, Feedback.MEASURED_SENDS, Feedback.MIN_WINDOW, *named]
        followed = self.paces.run("hurry", [self._pace, self._sends], args)
        if followed is None:  # Redis is down: the turns keep their times
            return [turn.due for turn in turns]
        # Spaced at the shared rate, or at this one's if Redis's has grown less: no new hurry at every success.
        self._spaced_at = max(float(followed), self.local.rate or 0.0) or math.inf
        shared = self._shared_times(named, "0") or {}
        moved = []
        for turn in turns:
            at = min(turn.due, shared.get(turn.ticket or "", turn.due))
            moved.append(max(at, self.local.held_until) if at < turn.due else at)
        return moved

    def follow(self, turn: PendingTurn) -> float:
        """``turn``'s time as the shared schedule now has it (:meth:`reschedule`, for this turn alone): one
        small call, whatever the number of turns waiting."""
        if turn.ticket is None or self._offset is None:
            return max(turn.due, self.local.held_until)
        return self.reschedule([turn])[0]

    def reschedule(self, turns: Sequence[PendingTurn]) -> list[float]:
        """The turns' times as the shared schedule now has them, after a hold or a cut made in any process, and
        never before a hold this process or Redis knows: a hold counts a turn whose time had come as gone, and
        one whose thread has not yet taken it has not. Such a turn moves to that hold in Redis too, so that a
        later hold from another process moves it again."""
        named = [turn.ticket for turn in turns if turn.ticket is not None]
        if not named or self._offset is None:
            return self.local.reschedule(turns)
        held = self.local.held_until
        shared = self._shared_times(named, repr(held + self._offset) if held > -math.inf else "0")
        if shared is None:
            return self.local.reschedule(turns)
        return [max(turn.due, shared.get(turn.ticket or "", turn.due), held) for turn in turns]

    def _shared_times(self, tickets: list[str], floor: str) -> dict[str, float] | None:
        """When the shared schedule has the turns named ``tickets`` (``when``, behind ``floor`` in Redis's clock),
        on this process's clock; those no longer kept left out. ``None`` if Redis did not answer."""
        assert self._offset is not None
        answer = self.paces.run("when", [self._pace, self._sends], [floor, *tickets])
        if answer is None:
            return None
        return {
            ticket: float(score) - self._offset
            for ticket, score in zip(tickets, answer, strict=True)
            if score is not None
        }


#: Where each part of :meth:`Feedback.state` lives in a destination's Redis hash.
_STATE_FIELDS = {
    "rate": "F:rate",
    "w_max": "F:w_max",
    "scale": "F:scale",
    "k": "F:k",
    "cut_at": "F:cut",
    "measured": "F:measured",
    "slow_start": "S:start",
    "slow_from": "S:from",
}


def _member() -> str:
    """A unique member for a sample in a sorted set."""
    return uuid.uuid4().hex[:16]


def _ticket(tokens: Sequence[int]) -> str:
    """A turn's member in the schedule: unique, and naming its token costs, which a reschedule spaces by."""
    return "|".join([_member(), *map(str, tokens)])


def _pairs(raw: list[Any]) -> dict[str, str]:
    items = [item.decode() if isinstance(item, bytes) else str(item) for item in raw]
    return dict(zip(items[::2], items[1::2], strict=True))


def _scores(raw: list[Any]) -> list[float]:
    return [float(score) for score in raw[1::2]]
