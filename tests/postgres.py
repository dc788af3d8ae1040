"""A private PostgreSQL server for the tests: Debian's binaries, a throw-away cluster in a
temporary directory, reachable only through a Unix socket in that directory.

The server runs as the ``postgres`` user when the tests run as root (initdb refuses
root), under ``timeout`` so that it cannot outlive a test session that was killed, and
is stopped (fast shutdown) and removed by :meth:`PostgresServer.stop`.  Each test gets
a database of its own (:meth:`PostgresServer.new_database`, a few tens of ms).

::

    server = PostgresServer.start()          # about 1-2 s: initdb, then the server
    dsn = server.new_database()              # "host=/tmp/dsp-pg-... port=... user=postgres dbname=t1"
    server.stop()
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: the longest a test session may keep its server (the whole suite takes minutes)
LIFETIME_SECONDS = 3600


def find_binaries() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding initdb and postgres."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/postgres")]
    found = [b for b in found if (b / "initdb").exists()]
    return max(found, key=lambda b: int(b.parent.name), default=None)


def _free_port() -> int:
    # the server listens on no TCP port (listen_addresses=''): the number only names its
    # socket file, but a free one keeps a reader of `ss` from being misled
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    bin: Path
    dir: Path
    port: int
    proc: subprocess.Popen[bytes]
    user: str | None  # the OS user the server runs as when the tests run as root
    _names: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @classmethod
    def start(cls, bin_dir: Path | None = None, timeout: float = 30.0) -> PostgresServer:
        bin_dir = bin_dir or find_binaries()
        if bin_dir is None:
            raise FileNotFoundError("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin")
        user = None
        if os.geteuid() == 0:
            user = "postgres"
            pwd.getpwnam(user)  # KeyError when the postgresql package did not create it
        tmp = Path(tempfile.mkdtemp(prefix="dsp-pg-"))
        # as the server's user, from its own directory (it may not enter the caller's)
        as_user: dict[str, Any] = {"cwd": tmp}
        if user is not None:
            pw = pwd.getpwnam(user)
            os.chown(tmp, pw.pw_uid, pw.pw_gid)
            as_user.update(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
        data = tmp / "data"
        try:
            subprocess.run(
                [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync",
                 "--no-instructions", "-E", "UTF8", "--locale", "C"],
                check=True, capture_output=True, timeout=120, **as_user,
            )  # fmt: skip
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError(f"initdb failed: {getattr(e, 'stderr', b'').decode(errors='replace')}") from e
        port = _free_port()
        log = (tmp / "server.log").open("wb")  # the server's own; ours closes once it has started
        # durability off: the cluster is thrown away at the end
        opts = ["-k", str(tmp), "-p", str(port), "-c", "listen_addresses=", "-c", "fsync=off",
                "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=60",
                "-c", "shared_buffers=16MB"]  # fmt: skip
        proc = subprocess.Popen(
            ["timeout", "-s", "INT", "-k", "10", str(LIFETIME_SECONDS), str(bin_dir / "postgres"),
             "-D", str(data), *opts],
            stdout=subprocess.DEVNULL, stderr=log, **as_user,
        )  # fmt: skip
        log.close()
        server = cls(bin_dir, tmp, port, proc, user)
        deadline = time.monotonic() + timeout
        while True:
            ready = subprocess.run(
                [str(bin_dir / "pg_isready"), "-q", "-h", str(tmp), "-p", str(port)], check=False, timeout=10
            )
            if ready.returncode == 0:
                return server
            if proc.poll() is not None or time.monotonic() > deadline:
                text = (tmp / "server.log").read_text(errors="replace")[-2000:]
                server.stop()
                raise RuntimeError(f"the PostgreSQL server did not start: {text}")
            time.sleep(0.05)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.dir} port={self.port} user=postgres dbname={dbname}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its connection string."""
        import psycopg

        name = f"t{next(self._names)}"
        with psycopg.connect(self.dsn(), autocommit=True) as db:
            # FILE_COPY: quicker than the default WAL_LOG for a small template (and fsync is off)
            db.execute(f"CREATE DATABASE {name} STRATEGY = FILE_COPY")
        return self.dsn(name)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                # SIGINT: fast shutdown (timeout passes it on to the server)
                self.proc.send_signal(2)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
