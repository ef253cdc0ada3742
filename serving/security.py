"""Who may call what: bearer tokens by role, checked in one server interceptor; and TLS.

Every RPC but health carries ``authorization: Bearer <token>``. The tokens file (``[auth]
tokens_file``) holds only SHA-256 hashes of tokens, each with a name and its roles::

    [[token]]
    name = "ingest-bot"
    sha256 = "9f86d0…"
    roles = ["ingest"]

It is re-read when it changes (checked at most once a second), so a token is added,
rotated or revoked without a restart. Roles: ``ingest`` (EventService), ``read``
(FeatureService), ``predict`` (PredictionService), ``admin`` (reflection, and everything
else). A missing or unknown token is ``UNAUTHENTICATED``; a known token without the
method's role is ``PERMISSION_DENIED``. ``grpc.health.v1`` needs no token.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import threading
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc

from saiki.core.config import SaikiConfig
from saiki.core.errors import ConfigError
from saiki.serving.names import EVENT_SERVICE, FEATURE_SERVICE, PREDICTION_SERVICE

ROLES: Final = ("ingest", "read", "predict", "admin")
# The role each service needs; a method of any other service (reflection) needs admin.
SERVICE_ROLES: Final = {
    EVENT_SERVICE: "ingest",
    FEATURE_SERVICE: "read",
    PREDICTION_SERVICE: "predict",
}
OPEN_SERVICES: Final = frozenset({"grpc.health.v1.Health"})
_RELOAD_EVERY_S: Final = 1.0


def hash_token(token: str) -> str:
    """The SHA-256 a tokens file stores for a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    """A caller a token names."""

    name: str
    roles: frozenset[str]

    def may(self, role: str) -> bool:
        """True when the caller has ``role`` (admin may do everything)."""
        return role in self.roles or "admin" in self.roles


def read_tokens(path: Path) -> dict[str, Principal]:
    """token hash -> principal, from a tokens file; a malformed file is a ConfigError."""
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"auth.tokens_file: no such file: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"auth.tokens_file: {path} is not valid TOML: {exc}") from exc
    found: dict[str, Principal] = {}
    for n, entry in enumerate(document.get("token", [])):
        try:
            name, digest, roles = str(entry["name"]), str(entry["sha256"]), entry["roles"]
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: token {n} needs name, sha256 and roles") from exc
        unknown = set(roles) - set(ROLES)
        if unknown or len(digest) != 64:
            raise ConfigError(f"{path}: token {name!r}: bad sha256 or unknown roles {unknown}")
        found[digest.lower()] = Principal(name, frozenset(roles))
    return found


def add_token(path: Path, name: str, roles: list[str]) -> str:
    """Append a new token's hash to a tokens file (created, mode 600); returns the token,
    which is shown once and stored nowhere."""
    unknown = set(roles) - set(ROLES)
    if unknown or not roles:
        raise ConfigError(f"roles must be some of {', '.join(ROLES)}, got {roles}")
    if path.exists() and name in {p.name for p in read_tokens(path).values()}:
        raise ConfigError(f"{path} already has a token named {name!r}: revoke it first")
    token = new_token()
    # JSON strings and lists are TOML basic strings and arrays.
    entry = (
        f"\n[[token]]\nname = {json.dumps(name)}\nsha256 = {json.dumps(hash_token(token))}\n"
        f"roles = {json.dumps(roles)}\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(descriptor, "a") as handle:
        handle.write(entry)
    return token


class TokenBook:
    """The tokens file, re-read when it changes."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self._path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._checked = float("-inf")
        self._tokens: Mapping[str, Principal] = {}
        self._refresh(force=True)

    def _refresh(self, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._checked < _RELOAD_EVERY_S:
            return
        with self._lock:
            self._checked = now
            try:
                info = self._path.stat()
            except FileNotFoundError:
                self._tokens, self._stamp = {}, None  # no file: nobody gets in
                return
            stamp = (info.st_mtime_ns, info.st_size)
            if stamp != self._stamp:
                self._tokens, self._stamp = read_tokens(self._path), stamp

    def principal(self, token: str) -> Principal | None:
        """Who a presented token belongs to, if anyone (compared in constant time)."""
        self._refresh()
        digest = hash_token(token)
        for known, principal in self._tokens.items():
            if hmac.compare_digest(known, digest):
                return principal
        return None


def _service(method: str) -> str:
    return method.lstrip("/").partition("/")[0]


def _refusal(handler: Any, code: grpc.StatusCode, details: str) -> Any:
    """A handler of the same kind as ``handler`` that only aborts the call."""

    def abort(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, details)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)


class AuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Checks every call's bearer token against the method's role (health is open)."""

    def __init__(self, book: TokenBook) -> None:
        self._book = book

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        """Pass the call on, or answer it with UNAUTHENTICATED / PERMISSION_DENIED."""
        handler = continuation(details)
        service = _service(details.method)
        if handler is None or service in OPEN_SERVICES:
            return handler
        presented = dict(details.invocation_metadata or ()).get("authorization", "")
        scheme, _, token = str(presented).partition(" ")
        principal = self._book.principal(token.strip()) if scheme.lower() == "bearer" else None
        if principal is None:
            return _refusal(
                handler, grpc.StatusCode.UNAUTHENTICATED, "authorization: a valid bearer token"
            )
        role = SERVICE_ROLES.get(service, "admin")
        if not principal.may(role):
            return _refusal(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                f"token {principal.name!r} lacks the {role!r} role for {details.method}",
            )
        return handler


def server_credentials(config: SaikiConfig) -> grpc.ServerCredentials | None:
    """TLS credentials from ``[serving] tls_cert/tls_key`` (+ ``client_ca``: mutual TLS)."""
    serving = config.serving
    if not serving.tls_cert and not serving.tls_key:
        if serving.client_ca:
            raise ConfigError("serving.client_ca needs serving.tls_cert and serving.tls_key")
        return None
    if not (serving.tls_cert and serving.tls_key):
        raise ConfigError("serving.tls_cert and serving.tls_key go together")
    try:
        chain = Path(serving.tls_cert).read_bytes()
        key = Path(serving.tls_key).read_bytes()
        ca = Path(serving.client_ca).read_bytes() if serving.client_ca else None
    except OSError as exc:
        raise ConfigError(f"serving TLS files: {exc}") from exc
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=ca, require_client_auth=ca is not None
    )


def is_loopback(host: str) -> bool:
    """True for localhost and addresses in 127.0.0.0/8 or ::1."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(config: SaikiConfig, host: str) -> None:
    """Refuse to face a network without TLS and tokens, unless told it is on purpose."""
    serving = config.serving
    if is_loopback(host) or serving.insecure:
        return
    missing = [
        what
        for what, present in (("TLS", serving.tls_cert), ("tokens", config.auth.tokens_file))
        if not present
    ]
    if missing:
        raise ConfigError(
            f"refusing to listen on {host} without {' and '.join(missing)}: set [serving] "
            "tls_cert/tls_key and [auth] tokens_file, or pass --insecure to do it anyway"
        )
