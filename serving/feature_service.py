"""``FeatureService.GetFeatures``: validated requests into the lambda merge."""

from __future__ import annotations

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from saiki.core.errors import InvalidInputError
from saiki.core.schema import MAX_ID_CHARS, MIN_EVENT_TIME_MS
from saiki.feature_repo.spec import ENTITY_BY_NAME, FEATURE_NAMES
from saiki.serving.merge import CACHE_LIMIT, FeatureMerger
from saiki.serving.speed_status import SpeedWatermark
from saiki.serving.status import abort_if_expired, rpc
from saiki.serving.wire import EntityEncoder
from saiki.v1 import features_pb2, features_pb2_grpc


def validate_ids(ids: list[str], field: str, limit: int) -> None:
    """Ids must be present, non-empty, at most 128 characters, and not too many."""
    if not ids:
        raise InvalidInputError(field, "at least one id is required")
    if len(ids) > limit:
        raise InvalidInputError(field, f"{len(ids)} ids; at most {limit} per call")
    for position, entity_id in enumerate(ids):
        if not entity_id or len(entity_id) > MAX_ID_CHARS:
            raise InvalidInputError(f"{field}[{position}]", f"must be 1..{MAX_ID_CHARS} characters")


def timestamp_ms(value: Timestamp, field: str) -> int:
    """A protobuf Timestamp as epoch ms, refusing ones outside the representable range."""
    if value.nanos < 0 or value.nanos >= 1_000_000_000:
        raise InvalidInputError(field, f"nanos must be within 0..999999999, got {value.nanos}")
    millis = value.seconds * 1000 + value.nanos // 1_000_000
    if millis < MIN_EVENT_TIME_MS or millis > 253_402_300_799_000:
        raise InvalidInputError(field, f"not a plausible time: {value.seconds} s")
    return millis


def to_timestamp(ms: int) -> Timestamp:
    """Epoch ms as a protobuf Timestamp."""
    stamp = Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


class FeatureService(features_pb2_grpc.FeatureServiceServicer):  # type: ignore[misc]
    """Thin: converts messages, validates fields, delegates to the merger."""

    def __init__(self, merger: FeatureMerger, watermark: SpeedWatermark, max_ids: int) -> None:
        self._merger = merger
        self._watermark = watermark
        self._max_ids = max_ids
        self._encoder = EntityEncoder(FEATURE_NAMES)
        # Per entity kind: id -> (the merged row object it was encoded from, its bytes).
        self._encoded: dict[str, dict[str, tuple[object, bytes]]] = {}

    @rpc
    def GetFeatures(  # noqa: N802 (gRPC method name)
        self, request: features_pb2.GetFeaturesRequest, context: grpc.ServicerContext
    ) -> features_pb2.GetFeaturesResponse:
        if request.entity not in ENTITY_BY_NAME:
            raise InvalidInputError(
                "entity", f"must be one of {sorted(ENTITY_BY_NAME)}, got {request.entity!r}"
            )
        ids = list(request.ids)
        validate_ids(ids, "ids", self._max_ids)
        as_of = timestamp_ms(request.as_of, "as_of") if request.HasField("as_of") else None
        abort_if_expired(context, "before merging")
        merged = self._merger.features(request.entity, ids, as_of)
        response = features_pb2.GetFeaturesResponse(
            batch_cutoff=to_timestamp(merged.batch_cutoff_ms),
            speed_watermark=to_timestamp(self._watermark.current_ms()),
        )
        if merged.rows is None:
            response.MergeFromString(b"".join(self._encoder.encode(merged.ids, merged.values)))
            return response
        # Bytes encoded from a cached row hold while the merger serves that same row
        # object: it replaces the object whenever it re-merges the entity.
        encoded = self._encoded.setdefault(request.entity, {})
        parts: list[bytes] = []
        missing: list[int] = []
        for n, (entity_id, row) in enumerate(zip(merged.ids, merged.rows, strict=True)):
            held = encoded.get(entity_id)
            if held is not None and held[0] is row:
                parts.append(held[1])
            else:
                parts.append(b"")
                missing.append(n)
        if missing:
            fresh = self._encoder.encode([merged.ids[n] for n in missing], merged.values[missing])
            if len(encoded) + len(missing) > CACHE_LIMIT:
                encoded.clear()
            for n, blob in zip(missing, fresh, strict=True):
                parts[n] = blob
                encoded[merged.ids[n]] = (merged.rows[n], blob)
        response.MergeFromString(b"".join(parts))
        return response
