"""The action catalogue: the shipped file, every way a file is refused, and what an action
answers (placements, dates, propensity priors, context weights)."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from cx.events.v1 import touchpoint_pb2 as ev
from hypothesis import given
from hypothesis import strategies as st

from services.common.conditions import Condition, Rule, RuleConfigError
from services.personalisation.domain.catalogue import (
    CHANNELS,
    DEFAULT_CHANNEL_CONSENT,
    DEFAULT_PATH,
    KINDS,
    MARKETING_KINDS,
    PURPOSES,
    Action,
    Catalogue,
    ContactRule,
    ContextWeight,
    Variant,
    decision_fields,
    load_catalogue,
    parse_catalogue,
    placement_matches,
)
from services.profile.domain.segments import load_segments, profile_fields

SEGMENTS = frozenset(s.name for s in load_segments())
SELLING = frozenset({"upsell", "cross_sell"})
RECOVERY = ("apology_voucher", "track_my_order", "call_me_back", "fix_payment")
EXPERIENCE_RULES = {
    "open_complaint",
    "recent_detractor",
    "payment_failure_open",
    "delivery_problem_open",
    "repeat_contacts",
    "open_incident",
}


def action(**raw: Any) -> dict[str, Any]:
    """A minimal valid [[action]] table, with `raw` on top (None removes a key)."""
    table: dict[str, Any] = {
        "id": "gold_upgrade",
        "kind": "upsell",
        "description": "Upgrade to gold",
        "placements": ["web.home.hero"],
        "business_value": 10.0,
        "propensity": {"default": 0.05},
        "variant": [{"id": "a", "title": "Go gold"}],
    }
    table.update(raw)
    return {k: v for k, v in table.items() if v is not None}


def catalogue_of(*actions: dict[str, Any], **top: Any) -> Catalogue:
    return parse_catalogue({"action": list(actions) or [action()], **top}, "catalogue.toml")


def refused(document: dict[str, Any]) -> str:
    with pytest.raises(RuleConfigError) as raised:
        parse_catalogue(document, "catalogue.toml")
    return str(raised.value)


def one(**raw: Any) -> Action:
    (built,) = catalogue_of(action(**raw)).actions
    return built


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


# --- the shipped file ----------------------------------------------------------------------


def test_the_shipped_catalogue_has_the_shape_the_issue_asks_for() -> None:
    catalogue = load_catalogue()
    assert catalogue.source == str(DEFAULT_PATH)
    assert len(catalogue.actions) >= 15
    assert {a.kind for a in catalogue.actions} == set(KINDS)
    assert set(catalogue.kinds) == set(KINDS)
    for a in catalogue.actions:
        assert a.description
        assert a.variants
        assert all(v.title for v in a.variants)
        assert a.business_value > 0
        assert a.lever > 0
        assert 0 < a.propensity_default <= 1
        assert set(a.propensity_by_segment) <= SEGMENTS
    # Every service-recovery action competes with selling actions for a placement.
    selling = {p for a in catalogue.actions if a.kind in SELLING for p in a.placements}
    for action_id in RECOVERY:
        recovery = catalogue.action(action_id)
        assert recovery is not None
        assert recovery.kind == "service_recovery"
        assert selling & set(recovery.placements), action_id
    for placement, channel in [
        ("web.home.hero", "web"),
        ("web.basket.banner", "web"),
        ("app.home.banner", "app"),
        ("agent.panel", "phone"),
    ]:
        kinds = {a.kind for a in catalogue.actions if a.serves(placement, channel)}
        assert "service_recovery" in kinds, placement
        assert kinds & SELLING, placement


def test_the_shipped_rules_and_policies() -> None:
    catalogue = load_catalogue()
    assert {r.name for r in catalogue.suitability} == EXPERIENCE_RULES
    for rule in catalogue.suitability:
        assert rule.suppress_kinds == SELLING
        assert rule.promote_kinds == {"service_recovery"}
    detractor = next(r for r in catalogue.suitability if r.name == "recent_detractor")
    assert detractor.rule.matches({"nps_category": "detractor", "days_since_nps": 12.0})
    assert not detractor.rule.matches({"nps_category": "detractor", "days_since_nps": 45.0})
    assert catalogue.marketing_per_day == 3
    assert dict(catalogue.channel_consent) == dict(DEFAULT_CHANNEL_CONSENT)
    upsell = catalogue.kinds["upsell"]
    assert upsell.marketing
    assert upsell.contact == ContactRule(3, 7.0, 14.0, True)
    assert not catalogue.kinds["service_recovery"].marketing
    for a in catalogue.actions:
        if a.channels == {"email"}:
            assert a.consent_purpose == "marketing_email", a.action_id
        if a.channels == {"push"}:
            assert a.consent_purpose == "marketing_push", a.action_id
    # What a decision must fetch: the profile fields the rules read, not request fields.
    read = catalogue.fields_read()
    assert {"open_complaints", "payment_failure_open", "delivery_problem_open"} <= read
    # open_incidents is the profile's (the alerts service's incidents about the person).
    assert "open_incidents" in read
    assert all(name in profile_fields() for name in read), read
    assert not read & {"hour", "placement", "context.cart_size"}


def test_channels_and_purposes_come_from_the_enums() -> None:
    from_the_enum = tuple(
        name.removeprefix("CHANNEL_").lower()
        for name, number in ev.Channel.items()
        if number != ev.CHANNEL_UNSPECIFIED
    )
    assert from_the_enum == CHANNELS
    assert {"web", "app", "email", "sms", "push", "phone", "chat"} <= set(CHANNELS)
    assert {"marketing_email", "marketing_sms", "marketing_push"} <= set(PURPOSES)
    assert "unspecified" not in CHANNELS + PURPOSES


def test_decision_fields_offer_profile_request_and_segment_fields() -> None:
    fields = decision_fields()
    for name in (
        "open_complaints",
        "traits.plan",
        "consent.marketing_email",
        "segment.vip",
        "placement",
        "channel",
        "hour",
        "weekday",
        "context.device",
        "context.cart_size",
        "context.attributes.weather",
        "open_incidents",
    ):
        assert name in fields, name
    assert "context.devcie" not in fields
    assert "open_complaint" not in fields


# --- refused files -------------------------------------------------------------------------

BAD_ACTIONS: list[tuple[dict[str, Any], str]] = [
    ({"business_value": 0}, "business_value must be a number > 0"),
    ({"business_value": "high"}, "business_value must be a number > 0"),
    ({"business_value": math.inf}, "business_value must be a number > 0"),
    ({"business_value": None}, "business_value is required"),
    ({"lever": -1.0}, "lever must be a number > 0"),
    ({"lever": True}, "lever must be a number > 0"),
    ({"colour": "gold"}, "unknown keys ['colour']"),
    ({"kind": "upsel"}, 'unknown kind "upsel"; expected one of upsell, cross_sell'),
    ({"kind": None}, "unknown kind"),
    ({"channels": ["fax"]}, 'channels: unknown channel "fax"; expected one of web, app'),
    ({"channels": "web"}, "channels must be a list of channel names"),
    ({"placements": ["Web.Home"]}, 'placements: "Web.Home" is not a placement'),
    ({"placements": ["web.*.hero"]}, 'placements: "web.*.hero" is not a placement'),
    ({"placements": ["web."]}, 'placements: "web." is not a placement'),
    ({"placements": []}, "placements must be a non-empty list"),
    ({"placements": None}, "placements must be a non-empty list"),
    ({"valid_from": "tomorrow"}, "valid_from must be an RFC 3339 date-time with an offset"),
    ({"valid_until": "2026-13-01T00:00:00Z"}, "valid_until must be an RFC 3339 date-time"),
    ({"valid_from": datetime(2026, 1, 1)}, "valid_from must be an RFC 3339 date-time"),
    ({"valid_from": "2026-01-01T00:00:00"}, "valid_from must be an RFC 3339 date-time"),
    (
        {"valid_from": "2026-02-01T00:00:00Z", "valid_until": "2026-02-01T00:00:00Z"},
        "valid_until must be later than valid_from",
    ),
    ({"consent_purpose": "email"}, 'unknown consent_purpose "email"; expected one of'),
    ({"marketing": "yes"}, "marketing must be true or false"),
    ({"propensity": {"default": 1.5}}, "propensity.default must be a number in (0, 1]"),
    ({"propensity": {"default": 0}}, "propensity.default must be a number in (0, 1]"),
    ({"propensity": {"default": 0.1, "vip": -0.1}}, "propensity.vip must be a number in (0, 1]"),
    ({"propensity": {"default": 0.1, "vipp": 0.2}}, "propensity.vipp: unknown segment 'vipp'"),
    ({"propensity": {"vip": 0.2}}, "propensity.default is required"),
    ({"propensity": None}, "propensity is required"),
    (
        {"all": [{"field": "order", "op": ">=", "value": 1}]},
        'condition all[0] { field = "order", op = ">=", value = 1 }: unknown field \'order\'',
    ),
    (
        {"any": [{"field": "segment.vipp", "op": "==", "value": True}]},
        'condition any[0] { field = "segment.vipp", op = "==", value = true }: '
        "unknown segment in 'segment.vipp'",
    ),
    (
        {"all": [{"field": "orders", "op": "=>", "value": 1}]},
        'condition all[0] { field = "orders", op = "=>", value = 1 }: unknown op \'=>\'',
    ),
    (
        {"context": [{"weight": 1.2, "all": [{"field": "context.devcie", "op": "exists"}]}]},
        'context[0], condition all[0] { field = "context.devcie", op = "exists" }: '
        "unknown field 'context.devcie'; did you mean context.device",
    ),
    (
        {"context": [{"name": "mobile", "weight": 0, "all": [{"field": "hour", "op": "exists"}]}]},
        "context 'mobile': weight must be a number > 0",
    ),
    ({"context": [{"weight": 2.0}]}, "context[0]: needs at least one condition in all or any"),
    ({"variant": None}, "needs at least one variant"),
    ({"variant": []}, "needs at least one variant"),
    ({"variant": [{"id": "a"}]}, "variant 'a': title is required"),
    ({"variant": [{"title": "x"}]}, "variant[0]: id is required"),
    ({"variant": [{"id": "a", "title": "x", "cta": "Go"}]}, "variant 'a': unknown keys ['cta']"),
    (
        {"variant": [{"id": "a", "title": "x", "deep_link": "shop gold"}]},
        "variant 'a': deep_link 'shop gold' must be an absolute URL",
    ),
    (
        {"variant": [{"id": "a", "title": "x"}, {"id": "a", "title": "y"}]},
        "variant 'a' defined twice",
    ),
    ({"contact": {"max_impressions": -1}}, "contact: max_impressions must be a whole number"),
    ({"contact": {"max_impressions": 2.5}}, "contact: max_impressions must be a whole number"),
    ({"contact": {"window_days": 0}}, "contact: window_days must be a number of days > 0"),
    ({"contact": {"dismiss_cooloff_days": -1}}, "contact: dismiss_cooloff_days must be"),
    ({"contact": {"stop_after_accept": "yes"}}, "contact: stop_after_accept must be true or"),
    ({"contact": {"max": 3}}, "contact: unknown keys ['max']"),
]


@pytest.mark.parametrize(("raw", "message"), BAD_ACTIONS)
def test_a_bad_action_is_refused_naming_the_action_and_the_key(
    raw: dict[str, Any], message: str
) -> None:
    text = refused({"action": [action(id="fine"), action(**raw)]})
    assert text.startswith("catalogue.toml: action 'gold_upgrade'"), text
    assert message in text, text


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {"action": [action(), action()]},
            "catalogue.toml: action 'gold_upgrade': defined twice",
        ),
        (
            {"action": [action(id="Gold")]},
            'catalogue.toml: action #1: id "Gold" must be lower-case letters',
        ),
        ({"action": [action(id=None)]}, "catalogue.toml: action #1: id is required"),
        ({"action": []}, "catalogue.toml: no actions"),
        ({"action": {"id": "x"}}, "catalogue.toml: action must be an array of tables"),
        ({"action": ["gold"]}, "catalogue.toml: action #1: must be a table"),
        (
            {"action": [action()], "offer": []},
            "catalogue.toml: unknown top-level keys ['offer']",
        ),
        (
            {"action": [action()], "kind": {"upsel": {"marketing": True}}},
            "catalogue.toml: kind 'upsel': unknown kind; expected one of upsell",
        ),
        (
            {"action": [action()], "kind": {"upsell": {"contact": {"max_impressions": "3"}}}},
            "catalogue.toml: kind 'upsell', contact: max_impressions must be a whole number",
        ),
        (
            {"action": [action()], "kind": {"upsell": {"marketing": 1}}},
            "catalogue.toml: kind 'upsell': marketing must be true or false",
        ),
        (
            {"action": [action()], "contact": {"marketing_per_day": -1}},
            "catalogue.toml: contact: marketing_per_day must be a whole number >= 0",
        ),
        (
            {"action": [action()], "contact": {"per_day": 3}},
            "catalogue.toml: contact: unknown keys ['per_day']",
        ),
        (
            {"action": [action()], "channel_consent": {"fax": "marketing_email"}},
            "catalogue.toml: channel_consent: unknown channel 'fax'",
        ),
        (
            {"action": [action()], "channel_consent": {"sms": "sms"}},
            'catalogue.toml: channel_consent.sms: unknown consent purpose "sms"',
        ),
        (
            {
                "action": [action()],
                "suitability": [
                    {"name": "upset", "all": [{"field": "open_complaint", "op": "exists"}]}
                ],
            },
            "catalogue.toml: suitability 'upset', condition all[0] "
            '{ field = "open_complaint", op = "exists" }: unknown field \'open_complaint\'; '
            "did you mean open_complaints",
        ),
        (
            {
                "action": [action()],
                "suitability": [
                    {
                        "name": "upset",
                        "suppress": ["upsel"],
                        "all": [{"field": "hour", "op": "exists"}],
                    }
                ],
            },
            "catalogue.toml: suitability 'upset': suppress: unknown kind \"upsel\"",
        ),
        (
            {
                "action": [action()],
                "suitability": [
                    {
                        "name": "upset",
                        "suppress": ["upsell"],
                        "promote": ["upsell"],
                        "all": [{"field": "hour", "op": "exists"}],
                    }
                ],
            },
            "catalogue.toml: suitability 'upset': kinds both suppressed and promoted: upsell",
        ),
        (
            {"action": [action()], "suitability": [{"name": "upset"}]},
            "catalogue.toml: suitability 'upset': needs at least one condition",
        ),
    ],
)
def test_a_bad_file_is_refused_naming_the_table_and_the_key(
    document: dict[str, Any], message: str
) -> None:
    text = refused(document)
    assert text.startswith(message), text


def test_load_names_the_file_and_refuses_what_is_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "catalogue.toml"
    path.write_text('[[action]]\nid = "x"\nkind = ')
    with pytest.raises(RuleConfigError, match="not valid TOML"):
        load_catalogue(path)
    with pytest.raises(RuleConfigError, match="cannot read the catalogue file"):
        load_catalogue(tmp_path / "missing.toml")
    path.write_text(DEFAULT_PATH.read_text().replace("business_value = 14.0", "business_value = 0"))
    with pytest.raises(RuleConfigError) as raised:
        load_catalogue(path)
    assert str(raised.value) == (
        f"{path}: action 'next_day_unlimited': business_value must be a number > 0"
    )


# --- what a loaded action answers ----------------------------------------------------------


def test_an_action_loads_with_its_defaults() -> None:
    built = one()
    assert built == Action(
        action_id="gold_upgrade",
        kind="upsell",
        description="Upgrade to gold",
        placements=("web.home.hero",),
        channels=frozenset(),
        variants=(Variant("a", "Go gold"),),
        business_value=10.0,
        lever=1.0,
        valid_from_ms=None,
        valid_until_ms=None,
        consent_purpose=None,
        marketing=True,
        eligibility=None,
        contact=ContactRule(),
        propensity_default=0.05,
        propensity_by_segment={},
        context_weights=(),
    )


def test_conditions_variants_and_contact_policy_load() -> None:
    built = one(
        id="fix_payment",
        kind="service_recovery",
        consent_purpose="marketing_push",
        contact={"max_impressions": 6, "window_days": 1, "stop_after_accept": True},
        all=[{"field": "payment_failure_open", "op": "==", "value": True}],
        any=[{"field": "segment.payment_trouble", "op": "==", "value": True}],
        variant=[
            {
                "id": "card",
                "title": "Update your card",
                "body": "Your basket is saved.",
                "image_url": "https://shop.example.com/card.png",
                "call_to_action": "Update",
                "deep_link": "shopapp://checkout/payment",
            },
            {"id": "short", "title": "Payment failed", "deep_link": "/checkout"},
        ],
    )
    assert built.eligibility == Rule(
        "fix_payment",
        "Upgrade to gold",
        (Condition("payment_failure_open", "==", True),),
        (Condition("segment.payment_trouble", "==", True),),
    )
    assert built.contact == ContactRule(6, 1.0, 0.0, True)
    assert [v.variant for v in built.variants] == ["card", "short"]
    assert built.variants[0].deep_link == "shopapp://checkout/payment"
    assert not built.marketing
    assert built.consent_purpose == "marketing_push"


def test_kind_tables_set_the_marketing_flag_and_contact_policy_with_defaults() -> None:
    catalogue = catalogue_of(
        action(id="survey_me", kind="survey"),
        action(id="promo_survey", kind="survey", marketing=True),
        action(id="plain_upsell", kind="upsell", marketing=False),
        action(id="deal", kind="cross_sell"),
        kind={
            "survey": {"contact": {"max_impressions": 1, "window_days": 14}},
            "cross_sell": {"marketing": False},
        },
    )
    assert set(catalogue.kinds) == set(KINDS)
    for kind in KINDS:
        if kind not in {"survey", "cross_sell"}:
            assert catalogue.kinds[kind].marketing == (kind in MARKETING_KINDS)
            assert catalogue.kinds[kind].contact == ContactRule()
    assert catalogue.kinds["survey"].contact == ContactRule(1, 14.0)
    marketing = {a.action_id: a.marketing for a in catalogue.actions}
    assert marketing == {
        "survey_me": False,
        "promo_survey": True,
        "plain_upsell": False,
        "deal": False,
    }
    assert catalogue.marketing_per_day == 0
    assert dict(catalogue.channel_consent) == dict(DEFAULT_CHANNEL_CONSENT)
    assert dict(catalogue_of(channel_consent={}).channel_consent) == {}
    assert catalogue.action("deal") is catalogue.actions[3]
    assert catalogue.action("nothing") is None


@pytest.mark.parametrize(
    ("pattern", "placement", "matches"),
    [
        ("web.home.hero", "web.home.hero", True),
        ("web.home.hero", "web.home", False),
        ("web.home", "web.home.hero", False),
        ("web.*", "web.home.hero", True),
        ("web.*", "web.basket", True),
        ("web.*", "web", False),
        ("web.*", "webshop.home", False),
        ("web.home.*", "web.home.hero", True),
        ("web.home.*", "web.basket.banner", False),
        ("*", "agent.panel", True),
    ],
)
def test_placement_patterns(pattern: str, placement: str, matches: bool) -> None:
    assert placement_matches(pattern, placement) is matches


NAME = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True)
PLACEMENT = st.lists(NAME, min_size=1, max_size=4).map(".".join)


@given(placement=PLACEMENT, prefix=PLACEMENT)
def test_a_wildcard_matches_exactly_the_placements_under_it(placement: str, prefix: str) -> None:
    assert placement_matches(placement, placement)
    assert placement_matches("*", placement)
    assert placement_matches(prefix + ".*", placement) == placement.startswith(prefix + ".")
    assert not placement_matches(prefix + ".*", prefix)


def test_an_action_serves_its_placements_on_its_channels() -> None:
    anywhere = one(placements=["web.*", "agent.panel"])
    assert anywhere.serves("web.basket.banner", "web")
    assert anywhere.serves("agent.panel", "phone")
    assert not anywhere.serves("app.home.banner", "app")
    on_web = one(placements=["*"], channels=["web", "app"])
    assert on_web.serves("app.home.banner", "app")
    assert not on_web.serves("email.weekly", "email")


def test_validity_dates_bound_when_an_action_is_active() -> None:
    dated = one(
        valid_from=datetime(2026, 11, 16, tzinfo=UTC),
        valid_until="2027-01-11T00:00:00+01:00",
    )
    assert dated.valid_from_ms == ms("2026-11-16T00:00:00+00:00")
    assert dated.valid_until_ms == ms("2027-01-10T23:00:00+00:00")
    assert not dated.active(dated.valid_from_ms - 1)
    assert dated.active(dated.valid_from_ms)
    assert dated.active(dated.valid_until_ms - 1)
    assert not dated.active(dated.valid_until_ms)
    from_a_date = one(valid_from=date(2026, 12, 1), valid_until="2026-12-24")
    assert from_a_date.valid_from_ms == ms("2026-12-01T00:00:00+00:00")
    assert from_a_date.valid_until_ms == ms("2026-12-24T00:00:00+00:00")
    assert one().active(0)
    assert one(valid_until="2030-01-01T00:00:00Z").active(0)


def test_propensity_takes_the_highest_prior_of_the_persons_segments() -> None:
    built = one(propensity={"default": 0.02, "vip": 0.07, "high_value": 0.05, "lapsed": 0.07})
    assert built.propensity(set()) == (0.02, "prior:default")
    assert built.propensity({"promoters"}) == (0.02, "prior:default")
    assert built.propensity({"high_value"}) == (0.05, "prior:segment:high_value")
    assert built.propensity({"high_value", "vip"}) == (0.07, "prior:segment:vip")
    # A tie goes to the first name in order, whatever order the segments come in.
    assert built.propensity(["vip", "lapsed", "high_value"]) == (0.07, "prior:segment:lapsed")


PRIOR = st.floats(min_value=0.001, max_value=1.0)


@given(
    default=PRIOR,
    priors=st.dictionaries(st.sampled_from(sorted(SEGMENTS)), PRIOR),
    segments=st.sets(st.sampled_from(sorted(SEGMENTS))),
)
def test_propensity_is_the_best_matching_prior_or_the_default(
    default: float, priors: dict[str, float], segments: set[str]
) -> None:
    built = one(propensity={"default": default, **priors})
    p, source = built.propensity(segments)
    matching = {name: prior for name, prior in priors.items() if name in segments}
    if matching:
        assert p == max(matching.values())
        assert source.removeprefix("prior:segment:") in matching
        assert matching[source.removeprefix("prior:segment:")] == p
    else:
        assert (p, source) == (default, "prior:default")


def test_context_weight_multiplies_the_matching_rules() -> None:
    built = one(
        context=[
            {
                "name": "on_mobile",
                "weight": 1.5,
                "all": [{"field": "context.device", "op": "==", "value": "mobile"}],
            },
            {"weight": 0.5, "all": [{"field": "hour", "op": ">=", "value": 20}]},
            {
                "name": "rainy_basket",
                "weight": 2.0,
                "all": [{"field": "context.cart_size", "op": ">=", "value": 1}],
                "any": [{"field": "context.attributes.weather", "op": "==", "value": "rain"}],
            },
        ]
    )
    assert built.context_weights[0] == ContextWeight(
        Rule("on_mobile", "", (Condition("context.device", "==", "mobile"),)), 1.5
    )
    assert built.context_weight({}) == (1.0, [])
    assert built.context_weight({"context.device": "mobile", "hour": 21}) == (
        0.75,
        ["on_mobile", "context[1]"],
    )
    assert built.context_weight(
        {"context.cart_size": 2, "context.attributes.weather": "rain", "hour": 9}
    ) == (2.0, ["rainy_basket"])


WEIGHT = st.floats(min_value=0.1, max_value=5.0)


@given(weights=st.lists(st.tuples(WEIGHT, st.booleans()), max_size=6))
def test_context_weight_is_the_product_of_the_matching_weights(
    weights: list[tuple[float, bool]],
) -> None:
    built = one(
        context=[
            {
                "name": f"rule_{i}",
                "weight": weight,
                "all": [{"field": f"context.attributes.k{i}", "op": "exists", "value": on}],
            }
            for i, (weight, on) in enumerate(weights)
        ]
    )
    c, names = built.context_weight({})
    # With no attributes, exactly the `exists = false` rules match.
    expected = [(f"rule_{i}", w) for i, (w, on) in enumerate(weights) if not on]
    assert names == [name for name, _ in expected]
    assert c == pytest.approx(math.prod(w for _, w in expected))


def test_fields_read_lists_the_profile_fields_the_rules_read() -> None:
    catalogue = catalogue_of(
        action(
            all=[
                {"field": "orders", "op": ">=", "value": 1},
                {"field": "segment.vip", "op": "==", "value": True},
                {"field": "hour", "op": "<", "value": 20},
            ],
            context=[{"weight": 2.0, "all": [{"field": "churn_risk", "op": ">", "value": 0.5}]}],
        ),
        suitability=[
            {
                "name": "upset",
                "all": [{"field": "open_complaints", "op": ">=", "value": 1}],
                "any": [
                    {"field": "consent.marketing_email", "op": "==", "value": False},
                    {"field": "open_incidents", "op": ">=", "value": 1},
                ],
                "suppress": ["upsell"],
            }
        ],
    )
    assert catalogue.fields_read() == {
        "orders",
        "churn_risk",
        "open_complaints",
        "consent.marketing_email",
        "open_incidents",
    }


# --- the version ---------------------------------------------------------------------------


def test_the_version_is_a_digest_of_the_file_and_changes_with_it(tmp_path: Path) -> None:
    path = tmp_path / "catalogue.toml"
    text = DEFAULT_PATH.read_text()
    path.write_text(text)
    first = load_catalogue(path)
    assert re.fullmatch(r"catalogue-[0-9a-f]{12}", first.version)
    assert load_catalogue(path).version == first.version == load_catalogue().version
    path.write_text(text + "\n# a comment changes the file, so the version\n")
    assert load_catalogue(path).version != first.version
    path.write_text(text.replace("business_value = 14.0", "business_value = 15.0"))
    changed = load_catalogue(path)
    assert changed.version != first.version
    next_day = changed.action("next_day_unlimited")
    assert next_day is not None
    assert next_day.business_value == 15.0


def test_a_parsed_document_without_bytes_gets_a_version_from_its_content() -> None:
    document: dict[str, Any] = {"action": [action()]}
    same = parse_catalogue(copy.deepcopy(document), "a.toml")
    assert same.version == parse_catalogue(copy.deepcopy(document), "b.toml").version
    other = parse_catalogue({"action": [action(lever=2.0)]}, "a.toml")
    assert other.version != same.version


MUTATIONS: list[Callable[[dict[str, Any]], None]] = [
    lambda a: a.update(lever=a.get("lever", 1.0) + 0.5),
    lambda a: a.update(description=a["description"] + "!"),
    lambda a: a["variant"][0].update(title="Changed"),
]


@pytest.mark.parametrize("mutate", MUTATIONS)
def test_any_edit_to_an_action_changes_the_version(
    mutate: Callable[[dict[str, Any]], None],
) -> None:
    document: dict[str, Any] = {"action": [action()]}
    before = parse_catalogue(copy.deepcopy(document), "c.toml").version
    mutate(document["action"][0])
    assert parse_catalogue(document, "c.toml").version != before
