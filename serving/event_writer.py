"""The event writer: one process that appends every server process's ``Ingest`` calls.

By default each server process validates and appends its own ``Ingest`` calls: a group
commit's Python work and fsyncs then run on the cores its read calls wake on, and in
the process whose GIL they need. A 1-user ``GetFeatures`` that arrives while another
process on its core commits a group waits for that core (benchmarks/bench_live.py's
``LIVE_INGEST_APART``; docs/service.md). With ``[serving] ingest_cpus`` set,
``saiki serve`` starts this process, held to those CPUs, before its workers: a worker's
``Ingest`` sends the request's bytes over a local socket and waits, which costs its core
nothing; the events are converted, validated and group-committed here, and the answer
(counts, per-event rejections) goes back the same way. Calls from every worker share
one group committer, so they also share segments and fsyncs.

What is acknowledged is the same as in-process: an answer comes back only after its
group is durable. A writer that dies mid-call answers nothing; the call fails with
UNAVAILABLE and a retry is exact (duplicates are dropped against the log). The writer
is part of ``saiki serve``: if it exits, the server stops with an error, for its
supervisor (``saiki up``) to restart the whole.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import secrets
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

import grpc

from saiki.core.config import SaikiConfig
from saiki.core.errors import ComponentError, SaikiError
from saiki.core.process import hold_to_cpus
from saiki.serving import observability
from saiki.serving.event_service import Appender, append_request, event_appender
from saiki.serving.status import ForwardedError, status_code
from saiki.v1 import events_pb2

log = logging.getLogger("saiki.serving.event_writer")

# How often the writer checks that the process that started it is still there (and
# that process, while it waits for the writer to start, that the writer is).
_PARENT_CHECK_S = 0.5
_START_S = 120


@dataclass(frozen=True)
class WriterAddress:
    """Where a server process reaches the writer: a Unix socket and its shared key."""

    path: str
    authkey: bytes


class EventWriter:
    """The writer process, seen from the ``saiki serve`` process that started it."""

    def __init__(self, config: SaikiConfig) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        ready = context.Queue()
        # Stop is asked over a pipe, not a shared Event: a writer killed while it held
        # an Event's lock would leave setting it blocked for ever. The pipe also ends
        # when this process does, which stops the writer too.
        told, self._stop = context.Pipe(duplex=False)
        authkey = secrets.token_bytes(32)
        self._process = context.Process(
            target=_run,
            args=(config, authkey, ready, told),
            name="saiki-event-writer",
            daemon=False,
        )
        self._process.start()
        told.close()
        deadline = time.monotonic() + _START_S
        while True:
            try:
                reply = ready.get(timeout=_PARENT_CHECK_S)
                break
            except queue.Empty:
                if not self._process.is_alive() or time.monotonic() > deadline:
                    self.stop(0)
                    raise ComponentError(
                        "the event writer did not start "
                        f"(exit code {self._process.exitcode}; its log says why)"
                    ) from None
        if isinstance(reply, str) and reply.startswith("error:"):
            self._process.join(10)
            raise ComponentError(f"the event writer did not start: {reply[6:]}")
        self.address = WriterAddress(reply, authkey)

    @property
    def pid(self) -> int:
        """The writer's process id."""
        assert self._process.pid is not None
        return self._process.pid

    def alive(self) -> bool:
        """Whether the writer is still running."""
        return self._process.is_alive()

    def exitcode(self) -> int | None:
        """How it ended (None while it runs)."""
        return self._process.exitcode

    def stop(self, timeout_s: float = 30) -> None:
        """Commit what it holds and end it (after the workers: their last calls need it)."""
        with contextlib.suppress(OSError):
            self._stop.send_bytes(b"stop")  # it commits what is queued, then exits
        self._process.join(timeout_s)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)


class WriterClient:
    """A server process's side: forwards a request and waits for its answer (the
    ``RequestAppender`` of ``EventService``). One connection per calling thread."""

    def __init__(self, address: WriterAddress) -> None:
        self._address = address
        self._local = threading.local()

    def append(
        self, request: events_pb2.IngestRequest, source: str, timeout_s: float | None
    ) -> events_pb2.IngestResponse:
        """The writer's answer; an error it reports is raised as :class:`ForwardedError`
        with its status; no answer within ``timeout_s`` is DEADLINE_EXCEEDED (the events
        may still be committed: a retry is exact)."""
        connection = self._connection()
        try:
            connection.send_bytes(_frame(source, request.SerializeToString()))
            if timeout_s is not None and not connection.poll(max(timeout_s, 0.0)):
                self._drop()  # its late answer must not be read as the next call's
                raise ForwardedError(
                    grpc.StatusCode.DEADLINE_EXCEEDED, "deadline expired waiting for the append"
                )
            reply = connection.recv_bytes()
        except (OSError, EOFError) as exc:
            self._drop()
            raise ComponentError(f"the event writer is not answering: {exc}") from exc
        kind, _, body = reply.partition(b"\n")
        if kind == b"ok":
            return events_pb2.IngestResponse.FromString(body)
        code, _, message = body.decode().partition("\n")
        raise ForwardedError(grpc.StatusCode[code], message)

    def _connection(self) -> Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            try:
                connection = Client(
                    self._address.path, family="AF_UNIX", authkey=self._address.authkey
                )
            except (OSError, EOFError) as exc:
                raise ComponentError(f"cannot reach the event writer: {exc}") from exc
            self._local.connection = connection
        return connection

    def _drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            with contextlib.suppress(OSError):
                connection.close()

    def close(self) -> None:
        """Let go of this thread's connection (the others close with the process)."""
        self._drop()


def _frame(source: str, request: bytes) -> bytes:
    return source.replace("\n", " ").encode() + b"\n" + request


def _run(config: SaikiConfig, authkey: bytes, ready: Any, stop: Connection) -> None:
    """The writer process: listen, and append each connection's requests on a thread of
    its own, every call through one appender (so one group committer)."""
    observability.configure_logging()
    # Ctrl-C or a service manager's SIGTERM reaches the whole process group: the writer
    # outlives the workers' last calls, and stops when `saiki serve` asks after them (or
    # is gone).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = os.getppid()
    try:
        hold_to_cpus(config.serving.ingest_cpus)
        appender = event_appender(config)
        listener = Listener(family="AF_UNIX", authkey=authkey)
    except Exception as exc:  # the parent reports it and exits
        ready.put(f"error:{exc}")
        return
    ready.put(listener.address)
    threading.Thread(target=_accept, args=(listener, appender), name="accept", daemon=True).start()
    while not stop.poll(_PARENT_CHECK_S):  # a message, or the pipe's end
        if os.getppid() != parent:  # `saiki serve` is gone without stopping us
            log.error("the server process that started the event writer is gone; stopping")
            break
    appender.close()  # commits what is queued
    with contextlib.suppress(OSError):
        listener.close()


def _accept(listener: Listener, appender: Appender) -> None:
    while True:
        try:
            connection = listener.accept()
        except OSError:  # closed: stopping
            return
        except Exception:  # a caller without the key: refused, the others go on
            log.warning("refused a connection to the event writer", exc_info=True)
            continue
        threading.Thread(
            target=_serve, args=(connection, appender), name="ingest", daemon=True
        ).start()


def _serve(connection: Connection, appender: Appender) -> None:
    with connection:
        while True:
            try:
                message = connection.recv_bytes()
            except (EOFError, OSError):  # the server process closed it or is gone
                return
            source, _, body = message.partition(b"\n")
            try:
                request = events_pb2.IngestRequest.FromString(body)
                answer = append_request(appender, request, source.decode())
                reply = b"ok\n" + answer.SerializeToString()
            except SaikiError as exc:
                reply = _error(status_code(exc), str(exc))
            except Exception as exc:  # answered, and logged with its trace
                log.exception("the event writer failed an append")
                reply = _error(grpc.StatusCode.INTERNAL, f"event writer: {exc!r}")
            try:
                connection.send_bytes(reply)
            except OSError:
                return


def _error(code: grpc.StatusCode, message: str) -> bytes:
    return f"error\n{code.name}\n{message}".encode()
