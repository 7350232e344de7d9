"""The alerts worker's profile reads against a server that admits few calls at once, as
every gRPC server of the platform does (services/common/grpc_server.py): a batch of
hundreds of people is read without being refused (a restarted worker reads a backlog in
batches of up to 500 records; asked all at once, they were refused on every retry)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from cx.profile.v1 import profile_pb2 as pb
from cx.profile.v1 import profile_pb2_grpc

from services.alerts.adapters.profiles import GrpcProfiles
from services.common.grpc_server import ServiceServer

ADMITTED = 4


class Profiles(profile_pb2_grpc.ProfileServiceServicer):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0

    def GetFeatures(
        self, request: pb.GetFeaturesRequest, context: grpc.ServicerContext
    ) -> pb.GetFeaturesResponse:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(0.002)
            if request.identifier.value.startswith("unknown-"):
                context.abort(grpc.StatusCode.NOT_FOUND, "no such profile")
            reply = pb.GetFeaturesResponse(profile_id=f"p-{request.identifier.value}")
            reply.features.update({"value_tier": "high"})
            return reply
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture
def served() -> Iterator[tuple[Profiles, str]]:
    servicer = Profiles()  # type: ignore[abstract]

    def register(server: grpc.Server) -> None:
        profile_pb2_grpc.add_ProfileServiceServicer_to_server(servicer, server)

    server = ServiceServer(register, ["cx.profile.v1.ProfileService"], "127.0.0.1:0", ADMITTED)
    server.start()
    yield servicer, f"127.0.0.1:{server.port}"
    server.stop(grace_s=0)


def test_a_batch_of_hundreds_of_people_is_read_within_the_servers_admission(
    served: tuple[Profiles, str],
) -> None:
    servicer, address = served
    lookup = GrpcProfiles(address, timeout_s=2, max_in_flight=ADMITTED)
    known = [("c", f"c{i}") for i in range(300)]
    unknown = [("c", f"unknown-{i}") for i in range(20)]
    try:
        found = lookup.people(known + unknown, ["value_tier"])
    finally:
        lookup.close()
    assert len(found) == 320
    for ident in known:
        person = found[ident]
        assert person is not None
        assert person.profile_id == f"p-{ident[1]}"
        assert person.fields == {"value_tier": "high"}
    assert all(found[ident] is None for ident in unknown)
    assert servicer.most <= ADMITTED
