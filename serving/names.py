"""The full names of saiki's gRPC services, taken from the generated descriptors."""

from __future__ import annotations

from typing import Final

from saiki.v1 import events_pb2, features_pb2, prediction_pb2

EVENT_SERVICE: Final = events_pb2.DESCRIPTOR.services_by_name["EventService"].full_name
FEATURE_SERVICE: Final = features_pb2.DESCRIPTOR.services_by_name["FeatureService"].full_name
PREDICTION_SERVICE: Final = prediction_pb2.DESCRIPTOR.services_by_name[
    "PredictionService"
].full_name
SERVICE_NAMES: Final = (EVENT_SERVICE, FEATURE_SERVICE, PREDICTION_SERVICE)
