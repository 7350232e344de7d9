"""The alerts notifier: reads the outbox and tells the world about incident changes.

For every outbox entry (services/alerts/adapters/layout.py; one per incident change):
1. `kafka:changes`: the IncidentChange on `cx.experience-incidents.v1`;
2. `kafka:touchpoint`: for a person's incident whose state moved (OPENED, ACKNOWLEDGED,
   RESOLVED), an `ExperienceIncident` touchpoint event, so the profile counts it;
3. when the entry says `page`, each receiver of the change (owners.toml):
   OPENED to the team's receivers (quiet hours narrow them for the less severe),
   ESCALATED to the team's escalation receivers, ACKNOWLEDGED and RESOLVED to every
   receiver that was paged the incident (its delivery history), so one dedup key goes
   through trigger, acknowledge and resolve on the same PagerDuty routing key and the
   same Alertmanager. A silenced or inhibited OPENED is recorded as `suppressed` for the
   receivers it would have gone to.

Each of these is a *target*. A target has lanes (queues with one worker each); an
entry's job goes to the lane of its incident, so one incident's changes reach a target
in order, while other incidents and other targets go on: a receiver that is down holds
only its own queue. Each job is retried with tenacity (exponential backoff from 0.5 s to
30 s, Retry-After honoured) on connection errors, timeouts, 408, 429 and 5xx, for as long
as the entry is younger than ALERTS_DELIVERY_MAX_AGE_S; another 4xx fails it at once.
Requests to a receiver wait for its token bucket (PagerDuty: 120 a minute per routing
key): queued, never dropped. When a target is done with an entry (delivered, or failed
for good) the idempotency marker `al:delivered:{entry}:{target}` and the incident's
delivery history are written in one Lua call; the entry is acknowledged (XACK) once every
target is done. A crash before that leaves the entry pending: the next notifier claims
it (services/alerts/adapters/outbox.py) and skips the targets whose marker is set.

What "none twice" means here: a delivery is repeated only when the notifier died
between the receiver's answer and the marker, and then it carries the same dedup key
(PagerDuty, Alertmanager) or `X-Cx-Idempotency-Key` (every receiver; generic webhooks
must honour it), so the receiver folds it into what it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import redis
import redis.asyncio as aioredis
from cx.alerts.v1 import alerts_pb2 as pb
from prometheus_client import Counter, Gauge, Histogram
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    wait_exponential,
)

from services.alerts.adapters.changes import ChangeLog, People, incident_event
from services.alerts.adapters.layout import OutboxEntry
from services.alerts.adapters.outbox import DELIVERED_MARK, FAILED_MARK, Outbox
from services.alerts.domain.incidents import Delivery
from services.alerts.domain.owners import Owners, load_owners
from services.alerts.domain.receivers import Receiver, resolve_all
from services.alerts.receivers.build import build_request
from services.alerts.receivers.common import severity_name
from services.alerts.receivers.sender import DeliveryError, HttpSender
from services.alerts.settings import AlertsSettings
from services.common.conditions import RuleConfigError
from services.common.grpc_errors import DependencyUnavailable
from services.common.settings import (
    KafkaSettings,
    ProcessSettings,
    RedisSettings,
    grpc_address,
    kafka_settings,
    process_settings,
    redis_settings,
)
from services.common.touchpoint_publisher import BrokerUnavailable, PublishError
from services.common.touchpoint_publisher import TouchpointPublisher as _TouchpointPublisher

log = logging.getLogger(__name__)

# Targets that are not receivers (receiver names never contain ':').
CHANGES_TARGET = "kafka:changes"
TOUCHPOINT_TARGET = "kafka:touchpoint"
PAGED_CHANGES = ("OPENED", "ACKNOWLEDGED", "RESOLVED", "ESCALATED")
DELIVERED, PENDING, FAILED, SUPPRESSED = "delivered", "pending", "failed", "suppressed"

DELIVERIES = Counter(
    "cx_alerts_deliveries",
    "Deliveries of incident changes that are over, by target and result",
    ["target", "result"],
)
ATTEMPTS = Counter(
    "cx_alerts_delivery_attempts", "Delivery attempts by target and outcome", ["target", "outcome"]
)
DELIVERY_SECONDS = Histogram(
    "cx_alerts_delivery_seconds",
    "From the incident change to its delivery, by target type",
    ["type"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600),
)
ENTRIES = Counter("cx_alerts_outbox_entries", "Outbox entries handled, by result", ["result"])
IN_FLIGHT = Gauge("cx_alerts_notifier_in_flight", "Outbox entries being delivered")
QUEUED = Gauge("cx_alerts_notifier_queued", "Jobs waiting in the targets' lanes")


@dataclass(frozen=True)
class Tuning:
    """How the notifier works; the defaults are the service's."""

    lanes: int = 4
    read_count: int = 100
    block_ms: int = 1000
    # Entries in flight at most; reading waits beyond (memory bound during long outages).
    max_in_flight: int = 10_000
    retry_min_s: float = 0.5
    retry_max_s: float = 30.0
    heartbeat_s: float = 1.0
    # The backstop: entries idle longer than this are claimed from whoever holds them
    # (a live notifier refreshes its own every touch_every_s).
    claim_idle_ms: int = 300_000
    touch_every_s: float = 60.0
    owners_check_every_s: float = 2.0
    http_timeout_s: float = 10.0
    # On stop: how long running jobs may finish before they are cancelled.
    stop_grace_s: float = 5.0


# --- Routing (pure) --------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """Who an entry goes to: receivers to page, and receivers recorded as suppressed."""

    page: tuple[str, ...] = ()
    suppressed: tuple[str, ...] = ()
    why_suppressed: str = ""


def route(owners: Owners, entry: OutboxEntry, paged_before: Mapping[str, str]) -> Route:
    """The receivers of one outbox entry. `paged_before`: receivers already paged the
    incident (OPENED or ESCALATED history), with "paged" or "suppressed"."""
    incident = entry.message.incident
    team = owners.team(incident.team) or owners.default_team
    severity = severity_name(incident)
    if entry.change == "OPENED":
        at_ms = entry.message.at.ToMilliseconds() if entry.message.HasField("at") else entry.at_ms
        receivers = team.receivers_for(severity, at_ms)
        if entry.page:
            return Route(page=receivers)
        why = incident.silenced_by or incident.inhibited_by
        if why:
            label = (
                f"silence:{incident.silenced_by}"
                if incident.silenced_by
                else f"inhibited:{incident.inhibited_by}"
            )
            return Route(suppressed=receivers, why_suppressed=label)
        return Route()
    if not entry.page:
        return Route()
    if entry.change == "ESCALATED":
        return Route(page=team.escalation_receivers())
    if entry.change in ("ACKNOWLEDGED", "RESOLVED"):
        paged = tuple(sorted(r for r, status in paged_before.items() if status == "paged"))
        if paged:
            return Route(page=paged)
        # No history (written before this notifier kept one): whoever it would have gone to.
        first_ms = incident.first_seen.ToMilliseconds() if incident.HasField("first_seen") else 0
        fallback = list(team.receivers_for(severity, first_ms or entry.at_ms))
        if incident.escalation_level:
            fallback += [r for r in team.escalation_receivers() if r not in fallback]
        return Route(page=tuple(fallback))
    return Route()


# --- Rate limits ------------------------------------------------------------------------


class TokenBucket:
    """`rate_per_min` requests a minute with bursts of `burst`; waiters are served in
    order (asyncio.Lock is fair). A rate of 0 means no limit."""

    def __init__(
        self, rate_per_min: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.clock = clock
        self.configure(rate_per_min, burst)
        self.tokens = float(self.burst)
        self.at = clock()
        self._lock = asyncio.Lock()

    def configure(self, rate_per_min: float, burst: int) -> None:
        self.rate_per_s = rate_per_min / 60.0
        self.burst = max(burst, 1)

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate_per_s)
        self.at = now

    async def acquire(self) -> None:
        if self.rate_per_s <= 0:
            return
        async with self._lock:
            while True:
                self._refill()
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate_per_s)


# --- Jobs and targets --------------------------------------------------------------------


@dataclass
class Job:
    entry: OutboxEntry
    target: str
    # The receiver (None for the Kafka targets), as configured when the entry was read.
    receiver: Receiver | None = None
    attempts: int = 0
    last_error: str = ""


@dataclass
class InFlight:
    entry: OutboxEntry
    remaining: set[str] = field(default_factory=set)


class Stopping(Exception):
    """The notifier is stopping: the job is left for the next notifier."""


Publish = Callable[[pb.IncidentChange], None]


class TouchpointEvents:
    """The `kafka:touchpoint` target: the person's identifier, then the event."""

    def __init__(self, publisher: _TouchpointPublisher, people: People) -> None:
        self.publisher = publisher
        self.people = people

    def publish(self, change: pb.IncidentChange) -> None:
        try:
            identifier = self.people.identifier(change.incident.profile_id)
        except (DependencyUnavailable, grpc.RpcError) as exc:
            raise DeliveryError(f"profile service: {exc}", retryable=True) from exc
        if identifier is None:
            log.info(
                "incident %s: profile %s is gone; no touchpoint event",
                change.incident.incident_id,
                change.incident.profile_id,
            )
            return
        event = incident_event(change, identifier)
        if event is None:
            return
        try:
            self.publisher.publish([event])
        except BrokerUnavailable as exc:
            raise DeliveryError(str(exc), retryable=True) from exc
        except PublishError as exc:
            raise DeliveryError(str(exc), retryable=False) from exc

    def close(self) -> None:
        self.publisher.close()
        self.people.close()


class OwnersFile:
    """The owners file, reloaded when it changes; a refused version leaves the live one
    (and its resolved receivers) in place."""

    def __init__(self, path: Path, env: Mapping[str, str]) -> None:
        self.path = path
        self.env = env
        self._stat: tuple[float, int] | None = None
        self.owners, self.receivers = self._load()

    def _load(self) -> tuple[Owners, dict[str, Receiver]]:
        stat = self.path.stat()
        owners = load_owners(self.path)
        receivers = resolve_all(owners.receivers, self.env, str(self.path))
        self._stat = (stat.st_mtime, stat.st_size)
        return owners, receivers

    def check(self) -> bool:
        """Reloads when the file changed; True when a new version is live."""
        try:
            stat = self.path.stat()
        except OSError as exc:
            log.warning("owners file %s: %s; keeping %s", self.path, exc, self.owners.version)
            return False
        if (stat.st_mtime, stat.st_size) == self._stat:
            return False
        try:
            owners, receivers = self._load()
        except RuleConfigError as exc:
            self._stat = (stat.st_mtime, stat.st_size)
            log.error("owners file refused, keeping %s: %s", self.owners.version, exc)
            return False
        self.owners, self.receivers = owners, receivers
        log.info("owners file %s loaded (%s)", self.path, owners.version)
        return True


# --- The notifier ------------------------------------------------------------------------


class Notifier:
    def __init__(
        self,
        outbox: Outbox,
        owners: OwnersFile,
        sender: HttpSender,
        *,
        changes: Publish | None = None,
        touchpoints: Publish | None = None,
        max_age_s: float = 86_400,
        tuning: Tuning | None = None,
        closers: Sequence[Callable[[], Any]] = (),
    ) -> None:
        self.outbox = outbox
        self.owners = owners
        self.sender = sender
        self.changes = changes
        self.touchpoints = touchpoints
        self.max_age_s = max_age_s
        self.tuning = tuning or Tuning()
        self.closers = list(closers)
        self._in_flight: dict[str, InFlight] = {}
        self._room = asyncio.Event()
        self._lanes: dict[tuple[str, int], asyncio.Queue[Job]] = {}
        self._workers: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._running: dict[tuple[str, int], Job] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._idle = asyncio.Event()
        self.ready = asyncio.Event()

    # --- lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Serves until stop(): recovery first, then the outbox as it grows."""
        try:
            await self._retry_redis(self.outbox.ensure_group)
            await self._retry_redis(lambda: self.outbox.beat(self.tuning.heartbeat_s))
            self._tasks = [
                asyncio.create_task(self._every(self.tuning.heartbeat_s, self._heartbeat)),
                asyncio.create_task(self._every(self.tuning.owners_check_every_s, self._reload)),
                asyncio.create_task(self._every(self.tuning.touch_every_s, self._touch)),
            ]
            await self._recover(startup=True)
            self.ready.set()
            log.info("notifier %s reading the outbox", self.outbox.consumer)
            while not self._stopping.is_set():
                await self._wait_for_room()
                try:
                    items = await self.outbox.read_new(self.tuning.read_count, self.tuning.block_ms)
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    log.warning("outbox read failed (%s); retrying", exc)
                    await self._sleep(1.0)
                    continue
                except redis.ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    # Redis lost the stream or its group (a restart without its data).
                    log.warning("the outbox's consumer group is gone; creating it again")
                    await self._retry_redis(self.outbox.ensure_group)
                    continue
                for item in items:
                    await self._dispatch(item)
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._running:
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self.tuning.stop_grace_s)
        for task in self._workers.values():
            task.cancel()
        await asyncio.gather(*self._tasks, *self._workers.values(), return_exceptions=True)
        with contextlib.suppress(redis.RedisError):
            await self.outbox.leave()
        await self.sender.close()
        for close in self.closers:
            result = close()
            if asyncio.iscoroutine(result):
                await result
        log.info(
            "notifier %s stopped (%d entries left pending)",
            self.outbox.consumer,
            len(self._in_flight),
        )

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _every(self, seconds: float, work: Callable[[], Awaitable[None]]) -> None:
        while not self._stopping.is_set():
            await self._sleep(seconds)
            try:
                await work()
            except (redis.RedisError, OSError) as exc:
                log.warning("%s failed: %s", getattr(work, "__name__", "work"), exc)

    async def _retry_redis(self, call: Callable[[], Awaitable[Any]]) -> Any:
        delay = 0.2
        while True:
            try:
                return await call()
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
                if self._stopping.is_set():
                    raise Stopping() from exc
                log.warning("Redis: %s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _heartbeat(self) -> None:
        await self.outbox.beat(self.tuning.heartbeat_s)
        await self._recover(startup=False)
        IN_FLIGHT.set(len(self._in_flight))
        QUEUED.set(sum(q.qsize() for q in self._lanes.values()))

    async def _reload(self) -> None:
        if self.owners.check():
            for receiver in self.owners.receivers.values():
                bucket = self._buckets.get(receiver.rate_key)
                if bucket is not None:
                    bucket.configure(receiver.rate_per_min, receiver.burst)

    async def _touch(self) -> None:
        await self.outbox.touch(list(self._in_flight), int(self.tuning.touch_every_s * 500))
        for item in await self.outbox.claim_idle(self.tuning.claim_idle_ms):
            await self._dispatch(item)

    async def _recover(self, startup: bool) -> None:
        """Claims the pending entries of notifiers that died. At start-up also this
        consumer name's own, and waits out heartbeats that may be a dead notifier's last,
        so that nothing new is read before the old entries are back in order."""
        if startup:
            for item in await self._retry_redis(self.outbox.read_own_pending):
                await self._dispatch(item)
        deadline = time.time() + (3 * self.tuning.heartbeat_s + 0.5 if startup else 0)
        while True:
            dead, wait = await self._retry_redis(self.outbox.dead_consumers)
            for consumer in dead:
                claimed = await self._retry_redis(
                    functools.partial(self.outbox.claim_from, consumer)
                )
                if claimed:
                    log.info("claimed %d pending entries of %s", len(claimed), consumer)
                for item in claimed:
                    await self._dispatch(item)
            if not wait or time.time() >= deadline or self._stopping.is_set():
                return
            await self._sleep(min(wait, deadline - time.time()) + 0.05)

    async def _wait_for_room(self) -> None:
        while len(self._in_flight) >= self.tuning.max_in_flight and not self._stopping.is_set():
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), 1.0)

    # --- dispatching -------------------------------------------------------------------------

    async def _dispatch(self, item: OutboxEntry | str) -> None:
        """Decides the targets of one entry and queues their jobs (in entry order)."""
        if isinstance(item, str):
            await self._retry_redis(lambda: self.outbox.ack([item]))
            ENTRIES.labels("dropped").inc()
            return
        entry = item
        if entry.entry_id in self._in_flight:
            return
        jobs = [Job(entry, CHANGES_TARGET)] if self.changes is not None else []
        incident = entry.message.incident
        if (
            self.touchpoints is not None
            and incident.profile_id
            and entry.change in ("OPENED", "ACKNOWLEDGED", "RESOLVED")
        ):
            jobs.append(Job(entry, TOUCHPOINT_TARGET))
        paged_before: dict[str, str] = {}
        if entry.page and entry.change in ("ACKNOWLEDGED", "RESOLVED"):
            paged_before = await self._retry_redis(
                lambda: self.outbox.paged_receivers(entry.incident_id)
            )
        plan = route(self.owners.owners, entry, paged_before)
        receivers = self.owners.receivers
        for name in plan.page:
            receiver = receivers.get(name)
            if receiver is None:
                log.error("incident %s: receiver %r is not configured", entry.incident_id, name)
                continue
            jobs.append(Job(entry, name, receiver))
        done = await self._retry_redis(
            lambda: self.outbox.done_targets(entry.entry_id, [j.target for j in jobs])
        )
        for name in plan.suppressed:
            await self._retry_redis(
                functools.partial(
                    self.outbox.record,
                    entry,
                    name,
                    Delivery(name, entry.change, SUPPRESSED, last_error=plan.why_suppressed),
                    only_if_missing=True,
                )
            )
        jobs = [j for j in jobs if j.target not in done]
        for job in jobs:
            if job.receiver is not None:
                await self._retry_redis(
                    functools.partial(
                        self.outbox.record,
                        entry,
                        job.target,
                        Delivery(job.target, entry.change, PENDING),
                        only_if_missing=True,
                    )
                )
        if not jobs:
            await self._retry_redis(lambda: self.outbox.ack([entry.entry_id]))
            ENTRIES.labels("acknowledged").inc()
            return
        self._in_flight[entry.entry_id] = InFlight(entry, {j.target for j in jobs})
        for job in jobs:
            self._lane(job).put_nowait(job)

    def _lane(self, job: Job) -> asyncio.Queue[Job]:
        index = zlib.crc32(job.entry.incident_id.encode()) % max(self.tuning.lanes, 1)
        key = (job.target, index)
        queue = self._lanes.get(key)
        if queue is None:
            queue = self._lanes[key] = asyncio.Queue()
            self._workers[key] = asyncio.create_task(self._work(key, queue))
        return queue

    async def _work(self, key: tuple[str, int], queue: asyncio.Queue[Job]) -> None:
        while True:
            job = await queue.get()
            if self._stopping.is_set():
                continue
            self._running[key] = job
            try:
                await self._deliver(job)
            except Stopping:
                pass
            except Exception:
                log.exception("delivery of %s to %s crashed", job.entry.entry_id, job.target)
            finally:
                self._running.pop(key, None)
                if not self._running:
                    self._idle.set()

    # --- one job -----------------------------------------------------------------------------

    def _age_s(self, job: Job) -> float:
        return time.time() - job.entry.at_ms / 1000

    def _wait(self, state: RetryCallState) -> float:
        base = wait_exponential(
            multiplier=self.tuning.retry_min_s,
            min=self.tuning.retry_min_s,
            max=self.tuning.retry_max_s,
        )(state)
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, DeliveryError) and exc.retry_after_s:
            return float(max(base, min(exc.retry_after_s, 10 * self.tuning.retry_max_s)))
        return float(base)

    async def _attempt(self, job: Job) -> None:
        if self._stopping.is_set():
            raise Stopping()
        job.attempts += 1
        change = job.entry.message
        if job.target == CHANGES_TARGET and self.changes is not None:
            await asyncio.to_thread(self.changes, change)
        elif job.target == TOUCHPOINT_TARGET and self.touchpoints is not None:
            await asyncio.to_thread(self.touchpoints, change)
        elif job.receiver is not None:
            receiver = job.receiver
            bucket = self._buckets.get(receiver.rate_key)
            if bucket is None:
                bucket = self._buckets[receiver.rate_key] = TokenBucket(
                    receiver.rate_per_min, receiver.burst
                )
            request = build_request(receiver, change, f"{job.entry.entry_id}:{receiver.name}")
            await bucket.acquire()
            await self.sender.send(request)

    async def _before_sleep(self, job: Job, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        job.last_error = str(exc)[:500]
        ATTEMPTS.labels(job.target, "retry").inc()
        if job.attempts in (1, 2, 4) or job.attempts % 10 == 0:
            log.warning(
                "%s of incident %s to %s: attempt %d failed (%s); retrying",
                job.entry.change,
                job.entry.incident_id,
                job.target,
                job.attempts,
                job.last_error,
            )
        if job.receiver is not None:
            await self._retry_redis(
                lambda: self.outbox.record(
                    job.entry,
                    job.target,
                    Delivery(job.target, job.entry.change, PENDING, job.attempts, job.last_error),
                )
            )

    async def _deliver(self, job: Job) -> None:
        async def before_sleep(state: RetryCallState) -> None:
            await self._before_sleep(job, state)

        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda e: isinstance(e, DeliveryError) and e.retryable),
            wait=self._wait,
            stop=lambda state: self._age_s(job) > self.max_age_s or self._stopping.is_set(),
            before_sleep=before_sleep,
            reraise=True,
        )
        status, error = DELIVERED, ""
        try:
            async for attempt in retrying:
                with attempt:
                    await self._attempt(job)
            ATTEMPTS.labels(job.target, "ok").inc()
        except DeliveryError as exc:
            if self._stopping.is_set():
                raise Stopping() from exc
            ATTEMPTS.labels(job.target, "error").inc()
            status, error = FAILED, str(exc)[:500]
            if exc.retryable:
                error = (
                    f"gave up after {job.attempts} attempts in {self._age_s(job):.0f} s: {error}"
                )
            log.error(
                "%s of incident %s to %s failed: %s",
                job.entry.change,
                job.entry.incident_id,
                job.target,
                error,
            )
        except Stopping:
            raise
        except Exception as exc:
            # A request that cannot even be built (a bug, or an incident no schema takes):
            # failed for good rather than blocking the incident's lane.
            log.exception(
                "%s of incident %s to %s", job.entry.change, job.entry.incident_id, job.target
            )
            ATTEMPTS.labels(job.target, "error").inc()
            status, error = FAILED, f"{type(exc).__name__}: {exc}"[:500]
        now_ms = int(time.time() * 1000)
        delivery = None
        if job.receiver is not None:
            delivery = Delivery(
                job.target,
                job.entry.change,
                status,
                job.attempts,
                error or (job.last_error if status == FAILED else ""),
                now_ms if status == DELIVERED else 0,
            )
        mark = DELIVERED_MARK if status == DELIVERED else FAILED_MARK
        await self._retry_redis(lambda: self.outbox.record(job.entry, job.target, delivery, mark))
        DELIVERIES.labels(job.target, status).inc()
        if status == DELIVERED:
            kind = job.receiver.type if job.receiver is not None else job.target
            DELIVERY_SECONDS.labels(kind).observe(max(self._age_s(job), 0.0))
        await self._target_done(job)

    async def _target_done(self, job: Job) -> None:
        flight = self._in_flight.get(job.entry.entry_id)
        if flight is None:
            return
        flight.remaining.discard(job.target)
        if flight.remaining:
            return
        await self._retry_redis(lambda: self.outbox.ack([job.entry.entry_id]))
        self._in_flight.pop(job.entry.entry_id, None)
        ENTRIES.labels("acknowledged").inc()
        self._room.set()


# --- The process ---------------------------------------------------------------------------


def create_app(
    settings: AlertsSettings,
    kafka: KafkaSettings,
    redis_config: RedisSettings,
    process: ProcessSettings,
    tuning: Tuning | None = None,
) -> Notifier:
    """The notifier with everything it needs, built from settings (nothing at import)."""
    from services.personalisation.adapters.profile_source import GrpcProfileSource
    from services.profile.settings import ProfileSettings

    client = aioredis.Redis.from_url(redis_config.redis_url)
    owners = OwnersFile(settings.owners_file, os.environ)
    changes = ChangeLog(kafka.kafka_bootstrap_servers, kafka.experience_incidents_topic)
    address = settings.profile_address or grpc_address(ProfileSettings().grpc_port, process)
    events = TouchpointEvents(
        _TouchpointPublisher.connect(kafka.kafka_bootstrap_servers, kafka.touchpoints_topic),
        People(GrpcProfileSource(address), settings.profile_timeout_s),
    )
    tuning = tuning or Tuning()
    return Notifier(
        Outbox(client, settings.key_prefix),
        owners,
        HttpSender(tuning.http_timeout_s),
        changes=changes.publish,
        touchpoints=events.publish,
        max_age_s=settings.delivery_max_age_s,
        tuning=tuning,
        closers=[changes.close, events.close, client.aclose],
    )


async def serve(notifier: Notifier) -> None:
    """Runs until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, notifier.stop)
    await notifier.run()


def main() -> None:
    from services.common.gc_tuning import freeze_startup_heap
    from services.common.process import start_process

    settings, process = AlertsSettings(), process_settings()
    start_process("alerts-notifier", settings.notifier_metrics_port, process)
    notifier = create_app(settings, kafka_settings(), redis_settings(), process)
    freeze_startup_heap()
    asyncio.run(serve(notifier))


if __name__ == "__main__":
    main()
