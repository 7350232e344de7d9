"""Alert rules and owners files: the shipped files' shape, every way a file is refused
(naming the rule or team and the key), severity by value tier and churn band, routing,
escalation and quiet hours."""

from __future__ import annotations

import copy
import tomllib
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.alerts.domain.incidents import KINDS, SEVERITIES
from services.alerts.domain.owners import (
    DEFAULT_PATH as OWNERS_PATH,
)
from services.alerts.domain.owners import (
    QuietHours,
    load_owners,
    parse_owners,
    severity_at_least,
    touchpoint_matches,
)
from services.alerts.domain.rules import (
    DEFAULT_PATH as RULES_PATH,
)
from services.alerts.domain.rules import (
    EVENT_FIELDS,
    Spike,
    load_rules,
    parse_rules_document,
)
from services.common.conditions import FieldValue, RuleConfigError

OWNERS = load_owners()
RULES = load_rules(teams=OWNERS.team_names())
RULES_DOC = tomllib.loads(RULES_PATH.read_text())
OWNERS_DOC = tomllib.loads(OWNERS_PATH.read_text())


def rules_refused(edit: Any, name: str | None = None) -> str:
    document = copy.deepcopy(RULES_DOC)
    if name is None:
        edit(document)
    else:
        (table,) = [r for r in document["rule"] if r["name"] == name]
        edit(table)
    with pytest.raises(RuleConfigError) as raised:
        parse_rules_document(document, "rules.toml", teams=OWNERS.team_names())
    return str(raised.value)


def owners_refused(edit: Any) -> str:
    document = copy.deepcopy(OWNERS_DOC)
    edit(document)
    with pytest.raises(RuleConfigError) as raised:
        parse_owners(document, "owners.toml")
    return str(raised.value)


def team(document: dict[str, Any], name: str) -> dict[str, Any]:
    (table,) = [t for t in document["team"] if t["name"] == name]
    assert isinstance(table, dict)
    return table


# --- the shipped files -------------------------------------------------------------------


def test_the_shipped_rules_cover_what_the_issue_lists() -> None:
    by_name = {r.name: r for r in RULES.rules}
    assert {r.kind for r in RULES.rules} == set(KINDS)
    expected = {
        "detractor_nps": "event",
        "low_csat": "event",
        "high_effort_ces": "event",
        "complaint_raised": "event",
        "payment_failed": "event",
        "delivery_late": "event",
        "app_crash": "event",
        "social_outcry": "event",
        "repeat_contacts": "window",
        "repeated_payment_failures": "window",
        "late_delivery_then_contact": "window",
        "complaint_sla": "timer",
        "checkout_payment_spike": "spike",
        "app_checkout_crash_spike": "spike",
    }
    assert {name: by_name[name].kind for name in expected} == expected
    for rule in RULES.rules:
        assert rule.description, rule.name
        assert rule.summary, rule.name
        assert rule.default_severity in SEVERITIES
    # Windows and spikes as the issue words them.
    contacts = by_name["repeat_contacts"].window
    assert contacts is not None
    assert (contacts.count, contacts.within_s, contacts.same) == (3, 7 * 86400, "contact.reason")
    payments = by_name["repeated_payment_failures"].window
    assert payments is not None
    assert (payments.count, payments.within_s) == (2, 3600)
    sla = by_name["complaint_sla"].timer
    assert sla is not None
    assert sla.sla_s == 48 * 3600
    for name in ("checkout_payment_spike", "app_checkout_crash_spike"):
        spike = by_name[name].spike
        assert spike is not None
        assert (spike.window_s, spike.baseline_s) == (300, 3600)
        assert spike.min_count >= 5
        assert spike.clear_hold_s > 0
    # The person's negative answers join an open complaint instead of paging anew.
    assert by_name["detractor_nps"].groups_with == ("complaint_raised",)
    # The profile is asked only for what severities and conditions read.
    assert RULES.profile_fields_read() == {"value_tier", "churn_band"}


@pytest.mark.parametrize(
    ("rule", "fields", "severity"),
    [
        ("detractor_nps", {"value_tier": "vip", "churn_band": "low"}, "critical"),
        ("detractor_nps", {"value_tier": "high", "churn_band": "low"}, "error"),
        ("detractor_nps", {"value_tier": "medium", "churn_band": "high"}, "error"),
        ("detractor_nps", {"value_tier": "low", "churn_band": "low"}, "warning"),
        ("detractor_nps", {}, "warning"),
        ("complaint_raised", {"complaint.severity": "critical", "value_tier": "low"}, "critical"),
        ("complaint_raised", {"complaint.severity": "high", "value_tier": "vip"}, "critical"),
        ("complaint_raised", {"complaint.severity": "high", "value_tier": "low"}, "error"),
        ("repeat_contacts", {"value_tier": "vip"}, "critical"),
        ("repeat_contacts", {"value_tier": "none", "churn_band": "medium"}, "warning"),
        ("checkout_payment_spike", {"spike.count": 12}, "error"),
        ("checkout_payment_spike", {"spike.count": 50}, "critical"),
    ],
)
def test_severity_follows_value_tier_and_churn_band(
    rule: str, fields: dict[str, Any], severity: str
) -> None:
    found = RULES.rule(rule)
    assert found is not None
    assert found.severity(fields) == severity


def test_the_shipped_owners_route_each_touchpoint_to_its_team() -> None:
    assert [t.name for t in OWNERS.teams] == ["payments", "delivery", "contact-centre", "app", "cx"]
    assert OWNERS.default_team.name == "cx"
    route = OWNERS.route
    assert route("payment_failed", "event", "checkout.payment").name == "payments"
    assert route("delivery_late", "event", "delivery.doorstep").name == "delivery"
    assert route("x", "event", "logistics.hub.scan").name == "delivery"
    assert route("repeat_contacts", "window", "support.phone").name == "contact-centre"
    assert route("app_crash", "event", "app.checkout").name == "app"
    assert route("detractor_nps", "event", "survey.nps").name == "cx"
    assert route("x", "event", "web.home").name == "cx"  # nothing routes it: the default
    # A rule routed by name wins over the touchpoint; the rule's own team over both.
    assert route("late_delivery_then_contact", "window", "support.phone").name == "delivery"
    assert route("complaint_sla", "timer", "support.complaint").name == "contact-centre"
    assert route("payment_failed", "event", "survey.nps", "payments").name == "payments"
    for t in OWNERS.teams:
        assert set(t.receivers) <= set(OWNERS.receivers), t.name
        assert t.escalation is not None
    types = {spec.type for spec in OWNERS.receivers.values()}
    assert types == {"pagerduty", "alertmanager", "slack", "webhook"}
    for name in ("pagerduty-payments", "alertmanager", "slack-cx", "webhook-ops"):
        assert name in OWNERS.receivers
    # Every rule a rules file could route by name is a shipped rule.
    assert {r for t in OWNERS.teams for r in t.rules} <= set(RULES.names())


def test_most_specific_touchpoint_pattern_wins() -> None:
    document = copy.deepcopy(OWNERS_DOC)
    team(document, "payments")["touchpoints"] = ["checkout.*"]
    team(document, "delivery")["touchpoints"] = ["checkout.delivery.*", "checkout.delivery"]
    team(document, "app")["touchpoints"] = ["*"]
    owners = parse_owners(document, "owners.toml")
    assert owners.route("r", "event", "checkout.delivery").name == "delivery"
    assert owners.route("r", "event", "checkout.delivery.slot").name == "delivery"
    assert owners.route("r", "event", "checkout.payment").name == "payments"
    assert owners.route("r", "event", "web.home").name == "app"  # `*` before the default


def test_escalation_only_at_its_minimum_severity() -> None:
    payments = OWNERS.team("payments")
    assert payments is not None
    assert payments.escalate_after_s("critical") == 900
    assert payments.escalate_after_s("error") == 900
    assert payments.escalate_after_s("warning") is None
    assert payments.escalation_receivers() == ("webhook-ops",)


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def test_quiet_hours_narrow_the_receivers_of_the_less_severe_overnight() -> None:
    cx = OWNERS.team("cx")
    assert cx is not None
    night, day = ms("2026-01-15T23:30:00+00:00"), ms("2026-01-15T12:00:00+00:00")
    assert cx.receivers_for("warning", night) == ("slack-cx", "alertmanager")
    assert cx.receivers_for("error", night) == cx.receivers
    assert cx.receivers_for("warning", day) == cx.receivers
    # Local time: 06:30 UTC in July is 07:30 in London, after the quiet hours.
    assert cx.receivers_for("warning", ms("2026-07-15T06:30:00+00:00")) == cx.receivers
    assert cx.receivers_for("warning", ms("2026-01-15T06:30:00+00:00")) != cx.receivers


@given(st.integers(0, 1439), st.integers(0, 1439), st.integers(0, 1439))
def test_quiet_hours_hold_between_start_and_end_even_overnight(
    start: int, end: int, minute: int
) -> None:
    quiet = QuietHours(start, end, "UTC", "critical", ())
    at = int(datetime(2026, 1, 1, minute // 60, minute % 60, tzinfo=UTC).timestamp() * 1000)
    overnight = start > end
    expected = (minute >= start or minute < end) if overnight else start <= minute < end
    assert quiet.active(at) == expected


@given(st.sampled_from(SEVERITIES), st.sampled_from(SEVERITIES))
def test_severity_order(a: str, b: str) -> None:
    assert severity_at_least(a, b) == (SEVERITIES.index(a) <= SEVERITIES.index(b))


@given(st.from_regex(r"[a-z]{1,5}(\.[a-z]{1,5}){0,3}", fullmatch=True))
def test_touchpoint_patterns(touchpoint: str) -> None:
    assert touchpoint_matches("*", touchpoint)
    assert touchpoint_matches(touchpoint, touchpoint)
    head = touchpoint.split(".")[0]
    assert touchpoint_matches(f"{head}.*", touchpoint) == ("." in touchpoint)
    assert not touchpoint_matches(f"{touchpoint}x.*", touchpoint)


@given(
    st.integers(1, 10_000),
    st.integers(1, 20),
    st.floats(1, 10),
    st.integers(1, 100),
    st.integers(0, 10_000),
)
def test_spike_threshold_is_the_minimum_or_factor_times_the_baseline(
    window_s: int, times: int, factor: float, min_count: int, baseline_count: int
) -> None:
    spike = Spike(window_s, window_s * (times + 1), factor, min_count, 0)
    threshold = spike.threshold(baseline_count)
    assert threshold >= min_count
    # The baseline period is `times` windows long: it expects a `times`-th of its count.
    assert spike.expected(baseline_count) == pytest.approx(baseline_count / times)
    assert threshold == pytest.approx(max(min_count, factor * baseline_count / times))


def test_summaries_fill_their_placeholders() -> None:
    rule = RULES.rule("detractor_nps")
    assert rule is not None
    fields: dict[str, FieldValue] = {
        "nps": 2,
        "value_tier": "vip",
        "churn_band": "high",
        "touchpoint": "survey.nps",
    }
    assert rule.describe(fields) == (
        "NPS 2 from a customer of value tier vip (churn risk high) at survey.nps"
    )
    # A missing field shows as ?, a number as written.
    assert rule.describe({"nps": 3}) == "NPS 3 from a customer of value tier ? (churn risk ?) at ?"
    spike = RULES.rule("checkout_payment_spike")
    assert spike is not None
    text = spike.describe(
        {"spike.count": 12, "spike.baseline": 1.5, "touchpoint": "checkout.payment"}
    )
    assert text.startswith("12 failed payments at checkout.payment")


# --- refused files ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        (
            "detractor_nps",
            lambda r: r["severity"][0]["all"][0].update(field="value_teir"),
            "rules.toml: rule 'detractor_nps', severity[0], condition all[0] "
            '{ field = "value_teir", op = "==", value = "vip" }: unknown field '
            "'value_teir'; did you mean value_tier?",
        ),
        (
            "detractor_nps",
            lambda r: r["severity"][1].update(value="urgent"),
            "rule 'detractor_nps', severity[1]: value \"urgent\" is not a severity",
        ),
        ("detractor_nps", lambda r: r.update(kind="burst"), "rule 'detractor_nps': unknown kind"),
        ("detractor_nps", lambda r: r.pop("kind"), "rule 'detractor_nps': kind is required"),
        (
            "detractor_nps",
            lambda r: r.update(team="nobody"),
            "rule 'detractor_nps': team: unknown team \"nobody\"",
        ),
        (
            "detractor_nps",
            lambda r: r.update(groups_with=["nope"]),
            "rule 'detractor_nps': groups_with: unknown rule 'nope'",
        ),
        (
            "detractor_nps",
            lambda r: r.update(groups_with=["checkout_payment_spike"]),
            "groups_with: 'checkout_payment_spike' is a spike",
        ),
        (
            "detractor_nps",
            lambda r: r.update(summary="NPS {npss}"),
            "rule 'detractor_nps': summary placeholder {npss}: unknown field 'npss'",
        ),
        (
            "detractor_nps",
            lambda r: r.update(window={"count": 3, "within_s": 10}),
            "rule 'detractor_nps': window is only for window rules (this one is event)",
        ),
        (
            "detractor_nps",
            lambda r: r.update(default_severity="high"),
            "rule 'detractor_nps': default_severity \"high\" is not a severity",
        ),
        (
            "detractor_nps",
            lambda r: r.update(colour="red"),
            "rule 'detractor_nps': unknown keys ['colour']",
        ),
        (
            "detractor_nps",
            lambda r: r.update(severity={"value": "error"}),
            "rule 'detractor_nps': severity must be a list of tables",
        ),
        (
            "detractor_nps",
            lambda r: r.update(severity=[{"value": "error"}]),
            "rule 'detractor_nps', severity[0]: needs at least one condition",
        ),
        (
            "repeat_contacts",
            lambda r: r["window"].update(count=0),
            "rule 'repeat_contacts', window: count must be a whole number >= 1, not 0",
        ),
        (
            "repeat_contacts",
            lambda r: r["window"].update(count=1),
            "rule 'repeat_contacts', window: count must be 2 or more",
        ),
        (
            "repeat_contacts",
            lambda r: r["window"].update(same="contact.reasn"),
            "rule 'repeat_contacts', window: same: unknown field 'contact.reasn'",
        ),
        (
            "repeat_contacts",
            lambda r: r["window"].pop("within_s"),
            "rule 'repeat_contacts', window: within_s is required",
        ),
        (
            "repeat_contacts",
            lambda r: r.update(resolve_after_s=60),
            "rule 'repeat_contacts': resolve_after_s: a window's incident resolves",
        ),
        (
            "late_delivery_then_contact",
            lambda r: r["window"]["preceded_by"]["all"][0].update(op="=>"),
            "rule 'late_delivery_then_contact', window, preceded_by, condition all[0] "
            '{ field = "negative", op = "=>", value = "late_delivery" }: unknown op',
        ),
        (
            "late_delivery_then_contact",
            lambda r: r["window"].update(same="contact.reason"),
            "window: same and preceded_by do not go together",
        ),
        (
            "checkout_payment_spike",
            lambda r: r["spike"].update(baseline_s=100),
            "rule 'checkout_payment_spike', spike: baseline_s (100) must be longer than "
            "window_s (300)",
        ),
        (
            "checkout_payment_spike",
            lambda r: r["spike"].update(factor=0.5),
            "spike: factor must be a number >= 1, not 0.5",
        ),
        (
            "checkout_payment_spike",
            lambda r: r["spike"].update(min_count=2.5),
            "spike: min_count must be a whole number >= 1, not 2.5",
        ),
        (
            "checkout_payment_spike",
            lambda r: r["all"].append({"field": "value_tier", "op": "==", "value": "vip"}),
            "rule 'checkout_payment_spike', condition all[2] { field = \"value_tier\", op = "
            '"==", value = "vip" }: field \'value_tier\': a spike is about a touchpoint',
        ),
        (
            "checkout_payment_spike",
            lambda r: r.pop("spike"),
            "rule 'checkout_payment_spike': a spike rule needs spike = {",
        ),
        (
            "checkout_payment_spike",
            lambda r: r.update(resolve_after_s=60),
            "resolve_after_s: a spike resolves itself",
        ),
        (
            "complaint_sla",
            lambda r: r.pop("resolve_when"),
            "rule 'complaint_sla': a timer rule needs resolve_when",
        ),
        (
            "complaint_sla",
            lambda r: r["timer"].update(sla_s="2d"),
            "rule 'complaint_sla', timer: sla_s must be a number of seconds > 0, not \"2d\"",
        ),
        (
            "complaint_sla",
            lambda r: r["resolve_when"]["all"][0].pop("value"),
            "rule 'complaint_sla', resolve_when, condition all[0]",
        ),
        (
            "app_crash",
            lambda r: r.update(resolve_after_s=-5),
            "rule 'app_crash': resolve_after_s must be a number of seconds > 0, not -5",
        ),
        (
            "app_crash",
            lambda r: r["all"][0].update(field="segment.nope"),
            "unknown segment in 'segment.nope'",
        ),
    ],
)
def test_a_bad_rule_is_refused_naming_the_rule_and_the_key(
    name: str, edit: Any, message: str
) -> None:
    assert message in rules_refused(edit, name)


def test_file_level_refusals() -> None:
    assert "unknown top-level keys ['rules']" in rules_refused(lambda d: d.update(rules=[]))
    assert "rule must be an array of tables" in rules_refused(lambda d: d.update(rule={}))
    twice = rules_refused(lambda d: d["rule"].append(copy.deepcopy(d["rule"][0])))
    assert "rule 'detractor_nps': defined twice" in twice
    assert "rule #1: name" in rules_refused(lambda d: d["rule"][0].update(name="Bad Name"))


def test_every_event_field_is_offered_to_rules() -> None:
    # A rule may test any event field; profile fields only where a person is concerned.
    document = {
        "rule": [
            {
                "name": "all_fields",
                "kind": "event",
                "all": [{"field": f, "op": "exists"} for f in EVENT_FIELDS],
            }
        ]
    }
    (rule,) = parse_rules_document(document, "rules.toml").rules
    assert rule.when.fields_read() == set(EVENT_FIELDS)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: team(d, "payments")["escalation"].update(to=["pagerduty-x"]),
            "owners.toml: team 'payments', escalation: to: unknown receiver \"pagerduty-x\"",
        ),
        (
            lambda d: team(d, "payments")["escalation"].update(after_s=-1),
            "team 'payments', escalation: after_s must be a number of seconds > 0, not -1",
        ),
        (
            lambda d: team(d, "payments")["escalation"].update(bogus=1),
            "team 'payments', escalation: unknown keys ['bogus']",
        ),
        (
            lambda d: team(d, "payments").update(escalation=3),
            "team 'payments', escalation: must be a table such as",
        ),
        (
            lambda d: team(d, "cx")["quiet_hours"].update(start="25:00"),
            'team \'cx\', quiet_hours: start must be a time such as "22:00", not "25:00"',
        ),
        (
            lambda d: team(d, "cx")["quiet_hours"].update(timezone="Mars/Base"),
            "team 'cx', quiet_hours: timezone \"Mars/Base\" is not an IANA time zone",
        ),
        (
            lambda d: team(d, "cx")["quiet_hours"].update(page_from="loud"),
            "team 'cx', quiet_hours: page_from \"loud\" is not one of",
        ),
        (
            lambda d: team(d, "payments").update(receivers=[]),
            "team 'payments': receivers is required",
        ),
        (
            lambda d: team(d, "payments").update(receivers=["nobody"]),
            "team 'payments': receivers: unknown receiver \"nobody\"",
        ),
        (
            lambda d: team(d, "payments").update(touchpoints=["Checkout"]),
            "team 'payments': touchpoints: \"Checkout\" is not a touchpoint",
        ),
        (
            lambda d: team(d, "delivery").update(touchpoints=["checkout.payment"]),
            "team 'delivery': touchpoints: 'checkout.payment' is already owned by team 'payments'",
        ),
        (
            lambda d: team(d, "payments").update(rules=["late_delivery_then_contact"]),
            "team 'delivery': rules: 'late_delivery_then_contact' is already routed to team "
            "'payments'",
        ),
        (
            lambda d: team(d, "payments").update(kinds=["burst"]),
            "team 'payments': kinds: unknown kind \"burst\"",
        ),
        (
            lambda d: team(d, "payments").update(default=True),
            "exactly one team must have default = true",
        ),
        (
            lambda d: team(d, "cx").update(default=False),
            "exactly one team must have default = true",
        ),
        (
            lambda d: team(d, "payments").update(colour="red"),
            "team 'payments': unknown keys ['colour']",
        ),
        (lambda d: d["team"][0].update(name="Pay"), 'team #1: name "Pay" must be lower case'),
        (lambda d: d["team"].append(copy.deepcopy(d["team"][0])), "team 'payments': defined twice"),
        (lambda d: d.update(teams=[]), "unknown top-level keys ['teams']"),
        (lambda d: d.update(team=[]), "no teams"),
        (lambda d: d.update(receiver=[]), "no receivers"),
        (lambda d: d["receiver"][0].update(type="pager"), "receiver 'pagerduty-payments'"),
    ],
)
def test_a_bad_owners_file_is_refused_naming_the_team_and_the_key(edit: Any, message: str) -> None:
    assert message in owners_refused(edit)


def test_versions_follow_the_files_bytes() -> None:
    assert RULES.version.startswith("rules-")
    assert OWNERS.version.startswith("owners-")
    again = load_rules(teams=OWNERS.team_names())
    assert again.version == RULES.version
    changed = parse_rules_document(RULES_DOC, "rules.toml", b"other bytes")
    assert changed.version != RULES.version
