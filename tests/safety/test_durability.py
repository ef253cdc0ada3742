"""A full disk: a clear error naming the path, nothing acknowledged that is not durable,
nothing half-written left behind, and the system recovers when space returns. The fault is
injected at the fsync of every file write (the point where a full disk surfaces)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import grpc
import pytest

from saiki.core import audit
from saiki.core.config import SaikiConfig
from saiki.core.errors import StorageError
from saiki.core.eventlog import EventLog
from saiki.core.files import atomic_write
from saiki.core.ingest import SEGMENT_ARROW_SCHEMA
from saiki.serving.client import SaikiClient
from saiki.serving.server import start_server
from tests.safety.test_bad_input import _event


class FullDisk:
    """os.fsync that fails with ENOSPC while on."""

    def __init__(self) -> None:
        self.on = False
        self._fsync = os.fsync

    def __call__(self, fd: int) -> None:
        if self.on:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._fsync(fd)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> FullDisk:
    fault = FullDisk()
    monkeypatch.setattr(os, "fsync", fault)
    return fault


def _staged(config: SaikiConfig) -> list[Path]:
    return [p for p in config.log_dir.rglob("*") if p.is_file() and ".staged-" in p.name]


@pytest.mark.slow
def test_ingest_on_a_full_disk_acknowledges_nothing_and_recovers(
    config: SaikiConfig, disk: FullDisk
) -> None:
    running = start_server(config, host="127.0.0.1", port=0)
    try:
        with SaikiClient(f"127.0.0.1:{running.port}", attempts=1) as client:
            client.ingest([_event("before")])
            disk.on = True
            with pytest.raises(grpc.RpcError) as caught:
                client.ingest([_event("during-1"), _event("during-2", user_id="x" * 200)])
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "No space left on device" in caught.value.details()
            assert str(config.log_dir) in caught.value.details()  # names the path
            assert _staged(config) == []
            disk.on = False
            retried = client.ingest([_event("during-1"), _event("during-2", user_id="x" * 200)])
            assert (retried.accepted, retried.quarantined) == (1, 1)
    finally:
        running.stop(0)
    log = EventLog(config.log_dir)
    ids = [
        event_id
        for segment in log.events.segments(0)
        for event_id in log.events.read(segment, SEGMENT_ARROW_SCHEMA)
        .column("event_id")
        .to_pylist()
    ]
    assert ids == ["before", "during-1"]


def test_a_replaced_file_survives_a_failed_replace_whole(tmp_path: Path, disk: FullDisk) -> None:
    path = tmp_path / "registry.json"
    atomic_write(path, "old")
    disk.on = True
    with pytest.raises(StorageError, match=str(tmp_path)):
        atomic_write(path, "new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["registry.json"]
    disk.on = False
    atomic_write(path, "new")
    assert path.read_text() == "new"


def test_admin_actions_are_audited_with_who_and_when(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAIKI_ACTOR", "deploy-bot")
    audit.record(tmp_path, "promote", version=3, previous=2)
    audit.record(tmp_path, "rollback", version=2)
    entries = audit.read(tmp_path)
    assert [(e["who"], e["action"]) for e in entries] == [
        ("deploy-bot", "promote"),
        ("deploy-bot", "rollback"),
    ]
    assert entries[0]["version"] == 3 and entries[0]["time"].endswith("Z")
