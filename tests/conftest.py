"""Fixtures shared by several test directories."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from ddos_shield.lab.topology import Lab, lab_session
from tests.postgres import PostgresServer, find_binaries

#: what the lab runs (lab/topology.py, lab/attack.py); dev.sh installs them
LAB_TOOLS = ("ip", "tc", "bridge", "nft", "hping3", "trafgen", "timeout", "taskset")


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


@pytest.fixture(scope="module")
def the_lab() -> Iterator[Lab]:
    """The namespace lab, built for one test module and torn down even on failure; held
    with :func:`lab_session`, so one lab user at a time on this machine."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    missing = [t for t in LAB_TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")
    with lab_session():
        lb = Lab()
        try:
            lb.up()
            yield lb
        finally:
            lb.down()
