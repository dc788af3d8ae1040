"""Fixtures shared by several test directories."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.postgres import PostgresServer, find_binaries


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One private PostgreSQL server for the whole session, started on first use."""
    if find_binaries() is None:
        pytest.skip("PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin (dev.sh installs postgresql)")
    server = PostgresServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_dsn(postgres: PostgresServer) -> str:
    """A fresh, empty database on the session's server."""
    return postgres.new_database()
