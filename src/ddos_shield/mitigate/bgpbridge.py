"""The BGP bridge: the small process ExaBGP runs between the shield and the BGP speaker.

::

    BgpBackend ──Unix socket, JSON lines──> bridge ──stdout: announce/withdraw──> exabgp ──BGP──> routers
                                            bridge <──stdin: done/error (acks)──  exabgp

ExaBGP starts it (its process API) and reads what it writes; the shield's
:class:`~ddos_shield.mitigate.bgp.BgpBackend` talks to it over a Unix socket.  The bridge
holds every announcement it made, keyed by rule id, so the backend can read back what
is announced after a restart, and it is the **dead-man's switch**: every request from
the shield counts as a heartbeat, and when none has come for ``--deadman`` seconds it
withdraws everything it announced.  A crashed or hung controller therefore never
leaves a blackhole route or a Flowspec rule up for longer than that.  It also withdraws
each announcement at its rule's expiry, as every backend enforces expiry itself.

The bridge only relays text the backend compiled: it imports nothing of the shield
beyond the standard library, so it starts fast and has few ways to fail.  When ExaBGP
ends, its standard input closes and the bridge exits; when the bridge ends, however
it ends, a watcher process it forked (:func:`guard`) stops ExaBGP, whose sessions
close, which makes the routers drop every route.

Protocol: one JSON object a line each way.  Requests carry ``op``:

* ``hello`` -> ``{"ok": true, "config_id", "pid", "deadman_seconds", "bypass", "deadman_fired", ...}``
* ``heartbeat`` -> ``{"ok": true}``
* ``apply`` with ``id`` (0: the bridge assigns one), ``expires_at``, ``announce`` and
  ``withdraw`` (lists of ExaBGP API lines) and ``rule`` (kept as given) -> ``{"ok": true, "id"}``
* ``withdraw`` with ``id`` -> ``{"ok": true}`` (unknown ids too)
* ``list`` -> ``{"ok": true, "entries": [{"id", "expires_at", "rule", "announce", "announced"}]}``
* ``bypass`` with ``on`` -> ``{"ok": true}``: withdraw everything but keep it, or announce it again
* ``shutdown`` -> ``{"ok": true}``, then withdraw everything and exit

A failed request answers ``{"ok": false, "error": "..."}``.

Run by ExaBGP as ``python -m ddos_shield.mitigate.bgpbridge --socket PATH --deadman S --config-id ID --guard``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

#: How long ExaBGP may take to acknowledge one command.
ACK_SECONDS = 5.0
#: How often the bridge looks at expiries and the dead-man's switch.
TICK_SECONDS = 0.1
#: Longest request line accepted from a client.
MAX_LINE = 1 << 20


class SpeakerGone(Exception):
    """ExaBGP closed the bridge's standard input: it has ended."""


@dataclass
class Entry:
    """One rule's announcement."""

    id: int
    expires_at: float
    announce: list[str]
    withdraw: list[str]
    rule: Any
    announced: bool = False


@dataclass
class _Client:
    sock: socket.socket
    buf: bytearray = field(default_factory=bytearray)


def log(msg: str) -> None:
    """ExaBGP logs what its processes write on standard error."""
    print(f"bgpbridge: {msg}", file=sys.stderr, flush=True)


class Speaker:
    """ExaBGP's process API as the bridge sees it: lines out, one ack line back each."""

    def __init__(self, out: TextIO, in_fd: int, ack_seconds: float = ACK_SECONDS) -> None:
        self._out = out
        self.in_fd = in_fd
        self._buf = bytearray()
        self._ack_seconds = ack_seconds

    def poll(self) -> None:
        """Read what ExaBGP wrote between commands (it only writes when it ends)."""
        chunk = os.read(self.in_fd, 65536)
        if not chunk:
            raise SpeakerGone
        self._buf += chunk
        while b"\n" in self._buf:
            line, _, rest = self._buf.partition(b"\n")
            self._buf = bytearray(rest)
            text = line.decode(errors="replace").strip()
            if text == "shutdown":
                raise SpeakerGone
            log(f"ignored from exabgp: {text[:200]}")

    def send(self, line: str) -> None:
        """Write one API command and wait for ExaBGP's ``done``; raise ``ValueError`` on ``error``."""
        self._out.write(line + "\n")
        self._out.flush()
        deadline = time.monotonic() + self._ack_seconds
        while True:
            reply = self._line(deadline)
            if reply == "done":
                return
            if reply == "error":
                raise ValueError(f"exabgp refused: {line}")
            if reply == "shutdown":
                raise SpeakerGone
            log(f"ignored from exabgp: {reply[:200]}")

    def _line(self, deadline: float) -> str:
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("exabgp did not acknowledge a command")
            sel = selectors.DefaultSelector()
            try:
                sel.register(self.in_fd, selectors.EVENT_READ)
                if not sel.select(left):
                    continue
            finally:
                sel.close()
            chunk = os.read(self.in_fd, 65536)
            if not chunk:
                raise SpeakerGone
            self._buf += chunk
        line, _, rest = self._buf.partition(b"\n")
        self._buf = bytearray(rest)
        return line.decode(errors="replace").strip()


def route_key(line: str) -> str:
    """What a speaker indexes an announcement by (its NLRI), from an API line: ``route
    PREFIX`` for a unicast route (not its next hop or communities), ``flow route { match
    { ... }`` for a Flowspec rule (not its actions).

    >>> route_key("withdraw route 203.0.113.10/32 next-hop self")
    'route 203.0.113.10/32'
    >>> route_key("announce flow route { match { destination 203.0.113.10/32; } then { discard; } }")
    'flow route { match { destination 203.0.113.10/32; }'
    """
    body = line.split(None, 1)[1] if " " in line else line
    if body.startswith("route "):
        return " ".join(body.split()[:2])
    start = body.find("match {")
    if body.startswith("flow route") and start >= 0:
        return body[: body.find("}", start) + 1]
    return body


class Bridge:
    """The bridge's state and its request handling (see the module docstring)."""

    def __init__(
        self,
        speaker: Speaker,
        deadman_seconds: float,
        config_id: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.speaker = speaker
        self.deadman_seconds = deadman_seconds
        self.config_id = config_id
        self.clock = clock
        self.entries: dict[int, Entry] = {}
        self.bypass = False
        self.last_beat = clock()
        # Ids are seeded from the clock so that a new speaker never reuses the id of a
        # rule an older one announced (the shield may still remember that id).
        self.next_id = max(1, int(clock()) & 0x7FFFFFFF)
        self.deadman_fired = 0
        self.deadman_fired_at = 0.0
        self.stopping = False

    # ---- announcing ----------------------------------------------------------------

    def _announce(self, e: Entry) -> None:
        done: list[str] = []
        try:
            for line in e.announce:
                self.speaker.send(line)
                done.append(line)
        except (ValueError, TimeoutError):
            self._withdraw_lines(e.withdraw[: len(done)])
            raise
        e.announced = True

    def _withdraw_lines(self, lines: list[str]) -> None:
        for line in lines:
            try:
                self.speaker.send(line)
            except (ValueError, TimeoutError) as err:
                log(f"withdraw failed: {err}")

    def _withdraw(self, e: Entry) -> None:
        if e.announced:
            self._withdraw_lines(e.withdraw)
            e.announced = False

    def withdraw_all(self) -> None:
        for e in self.entries.values():
            self._withdraw(e)

    # ---- requests ------------------------------------------------------------------

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        self.last_beat = self.clock()
        op = req.get("op")
        try:
            if op == "hello":
                return {"ok": True, **self.status()}
            if op == "heartbeat":
                return {"ok": True}
            if op == "apply":
                return {"ok": True, "id": self.apply(req)}
            if op == "withdraw":
                e = self.entries.pop(int(req["id"]), None)
                if e is not None:
                    self._withdraw(e)
                return {"ok": True}
            if op == "list":
                return {"ok": True, "entries": [self._entry_json(e) for e in self.entries.values()], **self.status()}
            if op == "bypass":
                self.set_bypass(bool(req["on"]))
                return {"ok": True}
            if op == "shutdown":
                self.stopping = True
                return {"ok": True}
            return {"ok": False, "error": f"unknown op {op!r}"}
        except (KeyError, TypeError, ValueError, TimeoutError) as err:
            return {"ok": False, "error": f"{op}: {type(err).__name__}: {err}"}

    def status(self) -> dict[str, Any]:
        return {
            "config_id": self.config_id,
            "pid": os.getpid(),
            "deadman_seconds": self.deadman_seconds,
            "bypass": self.bypass,
            "deadman_fired": self.deadman_fired,
            "deadman_fired_at": self.deadman_fired_at,
        }

    @staticmethod
    def _entry_json(e: Entry) -> dict[str, Any]:
        return {
            "id": e.id,
            "expires_at": e.expires_at,
            "rule": e.rule,
            "announce": e.announce,
            "announced": e.announced,
        }

    def apply(self, req: dict[str, Any]) -> int:
        rid = int(req["id"]) or self.next_id
        expires_at = float(req["expires_at"])
        announce = [str(x) for x in req["announce"]]
        withdraw = [str(x) for x in req["withdraw"]]
        if not announce or len(announce) != len(withdraw):
            raise ValueError("announce and withdraw must be non-empty lists of equal length")
        if any("\n" in x for x in announce + withdraw):
            raise ValueError("a command line holds a newline")
        if expires_at <= self.clock():
            raise ValueError(f"rule {rid} has already expired")
        keys = {route_key(x) for x in withdraw}
        for other in self.entries.values():
            if other.id != rid and keys & {route_key(x) for x in other.withdraw}:
                raise ValueError(f"rule {other.id} already announces this route")
        new = Entry(rid, expires_at, announce, withdraw, req.get("rule"))
        old = self.entries.get(rid)
        if old is not None and old.announce == announce:
            # a refresh: only the expiry moves, nothing is sent to the routers
            old.expires_at, old.rule = expires_at, new.rule
            return rid
        if not self.bypass:
            # make before break: the new announcement first, then what it no longer covers
            self._announce(new)
        if old is not None:
            if old.announced:
                # not what the new announcement replaces: the speaker indexes a route by
                # its prefix, so withdrawing it under its old next hop would withdraw the new
                self._withdraw_lines([w for w in old.withdraw if route_key(w) not in keys])
            del self.entries[rid]
        self.entries[rid] = new
        self.next_id = max(self.next_id, rid + 1)
        return rid

    def set_bypass(self, on: bool) -> None:
        if on == self.bypass:
            return
        self.bypass = on
        if on:
            self.withdraw_all()
        else:
            for e in self.entries.values():
                try:
                    self._announce(e)
                except (ValueError, TimeoutError) as err:
                    log(f"rule {e.id}: announcing again failed: {err}")

    # ---- timers --------------------------------------------------------------------

    def tick(self) -> None:
        """Withdraw expired rules, and everything when the shield has gone quiet."""
        now = self.clock()
        for e in [e for e in self.entries.values() if e.expires_at <= now]:
            self._withdraw(e)
            del self.entries[e.id]
        if self.entries and now - self.last_beat > self.deadman_seconds:
            log(
                f"dead-man's switch: no word from the shield for {now - self.last_beat:.1f} s, "
                f"withdrawing {len(self.entries)} announcement(s)"
            )
            self.withdraw_all()
            self.entries.clear()
            self.deadman_fired += 1
            self.deadman_fired_at = now


def _listen(path: str) -> socket.socket:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    else:
        probe.close()
        raise SystemExit(f"bgpbridge: another bridge already serves {path}")
    finally:
        probe.close()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket commands announcements: its owner only
    try:
        srv.bind(path)
    finally:
        os.umask(old)
    srv.listen(8)
    srv.setblocking(False)
    return srv


def serve(bridge: Bridge, path: str) -> None:
    """The bridge's loop: clients' requests, ExaBGP's end, timers."""
    srv = _listen(path)
    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ, None)
    sel.register(bridge.speaker.in_fd, selectors.EVENT_READ, "speaker")
    clients: dict[int, _Client] = {}

    def drop(c: _Client) -> None:
        sel.unregister(c.sock)
        clients.pop(c.sock.fileno(), None)
        c.sock.close()

    try:
        while not bridge.stopping:
            for key, _ in sel.select(TICK_SECONDS):
                if key.data is None:
                    conn, _ = srv.accept()
                    conn.setblocking(True)
                    conn.settimeout(ACK_SECONDS)
                    c = _Client(conn)
                    clients[conn.fileno()] = c
                    sel.register(conn, selectors.EVENT_READ, c)
                elif key.data == "speaker":
                    bridge.speaker.poll()
                else:
                    c = key.data
                    try:
                        chunk = c.sock.recv(65536)
                    except OSError:
                        chunk = b""
                    if not chunk:
                        drop(c)
                        continue
                    c.buf += chunk
                    if len(c.buf) > MAX_LINE and b"\n" not in c.buf:
                        drop(c)
                        continue
                    while b"\n" in c.buf:
                        line, _, rest = c.buf.partition(b"\n")
                        c.buf = bytearray(rest)
                        try:
                            req = json.loads(line)
                            reply = (
                                bridge.handle(req) if isinstance(req, dict) else {"ok": False, "error": "not an object"}
                            )
                        except ValueError as err:
                            reply = {"ok": False, "error": f"bad request: {err}"}
                        try:
                            c.sock.sendall(json.dumps(reply).encode() + b"\n")
                        except OSError:
                            drop(c)
                            break
            bridge.tick()
        bridge.withdraw_all()
        log("stopped on request")
    except SpeakerGone:
        log("exabgp has ended")
    finally:
        for c in list(clients.values()):
            c.sock.close()
        srv.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


PR_SET_PDEATHSIG = 1


def guard(speaker_pid: int) -> int:
    """Fork a watcher that stops ExaBGP when this bridge ends, however it ends.

    ExaBGP does not stop when its process dies (it only drops the process), so a bridge
    killed by SIGKILL or the OOM killer would leave its routes announced with no
    dead-man's switch.  The watcher asks the kernel for a signal when its parent (this
    bridge) dies (``PR_SET_PDEATHSIG``) and then stops ExaBGP, whose sessions close, so
    the routers drop every route.  Returns the watcher's pid.
    """
    import ctypes
    import ctypes.util

    bridge_pid = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        # hold none of the bridge's pipes or sockets open
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.closerange(3, 1 << 16)
        if os.getppid() == bridge_pid:  # else the bridge is already gone
            signal.sigwait({signal.SIGTERM, signal.SIGINT})
        _stop_exabgp(speaker_pid)
    finally:
        os._exit(0)


def _stop_exabgp(pid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"exabgp" not in f.read():
                    return  # gone, and the pid reused
            os.kill(pid, sig)
        except (OSError, ProcessLookupError):
            return
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bgpbridge", description="the ExaBGP process of the shield's BGP backend")
    p.add_argument("--socket", required=True, help="Unix socket the shield connects to")
    p.add_argument("--deadman", type=float, required=True, help="seconds without a request before withdrawing all")
    p.add_argument("--config-id", default="", help="identifies the configuration ExaBGP was started with")
    p.add_argument("--guard", action="store_true", help="stop the parent ExaBGP when the bridge ends (see guard())")
    args = p.parse_args(argv)
    # ExaBGP stops its processes with SIGTERM: leave through the normal path.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.guard:
        guard(os.getppid())
    bridge = Bridge(Speaker(sys.stdout, sys.stdin.fileno()), args.deadman, args.config_id)
    log(f"serving {args.socket}, dead-man's switch {args.deadman:g} s")
    serve(bridge, args.socket)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
