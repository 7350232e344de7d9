"""`make demo`: generate customer journeys, send them through ingestion, print a summary.

    python -m services.demo.journeys [--customers N] [--negative-share F] [--seed S]
        [--days D] [--target HOST:PORT] [--batch-size N] [--concurrency N]
        [--personalise-share F] [--personalisation HOST:PORT] [--outage-customers N]

Events go through IngestService.TrackBatch. Customers are split into `--concurrency` lanes
sent in parallel; each lane sends its customers' events in time order, one batch at a time,
so one customer's events always arrive in order and the stream as a whole looks live.
For a share of the customers (`--personalise-share`), each web, app or contact-centre
touchpoint asks PersonalisationService.Decide once its event was sent, and reports
simulated outcomes (`services.demo.personalisation`). In the last minutes before the run's
`now`, `--outage-customers` of the customers with a negative experience hit a payment
outage at checkout.payment (a spike for the alerts service).
"""

from __future__ import annotations

import argparse
import secrets
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TextIO

import grpc
from cx.events.v1 import touchpoint_pb2 as ev
from cx.ingest.v1 import ingest_pb2 as pb
from cx.ingest.v1 import ingest_pb2_grpc

from services.common.experience import NEGATIVE_KINDS
from services.common.grpc_client import traced_channel
from services.common.settings import grpc_address
from services.demo.journeys import DemoConfig, Journey, generate
from services.demo.personalisation import (
    Personaliser,
    ProfileCatchUp,
    personalised_customers,
    points_by_event,
    return_visits,
)
from services.demo.sections import build_sections
from services.demo.summary import DemoRun, Summary
from services.ingest.settings import IngestSettings
from services.personalisation.settings import PersonalisationSettings
from services.profile.settings import ProfileSettings

CONNECT_TIMEOUT_S = 5.0
CALL_TIMEOUT_S = 60.0
MAX_REJECTIONS_SHOWN = 5
# Share of customers whose touchpoints ask for decisions by default: about 11 decisions
# each, and the service makes a few hundred a second.
PERSONALISE_SHARE = 0.2

AfterBatch = Callable[[list[ev.TouchpointEvent]], None]


class IngestUnavailable(Exception):
    pass


@dataclass
class Tally:
    """Counts shared by the sending threads and the progress line."""

    total: int
    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    rejections: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, reply: pb.TrackBatchResponse) -> None:
        with self.lock:
            self.sent += len(reply.results)
            self.accepted += reply.accepted_count
            self.rejected += reply.rejected_count
            for r in reply.results:
                shown = len(self.rejections) >= MAX_REJECTIONS_SHOWN
                if r.status != pb.EventResult.STATUS_ACCEPTED and not shown:
                    why = "; ".join(f"{v.field}: {v.description}" for v in r.violations)
                    self.rejections.append(f"{r.event_id}: {why or 'rejected'}")


def lanes(journeys: Sequence[Journey], count: int) -> list[list[ev.TouchpointEvent]]:
    """Customers dealt round-robin into `count` lanes, each lane's events in time order
    (a stable sort keeps each customer's own order)."""
    out: list[list[ev.TouchpointEvent]] = [[] for _ in range(count)]
    for i, journey in enumerate(journeys):
        out[i % count].extend(journey.events)
    for lane in out:
        lane.sort(key=lambda e: (e.occurred_at.seconds, e.occurred_at.nanos))
    return [lane for lane in out if lane]


def _batches(events: list[ev.TouchpointEvent], size: int) -> Iterator[list[ev.TouchpointEvent]]:
    for start in range(0, len(events), size):
        yield events[start : start + size]


def _send_lane(
    stub: ingest_pb2_grpc.IngestServiceStub,
    events: list[ev.TouchpointEvent],
    batch_size: int,
    tally: Tally,
    stop: threading.Event,
    after_batch: AfterBatch | None = None,
) -> None:
    try:
        for batch in _batches(events, batch_size):
            if stop.is_set():
                return
            reply = stub.TrackBatch(pb.TrackBatchRequest(events=batch), timeout=CALL_TIMEOUT_S)
            tally.add(reply)
            if after_batch is not None:
                after_batch(batch)
    except BaseException:
        stop.set()
        raise


class Progress:
    """A status line on `stream`: rewritten twice a second on a terminal, otherwise printed
    every two seconds."""

    def __init__(
        self, tally: Tally, stream: TextIO, extra: Callable[[], str] | None = None
    ) -> None:
        self.tally = tally
        self.stream = stream
        self.extra = extra
        self.tty = stream.isatty()
        self.interval = 0.5 if self.tty else 2.0
        self.started = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-progress", daemon=True)

    def line(self) -> str:
        t = self.tally
        elapsed = time.monotonic() - self.started
        rate = t.sent / elapsed if elapsed > 0 else 0.0
        done = 100 * t.sent / t.total if t.total else 100.0
        extra = f"  {self.extra()}" if self.extra is not None else ""
        return (
            f"sent {t.sent:,}/{t.total:,} ({done:.0f}%)  accepted {t.accepted:,}  "
            f"rejected {t.rejected:,}  {rate:,.0f} events/s  elapsed {elapsed:.1f}s{extra}"
        )

    def _show(self) -> None:
        if self.tty:
            self.stream.write(f"\r\x1b[K{self.line()}")
        else:
            self.stream.write(f"{self.line()}\n")
        self.stream.flush()

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            self._show()

    def __enter__(self) -> Progress:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self._show()
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def connect(target: str) -> grpc.Channel:
    """A channel to ingestion, once it answers; IngestUnavailable (readable) otherwise."""
    channel = traced_channel(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT_S)
    except grpc.FutureTimeoutError:
        channel.close()
        raise IngestUnavailable(
            f"ingestion is not reachable at {target} (no answer within "
            f"{CONNECT_TIMEOUT_S:.0f}s): run `make up` first, or pass --target HOST:PORT"
        ) from None
    return channel


def send(
    channel: grpc.Channel,
    target: str,
    journeys: Sequence[Journey],
    batch_size: int,
    concurrency: int,
    progress_stream: TextIO,
    after_batch: AfterBatch | None = None,
    progress_extra: Callable[[], str] | None = None,
) -> Tally:
    """Sends every journey through ingestion, with a progress line on `progress_stream`;
    IngestUnavailable (readable) when a call fails. `after_batch` is called with each
    batch once ingestion accepted it."""
    work = lanes(journeys, concurrency)
    tally = Tally(total=sum(len(lane) for lane in work))
    stub = ingest_pb2_grpc.IngestServiceStub(channel)
    stop = threading.Event()
    try:
        with (
            Progress(tally, progress_stream, progress_extra),
            ThreadPoolExecutor(len(work)) as pool,
        ):
            futures = [
                pool.submit(_send_lane, stub, lane, batch_size, tally, stop, after_batch)
                for lane in work
            ]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                stop.set()  # the other lanes stop after their batch in flight
                raise
    except grpc.RpcError as exc:
        code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        raise IngestUnavailable(
            f"ingestion at {target} failed after {tally.sent:,} events: {code}: {details} "
            "(is the stack still up? `make status`, logs in var/log)"
        ) from None
    return tally


def _table(counts: Counter[str], limit: int, total: int) -> list[str]:
    rows = counts.most_common(limit)
    if len(counts) > limit:
        rest = sum(counts.values()) - sum(n for _, n in rows)
        rows.append((f"({len(counts) - limit} more)", rest))
    width = max((len(name) for name, _ in rows), default=0)
    return [f"  {name:<{width}}  {n:>9,}  {100 * n / max(total, 1):5.1f}%" for name, n in rows]


def report(
    config: DemoConfig,
    journeys: Sequence[Journey],
    tally: Tally,
    seconds: float,
    generation_seconds: float,
) -> list[str]:
    events = [e for j in journeys for e in j.events]
    by_type = Counter[str](e.WhichOneof("payload") or "none" for e in events)
    by_channel = Counter(
        ev.Channel.Name(e.channel).removeprefix("CHANNEL_").lower() for e in events
    )
    kinds = Counter(k for j in journeys for k in j.negative)
    negative = sum(1 for j in journeys if j.negative)
    identified = sum(1 for j in journeys if j.customer.identifies)
    customers = len(journeys)
    lines = [
        "Summary",
        f"  customers   {customers:,} ({identified:,} signed up or logged in; "
        f"{negative:,} = {100 * negative / max(customers, 1):.1f}% with a negative experience)",
        f"  events      {tally.sent:,} sent, {tally.accepted:,} accepted, "
        f"{tally.rejected:,} rejected",
        f"  throughput  {tally.sent / seconds if seconds else 0:,.0f} events/s "
        f"(sent in {seconds:.1f}s, generated in {generation_seconds:.1f}s; seed {config.seed}, "
        f"last {config.days} days)",
    ]
    if tally.rejections:
        lines.append("  first rejections:")
        lines.extend(f"    {r}" for r in tally.rejections)
    lines.append(f"Events by type (top 8 of {len(by_type)})")
    lines.extend(_table(by_type, 8, len(events)))
    lines.append("Events by channel")
    lines.extend(_table(by_channel, 8, len(events)))
    lines.append("Customers with a negative experience, by kind")
    width = max(len(label) for label in NEGATIVE_KINDS.values())
    lines.extend(f"  {label:<{width}}  {kinds[kind]:>6,}" for kind, label in NEGATIVE_KINDS.items())
    return lines


def build_parser() -> argparse.ArgumentParser:
    defaults = DemoConfig()
    parser = argparse.ArgumentParser(
        prog="python -m services.demo.journeys",
        description="Send synthetic customer journeys through ingestion and summarise. The "
        "same seed gives the same customers and event ids (consumers apply an event id once), "
        "so a repeat with --seed shows idempotency; by default every run is new.",
    )
    parser.add_argument("--customers", type=int, default=defaults.customers)
    parser.add_argument(
        "--negative-share",
        type=float,
        default=defaults.negative_share,
        help="share of customers with a negative experience, 0 to 1",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=secrets.randbelow(1_000_000),
        help="customers and event ids derive from it; random by default (printed at the end)",
    )
    parser.add_argument(
        "--days", type=int, default=defaults.days, help="events happen in the last D days"
    )
    parser.add_argument(
        "--outage-customers",
        type=int,
        default=defaults.outage_customers,
        metavar="N",
        help="customers with a negative experience whose payment fails, with a retry or "
        "two, in a payment outage at checkout.payment in the last minutes (0: no outage)",
    )
    parser.add_argument("--target", default=grpc_address(IngestSettings().grpc_port))
    parser.add_argument("--batch-size", type=int, default=500, help="events per TrackBatch")
    parser.add_argument("--concurrency", type=int, default=4, help="batches in flight")
    parser.add_argument(
        "--personalise-share",
        type=float,
        default=PERSONALISE_SHARE,
        help="share of customers whose web, app and contact-centre touchpoints ask the "
        "personalisation service for a decision, 0 (none) to 1",
    )
    parser.add_argument(
        "--personalisation",
        default=grpc_address(PersonalisationSettings().grpc_port),
        metavar="HOST:PORT",
        help="the personalisation service",
    )
    parser.add_argument(
        "--profile",
        default=grpc_address(ProfileSettings().grpc_port),
        metavar="HOST:PORT",
        help="the profile service (the return visits wait for it to catch up)",
    )
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.customers < 1:
        parser.error("--customers must be at least 1")
    if not 0.0 <= args.negative_share <= 1.0:
        parser.error("--negative-share must be between 0 and 1")
    if args.days < 1:
        parser.error("--days must be at least 1")
    if args.outage_customers < 0:
        parser.error("--outage-customers must be 0 or more")
    if not 1 <= args.batch_size <= 1000:
        parser.error("--batch-size must be between 1 and 1000")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if not 0.0 <= args.personalise_share <= 1.0:
        parser.error("--personalise-share must be between 0 and 1")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    config = DemoConfig(
        customers=args.customers,
        negative_share=args.negative_share,
        seed=args.seed,
        days=args.days,
        outage_customers=args.outage_customers,
    )
    err = sys.stderr
    clock = time.perf_counter()
    journeys = generate(config, datetime.now(UTC))
    generation_seconds = time.perf_counter() - clock
    total = sum(len(j.events) for j in journeys)
    print(
        f"generated {total:,} events for {len(journeys):,} customers in "
        f"{generation_seconds:.1f}s; sending to {args.target}",
        file=err,
    )
    chosen = personalised_customers(len(journeys), args.personalise_share, config.seed)
    points = points_by_event(journeys, chosen)
    nba = Personaliser(args.personalisation, points, config.seed)
    catch_up = ProfileCatchUp(args.profile)
    summary = Summary(build_sections())
    try:
        with connect(args.target) as channel:
            summary.before()
            nba.start()
            if nba.active:
                catch_up.start()
                print(
                    f"asking {args.personalisation} for decisions at "
                    f"{nba.tally.points:,} touchpoints of {len(chosen):,} customers",
                    file=err,
                )
            started_at = datetime.now(UTC)
            clock = time.perf_counter()
            tally = send(
                channel,
                args.target,
                journeys,
                args.batch_size,
                args.concurrency,
                err,
                after_batch=nba.offer if nba.active else None,
                progress_extra=nba.progress if nba.active else None,
            )
            seconds = time.perf_counter() - clock
            nba.drain(err)
            if nba.active:
                later = [
                    p for j in journeys if j.customer.index in chosen for p in return_visits(j)
                ]
                target = tally.accepted + nba.tally.outcomes_reported
                nba.revisit(later, catch_up.wait(target, nba.stop), err)
            decisions = nba.close()
    except IngestUnavailable as exc:
        nba.stop.set()
        print(f"demo: {exc}", file=err)
        return 2
    except KeyboardInterrupt:
        nba.stop.set()
        print("\ndemo: interrupted", file=err)
        return 130
    run = DemoRun(
        seed=config.seed,
        customers=tuple(j.customer for j in journeys),
        negative={j.customer.customer_id: j.negative for j in journeys if j.negative},
        sent=tally.sent,
        accepted=tally.accepted,
        rejected=tally.rejected,
        started_at=started_at,
        finished_at=datetime.now(UTC),
        personalisation=decisions if chosen else None,
        outcome_events=decisions.outcomes_reported,
    )
    lines = report(config, journeys, tally, seconds, generation_seconds)
    lines.extend(summary.render(run))
    print("\n".join(lines))
    return 0 if tally.rejected == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
