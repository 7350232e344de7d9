"""`cx nba report` and `cx nba evaluate` on a decision log handed over without a broker
(the reader is replaced): the tables, the JSON, the filters passed on, and how bad
arguments and an unreachable Kafka end."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from cx.personalisation.v1 import personalisation_pb2 as pb
from typer.testing import CliRunner

from services.cli import app, nba
from services.personalisation.adapters.decision_log_reader import (
    DecisionLogRead,
    DecisionLogUnavailable,
)
from services.personalisation.domain.evaluation import Logged
from services.personalisation.domain.learning import Model, load_learning

runner = CliRunner(env={"COLUMNS": "240"})
NOW_MS = int(time.time() * 1000)


def logged(
    placement: str,
    group: pb.Group.ValueType,
    reward: float,
    shown: str = "a",
    probability: float = 0.5,
) -> Logged:
    record = pb.DecisionRecord(
        decision_id=f"d{id(object())}",
        profile_id="p1",
        placement=placement,
        group=group,
        basis=pb.BASIS_PROFILE,
        ranked=[
            pb.RankedAction(action_id="a", kind="upsell", score=pb.ScoreParts(priority=2.0)),
            pb.RankedAction(action_id="b", kind="survey", score=pb.ScoreParts(priority=1.0)),
        ],
    )
    record.chosen.add(action_id=shown, rank=1, probability=probability)
    record.decided_at.FromMilliseconds(NOW_MS - 3_600_000)
    return Logged(record, reward)


T, H = pb.GROUP_TREATMENT, pb.GROUP_HOLDOUT
LOG = [
    logged("web.home.hero", T, 1.0),
    logged("web.home.hero", T, 0.0, "b"),
    logged("web.home.hero", T, 1.0),
    logged("web.home.hero", T, 0.0, "b"),
    logged("web.home.hero", H, 0.0, probability=1.0),
    logged("web.home.hero", H, 1.0, probability=1.0),
    logged("web.home.hero", H, 0.0, probability=1.0),
    logged("web.home.hero", H, 0.0, probability=1.0),
    logged("app.home.banner", T, 0.1),
]


class Calls:
    def __init__(self) -> None:
        self.kwargs: list[dict[str, Any]] = []


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Calls:
    seen = Calls()

    def fake_read(kafka: Any, config: Any, **kwargs: Any) -> DecisionLogRead:
        seen.kwargs.append({"bootstrap": kafka.kafka_bootstrap_servers, **kwargs})
        placement = kwargs.get("placement")
        chosen = [d for d in LOG if placement is None or d.record.placement == placement]
        return DecisionLogRead(chosen, read=len(chosen) + 2, unsettled=2, outcomes=4)

    monkeypatch.setattr(nba, "read_settled", fake_read)
    return seen


def cx(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["nba", *args])
    return result.exit_code, result.stdout, result.stderr


def test_report_shows_each_placement_and_all_with_the_difference_and_lift(calls: Calls) -> None:
    code, out, err = cx("report")
    assert code == 0, err
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    # hero: treatment 2/4 = 0.5, holdout 1/4 = 0.25: +0.25, lift +100 %.
    assert "0.5000" in rows["web.home.hero"]
    assert "0.2500" in rows["web.home.hero"]
    assert "+0.2500" in rows["web.home.hero"]
    assert "+100%" in rows["web.home.hero"]
    assert "not enough data" in rows["app.home.banner"]
    assert "all" in rows
    assert "11 decisions read: 9 settled, 2 not yet" in " ".join(out.split())
    assert calls.kwargs[0]["placement"] is None


def test_report_json_has_the_numbers_and_the_filters(calls: Calls) -> None:
    code, out, _ = cx("report", "--placement", "web.home.hero", "--since", "2h", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["placement"] == "web.home.hero"
    assert data["log"] == {"read": 10, "settled": 8, "unsettled": 2, "outcomes": 4}
    (hero, everything) = data["placements"]
    assert hero["placement"] == "web.home.hero"
    assert everything["placement"] == "all"
    assert hero["treatment"] == {"decisions": 4, "reward": 2.0, "reward_rate": 0.5}
    assert hero["holdout"]["reward_rate"] == 0.25
    assert hero["difference"]["value"] == pytest.approx(0.25)
    assert hero["lift"]["value"] == pytest.approx(1.0)
    assert hero["difference"]["low"] < 0.25 < hero["difference"]["high"]
    since = calls.kwargs[0]["since_ms"]
    assert abs(since - (time.time() * 1000 - 7_200_000)) < 60_000
    assert calls.kwargs[0]["until_ms"] is None


def test_evaluate_static_shows_ips_snips_and_the_logged_policy(calls: Calls) -> None:
    code, out, err = cx("evaluate", "--policy", "static", "--placement", "web.home.hero")
    assert code == 0, err
    flat = " ".join(out.split())
    # Treatment at the hero: static picks "a" (priority 2), shown twice with probability
    # 1/2, both times rewarded 1: IPS = (2 + 2) / 4 = 1, SNIPS = 4 / 4 = 1.
    assert "evaluated 4 decisions" in flat
    assert "matched 2" in flat
    assert "IPS │ 1.0000" in flat
    assert "SNIPS │ 1.0000" in flat
    assert "logged policy │ 0.5000" in flat


def test_evaluate_json(calls: Calls) -> None:
    code, out, _ = cx("evaluate", "--policy", "logged", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["policy"] == "logged"
    assert data["decisions"] == 5
    assert data["matched"] == 5
    assert data["snips"]["value"] == pytest.approx(2.1 / 5)
    assert data["ips"]["value"] == pytest.approx(2.1 / 5)
    assert data["logged"]["value"] == pytest.approx(2.1 / 5)


def test_evaluate_a_candidate_model_file(calls: Calls, tmp_path: Path) -> None:
    path = tmp_path / "candidate.vw"
    model = Model(load_learning().model.vw_args)
    path.write_bytes(model.to_bytes())
    code, out, err = cx("evaluate", "--policy", f"model:{path}", "--json")
    assert code == 0, err
    assert json.loads(out)["decisions"] == 5


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["evaluate", "--policy", "greedy"], "is not one of static, control, logged"),
        (["evaluate", "--policy", "model:"], "give model:FILE or catalogue:FILE"),
        (["evaluate", "--policy", "model:/no/such/file"], "the candidate model"),
        (["evaluate", "--policy", "catalogue:/no/such/file"], "the candidate catalogue"),
        (["report", "--since", "yesterday"], "neither a duration"),
        (["report", "--since", "0h"], "empty duration"),
        (["report", "--since", "1h", "--until", "2h"], "must be before --until"),
        (["report", "--learning-file", "/no/such/file"], "--learning-file"),
    ],
)
def test_bad_arguments_exit_2_with_a_message_without_reading(
    calls: Calls, args: Sequence[str], says: str
) -> None:
    code, _, err = cx(*args)
    assert code == 2
    assert says in " ".join(err.replace("│", " ").split())
    assert calls.kwargs == []


def test_a_file_that_is_not_a_model_exits_2(calls: Calls, tmp_path: Path) -> None:
    path = tmp_path / "not-a-model.vw"
    path.write_text("hello")
    code, _, err = cx("evaluate", "--policy", f"model:{path}")
    assert code == 2
    assert "is not a Vowpal Wabbit model" in " ".join(err.replace("│", " ").split())


def test_an_unavailable_log_is_an_error_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(*_: Any, **__: Any) -> DecisionLogRead:
        raise DecisionLogUnavailable("Kafka at 127.0.0.1:1 does not answer: refused")

    monkeypatch.setattr(nba, "read_settled", unavailable)
    code, out, err = cx("report")
    assert code == 1
    assert err == "error: UNAVAILABLE: Kafka at 127.0.0.1:1 does not answer: refused\n"
    assert out == ""


def test_an_unreachable_kafka_ends_within_seconds() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    code, _, err = cx("report", "--bootstrap", f"127.0.0.1:{port}", "--timeout", "1")
    assert code == 1
    assert err.startswith("error: UNAVAILABLE: Kafka at 127.0.0.1:")
    assert time.monotonic() - started < 5
