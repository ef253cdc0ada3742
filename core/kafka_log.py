"""The event log on a Kafka topic (``[log] backend = "kafka"``): Ingest's producer side
and the reader the master loader consumes.

``Ingest`` validates exactly as on the segment files, then writes each accepted event as
the same JSON record (``ingest_ms``, ``prior_ms``, the event's fields; key: its
``event_id``) to ``[log] kafka_topic``, and each rejected input, with its reason, to
``<topic>.quarantine``. The producer is idempotent (``enable.idempotence``, ``acks=all``):
a retry inside the client never writes a record twice. A call is acknowledged only once
the broker confirmed every one of its records; otherwise it fails and the caller resends.

What the segment files give and a topic does not: a log-wide id index. Repeats inside one
call are dropped here; a resend of an event already in the topic (a retry, or the same
event sent to two replicas) is a second record, removed by the master loader, which keeps
one row per ``event_id`` (``batch/kafka_load.py``). ``prior_ms`` is this process's
watermark, not the topic's.

The master loader reads from the offsets recorded in the latest snapshot's summary to the
end of each partition as it finds it (``enable.partition.eof``), with no consumer-group
commit: the snapshot is the one record of what was loaded, so a crash before the commit
rereads the same records, and one after it starts where the commit says.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final

from saiki.core.errors import ComponentError, ConfigError, StorageError
from saiki.core.ingest import (
    IngestResult,
    RawEvent,
    check_inputs,
    check_lines,
    encode_records,
    quarantine_records,
    split_checked,
)
from saiki.core.schema import Event, Rejection
from saiki.core.timeutil import now_ms

QUARANTINE_SUFFIX: Final = ".quarantine"
ACK_TIMEOUT_S: Final = 30.0
READ_IDLE_S: Final = 30.0


def client_settings(bootstrap: str, properties: Mapping[str, str], **own: Any) -> dict[str, Any]:
    """A librdkafka configuration: the address, the user's ``[log.kafka_properties]``,
    then saiki's own settings (which win)."""
    own_keys = {key.replace("_", "."): value for key, value in own.items()}
    return {"bootstrap.servers": bootstrap, **properties, **own_keys}


def _client(kind: Callable[[dict[str, Any]], Any], settings: dict[str, Any]) -> Any:
    """A Kafka client; a setting librdkafka refuses is a configuration error naming it."""
    from confluent_kafka import KafkaException

    try:
        return kind(settings)
    except (KafkaException, ValueError, TypeError) as exc:
        raise ConfigError(f"[log.kafka_properties]: Kafka refused the settings: {exc}") from exc


def ensure_topics(
    bootstrap: str,
    topics: Sequence[str],
    properties: Mapping[str, str] | None = None,
    partitions: int = 1,
) -> None:
    """Create the topics that do not exist yet (a topic someone else made is kept)."""
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = _client(AdminClient, client_settings(bootstrap, properties or {}))
    try:
        existing = set(admin.list_topics(timeout=10).topics)
    except Exception as exc:
        raise ComponentError(f"Kafka at {bootstrap} is unreachable: {exc}") from exc
    missing = [NewTopic(t, num_partitions=partitions) for t in topics if t not in existing]
    if not missing:
        return
    for topic, created in admin.create_topics(missing).items():
        try:
            created.result(10)
        except Exception as exc:  # made by another process meanwhile: fine
            if "already exists" not in str(exc).lower() and "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise ComponentError(f"cannot create Kafka topic {topic}: {exc}") from exc


class KafkaAppender:
    """Appends ``Ingest`` calls to the topic; each returns once its records are confirmed.

    Same interface as the segment files' group committer (``submit``, ``close``); the
    producer batches concurrent calls itself (``linger_ms``).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        linger_ms: float = 5.0,
        clock: Callable[[], int] = now_ms,
        properties: Mapping[str, str] | None = None,
    ) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self.clock = clock
        ensure_topics(bootstrap, [topic, topic + QUARANTINE_SUFFIX], properties)
        settings = client_settings(
            bootstrap,
            properties or {},
            enable_idempotence=True,
            acks="all",
            linger_ms=max(linger_ms, 0.0),
            message_timeout_ms=int(ACK_TIMEOUT_S * 1000),
        )
        self._producer = _client(Producer, settings)
        self._watermark_ms = 0
        self._lock = threading.Lock()  # orders prior_ms with the records it precedes
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="kafka-acks", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.05)  # runs the delivery callbacks

    def submit(self, inputs: Sequence[RawEvent]) -> IngestResult:
        """Validate and append one call's events; return once the broker has them all."""
        ingest_ms = self.clock()
        return self._append(
            check_inputs(inputs, ingest_ms),
            ingest_ms,
            lambda i: (inputs[i].payload, inputs[i].source),
        )

    def submit_lines(self, lines: Sequence[bytes], sources: Sequence[str]) -> IngestResult:
        """Validate and append raw JSON lines (``saiki ingest`` files), each with where it
        came from (kept if it is quarantined)."""
        ingest_ms = self.clock()
        return self._append(
            check_lines(lines, ingest_ms),
            ingest_ms,
            lambda i: (lines[i].decode("utf-8", "replace"), sources[i]),
        )

    def _append(
        self,
        checked: Sequence[Event | Rejection],
        ingest_ms: int,
        describe: Callable[[int], tuple[str, str]],
    ) -> IngestResult:
        events, _ids, rejected, duplicates = split_checked(checked)
        quarantined = quarantine_records(rejected, ingest_ms, describe)
        waiting = _Deliveries(len(events) + len(quarantined))
        with self._lock:
            if events:
                records, self._watermark_ms = encode_records(events, ingest_ms, self._watermark_ms)
                for event, record in zip(events, records, strict=True):
                    self._produce(self.topic, event[0].encode(), record, waiting)
            for record in quarantined:
                self._produce(self.topic + QUARANTINE_SUFFIX, None, record, waiting)
        waiting.wait(ACK_TIMEOUT_S + 5)
        result = IngestResult(
            accepted=len(events), duplicates=duplicates, quarantined=len(rejected)
        )
        result.rejections = list(rejected)
        return result

    def _produce(self, topic: str, key: bytes | None, value: bytes, waiting: _Deliveries) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=waiting.done)
                return
            except BufferError:  # the client's queue is full: let deliveries drain it
                self._producer.poll(0.1)

    def close(self) -> None:
        """Deliver what is queued, then stop."""
        self._producer.flush(ACK_TIMEOUT_S)
        self._closed.set()
        self._poller.join()


class _Deliveries:
    """Counts one call's delivery reports; the first error fails the call."""

    def __init__(self, expected: int) -> None:
        self._left = expected
        self._error: str | None = None
        self._all = threading.Event()
        if expected == 0:
            self._all.set()

    def done(self, error: Any, _message: Any) -> None:
        if error is not None and self._error is None:
            self._error = str(error)
        self._left -= 1  # callbacks run on the one polling thread
        if self._left <= 0 or error is not None:
            self._all.set()

    def wait(self, timeout: float) -> None:
        if not self._all.wait(timeout):
            raise StorageError(f"Kafka did not confirm the records within {timeout:.0f} s")
        if self._error is not None:
            raise StorageError(f"Kafka refused a record: {self._error}")


def read_topic(
    bootstrap: str,
    topic: str,
    start: dict[int, int],
    chunk: int = 100_000,
    properties: Mapping[str, str] | None = None,
) -> Iterator[tuple[list[bytes], list[int], dict[int, int]]]:
    """Every record of ``topic`` from ``start`` (partition → offset; 0 where absent) to
    the end of each partition as found, in chunks of about ``chunk`` records: their
    values, their offsets, and the next offset of every partition after the chunk."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    settings = client_settings(
        bootstrap,
        properties or {},
        group_id="saiki-master-loader",  # never committed: offsets live in Iceberg
        enable_auto_commit=False,
        enable_partition_eof=True,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    consumer = _client(Consumer, settings)
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            return  # nothing was ever written
        positions = {p: start.get(p, 0) for p in metadata.partitions}
        consumer.assign([TopicPartition(topic, p, o) for p, o in positions.items()])
        ended: set[int] = set()
        values: list[bytes] = []
        offsets: list[int] = []
        quiet_since = time.monotonic()
        while len(ended) < len(positions):
            # consume() returns when it has this many or the timeout passed: keep both small.
            messages = consumer.consume(1_000, 0.2)
            if not messages:
                if time.monotonic() - quiet_since > READ_IDLE_S:
                    raise ComponentError(
                        f"Kafka topic {topic}: no record and no end of partition "
                        f"within {READ_IDLE_S:.0f} s"
                    )
                continue
            quiet_since = time.monotonic()
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        ended.add(int(message.partition() or 0))
                        continue
                    raise ComponentError(f"reading Kafka topic {topic}: {error}")
                offset, value = int(message.offset() or 0), message.value() or b""
                values.append(value)
                offsets.append(offset)
                positions[int(message.partition() or 0)] = offset + 1
            if len(values) >= chunk:
                yield values, offsets, dict(positions)
                values, offsets = [], []
        if values:
            yield values, offsets, dict(positions)
    finally:
        consumer.close()
