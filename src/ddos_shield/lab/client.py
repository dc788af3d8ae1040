"""The lab's legitimate client: real HTTP GETs at a steady rate, one JSON line per request.

Run inside dsl-cli (``LegitTraffic`` does it for you)::

    python -m ddos_shield.lab.client --url http://203.0.113.10/ --rate 20 --seconds 10 --timeout 1.0

prints, as each request ends::

    {"ts": 1767000000.05, "ok": true, "latency_ms": 1.9, "error": null}

Requests start on a fixed schedule (``ts`` is the start time), each on a fresh
connection so each costs a TCP handshake, and each in its own thread, so a stalled
request does not delay the next one.  The run is bounded by count (rate x seconds)
and by time: whatever has not finished ``2 x timeout + 1`` seconds after the last
start is reported as failed with error ``"deadline"``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from ddos_shield.errors import LabError
from ddos_shield.lab import NS_CLIENT, VICTIM_HTTP_PORT, VICTIM_V4, VICTIM_V6, in_lab


def victim_url(family: int = 4) -> str:
    """The victim's page over IPv4 or IPv6."""
    if family == 4:
        return f"http://{VICTIM_V4}:{VICTIM_HTTP_PORT}/"
    if family == 6:
        return f"http://[{VICTIM_V6}]:{VICTIM_HTTP_PORT}/"
    raise LabError(f"family: expected 4 or 6, got {family!r}")


def _split(url: str) -> tuple[str, int, str]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise LabError(f"url: expected http://HOST[:PORT]/PATH, got {url!r}")
    try:
        inside = in_lab(parts.hostname)
    except ValueError as e:
        raise LabError(f"url: the host must be a lab address literal, got {parts.hostname!r}") from e
    if not inside:
        raise LabError(f"url: {parts.hostname} is outside the lab's ranges")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, parts.port or 80, path


def fetch(url: str, timeout: float = 1.0) -> dict[str, Any]:
    """One GET on a fresh connection, bounded by ``timeout`` seconds in all; returns the result record."""
    host, port, path = _split(url)
    ts = time.time()
    t0 = time.monotonic()
    deadline = t0 + timeout
    ok = False
    error: str | None = None
    # port passed explicitly: http.client would otherwise read the last group of an IPv6 literal as a port.
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.connect()
        if conn.sock is not None:
            conn.sock.settimeout(max(1e-3, deadline - time.monotonic()))
        conn.request("GET", path, headers={"Connection": "close"})
        if conn.sock is not None:
            conn.sock.settimeout(max(1e-3, deadline - time.monotonic()))
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            error = f"HTTP {resp.status}"
        elif time.monotonic() > deadline:
            error = "timeout"
        else:
            ok = True
    except (OSError, http.client.HTTPException) as e:
        error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    finally:
        conn.close()
    latency_ms = (time.monotonic() - t0) * 1000.0
    return {"ts": ts, "ok": ok, "latency_ms": round(latency_ms, 3), "error": error}


def run(url: str, rate: float, seconds: float, timeout: float = 1.0, out: TextIO = sys.stdout) -> int:
    """Issue ``round(rate * seconds)`` (at least 1) GETs on schedule; print one JSON line each; return the count."""
    _split(url)
    if not (rate > 0 and math.isfinite(rate)) or not (seconds > 0 and math.isfinite(seconds)) or not timeout > 0:
        raise LabError(f"rate, seconds and timeout must be positive, got {rate!r}, {seconds!r}, {timeout!r}")
    count = max(1, round(rate * seconds))
    lock = threading.Lock()
    done = [False] * count
    scheduled = [0.0] * count

    def emit(i: int, record: dict[str, Any]) -> None:
        with lock:
            if done[i]:
                return
            done[i] = True
            out.write(json.dumps(record) + "\n")
            out.flush()

    def one(i: int) -> None:
        emit(i, fetch(url, timeout))

    start = time.monotonic()
    threads = []
    for i in range(count):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        scheduled[i] = time.time()
        t = threading.Thread(target=one, args=(i,), daemon=True)
        t.start()
        threads.append(t)
    hard_deadline = time.monotonic() + 2 * timeout + 1.0
    for t in threads:
        t.join(max(0.0, hard_deadline - time.monotonic()))
    for i in range(count):
        emit(i, {"ts": scheduled[i], "ok": False, "latency_ms": None, "error": "deadline"})
    return count


def ok_ratio(results: Iterable[dict[str, Any]], since: float | None = None, until: float | None = None) -> float:
    """Share of successful requests among those started in ``[since, until)``; ValueError if there were none."""
    picked = [r for r in results if (since is None or r["ts"] >= since) and (until is None or r["ts"] < until)]
    if not picked:
        raise ValueError(f"no requests started between {since} and {until}")
    return sum(1 for r in picked if r["ok"]) / len(picked)


class LegitTraffic:
    """The legitimate client running in dsl-cli, its results collected live.

    Usage::

        legit = LegitTraffic.start(family=4, rate=20.0, seconds=10.0)
        ...                                  # launch an attack, install a rule...
        t_rule = time.time()
        results = legit.wait()               # or legit.results() while it runs
        before = ok_ratio(results, until=t_rule)
        after = ok_ratio(results, since=t_rule)
    """

    def __init__(self, proc: subprocess.Popen[str], url: str, rate: float, seconds: float, timeout: float) -> None:
        self.proc = proc
        self.url = url
        self.rate = rate
        self.seconds = seconds
        self.timeout = timeout
        self.bad_lines: list[str] = []
        self._results: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="legit-traffic-reader", daemon=True)
        self._reader.start()

    @classmethod
    def start(
        cls, family: int = 4, rate: float = 20.0, seconds: float = 30.0, timeout: float = 1.0, url: str | None = None
    ) -> LegitTraffic:
        """Start the client in dsl-cli against the victim (or ``url``, which must be inside the lab)."""
        from ddos_shield.lab.topology import popen_in

        target = url if url is not None else victim_url(family)
        _split(target)
        argv = [
            sys.executable, "-m", "ddos_shield.lab.client",
            "--url", target, "--rate", repr(float(rate)), "--seconds", repr(float(seconds)),
            "--timeout", repr(float(timeout)),
        ]  # fmt: skip
        proc = popen_in(NS_CLIENT, argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return cls(proc, target, rate, seconds, timeout)

    def _read(self) -> None:
        stream = self.proc.stdout
        if stream is None:
            return
        for line in stream:
            try:
                record = json.loads(line)
            except ValueError:
                self.bad_lines.append(line)
                continue
            with self._lock:
                self._results.append(record)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def results(self) -> list[dict[str, Any]]:
        """A copy of the results received so far, in completion order."""
        with self._lock:
            return list(self._results)

    def wait(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Wait for the client to finish (by default its own bound plus a margin) and return all results."""
        limit = timeout if timeout is not None else self.seconds + 2 * self.timeout + 5.0
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(limit)
        self.stop()
        return self.results()

    def stop(self) -> None:
        """Stop the client now; results so far stay available."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(2.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(2.0)
        self._reader.join(2.0)
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()

    def __enter__(self) -> LegitTraffic:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ddos_shield.lab.client", description="The lab's legitimate client.")
    p.add_argument("--url", default=victim_url(4), help="http://HOST[:PORT]/PATH, HOST a lab address")
    p.add_argument("--rate", type=float, default=20.0, help="requests per second")
    p.add_argument("--seconds", type=float, default=10.0, help="duration; requests = rate x seconds")
    p.add_argument("--timeout", type=float, default=1.0, help="per-request bound in seconds")
    args = p.parse_args(argv)
    try:
        run(args.url, args.rate, args.seconds, args.timeout)
    except LabError as e:
        print(f"client: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
