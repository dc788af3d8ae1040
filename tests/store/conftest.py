"""The history's tests run on both engines: an SQLite file and a database on a private
PostgreSQL server (tests/postgres.py; skipped with the reason when its binaries are absent)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from ddos_shield.store import History
from ddos_shield.store import sql as sqlmod


@dataclass
class Where:
    """One history database, on either engine, that a test may open several times."""

    engine: str
    path: Path
    dsn: str

    def open(self) -> History:
        return History(dsn=self.dsn) if self.engine == "postgresql" else History(self.path)

    def connect(self) -> sqlmod.Db:
        return sqlmod.connect_postgresql(self.dsn) if self.engine == "postgresql" else sqlmod.connect(self.path)

    def toml(self) -> str:
        """The ``[store]`` lines that point a configuration at it."""
        if self.engine == "postgresql":
            return f'[store]\nbackend = "postgresql"\ndsn = "{self.dsn}"\n'
        return f'[store]\npath = "{self.path}"\n'


@pytest.fixture(params=["sqlite", "postgresql"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Where:
    dsn = request.getfixturevalue("pg_dsn") if request.param == "postgresql" else ""
    return Where(request.param, tmp_path / "h.sqlite3", dsn)
