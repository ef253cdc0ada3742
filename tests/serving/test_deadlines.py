"""Predict honours its deadline: never scores after it expired, never answers late.

The servicer is driven with a context whose clock the test moves, so the outcome does
not depend on how fast this machine scores (wall-clock figures belong in benchmarks/).
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import pytest

from saiki.serving.prediction_service import PredictionService
from saiki.serving.predictor import Prediction
from saiki.v1 import prediction_pb2


class AbortedError(Exception):
    """What ``context.abort`` raises, as grpc's own does."""


class Context:
    """The part of grpc.ServicerContext the servicer uses, with a settable deadline."""

    def __init__(self, remaining_s: float | None) -> None:
        self.remaining_s = remaining_s
        self.code: grpc.StatusCode | None = None

    def time_remaining(self) -> float | None:
        return self.remaining_s

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        raise AbortedError(details)


class Predictor:
    """Scores in no time, but lets the test spend the deadline while it does."""

    def __init__(self, context: Context, spends_deadline: bool) -> None:
        self.context = context
        self.spends_deadline = spends_deadline
        self.calls = 0

    def predict(
        self,
        user_id: str,
        item_ids: Sequence[str],
        device_id: str = "",
        request_id: str = "",
        apply_threshold: bool = False,
    ) -> Prediction:
        self.calls += 1
        if self.spends_deadline:
            self.context.remaining_s = 0.0
        return Prediction(request_id or "r", "v1", "production", [(i, 0.5) for i in item_ids])


REQUEST = prediction_pb2.PredictRequest(user_id="u1", item_ids=["i1", "i2"])


def test_an_expired_deadline_is_refused_before_scoring() -> None:
    context = Context(remaining_s=0.0)
    predictor = Predictor(context, spends_deadline=False)
    service = PredictionService(predictor, max_candidates=1000)  # type: ignore[arg-type]
    with pytest.raises(AbortedError):
        service.Predict(REQUEST, context)  # type: ignore[arg-type]
    assert context.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert predictor.calls == 0


def test_a_deadline_that_expires_while_scoring_gets_no_late_answer() -> None:
    context = Context(remaining_s=1.0)
    predictor = Predictor(context, spends_deadline=True)
    service = PredictionService(predictor, max_candidates=1000)  # type: ignore[arg-type]
    with pytest.raises(AbortedError):
        service.Predict(REQUEST, context)  # type: ignore[arg-type]
    assert context.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert predictor.calls == 1


@pytest.mark.parametrize("remaining_s", [None, 5.0])
def test_a_call_within_its_deadline_or_without_one_is_answered(remaining_s: float | None) -> None:
    context = Context(remaining_s)
    service = PredictionService(Predictor(context, False), max_candidates=1000)  # type: ignore[arg-type]
    answer = service.Predict(REQUEST, context)  # type: ignore[arg-type]
    assert [i.item_id for i in answer.items] == ["i1", "i2"] and context.code is None
