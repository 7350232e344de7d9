"""The alerts worker's batch step and timer step, without Kafka: tests call them directly.

`process(records)`, for one batch of `cx.touchpoints.v1` records:
1. decode each record with the shared validator; a bad record is skipped and counted
   (the profile worker dead-letters the topic's bad records; this consumer only reads);
2. `detect.facts` and `detect.candidates`: events no rule could use stop here;
3. the batch's people are read at once through ProfileService.GetFeatures (only the
   fields the rules read); a person the profile does not know yet is asked again for
   up to `unknown_wait_s` (the profile worker reads the same events), then detection
   goes on without profile fields under a stand-in id. When the profile service does not
   answer, `ProfileUnavailable` (an infrastructure failure) makes the worker retry the
   batch: never a page whose severity ignored the person;
4. per event, in order: spikes (their incident then inhibits the person's pages of the
   same touchpoint), then the person's rules, windows counted in Redis; each trigger is
   `IncidentStore.trigger` (idempotent per rule and event id), each resolution
   `IncidentStore.resolve_key`.
The caller commits the batch's offsets after `process` returns.

Events older than `max_event_age_s` (a backlog after a long outage, a replay, the first
run of a new consumer group) still count in windows and baselines and still resolve,
but open nothing: an incident is about now.

`tick(now_ms)`, every `ALERTS_TIMER_EVERY_S`: due SLA timers and escalations
(`IncidentStore.fire_due`), spikes that stayed below their threshold for
`clear_hold_s` (resolved), and keys quiet for long enough (windows after `within_s`
without an event, event rules after `resolve_after_s`).

`process` (once it has the batch's people) and `tick` never run at once (one lock): both
run in worker threads, off the Faust event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from cx.events.v1 import touchpoint_pb2 as ev
from prometheus_client import Counter

from services.alerts.adapters.config_files import DetectionConfig
from services.alerts.adapters.incidents import IncidentStoreLike
from services.alerts.adapters.profiles import Identifier, ProfileLookup, wait_for_people
from services.alerts.adapters.windows import DetectionStateLike
from services.alerts.domain import detect
from services.alerts.domain.detect import Match, Person
from services.alerts.domain.incidents import Trigger, touchpoint_key
from services.alerts.domain.rules import AlertRule
from services.common.conditions import Fields, FieldValue
from services.common.dead_letter import InvalidRecord, SourceRecord, decode_touchpoint, record_time

log = logging.getLogger(__name__)

RECORDS = Counter(
    "cx_alerts_records",
    "Touchpoint records read by the alerts worker, by outcome (invalid, skipped, ignored, "
    "no_rule, detected)",
    ["outcome"],
)
TRIGGERS = Counter(
    "cx_alerts_triggers",
    "Rule triggers by rule and what the store did (OPENED, UPDATED, GROUPED, DUPLICATE, SCHEDULED)",
    ["rule", "result"],
)
RESOLUTIONS = Counter("cx_alerts_auto_resolved", "Incidents resolved by detection, by why", ["why"])
PEOPLE = Counter(
    "cx_alerts_profile_reads", "People read for detection, by result (known, unknown)", ["result"]
)
STALE = Counter("cx_alerts_stale_matches", "Matches of events too old to open an incident")

# Events older than this open nothing (a week: the touchpoint topic keeps about that much, so
# a new consumer group reading it from the start pages for at most that)
DEFAULT_MAX_EVENT_AGE_S = 7 * 86400.0
DEFAULT_UNKNOWN_WAIT_S = 1.0


@dataclass(frozen=True)
class _Work:
    event: ev.TouchpointEvent
    facts: dict[str, FieldValue]
    rules: list[AlertRule]
    identifier: Identifier | None


@dataclass
class BatchReport:
    """What one `process` call did (tests and logs)."""

    invalid: int = 0
    ignored: int = 0
    detected: int = 0
    results: list[tuple[str, str]] = field(default_factory=list)  # (rule, change)
    resolved: list[str] = field(default_factory=list)  # incident ids


@dataclass
class TickReport:
    fired: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    purged: int = 0


# Resolved incidents are kept this long (ListIncidents, GetIncident), then deleted by the
# worker's timer, a batch a minute; open incidents are never deleted.
RESOLVED_KEPT_MS = 30 * 86_400_000
PURGE_EVERY_MS = 60_000


class DetectionPipeline:
    def __init__(
        self,
        config: Callable[[], DetectionConfig],
        store: IncidentStoreLike,
        state: DetectionStateLike,
        profiles: ProfileLookup,
        *,
        segment_names: Collection[str] = (),
        clock: Callable[[], float] = time.time,
        unknown_wait_s: float = DEFAULT_UNKNOWN_WAIT_S,
        max_event_age_s: float = DEFAULT_MAX_EVENT_AGE_S,
    ) -> None:
        self.config = config
        self.store = store
        self._purged_at_ms = 0
        self.state = state
        self.profiles = profiles
        self.segment_names = tuple(segment_names)
        self.clock = clock
        self.unknown_wait_s = unknown_wait_s
        self.max_event_age_ms = int(max_event_age_s * 1000)
        self._lock = threading.Lock()

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # --- the batch step ----------------------------------------------------------------

    def process(self, records: Sequence[SourceRecord]) -> BatchReport:
        return self._process(records)

    def skip(self, record: SourceRecord, exc: Exception) -> None:
        """A record that failed on its own (not infrastructure): skipped and counted."""
        RECORDS.labels("skipped").inc()
        log.error(
            "record %s/%d@%d skipped: %s: %s",
            record.topic,
            record.partition,
            record.offset,
            type(exc).__name__,
            exc,
        )

    def _process(self, records: Sequence[SourceRecord]) -> BatchReport:
        config = self.config()
        report = BatchReport()
        work: list[_Work] = []
        for record in records:
            try:
                event = decode_touchpoint(
                    record.value, record.headers, record_time=record_time(record.timestamp_ms)
                )
            except InvalidRecord as error:
                report.invalid += 1
                log.debug(
                    "invalid record %s/%d@%d: %s",
                    record.topic,
                    record.partition,
                    record.offset,
                    error,
                )
                continue
            facts = detect.facts(event)
            if facts is None:
                report.ignored += 1
                continue
            rules = detect.candidates(config.rules, facts)
            if not rules:
                report.ignored += 1
                continue
            identifier = None
            if any(r.per_person for r in rules):
                identifier = detect.person_identifier(event)
            work.append(_Work(event, facts, rules, identifier))
        RECORDS.labels("invalid").inc(report.invalid)
        RECORDS.labels("no_rule").inc(report.ignored)
        if not work:
            return report
        people = self._people(config, work)
        # Reading people may wait; only detection itself excludes the timer step.
        with self._lock:
            now_ms = self.now_ms()
            for item in work:
                self._detect(config, item, people, now_ms, report)
        report.detected = len(work)
        RECORDS.labels("detected").inc(len(work))
        return report

    def _people(
        self, config: DetectionConfig, work: Sequence[_Work]
    ) -> dict[Identifier, Person | None]:
        identifiers = {w.identifier for w in work if w.identifier is not None}
        if not identifiers:
            return {}
        found = wait_for_people(
            self.profiles,
            identifiers,
            config.rules.profile_fields_read(),
            wait_s=self.unknown_wait_s,
        )
        known = sum(1 for p in found.values() if p is not None)
        PEOPLE.labels("known").inc(known)
        PEOPLE.labels("unknown").inc(len(found) - known)
        return found

    def _detect(
        self,
        config: DetectionConfig,
        item: _Work,
        people: dict[Identifier, Person | None],
        now_ms: int,
        report: BatchReport,
    ) -> None:
        person: Person | None = None
        if item.identifier is not None:
            person = people.get(item.identifier) or Person(
                detect.anonymous_profile_id(*item.identifier), known=False
            )
        fields = detect.fields_for(item.facts, person, self.segment_names)
        evaluation = detect.evaluate(item.rules, fields, person, item.facts)
        at_ms = detect.occurred_ms(item.event) or now_ms
        fresh = now_ms - at_ms <= self.max_event_age_ms
        profile_id = person.profile_id if person is not None else ""
        for match in evaluation.matches:
            self._match(config, match, item, fields, profile_id, at_ms, fresh, now_ms, report)
        for resolution in evaluation.resolutions:
            resolved = self.store.resolve_key(resolution.dedup_key, resolution.why, now_ms)
            if resolved:
                RESOLUTIONS.labels("event").inc()
                report.resolved.append(resolved)

    def _fire(
        self,
        config: DetectionConfig,
        rule: AlertRule,
        item: _Work,
        fields: Fields,
        profile_id: str,
        now_ms: int,
        report: BatchReport,
    ) -> Trigger | None:
        t = detect.trigger(rule, config.owners, item.event, fields, profile_id, now_ms)
        if t is None:
            return None
        result = self.store.trigger(t)
        TRIGGERS.labels(rule.name, result.change).inc()
        report.results.append((rule.name, result.change))
        return t

    def _match(
        self,
        config: DetectionConfig,
        match: Match,
        item: _Work,
        fields: Fields,
        profile_id: str,
        at_ms: int,
        fresh: bool,
        now_ms: int,
        report: BatchReport,
    ) -> None:
        rule, event = match.rule, item.event
        if rule.spike is not None:
            spike = rule.spike
            window_ms = int(spike.window_s * 1000)
            counted = self.state.spike(
                rule.name,
                event.touchpoint,
                event.event_id,
                at_ms,
                window_ms,
                int(spike.baseline_s * 1000),
            )
            threshold = spike.threshold(counted.baseline_count)
            if counted.count < threshold:
                return
            if not fresh:
                STALE.inc()
                return
            spike_fields = {
                **item.facts,
                "spike.count": counted.count,
                "spike.baseline": round(spike.expected(counted.baseline_count), 2),
                "spike.threshold": round(threshold, 2),
            }
            self.state.open_spike(rule.name, event.touchpoint, threshold)
            self._fire(config, rule, item, spike_fields, "", now_ms, report)
            return
        if rule.window is not None:
            self._window(config, match, item, fields, profile_id, at_ms, fresh, now_ms, report)
            return
        if rule.timer is not None:
            due_ms = at_ms + int(rule.timer.sla_s * 1000)
            if due_ms < now_ms - self.max_event_age_ms:
                STALE.inc()
                return
            self._fire(config, rule, item, fields, profile_id, now_ms, report)
            return
        if not fresh:
            STALE.inc()
            return
        fired = self._fire(config, rule, item, fields, profile_id, now_ms, report)
        if fired is not None and rule.resolve_after_s is not None:
            due = at_ms + int(rule.resolve_after_s * 1000)
            self.state.resolve_quiet([(fired.dedup_key, due)])

    def _window(
        self,
        config: DetectionConfig,
        match: Match,
        item: _Work,
        fields: Fields,
        profile_id: str,
        at_ms: int,
        fresh: bool,
        now_ms: int,
        report: BatchReport,
    ) -> None:
        rule, event = match.rule, item.event
        window = rule.window
        assert window is not None
        key = detect.window_key(rule, profile_id, fields)
        incident_key = detect.dedup_key(rule, profile_id, fields)
        if key is None or incident_key is None:
            return
        within_ms = int(window.within_s * 1000)
        if window.preceded_by is None:
            count = self.state.count(rule.name, key, event.event_id, at_ms, within_ms)
            due = count >= window.count
        else:
            role = "hit" if match.role == detect.HIT else "pre"
            count, paired, newest_ms = self.state.precede(
                rule.name, key, role, event.event_id, at_ms, within_ms
            )
            due = paired and count >= window.count
            # The pair is as recent as its later event (the awaited one may come late).
            fresh = now_ms - newest_ms <= self.max_event_age_ms
        if match.role == detect.HIT:
            # Resolves once the window has had no counted event for its length.
            self.state.resolve_quiet([(incident_key, at_ms + within_ms)])
        if not due:
            return
        if not fresh:
            STALE.inc()
            return
        self._fire(
            config, rule, item, {**fields, "window.count": count}, profile_id, now_ms, report
        )

    # --- the timer step ----------------------------------------------------------------

    def tick(self, now_ms: int | None = None) -> TickReport:
        with self._lock:
            return self._tick(self.now_ms() if now_ms is None else now_ms)

    def _tick(self, now_ms: int) -> TickReport:
        config = self.config()
        report = TickReport(fired=self.store.fire_due(now_ms))
        for spike in self.state.open_spikes():
            rule = config.rules.rule(spike.rule)
            key = touchpoint_key(spike.rule, spike.touchpoint)
            if rule is None or rule.spike is None:
                resolved = self.store.resolve_key(key, "the spike rule was removed", now_ms)
                self.state.close_spike(spike.rule, spike.touchpoint)
                report.resolved.extend([resolved] if resolved else [])
                continue
            hold = rule.spike.clear_hold_s
            window_ms = int(rule.spike.window_s * 1000)
            count = self.state.count_now(spike.rule, spike.touchpoint, now_ms, window_ms)
            step, since = detect.spike_step(
                count, spike.threshold, spike.below_since_ms, now_ms, hold
            )
            if step == detect.STILL:
                if spike.below_since_ms is not None:
                    self.state.mark_below(spike.rule, spike.touchpoint, None)
            elif step == detect.HOLD:
                if since != spike.below_since_ms:
                    self.state.mark_below(spike.rule, spike.touchpoint, since)
            else:
                why = (
                    f"spike cleared: {count} in {rule.spike.window_s:g} s, below "
                    f"{spike.threshold:g} for {hold:g} s"
                )
                resolved = self.store.resolve_key(key, why, now_ms)
                self.state.close_spike(spike.rule, spike.touchpoint)
                if resolved:
                    RESOLUTIONS.labels("spike_cleared").inc()
                    report.resolved.append(resolved)
        for key, due in self.state.due_quiet(now_ms):
            rule_name = key.split(":", 1)[0]
            rule = config.rules.rule(rule_name)
            if rule is not None and rule.window is not None:
                why = f"no matching event for {rule.window.within_s:g} s (window)"
            elif rule is not None and rule.resolve_after_s is not None:
                why = f"no matching event for {rule.resolve_after_s:g} s"
            else:
                why = "quiet"
            resolved = self.store.resolve_key(key, why, now_ms)
            self.state.drop_quiet(key, due)
            if resolved:
                RESOLUTIONS.labels("quiet").inc()
                report.resolved.append(resolved)
        if now_ms - self._purged_at_ms >= PURGE_EVERY_MS:
            self._purged_at_ms = now_ms
            report.purged = self.store.purge_resolved(now_ms - RESOLVED_KEPT_MS)
        return report
