"""Files on a local path or in S3 object storage, through one small interface.

Used where artifacts must be shared by machines (model versions, ``[models]
artifacts``): the credentials and endpoint are the catalog's (``[catalog.properties]``,
pyiceberg's keys ``s3.endpoint``, ``s3.access-key-id``, ``s3.secret-access-key``,
``s3.region``), so one set of settings reaches one object store. Object storage has no
rename and no lock: writers publish a folder by writing its marker file last, and
whatever needs a lock takes it elsewhere (a transactional store).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from saiki.core.errors import ConfigError, StorageError


@dataclass(frozen=True)
class ObjectFolder:
    """A folder: ``base`` inside ``fs`` (a pyarrow FileSystem), named ``url``."""

    url: str
    fs: Any
    base: str

    @property
    def remote(self) -> bool:
        """True for object storage (no rename, no lock)."""
        return str(self.fs.type_name) != "local"

    def path(self, *parts: str) -> str:
        return "/".join([self.base.rstrip("/"), *parts])

    def read_bytes(self, *parts: str) -> bytes | None:
        """A file's bytes, or None when there is none."""
        try:
            with self.fs.open_input_stream(self.path(*parts)) as handle:
                return bytes(handle.read())
        except FileNotFoundError:
            return None
        except OSError as exc:
            if "NoSuchKey" in str(exc) or "not found" in str(exc).lower():
                return None
            raise StorageError(f"cannot read {self.url}/{'/'.join(parts)}: {exc}") from exc

    def write_file(self, source: Path, *parts: str) -> None:
        """Copy a local file in (whole: a reader never sees part of it on S3)."""
        try:
            if not self.remote:  # a local folder needs its parents; S3 has none
                self.fs.create_dir(self.path(*parts[:-1]), recursive=True)
            with open(source, "rb") as handle, self.fs.open_output_stream(self.path(*parts)) as out:
                shutil.copyfileobj(handle, out, 1 << 20)
        except OSError as exc:
            raise StorageError(f"cannot write {self.url}/{'/'.join(parts)}: {exc}") from exc

    def download(self, destination: Path, *parts: str) -> None:
        """Copy a file out to a local path (written aside, then renamed into place)."""
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(destination.name + ".part")
        try:
            with self.fs.open_input_stream(self.path(*parts)) as handle, open(partial, "wb") as out:
                shutil.copyfileobj(handle, out, 1 << 20)
        except OSError as exc:
            raise StorageError(f"cannot read {self.url}/{'/'.join(parts)}: {exc}") from exc
        partial.replace(destination)

    def upload_tree(self, source: Path, *parts: str, last: str) -> None:
        """Copy a local folder in, its file ``last`` after every other one (the marker
        that says the folder is whole)."""
        files = sorted(p for p in source.rglob("*") if p.is_file())
        for file in sorted(files, key=lambda p: p == source / last):
            self.write_file(file, *parts, *file.relative_to(source).parts)

    def files(self, *parts: str) -> list[str]:
        """Every file under a folder, as paths relative to it (none when it is missing)."""
        from pyarrow import fs

        base = self.path(*parts)
        try:
            infos = self.fs.get_file_info(
                fs.FileSelector(base, recursive=True, allow_not_found=True)
            )
        except OSError as exc:
            raise StorageError(f"cannot list {self.url}/{'/'.join(parts)}: {exc}") from exc
        prefix = base.rstrip("/") + "/"
        return sorted(i.path[len(prefix) :] for i in infos if i.type == fs.FileType.File)

    def download_tree(self, destination: Path, *parts: str) -> list[str]:
        """Copy every file under a folder out to ``destination``; returns their paths."""
        names = self.files(*parts)
        for name in names:
            self.download(destination / name, *parts, *name.split("/"))
        return names

    def delete_folder(self, *parts: str) -> None:
        """Remove a folder and everything in it (nothing when it is missing)."""
        try:
            self.fs.delete_dir(self.path(*parts))
        except FileNotFoundError:
            pass
        except OSError as exc:
            if "not found" not in str(exc).lower() and "NoSuchKey" not in str(exc):
                raise StorageError(f"cannot remove {self.url}/{'/'.join(parts)}: {exc}") from exc

    def folders(self) -> list[str]:
        """The names of the folders directly inside."""
        from pyarrow import fs

        try:
            infos = self.fs.get_file_info(fs.FileSelector(self.base, allow_not_found=True))
        except OSError as exc:
            raise StorageError(f"cannot list {self.url}: {exc}") from exc
        return sorted(i.base_name for i in infos if i.type == fs.FileType.Directory)


def open_folder(url: str, properties: Mapping[str, str] | None = None) -> ObjectFolder:
    """``s3://bucket/prefix`` (with the catalog's S3 properties) or a local path."""
    from pyarrow import fs

    parsed = urlparse(url)
    if parsed.scheme == "s3":
        settings = dict(properties or {})
        endpoint = settings.get("s3.endpoint", "")
        endpoint_url = urlparse(endpoint) if endpoint else None
        s3 = fs.S3FileSystem(
            access_key=settings.get("s3.access-key-id") or None,
            secret_key=settings.get("s3.secret-access-key") or None,
            region=settings.get("s3.region") or None,
            endpoint_override=endpoint_url.netloc if endpoint_url else None,
            scheme=endpoint_url.scheme if endpoint_url else "https",
        )
        return ObjectFolder(url, s3, f"{parsed.netloc}{parsed.path}".rstrip("/"))
    if parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme == "file" else url)
        return ObjectFolder(url, fs.LocalFileSystem(), str(path.resolve()))
    raise ConfigError(f"{url!r}: an s3:// URL or a local path")
