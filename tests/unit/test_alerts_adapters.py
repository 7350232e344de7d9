"""The alerts worker's edges without the stack: people through GetFeatures (against an
in-process gRPC server: known, unknown, unavailable, too slow), and the rules and owners
files reloaded when they change (a bad edit refused, the last good version kept)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cx.profile.v1 import profile_pb2 as pb
from cx.profile.v1 import profile_pb2_grpc

from services.alerts.adapters.config_files import watched_detection_config
from services.alerts.adapters.profiles import GrpcProfiles, ProfileUnavailable
from services.alerts.domain.owners import DEFAULT_PATH as OWNERS_PATH
from services.alerts.domain.rules import DEFAULT_PATH as RULES_PATH
from services.common.batches import is_infrastructure_failure


class Profiles(profile_pb2_grpc.ProfileServiceServicer):
    def __init__(self) -> None:
        self.mode = "ok"
        self.names: list[list[str]] = []

    def GetFeatures(
        self, request: pb.GetFeaturesRequest, context: grpc.ServicerContext
    ) -> pb.GetFeaturesResponse:
        self.names.append(list(request.names))
        if self.mode == "down":
            context.abort(grpc.StatusCode.UNAVAILABLE, "down")
        if self.mode == "slow":
            time.sleep(0.5)
        if request.identifier.value != "vip-1":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such profile")
        reply = pb.GetFeaturesResponse(profile_id="p_vip", segments=["vip"])
        reply.features.update({"value_tier": "vip", "orders": 3.0, "clv_total": 2500.5})
        return reply


@pytest.fixture
def server() -> Iterator[tuple[Profiles, str]]:
    servicer = Profiles()  # type: ignore[abstract]
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    profile_pb2_grpc.add_ProfileServiceServicer_to_server(servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    yield servicer, f"127.0.0.1:{port}"
    grpc_server.stop(0)


def test_people_are_read_at_once_with_the_rules_fields(server: tuple[Profiles, str]) -> None:
    servicer, address = server
    lookup = GrpcProfiles(address, timeout_s=2)
    try:
        found = lookup.people([("c", "vip-1"), ("e", "new@example.com")], ["value_tier"])
    finally:
        lookup.close()
    vip = found[("c", "vip-1")]
    assert vip is not None
    assert vip.profile_id == "p_vip"
    assert vip.fields == {"value_tier": "vip", "orders": 3, "clv_total": 2500.5}
    assert vip.segments == {"vip"}
    assert found[("e", "new@example.com")] is None  # unknown: detection goes on without
    assert servicer.names == [["value_tier"], ["value_tier"]]


@pytest.mark.parametrize("mode", ["down", "slow"])
def test_a_profile_service_that_does_not_answer_is_an_infrastructure_failure(
    server: tuple[Profiles, str], mode: str
) -> None:
    servicer, address = server
    servicer.mode = mode
    lookup = GrpcProfiles(address, timeout_s=0.2)
    try:
        with pytest.raises(ProfileUnavailable) as raised:
            lookup.people([("c", "vip-1")], ["value_tier"])
    finally:
        lookup.close()
    assert is_infrastructure_failure(raised.value)


def test_nobody_listening_is_an_infrastructure_failure() -> None:
    lookup = GrpcProfiles("127.0.0.1:1", timeout_s=0.2)
    try:
        with pytest.raises(ProfileUnavailable):
            lookup.people([("c", "vip-1")], [])
    finally:
        lookup.close()


EXTRA_RULE = """
[[rule]]
name = "review_one_star"
kind = "{kind}"
all = [{{ field = "payload", op = "==", value = "review" }}]
"""


def test_rules_and_owners_reload_when_they_change_and_a_bad_edit_is_refused(
    tmp_path: Path,
) -> None:
    rules, owners = tmp_path / "rules.toml", tmp_path / "owners.toml"
    shipped = RULES_PATH.read_text()
    rules.write_text(shipped)
    owners.write_text(OWNERS_PATH.read_text())
    config = watched_detection_config(rules, owners)
    first = config()
    assert config.refresh() is False  # unchanged
    # A new rule goes live without a restart.
    rules.write_text(shipped + EXTRA_RULE.format(kind="event"))
    assert config.refresh() is True
    assert config().rules.rule("review_one_star") is not None
    assert config().version != first.version
    good = config()
    # A bad edit is refused: the last good rules stay, the error names rule and key.
    rules.write_text(shipped + EXTRA_RULE.format(kind="burst"))
    assert config.refresh() is False
    assert config() is good
    assert config.error is not None
    assert "rule 'review_one_star': unknown kind \"burst\"" in config.error
    assert not config.healthy()
    # A rule's team must be one of the owners file's, checked across the files.
    rules.write_text(shipped.replace('name = "app_crash"\n', 'name = "app_crash"\nteam = "x"\n'))
    assert config.refresh() is False
    assert config.error is not None
    assert "rule 'app_crash': team: unknown team \"x\"" in config.error
    rules.write_text(shipped)
    assert config.refresh() is True
    assert config.healthy()
    assert config().rules.version == first.rules.version
