"""The profile service's part of the `make demo` summary: what the stream made of the run."""

from __future__ import annotations

import time

import grpc
import redis
from cx.profile.v1 import profile_pb2 as pb
from cx.profile.v1 import profile_pb2_grpc

from services.common.settings import grpc_address, redis_settings
from services.demo.summary import DemoRun, SectionUnavailable, register
from services.profile.adapters.layout import Keys, Stat, decode_stats
from services.profile.domain.segments import load_segments
from services.profile.settings import ProfileSettings

# How long the summary waits for the worker to apply the run's events.
CATCH_UP_S = 180.0
STALL_S = 30.0


class ProfileSection:
    title = "Profiles"

    def __init__(self) -> None:
        self.keys = Keys(ProfileSettings().key_prefix)
        self.redis = redis.Redis.from_url(redis_settings().redis_url, socket_timeout=5)
        self.start: dict[str, int] = {}

    def _stats(self) -> dict[str, int]:
        return decode_stats(self.redis.hgetall(self.keys.stats))

    def before(self) -> None:
        try:
            self.start = self._stats()
        except redis.RedisError as exc:
            raise SectionUnavailable(f"Redis is not reachable: {exc}") from exc

    def _delta(self, name: Stat) -> int:
        return self._stats().get(name, 0) - self.start.get(name, 0)

    def _wait_for_worker(self, target: int) -> tuple[int, float]:
        """Waits until the run's events are applied, or nothing moved for a while."""
        began = last_change = time.monotonic()
        seen = -1
        while True:
            done = sum(map(self._delta, (Stat.APPLIED, Stat.BLOCKED, Stat.SUPPRESSED)))
            now = time.monotonic()
            if done != seen:
                seen, last_change = done, now
            if done >= target or now - last_change > STALL_S or now - began > CATCH_UP_S:
                return done, now - began
            time.sleep(0.5)

    def lines(self, run: DemoRun) -> list[str]:
        done, waited = self._wait_for_worker(run.accepted)
        if done == 0 and run.accepted:
            raise SectionUnavailable("the profile worker applied nothing: is it running?")
        stats = self._stats()
        created, merges = self._delta(Stat.PROFILES_CREATED), self._delta(Stat.MERGES)
        profiles = stats.get(Stat.PROFILES_CREATED, 0) - stats.get(Stat.MERGES, 0)
        out = [
            f"events applied to profiles: {self._delta(Stat.APPLIED)} of {run.accepted} "
            f"(caught up in {waited:.1f}s)",
            f"identity stitching: {self._delta(Stat.STITCHED)} identifiers linked to a known "
            f"profile, {merges} profiles merged; {created - merges} profiles for "
            f"{len(run.customers)} customers",
            f"all time: {profiles} profiles",
        ]
        with grpc.insecure_channel(grpc_address(ProfileSettings().grpc_port)) as channel:
            stub = profile_pb2_grpc.ProfileServiceStub(channel)
            sizes = []
            for segment in load_segments():
                reply = stub.ListSegmentMembers(
                    pb.ListSegmentMembersRequest(segment=segment.name, page_size=1), timeout=5
                )
                sizes.append(f"{segment.name} {reply.total}")
            out.append("segments (all time): " + ", ".join(sizes))
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
                    timeout=5,
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


register(ProfileSection())
