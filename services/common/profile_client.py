"""What every client of ProfileService.GetFeatures reads the same way (personalisation's
decisions, the alerts worker's severities): which status codes mean "the profile service
cannot answer now", and the reply's features as plain field values."""

from __future__ import annotations

import grpc
from cx.profile.v1 import profile_pb2 as pb
from google.protobuf import json_format

from services.common.conditions import FieldValue

# gRPC codes that mean the profile service cannot answer now (a retry may succeed).
UNAVAILABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
    }
)


def _value(value: object) -> FieldValue:
    # Struct numbers are doubles: a count comes back as 3.0.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, str | int | float | bool) else None


def feature_values(reply: pb.GetFeaturesResponse) -> dict[str, FieldValue]:
    """The reply's features by name, integers as integers."""
    return {k: _value(v) for k, v in json_format.MessageToDict(reply.features).items()}
