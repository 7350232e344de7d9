"""The profile store's scripts against the real Redis: stitching, merges, guardrails,
idempotent application, the outbox and its publication."""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis
from cx.events.v1 import touchpoint_pb2 as ev

from services.profile.adapters.layout import (
    Stat,
    as_text,
    decode_lineage,
    decode_stats,
    identifier_member,
    split_member,
)
from services.profile.adapters.store import ProfileStore, SnapshotUpdate, ToApply
from services.profile.domain.effects import effects_of, timestamp_ms
from tests.factories import page_view, survey


async def resolve_and_apply(
    store: ProfileStore, events: Sequence[ev.TouchpointEvent]
) -> tuple[list[str], list[str | None]]:
    resolved = await store.resolve(events)
    batch = [
        ToApply(r.profile_id, e, effects_of(e))
        for r, e in zip(resolved, events, strict=True)
        if r.profile_id
    ]
    statuses, _ = await store.apply(batch)
    return statuses, [r.profile_id for r in resolved]


async def owner(client: aioredis.Redis, store: ProfileStore, t: str, value: str) -> str | None:
    pid = await client.get(store.keys.identity(t, value))
    return as_text(pid) if pid else None


async def test_anonymous_browsing_then_login_stitches_one_profile(
    profile_store: ProfileStore, redis_client: aioredis.Redis
) -> None:
    browsing = [page_view(anonymous_id="dev-1") for _ in range(3)]
    _, (anon_pid, *_) = await resolve_and_apply(profile_store, browsing)
    known = page_view(customer_id="c-1", email="ada@example.com")
    _, (known_pid,) = await resolve_and_apply(profile_store, [known])
    assert anon_pid is not None
    assert known_pid is not None
    assert anon_pid != known_pid

    login = page_view(anonymous_id="dev-1", customer_id="c-1")
    resolved = await profile_store.resolve([login])
    assert resolved[0].profile_id == known_pid
    assert resolved[0].merged == (anon_pid,)

    for t, value in (("a", "dev-1"), ("c", "c-1"), ("e", "ada@example.com")):
        assert await owner(redis_client, profile_store, t, value) == known_pid
    main = await redis_client.hgetall(profile_store.keys.profile(known_pid))
    assert main[b"c:events"] == b"4"
    assert not await redis_client.exists(profile_store.keys.profile(anon_pid))
    member = identifier_member("a", "dev-1")
    lineage = await redis_client.hget(profile_store.keys.profile(known_pid, "ids"), member)
    assert lineage is not None
    assert decode_lineage(member, as_text(lineage)).event_id == browsing[0].event_id

    # An event still keyed by the merged profile lands on the survivor.
    late = page_view(anonymous_id="dev-1")
    statuses, profiles = await profile_store.apply([ToApply(anon_pid, late, effects_of(late))])
    assert statuses == ["applied"]
    assert profiles[0].profile_id == known_pid
    assert profiles[0].main["c:events"] == "5"
    assert [o["k"] for o in profiles[0].outbox] == ["merged"]


async def test_the_same_event_applies_once(profile_store: ProfileStore) -> None:
    event = survey(ev.SurveyResponse.METRIC_NPS, 2, customer_id="c-2")
    statuses, (pid,) = await resolve_and_apply(profile_store, [event])
    again, _ = await resolve_and_apply(profile_store, [event])
    assert statuses == ["applied"]
    assert again == ["duplicate"]
    _, (stored,) = await profile_store.apply([ToApply(pid or "", event, effects_of(event))])
    assert stored.main["c:nps.count"] == "1"
    assert len(stored.outbox) == 1


async def test_profiles_with_different_customer_ids_never_merge(
    profile_store: ProfileStore, redis_client: aioredis.Redis
) -> None:
    _, (p1,) = await resolve_and_apply(profile_store, [page_view(customer_id="c-a")])
    _, (p2,) = await resolve_and_apply(
        profile_store, [page_view(customer_id="c-b", email="shared@family.example")]
    )
    # One event claims both customer ids: refused, applied to the strongest identifier's owner.
    _, (pid,) = await resolve_and_apply(
        profile_store, [page_view(customer_id="c-a", email="shared@family.example")]
    )
    assert pid == p1
    assert await owner(redis_client, profile_store, "c", "c-b") == p2
    assert await owner(redis_client, profile_store, "e", "shared@family.example") == p2


async def test_blocked_identifiers_never_link(
    profile_store: ProfileStore, redis_client: aioredis.Redis
) -> None:
    _, (p1,) = await resolve_and_apply(
        profile_store, [page_view(customer_id="c-x", email="test@example.com")]
    )
    _, (p2,) = await resolve_and_apply(
        profile_store, [page_view(customer_id="c-y", phone="+10000000000", anonymous_id="d-y")]
    )
    assert p1 != p2
    assert await owner(redis_client, profile_store, "e", "test@example.com") is None
    only_blocked = await profile_store.resolve([page_view(email="test@example.com")])
    assert only_blocked[0].profile_id is None
    assert only_blocked[0].reason == "blocked"


async def test_identifier_limits_refuse_links_beyond_the_maximum(
    profile_store: ProfileStore, redis_client: aioredis.Redis
) -> None:
    limit = profile_store._guardrails.limits["e"]
    for i in range(limit + 2):
        await resolve_and_apply(
            profile_store, [page_view(customer_id="c-many", email=f"m{i}@x.io")]
        )
    pid = await owner(redis_client, profile_store, "c", "c-many")
    assert pid is not None
    members = await redis_client.hkeys(profile_store.keys.profile(pid, "ids"))
    emails = [m for m in map(as_text, members) if m.startswith("e:")]
    assert len(emails) == limit


async def test_publication_trims_the_outbox_and_indexes_segments(
    profile_store: ProfileStore, redis_client: aioredis.Redis
) -> None:
    event = survey(ev.SurveyResponse.METRIC_NPS, 1, customer_id="c-pub")
    resolved = await profile_store.resolve([event])
    pid = resolved[0].profile_id
    assert pid is not None
    _, (stored,) = await profile_store.apply([ToApply(pid, event, effects_of(event))])
    assert [o["k"] for o in stored.outbox] == ["nps_detractor"]
    await profile_store.publish(
        [SnapshotUpdate(pid, {"stage": "support"}, ("detractors",), (), len(stored.outbox), 7)]
    )
    assert await redis_client.llen(profile_store.keys.profile(pid, "outbox")) == 0
    assert await redis_client.zscore(profile_store.keys.segment("detractors"), pid) == 7
    assert await redis_client.hget(profile_store.keys.profile(pid), "s:stage") == b"support"

    # Publishing for a profile that no longer exists recreates nothing.
    await profile_store.publish([SnapshotUpdate("p_gone", {"stage": "x"}, ("detractors",))])
    assert not await redis_client.exists(profile_store.keys.profile("p_gone"))


async def test_the_scripts_write_only_keys_and_values_the_layout_names(
    profile_store: ProfileStore, redis_client: aioredis.Redis
) -> None:
    keys = profile_store.keys
    anon = page_view(anonymous_id="dev-k")
    known = survey(ev.SurveyResponse.METRIC_NPS, 1, customer_id="c-k")
    login = page_view(anonymous_id="dev-k", customer_id="c-k", email="k@example.com")
    events = [anon, known, login]
    for event in events:
        _, (pid,) = await resolve_and_apply(profile_store, [event])
    assert pid is not None
    await profile_store.publish([SnapshotUpdate(pid, {"segments": "detractors"}, ("detractors",))])

    members = {
        as_text(m): as_text(v)
        for m, v in (await redis_client.hgetall(keys.profile(pid, "ids"))).items()
    }
    named = {
        *keys.all_of_profile(pid),
        *(keys.identity(*split_member(m)) for m in members),
        *(keys.seen(e.event_id) for e in events),
        keys.segment("detractors"),
        keys.alias,
        keys.stats,
        keys.salt,
    }
    written = {as_text(k) async for k in redis_client.scan_iter(match=f"{keys.prefix}*")}
    assert written - named == set()

    email = identifier_member("e", "k@example.com")
    lineage = decode_lineage(email, members[email])
    assert (lineage.event_id, lineage.linked_at_ms, lineage.source_system) == (
        login.event_id,
        timestamp_ms(login),
        "tests",
    )
    stats = decode_stats(await redis_client.hgetall(keys.stats))
    assert (stats[Stat.APPLIED], stats[Stat.PROFILES_CREATED], stats[Stat.MERGES]) == (3, 2, 1)
