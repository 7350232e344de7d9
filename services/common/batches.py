"""How a stream worker processes a batch so that no input can stop the stream.

Two kinds of failure, two answers:
- an **infrastructure** failure (Redis or Kafka unreachable, timed out, loading, out of
  memory) is retried in place, with backoff, for as long as it lasts: the batch is never
  acknowledged unprocessed and nothing is dead-lettered for it;
- **anything else** is a property of the input. The batch is run again one item at a
  time, and each item that fails on its own goes to `poison` (the caller dead-letters it
  with the reason), so one bad record never takes other people's events with it and can
  never crash the worker in a loop. Only when every item of a large batch fails the
  same way is the worker itself taken to be broken (`SystemicFailure`): it stops rather
  than dead-letter everything.

Re-running items that a failed batch may already have partly processed is safe because
every effect downstream is idempotent (event-id dedup), as after any crash.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

import aiokafka.errors
import kafka.errors
import redis.exceptions
from tenacity import AsyncRetrying, retry_if_exception, wait_exponential_jitter
from tenacity.before_sleep import before_sleep_log

from services.common.dead_letter import VALUE_OMITTED_HEADER, DeadLetter
from services.common.telemetry import KafkaHeaders

log = logging.getLogger(__name__)
T = TypeVar("T")
Item = TypeVar("Item")

# Redis replies that say the server cannot serve now, not that the command was wrong.
_TRANSIENT_REDIS_REPLIES = ("OOM", "LOADING", "BUSY", "READONLY", "MASTERDOWN", "TRYAGAIN")
_KAFKA_TRANSIENT = (
    aiokafka.errors.KafkaTimeoutError,
    aiokafka.errors.KafkaConnectionError,
    aiokafka.errors.NoBrokersAvailable,
    kafka.errors.KafkaTimeoutError,
    kafka.errors.KafkaConnectionError,
)


def is_infrastructure_failure(exc: BaseException) -> bool:
    """True when `exc` says a dependency is unavailable, not that the input is bad."""
    if isinstance(exc, redis.exceptions.ResponseError):
        return str(exc).startswith(_TRANSIENT_REDIS_REPLIES)
    if isinstance(
        exc,
        redis.exceptions.ConnectionError | redis.exceptions.TimeoutError | TimeoutError | OSError,
    ):
        return True
    if isinstance(exc, _KAFKA_TRANSIENT):
        return True
    if isinstance(exc, aiokafka.errors.KafkaError | kafka.errors.KafkaError):
        return bool(getattr(exc, "retriable", False))
    return False


async def retry_infrastructure(
    what: str, step: Callable[[], Awaitable[T]], *, max_wait_s: float = 5.0
) -> T:
    """Runs `step`, retrying infrastructure failures until they pass; raises anything else.

    The first try runs outside tenacity: an AsyncRetrying leaves about 30 objects in
    reference cycles per use, which on the happy path (several steps a batch) made the
    young-generation collections of a worker take 70-115 ms.
    """
    try:
        return await step()
    except Exception as exc:
        if not is_infrastructure_failure(exc):
            raise
        log.warning("%s failed (%s: %s); retrying", what, type(exc).__name__, exc)
    async for attempt in AsyncRetrying(
        retry=retry_if_exception(is_infrastructure_failure),
        wait=wait_exponential_jitter(multiplier=0.1, max=max_wait_s, jitter=0.1),
        before_sleep=before_sleep_log(log, logging.WARNING),
        reraise=True,
    ):
        with attempt:
            return await step()
    raise AssertionError("unreachable: AsyncRetrying either returns or raises")


# A batch at least this large whose every item fails alone, all with the same exception,
# is not bad input but a fault of the worker (a bug, a broken deployment): dead-lettering
# everything would silently stop the service, so it stops the process instead.
SYSTEMIC_MIN_ITEMS = 8


class SystemicFailure(Exception):
    """Every item of a batch failed the same way: the worker is broken, not the input."""


async def process_isolating(
    items: Sequence[Item],
    run: Callable[[Sequence[Item]], Awaitable[None]],
    poison: Callable[[Item, Exception], Awaitable[None]],
    *,
    what: str,
) -> None:
    """Runs the whole batch; on a failure that is not infrastructure, each item alone.

    `run` retries its own infrastructure failures (see `retry_infrastructure`); whatever
    it raises here is about the input. An item that fails alone is handed to `poison`,
    unless every item of a large batch fails with the same exception (SystemicFailure).
    """
    try:
        await run(items)
        return
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if len(items) == 1:
            await poison(items[0], exc)
            return
        log.warning(
            "%s: a batch of %d failed (%s: %s); processing its items one by one",
            what,
            len(items),
            type(exc).__name__,
            exc,
        )
    failures: list[tuple[Item, Exception]] = []
    for item in items:
        try:
            await run([item])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failures.append((item, exc))
    kinds = {type(failure) for _, failure in failures}
    if len(failures) == len(items) >= SYSTEMIC_MIN_ITEMS and len(kinds) == 1:
        example = failures[0][1]
        raise SystemicFailure(
            f"{what}: all {len(items)} items failed with {type(example).__name__}: {example}"
        ) from example
    for item, failure in failures:
        await poison(item, failure)


def failure_reason(exc: BaseException) -> str:
    """The reason a dead letter carries for an input that could not be processed."""
    return f"could not be processed: {type(exc).__name__}: {exc}"[:1000]


# --- what a batch produces ---------------------------------------------------------------


@dataclass(frozen=True)
class OutRecord:
    """A record to produce. No headers: the sender adds the current trace context."""

    topic: str
    value: bytes | None
    key: bytes | None = None
    partition: int | None = None
    headers: KafkaHeaders | None = None


class RecordSender(Protocol):
    async def send(self, records: Sequence[OutRecord]) -> None:
        """Produces the records, returning once the broker acknowledged every one."""


async def send_dead_letters(letters: Sequence[DeadLetter], sender: RecordSender) -> None:
    """Sends dead letters (before the caller commits). One the broker refuses (an original
    value at the size limit, plus the reason headers) goes without its value, saying so
    in a header, rather than stopping the stream."""
    if not letters:
        return
    records = [OutRecord(d.topic, d.value, key=d.key, headers=d.headers) for d in letters]
    try:
        await retry_infrastructure("dead letters", lambda: sender.send(records))
        return
    except Exception as exc:
        log.error("dead letters refused (%r); sending them one by one", exc)
    for record in records:
        try:
            await retry_infrastructure("dead letter", functools.partial(sender.send, [record]))
        except Exception as exc:
            note = f"{len(record.value or b'')} bytes: {type(exc).__name__}: {exc}"
            headers = [*(record.headers or []), (VALUE_OMITTED_HEADER, note.encode())]
            bare = replace(record, value=None, headers=headers)
            await retry_infrastructure("dead letter", functools.partial(sender.send, [bare]))
