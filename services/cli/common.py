"""What every `cx` command shares: consoles, the gRPC channel and how a failed call ends."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn, TypeVar

import grpc
import typer
from rich.console import Console

from services.common.grpc_client import traced_channel

# Exit codes: 1 a failed call (or rejected input), 2 a usage error or INVALID_ARGUMENT.
EXIT_FAILED = 1
EXIT_USAGE = 2
# A duration option: 90s, 30m, 2h, 7d.
DURATION_RE = re.compile(r"^(\d+)([smhd])$")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}

Stub = TypeVar("Stub")


def stdout_console() -> Console:
    """A console on the current stdout (created per call: tests swap the stream)."""
    return Console(highlight=False)


def duration_seconds(text: str) -> int | None:
    """`90s`, `30m`, `2h`, `7d` in seconds (0 for `0s`); None when `text` is not such a
    duration."""
    found = DURATION_RE.match(text.strip())
    return int(found.group(1)) * UNIT_S[found.group(2)] if found else None


def rpc_failure(exc: grpc.RpcError) -> NoReturn:
    """Ends the command on a failed call: `error: CODE: details` on stderr, exit 2 for
    INVALID_ARGUMENT (the request was wrong), 1 for anything else."""
    code = exc.code()
    name = code.name if code is not None else "UNKNOWN"
    print(f"error: {name}: {exc.details() or ''}", file=sys.stderr)
    raise typer.Exit(EXIT_USAGE if code == grpc.StatusCode.INVALID_ARGUMENT else EXIT_FAILED)


@contextmanager
def stub_for(address: str, make: Callable[[grpc.Channel], Stub]) -> Iterator[Stub]:
    """A stub on a traced channel to `address`; a failed call ends the command as
    `rpc_failure` says, never with a traceback."""
    try:
        with traced_channel(address) as channel:
            yield make(channel)
    except grpc.RpcError as exc:
        rpc_failure(exc)
