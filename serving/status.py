"""saiki's errors as gRPC status codes: the one place the mapping lives."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from saiki.core.errors import (
    ArtifactError,
    ConfigError,
    InvalidInputError,
    NotFoundError,
    PreconditionError,
    SaikiError,
)

_CODES: tuple[tuple[type[SaikiError], grpc.StatusCode], ...] = (
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (PreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (ArtifactError, grpc.StatusCode.INTERNAL),
    (ConfigError, grpc.StatusCode.INTERNAL),
)

Handler = TypeVar("Handler", bound=Callable[..., Any])


class ForwardedError(SaikiError):
    """An error another process answered with its status (the event writer's)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def status_code(error: SaikiError) -> grpc.StatusCode:
    """The status code a saiki error is answered with."""
    if isinstance(error, ForwardedError):
        return error.code
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.UNAVAILABLE


def deadline_expired(context: grpc.ServicerContext) -> bool:
    """True when the caller's deadline has passed: the call gets no (late) answer."""
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


def abort_if_expired(context: grpc.ServicerContext, when: str) -> None:
    """Abort with DEADLINE_EXCEEDED if the deadline passed (``when``: at which step)."""
    if deadline_expired(context):
        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline expired {when}")


def rpc(handler: Handler) -> Handler:
    """Wrap a servicer method: a SaikiError aborts the call with its mapped status."""

    @functools.wraps(handler)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return handler(self, request, context)
        except SaikiError as exc:
            context.abort(status_code(exc), str(exc))

    return wrapper  # type: ignore[return-value]
