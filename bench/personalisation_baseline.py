"""Baseline for `bench/personalisation.py`: the straightforward Decide. For each request it
calls `ProfileService/GetProfile` over gRPC for the whole profile, flattens the Profile
message into the fields the catalogue reads (the way the profile's own `fields()` does)
and ranks in plain Python with the same domain code (`arbitration.rank`).

Less work than the service in some ways: no contact ledger (the first ranked actions are
taken), no decision stored in Redis, no decision log on Kafka, no holdout, and a plain
`grpc.server` without the service's tracing, status-mapping and admission interceptors.
More in another: the whole profile is read and serialised instead of the named fields.
The Profile message has no `days_since_nps`, `deliveries`, `delivery_problem_open` or
`payment_failure_open`, so rules on those see them absent (the reason GetFeatures exists).

Run as its own process, as the service is:
`python -m bench.personalisation_baseline --port P --profile-address HOST:PORT`.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
import uuid
from collections.abc import Collection
from concurrent import futures

import grpc
from cx.events.v1 import touchpoint_pb2 as ev
from cx.personalisation.v1 import personalisation_pb2 as pb
from cx.personalisation.v1 import personalisation_pb2_grpc
from cx.profile.v1 import profile_pb2, profile_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.conditions import FieldValue
from services.personalisation.domain import arbitration
from services.personalisation.domain.arbitration import DecisionRequest, ProfileView
from services.personalisation.domain.catalogue import Catalogue, load_catalogue
from services.personalisation.service import CONSENT_FIELDS, context_fields
from services.personalisation.settings import PersonalisationSettings
from services.personalisation.views import BASES, channel_name, chosen

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PersonalisationService"].full_name
PROFILE_TIMEOUT_S = 0.5
WORKERS = 16


def _scalars(message: object) -> dict[str, FieldValue]:
    """The set scalar fields of a message, by name (as the profile's `fields()`)."""
    out: dict[str, FieldValue] = {}
    for descriptor, value in message.ListFields():  # type: ignore[attr-defined]
        if isinstance(value, str | int | float | bool):
            out[descriptor.name] = value
    return out


def flat_fields(profile: profile_pb2.Profile) -> dict[str, FieldValue]:
    """The Profile message as the flat field names the catalogue's conditions read."""
    out: dict[str, FieldValue] = {}
    for group in (profile.activity, profile.commerce, profile.cx):
        out.update(_scalars(group))
    for channel, count in profile.activity.events_by_channel.items():
        out[f"ch.{channel}"] = count
    for payload, count in profile.activity.events_by_type.items():
        out[f"type.{payload}"] = count
    out["journey_stage"] = profile.journey_stage or None
    out["churn_risk"] = profile.churn_risk.score
    out["churn_band"] = profile.churn_risk.band or None
    out["value_tier"] = profile.value_tier or None
    out["clv_total"] = profile.commerce.clv_total
    for key, trait in profile.traits.items():
        if isinstance(trait, str | int | float | bool):
            out[f"traits.{key}"] = trait
    for consent in profile.consents:
        purpose = ev.ConsentChange.Purpose.Name(consent.purpose).removeprefix("PURPOSE_")
        out[f"consent.{purpose.lower()}"] = consent.granted
    return out


def profile_view(profile: profile_pb2.Profile, names: Collection[str]) -> ProfileView:
    fields = flat_fields(profile)
    return ProfileView(
        profile.profile_id,
        {k: v for k, v in fields.items() if k in names and v is not None},
        frozenset(profile.segments),
    )


class BaselineServicer(personalisation_pb2_grpc.PersonalisationServiceServicer):
    def __init__(self, catalogue: Catalogue, profile_address: str) -> None:
        self.catalogue = catalogue
        self.names = catalogue.fields_read() | CONSENT_FIELDS
        self.channel = grpc.insecure_channel(profile_address)
        self.profiles = profile_pb2_grpc.ProfileServiceStub(self.channel)

    def Decide(self, request: pb.DecideRequest, context: grpc.ServicerContext) -> pb.DecideResponse:
        request_ = DecisionRequest(
            placement=request.placement,
            channel=channel_name(request.channel),
            now_ms=int(time.time() * 1000),
            context=context_fields(request.context),
            want=request.max_actions or 1,
        )
        identified = request.HasField("identifier")
        profile: ProfileView | None = None
        if identified:
            try:
                reply = self.profiles.GetProfile(
                    profile_pb2.GetProfileRequest(identifier=request.identifier),
                    timeout=PROFILE_TIMEOUT_S,
                )
                profile = profile_view(reply.profile, self.names)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    context.abort(exc.code(), f"profile service: {exc.details()}")
        ranking = arbitration.rank(
            self.catalogue, request_, profile, identified=identified, holdout=False
        )
        decision = arbitration.finish(
            ranking, arbitration.choose_without_ledger(ranking, request_.want)
        )
        person = profile.profile_id if profile else ""
        return pb.DecideResponse(
            decision_id=uuid.uuid4().hex,
            actions=chosen(decision, person, request.placement),
            profile_id=person,
            policy_version=self.catalogue.version,
            group=pb.GROUP_TREATMENT,
            basis=BASES[ranking.basis],
            experience_signals=list(ranking.signals),
        )

    def ReportOutcome(
        self, request: pb.ReportOutcomeRequest, context: grpc.ServicerContext
    ) -> pb.ReportOutcomeResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the baseline only decides")

    def ListActions(
        self, request: pb.ListActionsRequest, context: grpc.ServicerContext
    ) -> pb.ListActionsResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the baseline only decides")

    def GetAction(
        self, request: pb.GetActionRequest, context: grpc.ServicerContext
    ) -> pb.GetActionResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the baseline only decides")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--profile-address", required=True)
    args = parser.parse_args()
    catalogue = load_catalogue(PersonalisationSettings().catalogue_file)
    servicer = BaselineServicer(catalogue, args.profile_address)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=WORKERS))
    personalisation_pb2_grpc.add_PersonalisationServiceServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=2).wait()
    servicer.channel.close()


if __name__ == "__main__":
    main()
