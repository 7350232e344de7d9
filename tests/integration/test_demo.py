"""`make demo`'s generator end to end: through ingestion into the stack's profile,
personalisation and alerts services."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _section(out: str, title: str) -> list[str]:
    lines = out.splitlines()
    start = lines.index(title)
    body = []
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        body.append(line[2:])
    return body


def _number(pattern: str, text: str) -> int:
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in:\n{text}"
    return int(found.group(1).replace(",", ""))


def test_demo_sends_journeys_and_summarises_profiles_decisions_and_incidents(
    ingest_address: str,
) -> None:
    # No --seed: every run makes new customers, so a second run is not all duplicates.
    # Every customer asks for decisions; half of them had a bad experience.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.demo.journeys",
            "--customers",
            "60",
            "--negative-share",
            "0.5",
            "--personalise-share",
            "1",
            "--target",
            ingest_address,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    assert "customers   60" in out
    assert "0 rejected" in out
    assert "Profiles" in out
    assert "unavailable" not in out, out
    assert "example profiles:" in out

    section = _section(out, "Personalisation")
    text = "\n".join(section)
    decisions = _number(r"^decisions: ([\d,]+) for 60 customers", text)
    touchpoints = _number(r"at journey touchpoints: ([\d,]+);", text)
    returns = _number(r"on return visits, .*?: ([\d,]+);", text)
    assert decisions == touchpoints + returns
    # Every signed-in customer comes back once, and those with a bad experience call too.
    assert 60 <= returns <= 90
    assert re.search(r"holdout: [\d.]+% of decisions", text), text

    # The table: a row per action shown, and the decisions per placement.
    table = section[section.index("actions shown, by placement:") + 1 :]
    assert table[0].split()[:2] == ["web", "web"]
    rows = {line.split()[0]: line.split()[1:] for line in table[2:] if line.startswith("  ")}
    assert int(rows["decisions"][-1].replace(",", "")) == decisions
    assert "new_season_edit" in rows

    # Once the profiles caught up, the experience rules held selling back and put service
    # recovery first for customers whose experience went wrong.
    returning = text.split("on return visits", 1)[1]
    assert _number(r"an experience rule held in ([\d,]+)", returning) > 0
    assert _number(r"service recovery first in ([\d,]+)", returning) > 0
    assert _number(r"([\d,]+) upsells and cross-sells held back", returning) > 0
    assert _number(r"experience rules held back ([\d,]+) upsells?", text) > 0
    assert re.search(r"  suitability:\w+ +[\d,]+ ", text), text
    assert "contact policy and fatigue caps hit" in text

    assert _number(r"outcomes reported: ([\d,]+) \(", text) > 0
    # Learning: the rewards of the decisions that showed a profile an action, the policies
    # that served, and the holdout lift (or why there is none yet).
    assert _number(r"(?m)^learning: ([\d,]+) decisions? showed a profile an action", text) > 0
    assert re.search(r"(?m)^  policy of all [\d,]+ decisions: .*\b(static|learned) [\d,]+", text)
    assert re.search(
        r"(?m)^  (reward per decision in the order decided|no learning curve: not enough data)",
        text,
    ), text
    assert re.search(
        r"(?m)^holdout lift: treatment [\d.]+ per decision \([\d,]+\), holdout [\d.]+ "
        r"\([\d,]+\); lift(:| [+-][\d.]+% \(95% CI )",
        text,
    ), text
    assert _number(r"\(([\d,]+) impressions", text) > 0
    example = section[next(i for i, line in enumerate(section) if line.startswith("example"))]
    assert example.startswith("example"), text
    assert re.search(r"    1\. \w+ \(", text), "the example shows its ranked actions"
    assert "the service's own count (http://" in text

    # The alerts service: the customers' bad experiences opened incidents routed to their
    # teams; the payment outage at the end of the run is one touchpoint incident (a spike
    # against the last hour's baseline: after three or four runs within an hour the
    # baseline expects outages and none opens) that inhibits the people's own pages.
    section = _section(out, "Alerts")
    text = "\n".join(section)
    assert _number(r"(?m)^incidents from this run: ([\d,]+) \(", text) > 0
    teams = re.search(r"^by team: (.+)$", text, re.M)
    assert teams, text
    assert {"payments", "cx"} <= {part.split()[0] for part in teams.group(1).split(", ")}
    assert "checkout_payment_spike" in text
    assert _number(r"(?m)^inhibited: ([\d,]+) incidents? of people", text) > 0
    assert "(the demo's silence sil-" in text
    assert re.search(r"^silenced: (none|[\d,]+ incidents? recorded but not paged)", text, re.M)
    # Every team pages Alertmanager, which notifies the sink; what reached the sink is
    # valid and carries no email or phone number.
    table = section[section.index(next(x for x in section if x.startswith("pages per receiver"))) :]
    manager = next(line.split() for line in table if line.split()[:1] == ["alertmanager"])
    assert int(manager[1].replace(",", "")) > 0, table
    assert int(manager[5].rstrip(":").replace(",", "")) > 0, table
    assert re.search(
        r"^the sink: [\d,]+ requests about them, all valid, 0 refused, 0 repeated, "
        r"0 with an email or phone$",
        text,
        re.M,
    ), text
    # An example with its evidence and deliveries; the profile counts the person's open
    # incidents (the loop back to personalisation's open_incident rule).
    assert re.search(
        r"^example: inc-[0-9a-f]+-[0-9a-f]+ \w+ \((event|window|timer|spike) rule\)", text, re.M
    )
    assert "  evidence (newest first, " in text
    assert re.search(r"^    \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+ \w+", text, re.M), text
    assert "  deliveries: " in text
    assert _number(r"the profile now counts open_incidents = (\d+)", text) >= 1
