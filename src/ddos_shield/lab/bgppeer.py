"""A BGP router for tests and benchmarks: Debian's gobgpd in its own namespace, peering
with the shield's speaker in another, over a veth pair.

::

    <prefix>-shield  bgp0 192.0.2.1/30 ──veth── bgp1 192.0.2.2/30  <prefix>-peer
    (the shield's ExaBGP, AS 64513)                                  (gobgpd, AS 64512, passive)

gobgpd gets a configuration written here, a gRPC port on the peer namespace's
loopback, and a bounded lifetime (``timeout -s KILL``), so a lost test never leaves it
running for long.  What it received is read with its own CLI (``gobgp global rib -j``):
what the router really accepted, not what the shield believes it sent.

Example (as root)::

    >>> with BgpPeerLab("dsn-doc", Path("/tmp/doc")) as lab:  # doctest: +SKIP
    ...     settings = lab.shield_settings()                  # a [bgp] section for the shield side
    ...     lab.rib("ipv4")                                   # {} before anything is announced
    {}
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from ddos_shield.config import Bgp, BgpPeer
from ddos_shield.errors import LabError

SHIELD_ADDR = "192.0.2.1"  # TEST-NET-1
PEER_ADDR = "192.0.2.2"
SHIELD_AS = 64513
PEER_AS = 64512
#: gobgp's names of the address families the shield announces in.
FAMILIES = ("ipv4", "ipv6", "ipv4-flowspec", "ipv6-flowspec")


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if r.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {r.stderr.strip()}")


def community(value: str) -> int:
    """A community 'a:b' as gobgp's JSON writes it (one 32-bit number)."""
    a, b = value.split(":")
    return (int(a) << 16) | int(b)


class BgpPeerLab:
    """See the module docstring."""

    def __init__(self, prefix: str, workdir: Path, *, api_port: int = 50051, lifetime: float = 900.0) -> None:
        if not prefix.startswith(("dsn-", "dsl-")):
            raise LabError(f"namespace prefix {prefix!r}: expected dsn-* (tests) or dsl-* (lab)")
        self.shield_ns = f"{prefix}-shield"
        self.peer_ns = f"{prefix}-peer"
        self.workdir = workdir
        self.api_port = api_port
        self.lifetime = lifetime
        self._proc: subprocess.Popen[bytes] | None = None

    # ---- set-up --------------------------------------------------------------------

    def create(self) -> Self:
        self.delete()
        self.workdir.mkdir(parents=True, exist_ok=True)
        _ip("netns", "add", self.shield_ns)
        _ip("netns", "add", self.peer_ns)
        _ip("-n", self.shield_ns, "link", "add", "bgp0", "type", "veth", "peer", "name", "bgp1", "netns", self.peer_ns)
        for ns, ifname, addr in ((self.shield_ns, "bgp0", SHIELD_ADDR), (self.peer_ns, "bgp1", PEER_ADDR)):
            _ip("-n", ns, "addr", "add", f"{addr}/30", "dev", ifname)
            _ip("-n", ns, "link", "set", ifname, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        self.start_router()
        return self

    def start_router(self) -> None:
        conf = self.workdir / "gobgpd.toml"
        conf.write_text(self.router_config())
        log = open(self.workdir / "gobgpd.log", "ab")  # noqa: SIM115 - the child holds it
        try:
            self._proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.peer_ns,
                    "timeout",
                    "-s",
                    "KILL",
                    f"{self.lifetime:g}",
                    "gobgpd",
                    "-f",
                    str(conf),
                    "--api-hosts",
                    f"127.0.0.1:{self.api_port}",
                    "--log-plain",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        deadline = time.monotonic() + 15
        while self._gobgp("neighbor", check=False).returncode != 0:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"gobgpd did not start; see {self.workdir / 'gobgpd.log'}")
            time.sleep(0.1)

    def router_config(self) -> str:
        safis = "\n".join(
            f'  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = "{f}"'
            for f in ("ipv4-unicast", "ipv6-unicast", "ipv4-flowspec", "ipv6-flowspec")
        )
        return (
            f'[global.config]\n  as = {PEER_AS}\n  router-id = "{PEER_ADDR}"\n  port = 179\n'
            f'[[neighbors]]\n  [neighbors.config]\n    neighbor-address = "{SHIELD_ADDR}"\n    peer-as = {SHIELD_AS}\n'
            "  [neighbors.transport.config]\n    passive-mode = true\n"
            # quick to notice a speaker that died without closing its session
            # and quick to accept a new one (a new speaker after each test)
            "  [neighbors.timers.config]\n    hold-time = 9\n    keepalive-interval = 3\n"
            "    idle-hold-time-after-reset = 1\n"
            f"{safis}\n"
        )

    def delete(self) -> None:
        """Stop gobgpd (the one this object started) and remove both namespaces."""
        if self._proc is not None:
            # ip netns exec execs timeout(1), our child; it passes SIGTERM on to gobgpd
            # (SIGKILL would orphan gobgpd)
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
            self._proc = None
        for ns in (self.shield_ns, self.peer_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10, check=False)

    def __enter__(self) -> Self:
        return self.create()

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.delete()

    # ---- the shield's side -----------------------------------------------------------

    def shield_settings(self, **overrides: Any) -> Bgp:
        """A ``[bgp]`` section for a shield whose speaker runs in the shield namespace."""
        base: dict[str, Any] = {
            "local_as": SHIELD_AS,
            "router_id": SHIELD_ADDR,
            "peers": [BgpPeer(address=PEER_ADDR, peer_as=PEER_AS, local_address=SHIELD_ADDR)],
        }
        return Bgp(**{**base, **overrides})

    # ---- what the router holds -------------------------------------------------------

    def _gobgp(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            ["ip", "netns", "exec", self.peer_ns, "gobgp", "-p", str(self.api_port), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if check and r.returncode != 0:
            raise LabError(f"gobgp {' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
        return r

    def rib(self, family: str = "ipv4") -> dict[str, list[dict[str, Any]]]:
        """The router's table for one family (``FAMILIES``): key -> paths, as gobgp's JSON."""
        if family not in FAMILIES:
            raise ValueError(f"family {family!r}: one of {FAMILIES}")
        out = self._gobgp("global", "rib", "-a", family, "-j").stdout.strip()
        data = json.loads(out) if out else {}
        return data if isinstance(data, dict) else {}

    def routes(self) -> int:
        """Routes of every family the router holds."""
        return sum(len(self.rib(f)) for f in FAMILIES)

    def established(self) -> bool:
        out = self._gobgp("neighbor", "-j").stdout
        peers = json.loads(out) if out.strip() else []
        return any(p.get("state", {}).get("session_state") == 6 for p in peers)  # 6: ESTABLISHED

    def wait(self, pred: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> float:
        """Poll ``pred`` until it holds; seconds taken, or :class:`LabError` after ``timeout``.

        The default is a bound for a loaded 2-vCPU machine (a speaker and a router each
        poll and batch), not a speed claim: a test that claims a time passes its own."""
        t0 = time.monotonic()
        while not pred():
            if time.monotonic() - t0 > timeout:
                raise LabError(f"bgp peer: {what} not reached within {timeout:g} s")
            time.sleep(0.1)
        return time.monotonic() - t0

    def monitor(self, family: str = "ipv4") -> subprocess.Popen[str]:
        """``gobgp monitor global rib -j``: one JSON line per change the router sees, as it sees it."""
        return subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.peer_ns,
                "gobgp",
                "-p",
                str(self.api_port),
                "monitor",
                "global",
                "rib",
                "-a",
                family,
                "-j",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
