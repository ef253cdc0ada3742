"""Durable files: an exclusive lock, an atomic replace, fsync of a file or a folder.

Every file saiki replaces (registry, manifests, experiment, status, training sets) is
written to a hidden temporary name in the same folder, fsync'd, renamed over the old one,
and the folder fsync'd: a reader sees the old or the new file, never half of one, and a
crash after the call returns cannot lose the new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from saiki.core.errors import StorageError


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_synced(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` and fsync the file (not the folder).

    A failed write (a full disk, an I/O error) removes what it wrote and raises a
    :class:`StorageError` naming the path: nothing half-written stays behind.
    """
    try:
        with open(path, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc


def fsync_path(path: Path) -> None:
    """fsync a file or a folder by path (a folder's fsync makes renames in it durable)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StorageError(f"cannot sync {path}: {exc.strerror or exc}") from exc


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root``, deepest first, then ``root``."""
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        fsync_path(path)
    fsync_path(root)


def atomic_write(path: Path, content: str | bytes, durable: bool = True) -> None:
    """Replace ``path`` with ``content`` atomically, and durably unless told otherwise
    (a file rewritten many times a second, whose loss costs nothing, skips the fsyncs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = content.encode() if isinstance(content, str) else content
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        if durable:
            write_synced(temporary, payload)
        else:
            temporary.write_bytes(payload)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    if durable:
        fsync_path(path.parent)
