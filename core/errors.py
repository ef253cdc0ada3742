"""saiki's exceptions: one root, a handful of kinds, mapped to gRPC status codes in one place.

SaikiError
 ├── ConfigError          bad configuration (file, environment, flags)
 ├── InvalidInputError    a request or record breaks a rule; names the field
 ├── NotFoundError        a snapshot, view, model version or file that does not exist
 ├── PreconditionError    the system is not in a state to answer (e.g. as_of before cutoff)
 ├── ArtifactError        a stored artifact is corrupt, tampered or incompatible
 └── ComponentError       a real component (Flink, Beam, Feast, Iceberg) failed under us
      └── StorageError     the disk refused a write (full, read-only): names the path
"""

from __future__ import annotations


class SaikiError(Exception):
    """Root of every error saiki raises on purpose."""


class ConfigError(SaikiError):
    """The configuration is invalid; the message says which key and why."""


class InvalidInputError(SaikiError):
    """A request or record breaks a rule of the contract."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


class NotFoundError(SaikiError):
    """Something asked for by name or id does not exist."""


class PreconditionError(SaikiError):
    """The request is valid but cannot be answered in the system's current state."""


class ArtifactError(SaikiError):
    """A stored artifact failed its checksum or compatibility check."""


class ComponentError(SaikiError):
    """A third-party component failed; the original error is chained."""


class StorageError(ComponentError):
    """A write to disk failed (no space, read-only, I/O error); nothing was acknowledged."""
