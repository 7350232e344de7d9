"""The profile service's part of the demo summary: what the stream made of the run, read
through `cx.profile.v1.ProfileService` only (GetStats, GetProfile)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from cx.profile.v1 import profile_pb2 as pb
from cx.profile.v1 import profile_pb2_grpc

from services.common.grpc_client import traced_channel
from services.common.settings import grpc_address
from services.demo.summary import DemoRun, SectionUnavailable
from services.profile.settings import ProfileSettings

# How long the summary waits for the worker to apply the run's events.
CATCH_UP_S = 180.0
STALL_S = 30.0
CALL_TIMEOUT_S = 5.0


def _done(stats: pb.GetStatsResponse) -> int:
    """Events the worker has finished with: applied, or refused for their identifiers."""
    return stats.events_applied + stats.events_blocked + stats.events_suppressed


class ProfileSection:
    title = "Profiles"

    def __init__(self, address: str) -> None:
        self.address = address
        self.start = pb.GetStatsResponse()

    @classmethod
    def from_settings(cls) -> ProfileSection:
        return cls(grpc_address(ProfileSettings().grpc_port))

    @contextmanager
    def _stub(self) -> Iterator[profile_pb2_grpc.ProfileServiceStub]:
        with traced_channel(self.address) as channel:
            yield profile_pb2_grpc.ProfileServiceStub(channel)

    def _stats(self, stub: profile_pb2_grpc.ProfileServiceStub) -> pb.GetStatsResponse:
        try:
            stats: pb.GetStatsResponse = stub.GetStats(pb.GetStatsRequest(), timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            raise SectionUnavailable(
                f"the profile service at {self.address} did not answer: "
                f"{exc.code().name}: {exc.details()}"
            ) from exc
        return stats

    def before(self) -> None:
        with self._stub() as stub:
            self.start = self._stats(stub)

    def _wait_for_worker(
        self, stub: profile_pb2_grpc.ProfileServiceStub, target: int
    ) -> tuple[pb.GetStatsResponse, float]:
        """Waits until the run's events are applied, or nothing moved for a while."""
        began = last_change = time.monotonic()
        seen = -1
        while True:
            stats = self._stats(stub)
            done = _done(stats) - _done(self.start)
            now = time.monotonic()
            if done != seen:
                seen, last_change = done, now
            if done >= target or now - last_change > STALL_S or now - began > CATCH_UP_S:
                return stats, now - began
            time.sleep(0.5)

    def lines(self, run: DemoRun) -> list[str]:
        with self._stub() as stub:
            # The personalisation service's outcome events go through the worker too.
            target = run.accepted + run.outcome_events
            stats, waited = self._wait_for_worker(stub, target)
            if _done(stats) == _done(self.start) and run.accepted:
                raise SectionUnavailable("the profile worker applied nothing: is it running?")
            start = self.start
            created = stats.profiles_created - start.profiles_created
            merges = stats.profiles_merged - start.profiles_merged
            profiles = stats.profiles_created - stats.profiles_merged
            sizes = ", ".join(f"{s.segment} {s.members}" for s in stats.segments)
            out = [
                f"events applied to profiles: {stats.events_applied - start.events_applied} "
                f"of {target} (caught up in {waited:.1f}s)",
                f"identity stitching: "
                f"{stats.identifiers_stitched - start.identifiers_stitched} identifiers linked "
                f"to a known profile, {merges} profiles merged; {created - merges} profiles for "
                f"{len(run.customers)} customers",
                f"all time: {profiles} profiles",
                "segments (all time): " + sizes,
            ]
            out.extend(self._examples(stub, run))
        return out

    def _examples(self, stub: profile_pb2_grpc.ProfileServiceStub, run: DemoRun) -> list[str]:
        known = [c for c in run.customers if c.identifies]
        negative = [c for c in known if c.customer_id in run.negative][:2]
        plain = [c for c in known if c.customer_id not in run.negative][:1]
        out = ["example profiles:"]
        for customer in negative + plain:
            try:
                reply = stub.GetProfile(
                    pb.GetProfileRequest(
                        identifier=pb.Identifier(
                            type=pb.IDENTIFIER_TYPE_CUSTOMER_ID, value=customer.customer_id
                        )
                    ),
                    timeout=CALL_TIMEOUT_S,
                )
            except grpc.RpcError as exc:
                out.append(f"  {customer.customer_id}: {exc.code().name}")
                continue
            p = reply.profile
            nps = f"NPS {p.cx.nps_last} ({p.cx.nps_category})" if p.cx.HasField("nps_last") else ""
            reasons = "; ".join(r.description for r in p.churn_risk.reasons[:2])
            trouble = ", ".join(sorted(run.negative.get(customer.customer_id, ())))
            out.append(f"  {customer.customer_id} [{trouble or 'no trouble'}]")
            out.append(
                f"    {len(p.identities)} identifiers, {p.activity.events} events, stage "
                f"{p.journey_stage}, {p.commerce.orders} orders, CLV {p.commerce.clv_total:.0f} "
                f"{p.commerce.currency_code} ({p.value_tier}) {nps}"
            )
            out.append(
                f"    churn risk {p.churn_risk.score:.2f} ({p.churn_risk.band}): {reasons or '-'}"
            )
            out.append(f"    segments: {', '.join(p.segments) or '-'}")
        return out
