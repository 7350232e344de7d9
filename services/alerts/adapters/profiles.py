"""The people detection pages about, read through ProfileService.GetFeatures.

The profile service owns its data: the worker asks it, never its Redis. One batch's
people are asked together (gRPC futures, at most `MAX_IN_FLIGHT` at a time: the profile
server admits 16 calls at once and refuses the rest with RESOURCE_EXHAUSTED, so a
batch's hundreds of people asked all at once would be refused on every retry), each call
with a short deadline (`ALERTS_PROFILE_TIMEOUT_S`). When the profile service does not
answer (UNAVAILABLE, DEADLINE_EXCEEDED...), `ProfileUnavailable` is raised: an
infrastructure failure, so the worker retries the batch instead of paging with a
severity that ignored the person's value tier. A person the profile does not know
(NOT_FOUND; also an identifier it refuses) is None: detection goes on with the event's
fields alone.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol

import grpc
from cx.profile.v1 import profile_pb2 as pb
from cx.profile.v1 import profile_pb2_grpc

from services.alerts.domain.detect import Person
from services.common.grpc_client import traced_channel
from services.common.identifiers import BY_CODE
from services.common.profile_client import UNAVAILABLE_CODES, feature_values

Identifier = tuple[str, str]

# GetFeatures calls of one lookup in flight at once: half of what a profile server admits
# (services/common/grpc_server.py, 16), leaving room for its other clients.
MAX_IN_FLIGHT = 8


class ProfileUnavailable(ConnectionError):
    """The profile service did not answer: retry the batch (an infrastructure failure for
    `services.common.batches`, being a ConnectionError)."""


class ProfileLookup(Protocol):
    def people(
        self, identifiers: Collection[Identifier], names: Collection[str]
    ) -> dict[Identifier, Person | None]:
        """Each identifier's person with the named fields (None: the profile does not know
        them); raises ProfileUnavailable."""
        ...

    def close(self) -> None: ...


def person_of(reply: pb.GetFeaturesResponse) -> Person:
    fields = feature_values(reply)
    return Person(reply.profile_id, fields, frozenset(reply.segments), known=True)


class GrpcProfiles:
    """ProfileService.GetFeatures, a batch's calls in flight together."""

    def __init__(self, address: str, timeout_s: float, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self.channel = traced_channel(address)
        self.stub = profile_pb2_grpc.ProfileServiceStub(self.channel)

    def people(
        self, identifiers: Collection[Identifier], names: Collection[str]
    ) -> dict[Identifier, Person | None]:
        wanted = sorted(names)
        waiting = deque(identifiers)
        calls: deque[tuple[Identifier, Any]] = deque()
        out: dict[Identifier, Person | None] = {}
        failure: grpc.RpcError | None = None

        def start() -> None:
            # No new calls once one failed: the batch is retried anyway.
            while waiting and len(calls) < self.max_in_flight and failure is None:
                ident = waiting.popleft()
                request = pb.GetFeaturesRequest(
                    identifier=pb.Identifier(type=BY_CODE[ident[0]].proto, value=ident[1]),
                    names=wanted,
                )
                calls.append((ident, self.stub.GetFeatures.future(request, timeout=self.timeout_s)))

        start()
        while calls:
            ident, call = calls.popleft()
            try:
                out[ident] = person_of(call.result())
            except grpc.RpcError as exc:
                code = exc.code()
                if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                    out[ident] = None
                elif code in UNAVAILABLE_CODES:
                    failure = exc
                else:
                    raise
            start()
        if failure is not None:
            code = failure.code()
            raise ProfileUnavailable(f"the profile service did not answer ({code.name})")
        return out

    def close(self) -> None:
        self.channel.close()


class StaticProfiles:
    """People from a dict (tests, and a stack run without the profile service)."""

    def __init__(self, people: Mapping[Identifier, Person] | None = None) -> None:
        self.known: dict[Identifier, Person] = dict(people or {})
        self.calls = 0
        # While set, every call raises ProfileUnavailable (the profile service is down).
        self.down = False

    def people(
        self, identifiers: Collection[Identifier], names: Collection[str]
    ) -> dict[Identifier, Person | None]:
        self.calls += 1
        if self.down:
            raise ProfileUnavailable("the profile service did not answer (UNAVAILABLE)")
        return {ident: self.known.get(ident) for ident in identifiers}

    def close(self) -> None:
        pass


def wait_for_people(
    lookup: ProfileLookup,
    identifiers: Collection[Identifier],
    names: Collection[str],
    *,
    wait_s: float,
    every_s: float = 0.1,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[Identifier, Person | None]:
    """`lookup.people`, asking again for those not found until `wait_s` has passed: the
    profile worker reads the same events, and a new person's profile may appear a moment
    after the alerts worker sees their first event."""
    found = lookup.people(identifiers, names)
    deadline = time.monotonic() + wait_s
    missing = [i for i, p in found.items() if p is None]
    while missing and time.monotonic() < deadline:
        sleep(every_s)
        again = lookup.people(missing, names)
        found.update(again)
        missing = [i for i, p in again.items() if p is None]
    return found
