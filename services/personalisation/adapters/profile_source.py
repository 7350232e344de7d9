"""How a decision reads the profile: through the profile service's own read path, never a
copy of its Redis layout. Two ways, chosen by `PERSONALISATION_PROFILE_SOURCE`:

- `grpc` (the default): `ProfileService.GetFeatures`, the profile service's cheap read of
  the fields a decision needs. The profile service owns its data; when it is down, a
  decision fails fast with UNAVAILABLE.
- `reader`: the profile service's reader and views as a library, straight from its
  Redis: one hop less. `bench/personalisation.py` measures both.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Protocol

import grpc
import redis
from cx.profile.v1 import profile_pb2 as pb
from cx.profile.v1 import profile_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.grpc_client import traced_channel
from services.common.grpc_errors import DependencyUnavailable, InvalidArgument
from services.common.identifiers import BY_CODE, PERSON_TYPES
from services.common.profile_client import UNAVAILABLE_CODES, feature_values
from services.personalisation.domain.arbitration import ProfileView
from services.profile.adapters.reader import ProfileReader
from services.profile.domain.segments import Segment
from services.profile.views import features_of

PROFILE_SERVICE = pb.DESCRIPTOR.services_by_name["ProfileService"].full_name


class ProfileSource(Protocol):
    def features(
        self, code: str, value: str, names: Collection[str], timeout_s: float
    ) -> ProfileView | None:
        """The profile an identifier belongs to, with the named fields; None if unknown."""
        ...

    def person_identifier(self, profile_id: str, timeout_s: float) -> tuple[str, str] | None:
        """(code, value) of the profile's strongest person identifier, for events about
        it; None if the profile is gone."""
        ...

    def healthy(self) -> bool: ...

    def close(self) -> None: ...


class GrpcProfileSource:
    """Reads through ProfileService.GetFeatures."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = traced_channel(address)
        self.stub = profile_pb2_grpc.ProfileServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def _unavailable(self, exc: grpc.RpcError) -> DependencyUnavailable:
        # Clients are told what is unavailable, not hosts.
        return DependencyUnavailable(
            "profile service", f"the profile service did not answer ({exc.code().name})"
        )

    def features(
        self, code: str, value: str, names: Collection[str], timeout_s: float
    ) -> ProfileView | None:
        request = pb.GetFeaturesRequest(
            identifier=pb.Identifier(type=BY_CODE[code].proto, value=value), names=list(names)
        )
        try:
            reply = self.stub.GetFeatures(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            status = exc.code()
            if status == grpc.StatusCode.NOT_FOUND:
                return None
            if status == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument("identifier", exc.details() or "not valid") from exc
            if status in UNAVAILABLE_CODES:
                raise self._unavailable(exc) from exc
            raise
        fields = feature_values(reply)
        as_of = reply.as_of.ToMilliseconds() if reply.HasField("as_of") else None
        return ProfileView(reply.profile_id, fields, frozenset(reply.segments), as_of)

    def person_identifier(self, profile_id: str, timeout_s: float) -> tuple[str, str] | None:
        request = pb.GetProfileRequest(
            identifier=pb.Identifier(type=pb.IDENTIFIER_TYPE_PROFILE_ID, value=profile_id)
        )
        request.read_mask.paths.append("identities")
        try:
            reply = self.stub.GetProfile(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            if exc.code() in UNAVAILABLE_CODES:
                raise self._unavailable(exc) from exc
            raise
        held = {(link.identifier.type, link.identifier.value) for link in reply.profile.identities}
        for kind in sorted(PERSON_TYPES, key=lambda t: t.strength):
            for proto, value in sorted(held):
                if proto == kind.proto:
                    return kind.code, value
        return None

    def healthy(self) -> bool:
        request = health_pb2.HealthCheckRequest(service=PROFILE_SERVICE)
        reply = self.health.Check(request, timeout=1.0)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def close(self) -> None:
        self.channel.close()


class ReaderProfileSource:
    """Reads with the profile service's reader and views, as a library."""

    def __init__(self, reader: ProfileReader, segments: list[Segment]) -> None:
        self.reader = reader
        self.segments = segments

    def features(
        self, code: str, value: str, names: Collection[str], timeout_s: float
    ) -> ProfileView | None:
        loaded = self.reader.load_identified(code, value)
        if loaded is None:
            return None
        view = features_of(loaded, self.segments, int(time.time() * 1000), names)
        return ProfileView(view.profile_id, view.fields, frozenset(view.segments), view.as_of_ms)

    def person_identifier(self, profile_id: str, timeout_s: float) -> tuple[str, str] | None:
        loaded = self.reader.load(self.reader.follow(profile_id))
        if loaded is None:
            return None
        for kind in sorted(PERSON_TYPES, key=lambda t: t.strength):
            for link in loaded.lineage:
                code, value = link.identifier
                if code == kind.code:
                    return code, value
        return None

    def healthy(self) -> bool:
        return bool(self.reader.client.ping())

    def close(self) -> None:
        client: redis.Redis = self.reader.client
        client.close()
