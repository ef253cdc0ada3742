"""``PredictionService.Predict``: validated requests into the predictor."""

from __future__ import annotations

import grpc

from saiki.serving.predictor import Predictor, validate_predict
from saiki.serving.status import abort_if_expired, rpc
from saiki.v1 import prediction_pb2, prediction_pb2_grpc


class PredictionService(prediction_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
    """Thin: converts messages, checks the deadline, delegates to the predictor."""

    def __init__(self, predictor: Predictor, max_candidates: int) -> None:
        self._predictor = predictor
        self._max_candidates = max_candidates

    @rpc
    def Predict(  # noqa: N802 (gRPC method name)
        self, request: prediction_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> prediction_pb2.PredictResponse:
        # A candidate asked for twice is scored and answered once.
        items = list(dict.fromkeys(request.item_ids))
        validate_predict(
            request.user_id, items, request.device_id, request.request_id, self._max_candidates
        )
        abort_if_expired(context, "before scoring")
        result = self._predictor.predict(
            request.user_id,
            items,
            request.device_id,
            request.request_id,
            apply_threshold=request.apply_threshold,
        )
        abort_if_expired(context, "while scoring")  # never a late answer
        return prediction_pb2.PredictResponse(
            request_id=result.request_id,
            model_version=result.model_version,
            variant=result.variant,
            threshold=result.threshold,
            items=[prediction_pb2.ScoredItem(item_id=i, score=s) for i, s in result.items],
        )
