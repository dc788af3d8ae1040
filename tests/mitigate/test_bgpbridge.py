"""The BGP bridge as a real process, with this test in ExaBGP's place: it reads what the
bridge writes on standard output and acknowledges each line as ExaBGP does ("done" or
"error"), and talks to the bridge's Unix socket as the shield does.  Dead-man's switch,
expiry, bypass, refresh and conflicts, in seconds and without any BGP session (the real
ExaBGP and a real peer are in test_bgp.py)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

DEADMAN = 1.5


class FakeSpeaker:
    """The ExaBGP side of the bridge's pipes (the bridge itself is the real module)."""

    def __init__(self, sock_path: Path, deadman: float = DEADMAN) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ddos_shield.mitigate.bgpbridge",
                "--socket",
                str(sock_path),
                "--deadman",
                str(deadman),
                "--config-id",
                "test",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: list[str] = []
        self.refuse: set[str] = set()
        self._buf = b""
        self.sock_path = sock_path
        self.conn: socket.socket | None = None

    def pump(self, seconds: float) -> None:
        """Read and acknowledge what the bridge writes for ``seconds``."""
        assert self.proc.stdout is not None and self.proc.stdin is not None
        end = time.monotonic() + seconds
        fd = self.proc.stdout.fileno()
        while (left := end - time.monotonic()) > 0:
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            self._buf += chunk
            while b"\n" in self._buf:
                line, _, self._buf = self._buf.partition(b"\n")
                text = line.decode()
                self.lines.append(text)
                self.proc.stdin.write(b"error\n" if text in self.refuse else b"done\n")
                self.proc.stdin.flush()

    def connect(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(str(self.sock_path))
                self.conn = s
                return
            except OSError:
                s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def request(self, req: dict[str, Any]) -> dict[str, Any]:
        """Send a request, acknowledging the bridge's lines meanwhile."""
        assert self.conn is not None
        self.conn.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        self.conn.setblocking(False)
        deadline = time.monotonic() + 10
        while b"\n" not in buf:
            assert time.monotonic() < deadline, "no reply from the bridge"
            self.pump(0.02)
            with contextlib.suppress(BlockingIOError):
                buf += self.conn.recv(65536)
        reply: dict[str, Any] = json.loads(buf)
        return reply

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.proc.kill()
        self.proc.wait(5)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


@pytest.fixture
def speaker(tmp_path: Path) -> Iterator[FakeSpeaker]:
    sp = FakeSpeaker(tmp_path / "bridge.sock")
    sp.connect()
    yield sp
    sp.close()


def apply_req(rid: int, route: str, expires_in: float = 60.0, **extra: Any) -> dict[str, Any]:
    return {
        "op": "apply",
        "id": rid,
        "expires_at": time.time() + expires_in,
        "announce": [f"announce route {route} next-hop self"],
        "withdraw": [f"withdraw route {route} next-hop self"],
        "rule": {"note": route},
        **extra,
    }


def test_apply_list_withdraw(speaker: FakeSpeaker) -> None:
    hello = speaker.request({"op": "hello"})
    assert hello["ok"] and hello["config_id"] == "test" and hello["deadman_seconds"] == DEADMAN
    r = speaker.request(apply_req(0, "203.0.113.10/32"))
    assert r["ok"] and r["id"] > 0
    assert speaker.lines == ["announce route 203.0.113.10/32 next-hop self"]
    listed = speaker.request({"op": "list"})["entries"]
    assert [(e["id"], e["rule"], e["announced"]) for e in listed] == [(r["id"], {"note": "203.0.113.10/32"}, True)]
    assert speaker.request({"op": "withdraw", "id": r["id"]})["ok"]
    assert speaker.lines[-1] == "withdraw route 203.0.113.10/32 next-hop self"
    assert speaker.request({"op": "list"})["entries"] == []
    assert speaker.request({"op": "withdraw", "id": 12345})["ok"]  # idempotent


def test_refresh_sends_nothing_and_a_change_is_make_before_break(speaker: FakeSpeaker) -> None:
    rid = speaker.request(apply_req(0, "203.0.113.11/32"))["id"]
    speaker.request(apply_req(rid, "203.0.113.11/32", expires_in=120))
    assert len(speaker.lines) == 1  # a refresh only moves the expiry
    speaker.request(apply_req(rid, "203.0.113.12/32"))
    assert speaker.lines[1:] == [
        "announce route 203.0.113.12/32 next-hop self",
        "withdraw route 203.0.113.11/32 next-hop self",
    ]
    # the same route with other attributes (a reload's new next hop and community):
    # announced again, and the old one not withdrawn, which would withdraw the new one
    n = len(speaker.lines)
    new = "announce route 203.0.113.12/32 next-hop 192.0.2.9 community [65535:666]"
    speaker.request(
        {
            **apply_req(rid, "203.0.113.12/32"),
            "announce": [new],
            "withdraw": ["withdraw route 203.0.113.12/32 next-hop 192.0.2.9"],
        }
    )
    assert speaker.lines[n:] == [new]
    # nor may another rule announce that route under another next hop
    r = speaker.request(apply_req(0, "203.0.113.12/32"))
    assert not r["ok"] and "already announces" in r["error"]


def test_refusals(speaker: FakeSpeaker) -> None:
    # ExaBGP says "error": nothing is kept
    speaker.refuse.add("announce route 203.0.113.13/32 next-hop self")
    r = speaker.request(apply_req(0, "203.0.113.13/32"))
    assert not r["ok"] and "exabgp refused" in r["error"]
    assert speaker.request({"op": "list"})["entries"] == []
    # two rules may not announce the same route (withdrawing one would remove the other's)
    speaker.request(apply_req(0, "203.0.113.14/32"))
    r = speaker.request(apply_req(0, "203.0.113.14/32"))
    assert not r["ok"] and "already announces" in r["error"]
    # malformed requests are named
    assert not speaker.request({"op": "apply", "id": 0})["ok"]
    assert not speaker.request(apply_req(0, "203.0.113.15/32", expires_in=-1))["ok"]
    assert "unknown op" in speaker.request({"op": "explode"})["error"]


def test_expiry_withdraws(speaker: FakeSpeaker) -> None:
    speaker.request(apply_req(0, "203.0.113.16/32", expires_in=0.5))
    speaker.request({"op": "heartbeat"})
    speaker.pump(1.0)
    assert speaker.lines[-1] == "withdraw route 203.0.113.16/32 next-hop self"
    assert speaker.request({"op": "list"})["entries"] == []


def test_deadman_withdraws_everything_when_the_shield_is_silent(speaker: FakeSpeaker) -> None:
    for i in range(3):
        speaker.request(apply_req(0, f"203.0.113.{20 + i}/32"))
    # heartbeats keep them up past the dead-man's time
    for _ in range(4):
        speaker.pump(DEADMAN / 3)
        assert speaker.request({"op": "heartbeat"})["ok"]
    assert not [x for x in speaker.lines if x.startswith("withdraw")]
    speaker.pump(DEADMAN + 0.5)  # silence
    assert sorted(x for x in speaker.lines if x.startswith("withdraw")) == [
        f"withdraw route 203.0.113.{20 + i}/32 next-hop self" for i in range(3)
    ]
    hello = speaker.request({"op": "list"})
    assert hello["entries"] == [] and hello["deadman_fired"] == 1


def test_bypass_withdraws_and_restores(speaker: FakeSpeaker) -> None:
    rid = speaker.request(apply_req(0, "203.0.113.30/32"))["id"]
    speaker.request({"op": "bypass", "on": True})
    assert speaker.lines[-1].startswith("withdraw route 203.0.113.30/32")
    assert [e["announced"] for e in speaker.request({"op": "list"})["entries"]] == [False]
    speaker.request(apply_req(0, "203.0.113.31/32"))  # held, not announced, while bypassed
    assert not any("203.0.113.31" in x for x in speaker.lines)
    speaker.request({"op": "bypass", "on": False})
    assert {x for x in speaker.lines[-2:]} == {
        "announce route 203.0.113.30/32 next-hop self",
        "announce route 203.0.113.31/32 next-hop self",
    }
    assert rid in [e["id"] for e in speaker.request({"op": "list"})["entries"]]


def test_bridge_exits_when_exabgp_ends(tmp_path: Path) -> None:
    sp = FakeSpeaker(tmp_path / "bridge.sock")
    try:
        sp.connect()
        assert sp.proc.stdin is not None
        sp.proc.stdin.close()  # ExaBGP gone
        assert sp.proc.wait(5) == 0
        assert not (tmp_path / "bridge.sock").exists()
    finally:
        sp.close()


def test_shutdown_withdraws_and_exits(speaker: FakeSpeaker) -> None:
    speaker.request(apply_req(0, "203.0.113.40/32"))
    assert speaker.request({"op": "shutdown"})["ok"]
    speaker.pump(1.0)
    assert speaker.lines[-1] == "withdraw route 203.0.113.40/32 next-hop self"
    assert speaker.proc.wait(5) == 0
