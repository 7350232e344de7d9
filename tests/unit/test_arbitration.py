"""The decision path without a broker: a small catalogue, profile views as the profile
service would serve them, and the contact ledger's in-memory model standing in for Redis."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.conditions import FieldValue
from services.common.contact_ledger import LedgerModel
from services.personalisation.domain import arbitration as arb
from services.personalisation.domain.arbitration import Basis, ProfileView, Stage
from services.personalisation.domain.catalogue import Catalogue, load_catalogue, parse_catalogue

NOW_MS = int(time.time() * 1000)
CATALOGUE = """
[contact]
marketing_per_day = 2

[kind.upsell.contact]
max_impressions = 3
window_days = 7
dismiss_cooloff_days = 14
stop_after_accept = true

[kind.service_recovery]
contact = { max_impressions = 10, window_days = 7 }

[[suitability]]
name = "open_complaint"
description = "an open complaint"
all = [{ field = "open_complaints", op = ">=", value = 1 }]
suppress = ["upsell", "cross_sell"]
promote = ["service_recovery"]

[[action]]
id = "gold_upgrade"
kind = "upsell"
placements = ["web.home.hero"]
business_value = 50.0
propensity = { default = 0.05, vip = 0.2 }
all = [{ field = "orders", op = ">=", value = 1 }]
[[action.context]]
name = "mobile"
weight = 2.0
all = [{ field = "context.device", op = "==", value = "mobile" }]
[[action.variant]]
id = "a"
title = "Go gold"

[[action]]
id = "socks"
kind = "cross_sell"
placements = ["web.*"]
business_value = 5.0
propensity = { default = 0.1 }
[[action.variant]]
id = "a"
title = "Socks"

[[action]]
id = "apology"
kind = "service_recovery"
placements = ["web.home.hero"]
business_value = 10.0
propensity = { default = 0.3 }
all = [{ field = "open_complaints", op = ">=", value = 1 }]
[[action.variant]]
id = "a"
title = "Sorry"

[[action]]
id = "weekly_mail"
kind = "cross_sell"
placements = ["email.weekly"]
channels = ["email"]
business_value = 3.0
propensity = { default = 0.02 }
[[action.variant]]
id = "a"
title = "This week"
"""


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    import tomllib

    return parse_catalogue(tomllib.loads(CATALOGUE), "test.toml")


def view(
    segments: frozenset[str] = frozenset(),
    extra: Mapping[str, FieldValue] | None = None,
    drop: tuple[str, ...] = (),
    **fields: Any,
) -> ProfileView:
    base: dict[str, FieldValue] = {
        "consent.personalisation": True,
        "consent.marketing_email": True,
        "orders": 2,
        "open_complaints": 0,
    }
    base.update(fields)
    base.update(extra or {})
    for name in drop:
        del base[name]
    return ProfileView("p_1", base, segments, NOW_MS)


def request(
    placement: str = "web.home.hero", channel: str = "web", **context: FieldValue
) -> arb.DecisionRequest:
    return arb.DecisionRequest(
        placement, channel, NOW_MS, {f"context.{k}": v for k, v in context.items()}
    )


def ranked_ids(ranking: arb.Ranking) -> list[str]:
    return [s.action.action_id for s in ranking.ranked]


def filtered(ranking: arb.Ranking) -> Mapping[str, arb.Filtered]:
    return {f.action.action_id: f for f in ranking.filtered}


def test_priority_is_p_c_v_l_and_ranks_best_first(catalogue: Catalogue) -> None:
    ranking = arb.rank(
        catalogue,
        request(device="mobile"),
        view(frozenset({"vip"})),
        identified=True,
        holdout=False,
    )
    assert ranked_ids(ranking) == ["gold_upgrade", "socks"]
    gold = ranking.ranked[0].score
    assert (gold.propensity, gold.context_weight, gold.business_value, gold.lever) == (
        0.2,
        2.0,
        50.0,
        1.0,
    )
    assert gold.priority == pytest.approx(20.0)
    assert gold.propensity_source == "prior:segment:vip"
    out = filtered(ranking)
    assert out["apology"].stage is Stage.ELIGIBILITY
    assert out["weekly_mail"].policy == "eligibility:placement"


def test_an_open_complaint_suppresses_selling_and_promotes_recovery(catalogue: Catalogue) -> None:
    ranking = arb.rank(
        catalogue, request(), view(open_complaints=1), identified=True, holdout=False
    )
    assert ranking.signals == ("open_complaint",)
    assert ranked_ids(ranking) == ["apology"]
    out = filtered(ranking)
    for selling in ("gold_upgrade", "socks"):
        assert out[selling].stage is Stage.SUITABILITY
        assert out[selling].policy == "suitability:open_complaint"
        assert out[selling].score is not None  # scored, so explanations show what was lost
    assert "suitability.recovery_first" in {r.code for r in ranking.ranked[0].reasons}


@given(
    value=st.floats(min_value=0.01, max_value=1e6), lever=st.floats(min_value=0.01, max_value=100)
)
def test_promoted_recovery_ranks_first_whatever_the_selling_scores(
    value: float, lever: float
) -> None:
    import tomllib

    doc = tomllib.loads(CATALOGUE)
    doc["action"][0]["business_value"] = value
    doc["action"][0]["lever"] = lever
    # The suppressing rule off, the promoting rule on: recovery still ranks first.
    doc["suitability"][0]["suppress"] = []
    catalogue = parse_catalogue(doc, "test.toml")
    ranking = arb.rank(
        catalogue, request(), view(open_complaints=1), identified=True, holdout=False
    )
    assert ranked_ids(ranking)[0] == "apology"


def test_without_personalisation_consent_the_profile_is_not_used(catalogue: Catalogue) -> None:
    profile = view(frozenset({"vip"}), {"consent.personalisation": False}, open_complaints=1)
    ranking = arb.rank(catalogue, request(), profile, identified=True, holdout=False)
    assert ranking.basis is Basis.NO_PERSONALISATION_CONSENT
    assert not ranking.signals  # the experience rules read the profile: not used either
    assert filtered(ranking)["gold_upgrade"].policy == "eligibility:needs_profile"
    assert ranked_ids(ranking) == ["socks"]
    assert ranking.ranked[0].score.propensity_source == "prior:default"
    # The decision log keeps consent, nothing else of the profile.
    assert set(ranking.features) <= {"consent.personalisation", "consent.marketing_email"}


def test_marketing_needs_the_channels_consent(catalogue: Catalogue) -> None:
    mail = request("email.weekly", "email")
    granted = arb.rank(catalogue, mail, view(), identified=True, holdout=False)
    assert ranked_ids(granted) == ["weekly_mail"]
    withdrawn = arb.rank(
        catalogue,
        mail,
        view(extra={"consent.marketing_email": False}),
        identified=True,
        holdout=False,
    )
    assert filtered(withdrawn)["weekly_mail"].policy == "consent:marketing_email"
    never_asked = view(drop=("consent.marketing_email",))
    assert not ranked_ids(arb.rank(catalogue, mail, never_asked, identified=True, holdout=False))


def test_anonymous_and_unknown_people_get_generic_ranking(catalogue: Catalogue) -> None:
    anonymous = arb.rank(catalogue, request(), None, identified=False, holdout=False)
    unknown = arb.rank(catalogue, request(), None, identified=True, holdout=False)
    assert (anonymous.basis, unknown.basis) == (Basis.ANONYMOUS, Basis.UNKNOWN_PROFILE)
    assert ranked_ids(anonymous) == ranked_ids(unknown) == ["socks"]
    assert not anonymous.features


def test_the_holdout_ranks_by_value_and_lever_only(catalogue: Catalogue) -> None:
    ranking = arb.rank(
        catalogue, request(device="mobile"), view(frozenset({"vip"})), identified=True, holdout=True
    )
    gold = ranking.ranked[0]
    assert (gold.score.propensity, gold.score.context_weight) == (1.0, 1.0)
    assert gold.score.propensity_source == "control:static"
    assert "holdout.control" in {r.code for r in gold.reasons}


def test_holdout_membership_is_stable_and_near_its_share() -> None:
    people = [f"p_{i}" for i in range(20_000)]
    inside = [p for p in people if arb.in_holdout(p, 10.0, "salt")]
    assert 0.09 < len(inside) / len(people) < 0.11
    assert inside == [p for p in people if arb.in_holdout(p, 10.0, "salt")]
    assert not arb.in_holdout("p_1", 0.0, "salt")
    assert not arb.in_holdout("", 50.0, "salt")


def test_the_ledger_caps_and_cools_off_and_finish_accounts_for_every_action(
    catalogue: Catalogue,
) -> None:
    ledger = LedgerModel()
    shown: list[str] = []
    for i in range(6):
        ranking = arb.rank(catalogue, request(), view(), identified=True, holdout=False)
        reservation = ledger.reserve(
            "p_1",
            f"d{i}",
            NOW_MS + i,
            arb.candidates(catalogue, ranking),
            1,
            catalogue.marketing_per_day,
        )
        decision = arb.finish(ranking, reservation)
        shown += [s.action.action_id for s in decision.chosen]
        accounted = {s.action.action_id for s in decision.chosen} | {
            f.action.action_id for f in decision.filtered
        }
        assert accounted == {a.action_id for a in catalogue.actions}
    # Two marketing impressions a day in all, whatever the actions.
    assert len(shown) == 2
    last = decision.filtered
    capped = [f for f in last if f.stage is Stage.CONTACT_POLICY]
    assert {f.policy for f in capped} == {"contact:global.marketing_per_day"}

    # A dismiss holds the action back for the kind's cool-off.
    fresh = LedgerModel()
    ranking = arb.rank(catalogue, request(), view(), identified=True, holdout=False)
    first = fresh.reserve("p_2", "d1", NOW_MS, arb.candidates(catalogue, ranking), 1, 0)
    assert first.chosen == ("gold_upgrade",)
    fresh.record_outcome("p_2", "d1", "gold_upgrade", "upsell", True, "dismiss", NOW_MS)
    later = fresh.reserve(
        "p_2", "d2", NOW_MS + 86_400_000, arb.candidates(catalogue, ranking), 1, 0
    )
    assert later.chosen == ("socks",)
    assert {r.policy for r in later.refused if r.action_id == "gold_upgrade"} == {
        "contact:kind.dismiss_cooloff"
    }


def test_the_shipped_catalogue_recovers_first_on_every_competing_placement() -> None:
    catalogue = load_catalogue()
    troubled = view(
        frozenset({"open_complaint"}),
        {"consent.marketing_push": True, "consent.marketing_sms": True},
        open_complaints=1,
    )
    for action in catalogue.actions:
        if action.kind != "service_recovery":
            continue
        for placement in action.placements:
            channels = sorted(action.channels) or [placement.split(".")[0]]
            for channel in channels:
                ranking = arb.rank(
                    catalogue, request(placement, channel), troubled, identified=True, holdout=False
                )
                kinds = [s.action.kind for s in ranking.ranked]
                assert not {"upsell", "cross_sell"} & set(kinds), (placement, kinds)
                if "service_recovery" in kinds:
                    assert kinds[0] == "service_recovery", (placement, kinds)


def test_a_variant_written_for_a_placement_is_shown_there_and_only_there() -> None:
    from services.personalisation.views import pick_variant

    action = load_catalogue().action("apology_voucher")
    assert action is not None
    people = [f"p_{i}" for i in range(50)]
    at_agent = {pick_variant(action, p, "agent.panel").variant for p in people}
    on_web = {pick_variant(action, p, "web.home.hero").variant for p in people}
    assert at_agent == {"agent_script"}
    assert "agent_script" not in on_web
    assert on_web
