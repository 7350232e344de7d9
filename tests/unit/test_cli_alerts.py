"""`cx alerts` against the real AlertsServicer in-process on the in-memory incident store:
what each command sends, how incidents and silences are shown (tables, JSON), and how
failed calls and usage errors end."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from cx.alerts.v1 import alerts_pb2 as pb
from typer.testing import CliRunner

from services.alerts.adapters.incidents import MemoryIncidentStore
from services.alerts.domain.incidents import Delivery, Matcher, SilenceRecord
from services.alerts.server import build_server
from services.alerts.service import AlertsServicer
from services.cli import alerts, alerts_render, app, main
from tests.support.alerts import HOUR_MS, SequentialIds, make_trigger, spike_trigger

# Wide enough that rich does not wrap what the tests look for.
runner = CliRunner(env={"COLUMNS": "240"})


def real_now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


class FakeRedis:
    def ping(self) -> bool:
        return True


class Served:
    def __init__(self) -> None:
        self.store = MemoryIncidentStore(SequentialIds(), SequentialIds("sil"))
        servicer = AlertsServicer(self.store, watch_block_ms=50)
        self.server = build_server(servicer, FakeRedis(), "127.0.0.1:0")  # type: ignore[arg-type]
        self.server.start()
        self.address = f"127.0.0.1:{self.server.port}"

    def cx(self, *args: str) -> tuple[int, str, str]:
        result = runner.invoke(app, ["alerts", *args, "--address", self.address])
        return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def served() -> Iterator[Served]:
    s = Served()
    yield s
    s.server.stop(0)


def seed(store: MemoryIncidentStore) -> int:
    now = real_now_ms() - 270_000  # 4.5 minutes ago
    store.trigger(spike_trigger("s1", now_ms=now))
    store.trigger(
        make_trigger("e1", touchpoint="checkout.payment", rule="payment_failed", now_ms=now + 1)
    )
    store.trigger(
        make_trigger(
            "e2", profile_id="p-vip", summary="VIP detractor: NPS 2", now_ms=now + 2, team="cx"
        )
    )
    store.trigger(make_trigger("e3", profile_id="p-vip", now_ms=now + 3))
    return now


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.replace("┃", "│").split("│")[1:-1]]


def row_of(out: str, incident_id: str) -> list[str]:
    [row] = [c for c in (cells(line) for line in out.splitlines()) if c and c[0] == incident_id]
    return row


# --- list -------------------------------------------------------------------------------


def test_list_shows_a_readable_table(served: Served) -> None:
    seed(served.store)
    code, out, err = served.cx("list")
    assert (code, err) == (0, "")
    header = cells(next(line for line in out.splitlines() if "incident" in line))
    assert header == [
        "incident",
        "state",
        "severity",
        "rule",
        "team",
        "who / where",
        "count",
        "last seen",
        "summary",
    ]
    assert row_of(out, "inc-0003") == [
        "inc-0003",
        "triggered",
        "critical",
        "detractor",
        "cx",
        "p-vip",
        "2",
        "4m ago",
        "VIP detractor: NPS 2",
    ]
    spike = row_of(out, "inc-0001")
    assert spike[5] == "checkout.payment"
    assert spike[3:5] == ["payment_spike", "payments"]
    assert "inhibited by inc-0001" in out
    assert "3 of 3" in out


def test_list_filters_and_pages(served: Served) -> None:
    seed(served.store)
    served.store.acknowledge("inc-0003", "alice", real_now_ms())
    code, out, _ = served.cx("list", "--open", "--team", "cx", "--json")
    assert code == 0
    reply = json.loads(out)
    assert [i["incidentId"] for i in reply["incidents"]] == ["inc-0003", "inc-0002"]
    code, out, _ = served.cx("list", "--state", "acknowledged", "--json")
    assert [i["incidentId"] for i in json.loads(out)["incidents"]] == ["inc-0003"]
    code, out, _ = served.cx("list", "--profile-id", "p-vip", "--rule", "detractor", "--json")
    assert [i["incidentId"] for i in json.loads(out)["incidents"]] == ["inc-0003"]
    code, out, _ = served.cx("list", "--limit", "2")
    assert code == 0
    caption = next(line for line in out.splitlines() if "2 of 3" in line)
    token = caption.split("--page-token ")[1].strip()
    code, out, _ = served.cx("list", "--limit", "2", "--page-token", token, "--json")
    assert [i["incidentId"] for i in json.loads(out)["incidents"]] == ["inc-0001"]


def test_list_nothing(served: Served) -> None:
    code, out, _ = served.cx("list")
    assert (code, out.strip()) == (0, "No incidents.")


def test_list_usage_errors(served: Served) -> None:
    code, _, err = served.cx("list", "--open", "--state", "resolved")
    assert code == 2
    assert "--open already says which states" in err
    assert served.cx("list", "--state", "open")[0] == 2
    assert served.cx("list", "--limit", "201")[0] == 2
    code, _, err = served.cx("list", "--page-token", "nonsense")
    assert code == 2
    assert err.startswith("error: INVALID_ARGUMENT: page_token:")


# --- show, ack, resolve ---------------------------------------------------------------------


def test_show_has_evidence_and_deliveries(served: Served) -> None:
    seed(served.store)
    served.store.record_delivery(
        "inc-0003", Delivery("pagerduty-cx", "OPENED", "delivered", 2, "", real_now_ms())
    )
    served.store.record_delivery(
        "inc-0003", Delivery("slack-cx", "OPENED", "pending", 3, "HTTP 503")
    )
    code, out, _ = served.cx("show", "inc-0003")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["incident", "inc-0003"]
    assert "detractor (event)" in out
    assert "detractor:pid:p-vip" in out
    assert any(line.split()[:2] == ["count", "2"] for line in lines)
    assert "Evidence (newest first)" in out
    assert row_of(out, "e3")[2:6] == ["web.checkout", "survey_response", "detractor", "nps=3"]
    assert "Deliveries" in out
    assert row_of(out, "slack-cx")[1:4] == ["OPENED", "pending", "3"]
    assert row_of(out, "slack-cx")[-1] == "HTTP 503"
    code, out, _ = served.cx("show", "inc-0002")
    assert "inhibited by inc-0001" in out


def test_show_json(served: Served) -> None:
    seed(served.store)
    code, out, _ = served.cx("show", "inc-0001", "--json")
    assert code == 0
    assert json.loads(out)["incident"]["dedupKey"] == "payment_spike:tp:checkout.payment"


def test_ack_and_resolve(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    seed(served.store)
    monkeypatch.setattr("getpass.getuser", lambda: "operator")
    code, out, err = served.cx("ack", "inc-0003")
    assert (code, err) == (0, "")
    assert "acknowledged" in out
    assert "by operator" in out
    code, _, err = served.cx("ack", "inc-0003", "--by", "bob")
    assert code == 1
    assert err.startswith("error: FAILED_PRECONDITION: incident inc-0003 is already acknowledged")
    code, out, _ = served.cx("resolve", "inc-0003", "--by", "alice", "--note", "refunded")
    assert code == 0
    assert "by alice" in out
    assert "refunded" in out
    code, _, err = served.cx("resolve", "inc-0003", "--by", "alice")
    assert code == 1
    assert "FAILED_PRECONDITION" in err
    assert [e.change for e in served.store.outbox][-2:] == ["ACKNOWLEDGED", "RESOLVED"]


def test_unknown_incident_is_not_found(served: Served) -> None:
    for command in ("show", "ack", "resolve"):
        code, out, err = served.cx(command, "inc-nope")
        assert code == 1
        assert err == "error: NOT_FOUND: no incident 'inc-nope'\n"
        assert out == ""


def test_an_unreachable_service_is_unavailable_not_a_traceback() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = runner.invoke(
        app, ["alerts", "list", "--address", f"127.0.0.1:{port}", "--timeout", "5"]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error: UNAVAILABLE: ")
    assert "Traceback" not in result.output


# --- silences ---------------------------------------------------------------------------


def test_silence_add_list_expire(served: Served) -> None:
    code, out, err = served.cx(
        "silence",
        "add",
        "--match",
        "team=cx",
        "--match",
        "touchpoint=web.*",
        "--for",
        "2h",
        "--comment",
        "web release",
        "--by",
        "alice",
    )
    assert (code, err) == (0, "")
    row = row_of(out, "sil-0001")
    assert row[1:3] == ["active", "team=cx, touchpoint=web.*"]
    assert row[5:] == ["alice", "web release"]
    stored = served.store.get_silence("sil-0001")
    assert stored is not None
    assert stored.matchers == (Matcher("team", "cx"), Matcher("touchpoint", "web.", prefix=True))
    assert stored.ends_at_ms - stored.starts_at_ms == pytest.approx(2 * HOUR_MS, abs=2000)
    held = served.store.trigger(make_trigger("e1", now_ms=real_now_ms()))
    assert held.suppressed_by == "silence:sil-0001"
    code, out, _ = served.cx("silence", "list")
    assert "sil-0001" in out
    code, out, _ = served.cx("silence", "expire", "sil-0001")
    assert code == 0
    assert row_of(out, "sil-0001")[1] == "expired"
    code, out, _ = served.cx("silence", "list")
    assert out.strip() == "No silences."
    code, out, _ = served.cx("silence", "list", "--all", "--json")
    assert [s["state"] for s in json.loads(out)["silences"]] == ["SILENCE_STATE_EXPIRED"]
    code, _, err = served.cx("silence", "expire", "sil-nope")
    assert (code, err) == (1, "error: NOT_FOUND: no silence 'sil-nope'\n")


def test_silence_until_and_starts(served: Served) -> None:
    code, out, _ = served.cx(
        "silence",
        "add",
        "--match",
        "severity=warning",
        "--starts",
        "2099-01-01T00:00",
        "--until",
        "2099-01-02T00:00+00:00",
        "--by",
        "alice",
    )
    assert code == 0
    assert row_of(out, "sil-0001")[1] == "pending"
    stored = served.store.get_silence("sil-0001")
    assert stored is not None
    assert stored.starts_at_ms == int(datetime(2099, 1, 1, tzinfo=UTC).timestamp() * 1000)
    assert stored.ends_at_ms - stored.starts_at_ms == 24 * HOUR_MS


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--match", "colour=red", "--for", "1h"], "is not NAME=VALUE"),
        (["--match", "team", "--for", "1h"], "is not NAME=VALUE"),
        (["--match", "team=cx"], "give one of --for and --until"),
        (["--match", "team=cx", "--for", "1h", "--until", "2099-01-01"], "give one of"),
        (["--match", "team=cx", "--for", "soon"], "is not a duration"),
        (["--match", "team=cx", "--for", "0h"], "is not a duration"),
        (["--match", "team=cx", "--until", "tomorrow"], "is not an ISO date-time"),
    ],
)
def test_silence_add_usage_errors_make_no_call(
    served: Served, args: list[str], message: str
) -> None:
    code, _, err = served.cx("silence", "add", *args)
    assert code == 2
    assert message in err
    assert served.store.silences == {}


def test_silence_the_server_refuses_exits_2(served: Served) -> None:
    code, _, err = served.cx(
        "silence", "add", "--match", "team=cx", "--until", "2000-01-01T00:00", "--by", "a"
    )
    assert code == 2
    assert err.startswith("error: INVALID_ARGUMENT: silence.ends_at:")


# --- watch ------------------------------------------------------------------------------


def test_watch_prints_changes_as_they_happen(served: Served) -> None:
    def change() -> None:
        now = real_now_ms()
        served.store.trigger(make_trigger("e1", profile_id="p-other", team="payments", now_ms=now))
        served.store.trigger(make_trigger("e2", summary="Detractor NPS 1", now_ms=now))
        served.store.acknowledge("inc-0002", "alice", now + 1)

    timer = threading.Timer(0.5, change)
    timer.start()
    code, out, err = served.cx("watch", "--team", "cx", "--count", "2")
    timer.join()
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert [line.split()[1:3] for line in lines] == [
        ["opened", "inc-0002"],
        ["acknowledged", "inc-0002"],
    ]
    assert "Detractor NPS 1" in lines[0]


# --- rendering --------------------------------------------------------------------------


def test_state_choices_are_the_protos() -> None:
    names = [v.name.removeprefix("STATE_").lower() for v in pb.State.DESCRIPTOR.values]
    assert list(alerts.STATES) == [n for n in names if n != "unspecified"]
    assert alerts.MATCHERS == ("team", "rule", "touchpoint", "profile_id", "severity")


def test_labels_survive_values_from_a_newer_server() -> None:
    assert alerts_render.state_text(9).plain == "9"  # type: ignore[arg-type]
    assert alerts_render.severity_text(9).plain == "9"  # type: ignore[arg-type]


def test_silence_table_marks_prefix_matchers() -> None:
    record = SilenceRecord("s", (Matcher("touchpoint", "web.", prefix=True),), 0, 1)
    assert alerts_render.matchers_text(
        [pb.Matcher(name=m.name, value=m.value, prefix=m.prefix) for m in record.matchers]
    ).plain == ("touchpoint=web.*")


def test_main_runs_alerts(served: Served) -> None:
    assert main(["alerts", "list", "--address", served.address]) == 0
    assert main(["alerts", "show", "inc-nope", "--address", served.address]) == 1
    assert main(["alerts", "--help"]) == 0
