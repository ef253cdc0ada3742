"""The access log: every failed call, ``[serving] access_log_share`` of the others."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from saiki.serving import observability
from saiki.serving.observability import ObservingInterceptor


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.codes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.codes.append(record.fields["code"])  # type: ignore[attr-defined]


@pytest.fixture
def lines() -> Iterator[_Lines]:
    handler = _Lines()
    observability.ACCESS.addHandler(handler)
    level = observability.ACCESS.level
    observability.ACCESS.setLevel(logging.INFO)
    yield handler
    observability.ACCESS.removeHandler(handler)
    observability.ACCESS.setLevel(level)


class _Context:
    def __init__(self) -> None:
        self._code: grpc.StatusCode | None = None

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


def _behaviour(request: Any, context: _Context) -> str:
    if request == "bad":
        context._code = grpc.StatusCode.INVALID_ARGUMENT
        raise ValueError("bad request")
    return "answer"


def _call(interceptor: ObservingInterceptor, request: str) -> str:
    registered = grpc.unary_unary_rpc_method_handler(_behaviour)
    handler = interceptor.intercept_service(
        lambda details: registered, SimpleNamespace(method="/saiki.v1.Test/Call")
    )
    return handler.unary_unary(request, _Context())  # type: ignore[no-any-return]


@pytest.mark.parametrize(("share", "ok_lines"), [(1.0, 40), (0.25, 10), (0.0, 0)])
def test_ok_calls_are_logged_by_the_share_and_failed_calls_always(
    lines: _Lines, share: float, ok_lines: int
) -> None:
    interceptor = ObservingInterceptor(share)
    for _ in range(40):
        assert _call(interceptor, "good") == "answer"  # the answer is passed through
    for _ in range(3):
        with pytest.raises(ValueError, match="bad request"):  # and so is the failure
            _call(interceptor, "bad")
    assert lines.codes.count("OK") == ok_lines
    assert lines.codes.count("INVALID_ARGUMENT") == 3
