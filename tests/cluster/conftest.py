"""The cluster tier: real servers started on loopback from packages the project installs
(nothing pre-installed), once per test session. A server that cannot start fails the
run: these tests are never skipped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server (the `pgserver` wheel) on a Unix socket; yields the SQLAlchemy
    URL of its `postgres` database. As root, pgserver runs the server as a system user
    `pgserver` it adds on first use."""
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("postgres"), cleanup_mode="stop")
    try:
        yield server.get_uri().replace("postgresql://", "postgresql+psycopg2://", 1)
    finally:
        server.cleanup()
