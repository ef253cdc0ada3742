"""A small Python client for saiki's gRPC services: TLS, a bearer token, deadlines, retries.

Retries follow gRPC's own service-config retry policy (done inside gRPC, with backoff):
``UNAVAILABLE`` is retried for every method, and ``RESOURCE_EXHAUSTED`` too, since an
overloaded server refuses a call at once without doing any of it. ``Ingest`` is safe to
retry: an event is accepted once by its ``event_id``, a resend is counted a duplicate.

    with SaikiClient("127.0.0.1:50051", token=os.environ["SAIKI_TOKEN"]) as client:
        ranked = client.predict("u1", ["i1", "i2"])
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from saiki.serving.names import SERVICE_NAMES
from saiki.v1 import (
    events_pb2,
    events_pb2_grpc,
    features_pb2,
    features_pb2_grpc,
    prediction_pb2,
    prediction_pb2_grpc,
)


def service_config(attempts: int = 4) -> str:
    """gRPC's service config with saiki's retry policy, as JSON."""
    policy = {
        "maxAttempts": attempts,
        "initialBackoff": "0.05s",
        "maxBackoff": "1s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
    }
    return json.dumps(
        {"methodConfig": [{"name": [{"service": s} for s in SERVICE_NAMES], "retryPolicy": policy}]}
    )


@dataclass(frozen=True)
class Tls:
    """What a client needs for TLS: the CA to trust, and for mutual TLS its own pair."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """The channel credentials."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )


class SaikiClient:
    """One channel to a server (or a load balancer's address) and a stub per service."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        tls: Tls | None = None,
        timeout_s: float = 5.0,
        attempts: int = 4,
        load_balancing: str | None = None,
    ) -> None:
        options: list[tuple[str, Any]] = [("grpc.max_send_message_length", 64 << 20)]
        if attempts > 1:  # gRPC's retry policy needs at least two attempts
            options += [
                ("grpc.enable_retries", 1),
                ("grpc.service_config", service_config(attempts)),
            ]
        else:
            options.append(("grpc.enable_retries", 0))
        if load_balancing:
            options.append(("grpc.lb_policy_name", load_balancing))
        if tls is not None:
            self.channel = grpc.secure_channel(target, tls.credentials(), options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._timeout = timeout_s
        self.events = events_pb2_grpc.EventServiceStub(self.channel)
        self.features = features_pb2_grpc.FeatureServiceStub(self.channel)
        self.prediction = prediction_pb2_grpc.PredictionServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def _call(self, method: Any, request: Any, timeout_s: float | None) -> Any:
        """Call with the deadline and credentials (Any: each stub method's own reply)."""
        return method(request, timeout=timeout_s or self._timeout, metadata=self._metadata)

    def ingest(
        self, events: list[events_pb2.Event], timeout_s: float | None = None
    ) -> events_pb2.IngestResponse:
        """Send events; the answer counts accepted, duplicates and quarantined ones."""
        reply: events_pb2.IngestResponse = self._call(
            self.events.Ingest, events_pb2.IngestRequest(events=events), timeout_s
        )
        return reply

    def get_features(
        self,
        entity: str,
        ids: list[str],
        as_of_ms: int | None = None,
        timeout_s: float | None = None,
    ) -> features_pb2.GetFeaturesResponse:
        """Features of users or items, now or as of a time."""
        request = features_pb2.GetFeaturesRequest(entity=entity, ids=ids)
        if as_of_ms is not None:
            stamp = Timestamp()
            stamp.FromMilliseconds(as_of_ms)
            request.as_of.CopyFrom(stamp)
        answer: features_pb2.GetFeaturesResponse = self._call(
            self.features.GetFeatures, request, timeout_s
        )
        return answer

    def predict(
        self,
        user_id: str,
        item_ids: list[str],
        *,
        device_id: str = "",
        request_id: str = "",
        timeout_s: float | None = None,
    ) -> prediction_pb2.PredictResponse:
        """Candidates ranked by predicted click probability."""
        request = prediction_pb2.PredictRequest(
            user_id=user_id, item_ids=item_ids, device_id=device_id, request_id=request_id
        )
        ranked: prediction_pb2.PredictResponse = self._call(
            self.prediction.Predict, request, timeout_s
        )
        return ranked

    def health(self, service: str = "", timeout_s: float = 1.0) -> int:
        """The server's health status for a service ("" for the whole server)."""
        reply = self._health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
        )
        return int(reply.status)

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def __enter__(self) -> SaikiClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()
