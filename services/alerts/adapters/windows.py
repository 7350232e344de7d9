"""Detection state in Redis: people's windows, touchpoints' spikes and baselines, and
the quiet-resolve schedule (key names from `services.alerts.adapters.layout`).

Every write is idempotent per event id, so a redelivered event never counts twice:
- a window is a sorted set of event ids by time (`al:win:{rule}:{key}`); a `preceded_by`
  window keeps the counted events under `{key}:hit` and the events waited for under
  `{key}:pre`;
- a spike is a sorted set of the touchpoint's matching event ids by time for the last
  two windows (`al:spike:{rule}:{touchpoint}`), and the baseline a hash of counts per
  time bucket (`al:base:{rule}:{touchpoint}`, fields `b<bucket start ms>`), incremented
  only when the event id was new to the sorted set; the same hash holds an open spike's
  threshold (`open`) and since when it has been below it (`below`);
- `al:spikes` (set, `<rule>|<touchpoint>`) lists the open spikes the timer checks, and
  `al:quiet` (sorted set) the dedup keys to resolve when they have been quiet until
  their score (ms).

Times are the events' own (occurred_at), so a replay counts as it happened; the timer's
checks use the wall clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import redis

from services.alerts.adapters.layout import AlertKeys, as_text

# Keys of detection's own bookkeeping (see the module doc), under the layout's root.
SPIKES = "spikes"
QUIET = "quiet"

_WINDOW = """
local at = tonumber(ARGV[2])
local within = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], at, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (at - 2 * within))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return redis.call('ZCOUNT', KEYS[1], at - within, at)
"""

# KEYS: own set, other set. ARGV: member, at, within, ttl, role ('hit' | 'pre').
# A hit returns {hits in [at - within, at], precursors in [at - within, at], at}; a
# precursor returns {hits in [at, at + within], 1, the newest of those hits' time}.
_PRECEDE = """
local at = tonumber(ARGV[2])
local within = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], at, ARGV[1])
for _, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. (at - 2 * within))
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if ARGV[5] == 'hit' then
  return {redis.call('ZCOUNT', KEYS[1], at - within, at),
          redis.call('ZCOUNT', KEYS[2], at - within, at), at}
end
local newest = redis.call('ZREVRANGEBYSCORE', KEYS[2], at + within, at, 'WITHSCORES', 'LIMIT', 0, 1)
local count = redis.call('ZCOUNT', KEYS[2], at, at + within)
return {count, 1, newest[2] or at}
"""

# KEYS: spike set, baseline hash. ARGV: member, at, window, baseline, bucket, ttl.
# Returns {count in (at - window, at], baseline count in [at - baseline, at - window)}.
_SPIKE = """
local at = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local baseline = tonumber(ARGV[4])
local bucket = tonumber(ARGV[5])
if redis.call('ZADD', KEYS[1], 'NX', at, ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[2], 'b' .. (at - at % bucket), 1)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (at - 2 * window))
local count = redis.call('ZCOUNT', KEYS[1], '(' .. (at - window), at)
local base = 0
local fields = redis.call('HGETALL', KEYS[2])
for i = 1, #fields, 2 do
  local name = fields[i]
  -- Buckets are 'b<ms>'; the same hash also holds 'below' and 'open'.
  local slot = string.match(name, '^b(%d+)$')
  if slot then
    slot = tonumber(slot)
    if slot < at - baseline - bucket then
      redis.call('HDEL', KEYS[2], name)
    elseif slot >= at - baseline and slot < at - window then
      base = base + tonumber(fields[i + 1])
    end
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return {count, base}
"""


@dataclass(frozen=True)
class SpikeCount:
    # Matching events within the window.
    count: int
    # Matching events in the baseline period before the window.
    baseline_count: int


@dataclass(frozen=True)
class OpenSpike:
    rule: str
    touchpoint: str
    threshold: float
    below_since_ms: int | None


class DetectionStateLike(Protocol):
    """What the pipeline needs of detection state (DetectionState, MemoryDetectionState)."""

    def count(self, rule: str, key: str, event_id: str, at_ms: int, within_ms: int) -> int: ...

    def precede(
        self, rule: str, key: str, role: str, event_id: str, at_ms: int, within_ms: int
    ) -> tuple[int, bool, int]: ...

    def spike(
        self,
        rule: str,
        touchpoint: str,
        event_id: str,
        at_ms: int,
        window_ms: int,
        baseline_ms: int,
    ) -> SpikeCount: ...

    def open_spike(self, rule: str, touchpoint: str, threshold: float) -> None: ...

    def open_spikes(self) -> list[OpenSpike]: ...

    def count_now(self, rule: str, touchpoint: str, now_ms: int, window_ms: int) -> int: ...

    def mark_below(self, rule: str, touchpoint: str, since_ms: int | None) -> None: ...

    def close_spike(self, rule: str, touchpoint: str) -> None: ...

    def resolve_quiet(self, keys_due: Sequence[tuple[str, int]]) -> None: ...

    def due_quiet(self, now_ms: int, limit: int = 500) -> list[tuple[str, int]]: ...

    def drop_quiet(self, key: str, due_ms: int) -> None: ...


def bucket_ms(window_ms: int) -> int:
    """The baseline's bucket: a fifth of the window, at least a second."""
    return max(1000, window_ms // 5)


class DetectionState:
    def __init__(self, client: redis.Redis, keys: AlertKeys) -> None:
        self.client = client
        self.keys = keys
        self.spikes_key = keys.root + SPIKES
        self.quiet_key = keys.root + QUIET
        self._window = client.register_script(_WINDOW)
        self._precede = client.register_script(_PRECEDE)
        self._spike = client.register_script(_SPIKE)

    # --- people's windows --------------------------------------------------------------

    def count(self, rule: str, key: str, event_id: str, at_ms: int, within_ms: int) -> int:
        """Adds the event to the window and counts its events in [at - within, at]."""
        ttl = 2 * within_ms + 60_000
        return int(
            self._window(keys=[self.keys.window(rule, key)], args=[event_id, at_ms, within_ms, ttl])
        )

    def precede(
        self, rule: str, key: str, role: str, event_id: str, at_ms: int, within_ms: int
    ) -> tuple[int, bool, int]:
        """A `preceded_by` window. For a hit ('hit'): (hits in [at - within, at], whether
        an awaited event came in [at - within, at], at); for an awaited event ('pre'):
        (hits in [at, at + within], True, the newest of those hits' time): the pair is as
        recent as its later event."""
        hits, pre = self.keys.window(rule, key + ":hit"), self.keys.window(rule, key + ":pre")
        own, other = (hits, pre) if role == "hit" else (pre, hits)
        ttl = 2 * within_ms + 60_000
        count, found, newest = self._precede(
            keys=[own, other], args=[event_id, at_ms, within_ms, ttl, role]
        )
        return int(count), int(found) > 0, int(float(newest))

    # --- touchpoints' spikes -----------------------------------------------------------

    def spike(
        self,
        rule: str,
        touchpoint: str,
        event_id: str,
        at_ms: int,
        window_ms: int,
        baseline_ms: int,
    ) -> SpikeCount:
        """Adds the event to the touchpoint's spike and baseline; the counts at `at_ms`."""
        ttl = baseline_ms + 2 * window_ms + 60_000
        count, base = self._spike(
            keys=[self.keys.spike(rule, touchpoint), self.keys.baseline(rule, touchpoint)],
            args=[event_id, at_ms, window_ms, baseline_ms, bucket_ms(window_ms), ttl],
        )
        return SpikeCount(int(count), int(base))

    def open_spike(self, rule: str, touchpoint: str, threshold: float) -> None:
        """Marks the spike open with the threshold that opened it (kept while it is)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hsetnx(self.keys.baseline(rule, touchpoint), "open", repr(threshold))
        pipe.hdel(self.keys.baseline(rule, touchpoint), "below")
        pipe.sadd(self.spikes_key, f"{rule}|{touchpoint}")
        pipe.execute()

    def open_spikes(self) -> list[OpenSpike]:
        out = []
        for raw in sorted(as_text(m) for m in self.client.smembers(self.spikes_key)):
            rule, _, touchpoint = raw.partition("|")
            threshold, below = self.client.hmget(
                self.keys.baseline(rule, touchpoint), ["open", "below"]
            )
            out.append(
                OpenSpike(
                    rule,
                    touchpoint,
                    float(as_text(threshold)) if threshold is not None else 0.0,
                    int(as_text(below)) if below is not None else None,
                )
            )
        return out

    def count_now(self, rule: str, touchpoint: str, now_ms: int, window_ms: int) -> int:
        """Matching events on the touchpoint in (now - window, now]."""
        return int(
            self.client.zcount(self.keys.spike(rule, touchpoint), f"({now_ms - window_ms}", now_ms)
        )

    def mark_below(self, rule: str, touchpoint: str, since_ms: int | None) -> None:
        key = self.keys.baseline(rule, touchpoint)
        if since_ms is None:
            self.client.hdel(key, "below")
        else:
            self.client.hset(key, "below", str(since_ms))

    def close_spike(self, rule: str, touchpoint: str) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(self.keys.baseline(rule, touchpoint), "open", "below")
        pipe.srem(self.spikes_key, f"{rule}|{touchpoint}")
        pipe.execute()

    # --- quiet resolution --------------------------------------------------------------

    def resolve_quiet(self, keys_due: Sequence[tuple[str, int]]) -> None:
        """Schedules each dedup key to resolve at its time, unless already later."""
        if keys_due:
            self.client.zadd(self.quiet_key, dict(keys_due), gt=True)

    def due_quiet(self, now_ms: int, limit: int = 500) -> list[tuple[str, int]]:
        raw: list[tuple[bytes, float]] = self.client.zrangebyscore(  # type: ignore[assignment]
            self.quiet_key, "-inf", now_ms, start=0, num=limit, withscores=True
        )
        return [(as_text(member), int(score)) for member, score in raw]

    def drop_quiet(self, key: str, due_ms: int) -> None:
        """Forgets a key's schedule if it still says `due_ms` (a later event moves it)."""
        script = (
            "if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or -1) == tonumber(ARGV[2]) "
            "then return redis.call('ZREM', KEYS[1], ARGV[1]) end return 0"
        )
        self.client.eval(script, 1, self.quiet_key, key, due_ms)


class MemoryDetectionState:
    """`DetectionState` on dictionaries, with the same outcomes (unit tests; the
    integration tests hold the Redis side to them)."""

    def __init__(self) -> None:
        self.sets: dict[str, dict[str, int]] = {}
        self.buckets: dict[tuple[str, str], dict[int, int]] = {}
        self.spikes: dict[tuple[str, str], tuple[float, int | None]] = {}
        self.quiet: dict[str, int] = {}

    def _zset(self, name: str) -> dict[str, int]:
        return self.sets.setdefault(name, {})

    @staticmethod
    def _prune(members: dict[str, int], below: int) -> None:
        for member in [m for m, at in members.items() if at < below]:
            del members[member]

    @staticmethod
    def _between(members: dict[str, int], low: int, high: int) -> int:
        return sum(1 for at in members.values() if low <= at <= high)

    def count(self, rule: str, key: str, event_id: str, at_ms: int, within_ms: int) -> int:
        members = self._zset(f"win:{rule}:{key}")
        members[event_id] = at_ms
        self._prune(members, at_ms - 2 * within_ms)
        return self._between(members, at_ms - within_ms, at_ms)

    def precede(
        self, rule: str, key: str, role: str, event_id: str, at_ms: int, within_ms: int
    ) -> tuple[int, bool, int]:
        hits, pre = self._zset(f"win:{rule}:{key}:hit"), self._zset(f"win:{rule}:{key}:pre")
        own, other = (hits, pre) if role == "hit" else (pre, hits)
        own[event_id] = at_ms
        for members in (own, other):
            self._prune(members, at_ms - 2 * within_ms)
        if role == "hit":
            return (
                self._between(own, at_ms - within_ms, at_ms),
                self._between(other, at_ms - within_ms, at_ms) > 0,
                at_ms,
            )
        later = [t for t in other.values() if at_ms <= t <= at_ms + within_ms]
        return len(later), True, max(later, default=at_ms)

    def spike(
        self,
        rule: str,
        touchpoint: str,
        event_id: str,
        at_ms: int,
        window_ms: int,
        baseline_ms: int,
    ) -> SpikeCount:
        members = self._zset(f"spike:{rule}:{touchpoint}")
        buckets = self.buckets.setdefault((rule, touchpoint), {})
        size = bucket_ms(window_ms)
        if event_id not in members:
            members[event_id] = at_ms
            slot = at_ms - at_ms % size
            buckets[slot] = buckets.get(slot, 0) + 1
        self._prune(members, at_ms - 2 * window_ms)
        count = sum(1 for at in members.values() if at_ms - window_ms < at <= at_ms)
        base = 0
        for slot in list(buckets):
            if slot < at_ms - baseline_ms - size:
                del buckets[slot]
            elif at_ms - baseline_ms <= slot < at_ms - window_ms:
                base += buckets[slot]
        return SpikeCount(count, base)

    def open_spike(self, rule: str, touchpoint: str, threshold: float) -> None:
        current = self.spikes.get((rule, touchpoint))
        self.spikes[(rule, touchpoint)] = (
            current[0] if current is not None else threshold,
            None,
        )

    def open_spikes(self) -> list[OpenSpike]:
        return [
            OpenSpike(rule, touchpoint, threshold, below)
            for (rule, touchpoint), (threshold, below) in sorted(self.spikes.items())
        ]

    def count_now(self, rule: str, touchpoint: str, now_ms: int, window_ms: int) -> int:
        members = self._zset(f"spike:{rule}:{touchpoint}")
        return sum(1 for at in members.values() if now_ms - window_ms < at <= now_ms)

    def mark_below(self, rule: str, touchpoint: str, since_ms: int | None) -> None:
        threshold, _ = self.spikes[(rule, touchpoint)]
        self.spikes[(rule, touchpoint)] = (threshold, since_ms)

    def close_spike(self, rule: str, touchpoint: str) -> None:
        self.spikes.pop((rule, touchpoint), None)

    def resolve_quiet(self, keys_due: Sequence[tuple[str, int]]) -> None:
        for key, due in keys_due:
            self.quiet[key] = max(due, self.quiet.get(key, due))

    def due_quiet(self, now_ms: int, limit: int = 500) -> list[tuple[str, int]]:
        due = sorted((at, key) for key, at in self.quiet.items() if at <= now_ms)
        return [(key, at) for at, key in due[:limit]]

    def drop_quiet(self, key: str, due_ms: int) -> None:
        if self.quiet.get(key) == due_ms:
            del self.quiet[key]
