"""`cx` and `cx events send` against an in-process fake of the ingest service (no broker)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from cx.events.v1 import touchpoint_pb2 as ev
from cx.ingest.v1 import ingest_pb2 as pb
from cx.ingest.v1 import ingest_pb2_grpc
from google.protobuf import json_format
from typer.testing import CliRunner

from services.cli import app, main
from tests.paths import REPO_ROOT

# Wide enough that rich does not wrap what the tests look for.
runner = CliRunner(env={"COLUMNS": "200"})


class FakeIngest(ingest_pb2_grpc.IngestServiceServicer):
    """Rejects events whose id starts with `bad`, accepts the rest; records each batch."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.fail: grpc.StatusCode | None = None

    def Track(self, request: pb.TrackRequest, context: grpc.ServicerContext) -> pb.TrackResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the CLI sends batches")

    def TrackBatch(
        self, request: pb.TrackBatchRequest, context: grpc.ServicerContext
    ) -> pb.TrackBatchResponse:
        if self.fail is not None:
            context.abort(self.fail, "Kafka is unreachable")
        self.batches.append([e.event_id for e in request.events])
        results = []
        for i, event in enumerate(request.events):
            if event.event_id.startswith("bad"):
                results.append(
                    pb.EventResult(
                        index=i,
                        event_id=event.event_id,
                        status=pb.EventResult.STATUS_REJECTED,
                        violations=[
                            pb.FieldViolation(
                                field="event.survey_response.score",
                                description="11 is outside the scale 0 to 10",
                            ),
                            pb.FieldViolation(description="[bold]not markup[/bold]"),
                        ],
                    )
                )
            else:
                results.append(
                    pb.EventResult(
                        index=i, event_id=event.event_id, status=pb.EventResult.STATUS_ACCEPTED
                    )
                )
        return pb.TrackBatchResponse(results=results)


@pytest.fixture
def ingest() -> Iterator[tuple[FakeIngest, str]]:
    fake = FakeIngest()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield fake, f"127.0.0.1:{port}"
    server.stop(None)


def line(event_id: str) -> str:
    return json_format.MessageToJson(
        ev.TouchpointEvent(event_id=event_id, touchpoint="web.home"), indent=None
    )


def test_send_counts_and_reports_rejects_by_line(
    tmp_path: Path, ingest: tuple[FakeIngest, str]
) -> None:
    fake, address = ingest
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join([line("e-1"), line("bad-2"), "{not json", "", line("e-3")]) + "\n")

    result = runner.invoke(app, ["events", "send", str(path), "--target", address])

    assert result.exit_code == 1, result.output
    assert result.stdout.strip() == "4 events read, 2 accepted, 2 rejected"
    assert "line 3: rejected: not a TouchpointEvent in JSON" in result.stderr
    assert (
        "line 2: rejected bad-2: event.survey_response.score: 11 is outside the scale 0 to 10; "
        "[bold]not markup[/bold]"
    ) in result.stderr
    assert fake.batches == [["e-1", "bad-2", "e-3"]]


def test_send_reads_stdin_in_batches_and_exits_0_when_all_are_accepted(
    ingest: tuple[FakeIngest, str],
) -> None:
    fake, address = ingest
    stdin = "\n".join(line(f"e-{i}") for i in range(5)) + "\n"

    result = runner.invoke(
        app, ["events", "send", "-", "--target", address, "--batch-size", "2"], input=stdin
    )

    assert result.exit_code == 0, result.output
    assert "5 events read, 5 accepted, 0 rejected" in result.stdout
    assert result.stderr == ""
    assert [len(b) for b in fake.batches] == [2, 2, 1]


def test_send_failed_call_exits_2_without_a_traceback(
    tmp_path: Path, ingest: tuple[FakeIngest, str]
) -> None:
    fake, address = ingest
    fake.fail = grpc.StatusCode.UNAVAILABLE
    path = tmp_path / "events.jsonl"
    path.write_text(line("e-1") + "\n")

    result = runner.invoke(app, ["events", "send", str(path), "--target", address])

    assert result.exit_code == 2
    assert result.stderr.strip() == "ingest call failed: UNAVAILABLE: Kafka is unreachable"
    assert "Traceback" not in result.output


def test_send_usage_errors_exit_2(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["events", "send", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 2
    assert "cannot read" in missing.stderr
    assert "No such file" in missing.stderr

    too_big = runner.invoke(app, ["events", "send", "--batch-size", "1001"])
    assert too_big.exit_code == 2

    unknown = runner.invoke(app, ["events", "push"])
    assert unknown.exit_code == 2


def test_main_returns_the_exit_code(tmp_path: Path, ingest: tuple[FakeIngest, str]) -> None:
    _, address = ingest
    path = tmp_path / "events.jsonl"
    path.write_text(line("bad-1") + "\n")

    assert main(["events", "send", str(path), "--target", address]) == 1
    assert main(["events", "send", str(path), "--target", address, "--batch-size", "0"]) == 2
    assert main([]) == 2
    assert main(["--help"]) == 0


def test_python_dash_m_runs_the_same_command_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "nba", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for command in ("decide", "outcome", "actions"):
        assert command in result.stdout
