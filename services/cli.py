"""The `cx` command line: `cx events send FILE` sends JSON-lines events through ingestion."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TextIO

import grpc
from cx.events.v1 import touchpoint_pb2 as ev
from cx.ingest.v1 import ingest_pb2 as pb
from cx.ingest.v1 import ingest_pb2_grpc
from google.protobuf import json_format

from services.common.grpc_client import traced_channel
from services.common.settings import grpc_address
from services.ingest.settings import IngestSettings


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


def _cmd_events_send(args: argparse.Namespace) -> int:
    source: TextIO = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
    try:
        with traced_channel(args.target) as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            totals = send_events(stub, source, sys.stderr, args.batch_size)
    except grpc.RpcError as exc:
        print(f"ingest call failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 2
    finally:
        if source is not sys.stdin:
            source.close()
    print(f"{totals.lines} events read, {totals.accepted} accepted, {totals.rejected} rejected")
    return 0 if totals.rejected == 0 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cx", description="cx-platform command line")
    groups = parser.add_subparsers(dest="group", required=True)
    events = groups.add_parser("events", help="touchpoint events").add_subparsers(
        dest="command", required=True
    )
    send = events.add_parser(
        "send", help="send JSON-lines events (protobuf JSON mapping) through ingestion"
    )
    send.add_argument("file", nargs="?", default="-", help="file of JSON lines, - for stdin")
    send.add_argument("--target", default=grpc_address(IngestSettings().grpc_port))
    send.add_argument("--batch-size", type=int, default=500)
    send.set_defaults(run=_cmd_events_send)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
