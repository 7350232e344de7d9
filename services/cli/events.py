"""`cx events send FILE`: JSON-lines touchpoint events through ingestion."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, TextIO

import grpc
import typer
from cx.events.v1 import touchpoint_pb2 as ev
from cx.ingest.v1 import ingest_pb2 as pb
from cx.ingest.v1 import ingest_pb2_grpc
from google.protobuf import json_format
from rich.text import Text

from services.cli.common import EXIT_FAILED, stdout_console
from services.common.grpc_client import traced_channel
from services.common.settings import grpc_address
from services.ingest.settings import IngestSettings

# TrackBatch takes at most this many events a call.
MAX_BATCH = 1000
# A failed ingest call (or unreadable input) ends with 2, as it always has.
EXIT_CALL_FAILED = 2

app = typer.Typer(help="Touchpoint events.", no_args_is_help=True)


@dataclass
class SendTotals:
    lines: int = 0
    accepted: int = 0
    rejected: int = 0


def parse_lines(
    lines: Iterable[str], out: TextIO, totals: SendTotals
) -> Iterator[tuple[int, ev.TouchpointEvent]]:
    """Yields (line number, event); prints and counts lines that are not events."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        totals.lines += 1
        try:
            yield number, json_format.Parse(line, ev.TouchpointEvent())
        except json_format.ParseError as exc:
            totals.rejected += 1
            print(f"line {number}: rejected: not a TouchpointEvent in JSON: {exc}", file=out)


def _batches(
    items: Iterator[tuple[int, ev.TouchpointEvent]], size: int
) -> Iterator[list[tuple[int, ev.TouchpointEvent]]]:
    batch: list[tuple[int, ev.TouchpointEvent]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def send_events(
    stub: ingest_pb2_grpc.IngestServiceStub,
    lines: Iterable[str],
    out: TextIO,
    batch_size: int = 500,
) -> SendTotals:
    """Sends the events in batches; prints each rejected line (number, event id, every
    field and reason) to `out`."""
    totals = SendTotals()
    for batch in _batches(parse_lines(lines, out, totals), batch_size):
        reply = stub.TrackBatch(pb.TrackBatchRequest(events=[e for _, e in batch]), timeout=60)
        for (number, _), result in zip(batch, reply.results, strict=True):
            if result.status == pb.EventResult.STATUS_ACCEPTED:
                totals.accepted += 1
                continue
            totals.rejected += 1
            reasons = "; ".join(
                f"{v.field}: {v.description}" if v.field else v.description
                for v in result.violations
            )
            print(
                f"line {number}: rejected {result.event_id or '(no event_id)'}: {reasons}", file=out
            )
    return totals


def summary(totals: SendTotals) -> Text:
    """`N events read, N accepted, N rejected`, coloured on a terminal."""
    return Text.assemble(
        f"{totals.lines} events read, ",
        (f"{totals.accepted} accepted", "green" if totals.accepted else ""),
        ", ",
        (f"{totals.rejected} rejected", "bold red" if totals.rejected else ""),
    )


@app.command("send")
def send(
    file: Annotated[
        str, typer.Argument(metavar="FILE", help="File of JSON lines, - for stdin.")
    ] = "-",
    target: Annotated[
        str | None,
        typer.Option(
            help="Ingest's gRPC address; by default GRPC_HOST and INGEST_GRPC_PORT.",
            show_default="127.0.0.1:50051",
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(min=1, max=MAX_BATCH, help="Events per TrackBatch call.")
    ] = 500,
) -> None:
    """Send JSON-lines events (protobuf JSON mapping) through ingestion.

    Rejected lines are printed to stderr with their line number. Exit code 0 when every
    line was accepted, 1 when any was rejected, 2 when the call failed.
    """
    address = target or grpc_address(IngestSettings().grpc_port)
    try:
        source: TextIO = sys.stdin if file == "-" else open(file, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {file}: {exc.strerror}", param_hint="FILE") from exc
    try:
        with traced_channel(address) as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            totals = send_events(stub, source, sys.stderr, batch_size)
    except grpc.RpcError as exc:
        print(f"ingest call failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
        raise typer.Exit(EXIT_CALL_FAILED) from None
    except UnicodeDecodeError as exc:
        print(f"cannot read {file}: not UTF-8 text ({exc.reason})", file=sys.stderr)
        raise typer.Exit(EXIT_CALL_FAILED) from None
    finally:
        if source is not sys.stdin:
            source.close()
    stdout_console().print(summary(totals))
    if totals.rejected:
        raise typer.Exit(EXIT_FAILED)
