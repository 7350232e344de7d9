"""What a negative experience is: one definition, with its thresholds, for every service.

`negative_experiences(event)` lists the kinds of negative experience one TouchpointEvent
shows. The per-metric predicates and thresholds below are what the profile counts
(`services/profile/domain/effects.py`, `derive.py`), what the demo labels its journeys
with and what the alerts service pages on. docs/profile-metrics.md ("Negative
experiences") states them.

Survey answers on other scales are mapped linearly onto the metric's usual scale (CSAT
1-5, CES 1-7; NPS is always 0-10), so a threshold means the same on every scale.
"""

from __future__ import annotations

from enum import StrEnum

from cx.events.v1 import touchpoint_pb2 as ev

from services.common.validation import scale_of


class NegativeExperience(StrEnum):
    PAYMENT_FAILED = "payment_failed"
    LATE_DELIVERY = "late_delivery"
    REPEAT_CONTACT = "repeat_contact"
    COMPLAINT = "complaint"
    DETRACTOR = "detractor"
    LOW_CSAT = "low_csat"
    HIGH_EFFORT = "high_effort"
    NEGATIVE_SENTIMENT = "negative_sentiment"


# NPS, 0-10: promoter from 9, detractor up to 6, passive between.
NPS_PROMOTER_FROM = 9
NPS_DETRACTOR_TO = 6
# CSAT as a share of its scale's range (0 the lowest answer, 1 the highest): satisfied
# from 0.75 (4 or 5 of 5), low up to 0.25 (1 or 2 of 5).
CSAT_SATISFIED_FROM = 0.75
CSAT_LOW_TO = 0.25
# CES on 1 (very easy) to 7 (very hard): high effort from 5.
CES_HIGH_EFFORT_FROM = 5.0
# Inbound message sentiment, -1 to 1: negative up to -0.3.
NEGATIVE_SENTIMENT_TO = -0.3

# Alerting (services/alerts): what pages someone at once is stricter than what the profile
# counts. CES: a "very hard" answer, 6 or 7 of 7 (high effort counts from 5).
CES_ALERT_FROM = 6.0
# A public inbound message (social) pages from this sentiment down: it can spread.
PUBLIC_SENTIMENT_ALERT_TO = -0.6
# A delivery pages when it arrived this many minutes after the promise (or failed).
LATE_DELIVERY_ALERT_MINUTES = 24 * 60

# Kind -> how a report describes it, in report order.
NEGATIVE_KINDS: dict[NegativeExperience, str] = {
    NegativeExperience.PAYMENT_FAILED: "failed payment",
    NegativeExperience.LATE_DELIVERY: "late or failed delivery",
    NegativeExperience.REPEAT_CONTACT: "repeat support contact",
    NegativeExperience.COMPLAINT: "complaint opened",
    NegativeExperience.DETRACTOR: f"NPS detractor (0-{NPS_DETRACTOR_TO})",
    NegativeExperience.LOW_CSAT: f"low CSAT (1-{1 + int(CSAT_LOW_TO * 4)} of 5)",
    NegativeExperience.HIGH_EFFORT: f"high effort (CES {CES_HIGH_EFFORT_FROM:g}-7)",
    NegativeExperience.NEGATIVE_SENTIMENT: f"negative sentiment (<= {NEGATIVE_SENTIMENT_TO})",
}


def on_scale(score: float, low: float, high: float, to_low: float, to_high: float) -> float:
    """Maps a score from its scale onto another, so answers on different scales combine."""
    return to_low + (score - low) * (to_high - to_low) / (high - low)


def rescaled(survey: ev.SurveyResponse, to_low: float, to_high: float) -> float:
    """The answer mapped from the scale it was asked on onto `to_low`..`to_high`."""
    low, high = scale_of(survey)
    return on_scale(survey.score, low, high, to_low, to_high)


def share_of_scale(survey: ev.SurveyResponse) -> float:
    """The answer as a share of its scale's range: 0 the lowest answer, 1 the highest."""
    return rescaled(survey, 0, 1)


def csat_on_five(survey: ev.SurveyResponse) -> float:
    return rescaled(survey, 1, 5)


def ces_on_seven(survey: ev.SurveyResponse) -> float:
    return rescaled(survey, 1, 7)


def nps_category(score: int | None) -> str | None:
    """promoter, passive or detractor; None without a score."""
    if score is None:
        return None
    if score >= NPS_PROMOTER_FROM:
        return "promoter"
    return "detractor" if score <= NPS_DETRACTOR_TO else "passive"


def is_satisfied_csat(survey: ev.SurveyResponse) -> bool:
    return (
        survey.metric == ev.SurveyResponse.METRIC_CSAT
        and share_of_scale(survey) >= CSAT_SATISFIED_FROM
    )


def is_low_csat(survey: ev.SurveyResponse) -> bool:
    return survey.metric == ev.SurveyResponse.METRIC_CSAT and share_of_scale(survey) <= CSAT_LOW_TO


def is_detractor(survey: ev.SurveyResponse) -> bool:
    return (
        survey.metric == ev.SurveyResponse.METRIC_NPS and nps_category(survey.score) == "detractor"
    )


def is_high_effort(survey: ev.SurveyResponse) -> bool:
    return (
        survey.metric == ev.SurveyResponse.METRIC_CES
        and ces_on_seven(survey) >= CES_HIGH_EFFORT_FROM
    )


def is_late_delivery(update: ev.DeliveryUpdate) -> bool:
    """Delivered after the promised time (never late without a promise)."""
    return (
        update.status == ev.DeliveryUpdate.STATUS_DELIVERED
        and update.HasField("promised_at")
        and update.actual_at.ToNanoseconds() > update.promised_at.ToNanoseconds()
    )


def late_minutes(update: ev.DeliveryUpdate) -> float | None:
    """Minutes a delivered parcel arrived after its promise (negative when early); None
    without a delivery, a promise or an arrival time."""
    if (
        update.status != ev.DeliveryUpdate.STATUS_DELIVERED
        or not update.HasField("promised_at")
        or not update.HasField("actual_at")
    ):
        return None
    late_ns = update.actual_at.ToNanoseconds() - update.promised_at.ToNanoseconds()
    return late_ns / 60e9


def is_severely_late(update: ev.DeliveryUpdate) -> bool:
    """Delivered at least LATE_DELIVERY_ALERT_MINUTES after the promise (alerting)."""
    minutes = late_minutes(update)
    return minutes is not None and minutes >= LATE_DELIVERY_ALERT_MINUTES


def is_failed_delivery(update: ev.DeliveryUpdate) -> bool:
    return update.status in (
        ev.DeliveryUpdate.STATUS_FAILED,
        ev.DeliveryUpdate.STATUS_RETURNED_TO_SENDER,
    )


def is_negative_message(message: ev.ConversationMessage) -> bool:
    """An inbound message with sentiment at or below NEGATIVE_SENTIMENT_TO."""
    return (
        message.direction == ev.ConversationMessage.DIRECTION_INBOUND
        and message.sentiment <= NEGATIVE_SENTIMENT_TO
    )


def is_public_outcry(message: ev.ConversationMessage) -> bool:
    """A public inbound message (a social post) with sentiment at or below
    PUBLIC_SENTIMENT_ALERT_TO (alerting)."""
    return (
        message.direction == ev.ConversationMessage.DIRECTION_INBOUND
        and message.public
        and message.sentiment <= PUBLIC_SENTIMENT_ALERT_TO
    )


def is_severe_effort(survey: ev.SurveyResponse) -> bool:
    """A CES answer at or above CES_ALERT_FROM on 1-7 (alerting)."""
    return survey.metric == ev.SurveyResponse.METRIC_CES and ces_on_seven(survey) >= CES_ALERT_FROM


def is_repeat_contact(contact: ev.SupportContact) -> bool:
    """Not the first contact about its reason, resolved or not (the source system says so;
    the profile also counts repeats of a reason within 30 days from its history)."""
    return not contact.first_contact


def is_complaint_opened(complaint: ev.Complaint) -> bool:
    return complaint.status == ev.Complaint.STATUS_OPENED


def negative_experiences(event: ev.TouchpointEvent) -> list[NegativeExperience]:
    """The kinds of negative experience the event shows (none for most events)."""
    kind = NegativeExperience
    match event.WhichOneof("payload"):
        case "payment_failed":
            return [kind.PAYMENT_FAILED]
        case "delivery_update":
            d = event.delivery_update
            late = is_late_delivery(d) or is_failed_delivery(d)
            return [kind.LATE_DELIVERY] if late else []
        case "support_contact":
            return [kind.REPEAT_CONTACT] if is_repeat_contact(event.support_contact) else []
        case "complaint":
            return [kind.COMPLAINT] if is_complaint_opened(event.complaint) else []
        case "survey_response":
            s = event.survey_response
            checks = (
                (kind.DETRACTOR, is_detractor),
                (kind.LOW_CSAT, is_low_csat),
                (kind.HIGH_EFFORT, is_high_effort),
            )
            return [k for k, check in checks if check(s)]
        case "conversation_message":
            negative = is_negative_message(event.conversation_message)
            return [kind.NEGATIVE_SENTIMENT] if negative else []
    return []
