"""Two private network namespaces joined by a veth pair, for tests that send real packets.

::

    <prefix>-tx  tx0 ──veth── rx0  <prefix>-rx   (the code under test runs here)

The sender writes whole Ethernet frames on a packet socket in ``-tx``, so no stack
there takes part (IPv6 is off in ``-tx``: no neighbour or router chatter reaches rx0).
Every destination used by the tests is an address of rx0; sources are spoofed from
198.18.0.0/15 and 2001:2::/48, which have no route in ``-rx``, so nothing is answered.
Sending is bounded by the number of frames given.  The test process enters ``-rx``
with :meth:`VethPair.inside` (setns on its own thread), so nftables tables and
packet sockets it creates live there; deleting the namespaces removes everything.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Sequence
from typing import Any

import nftables

from ddos_shield.lab.netns import in_netns

TX_MAC = "02:00:00:00:0d:01"
RX_MAC = "02:00:00:00:0d:02"
RX_ADDRS = (
    "203.0.113.10/24",
    "203.0.113.11/24",
    "203.0.113.200/24",
    "2001:db8:113::10/64",
    "2001:db8:113::11/64",
    "2001:db8:113:1::10/64",
)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class VethPair:
    """See the module docstring."""

    def __init__(self, prefix: str) -> None:
        if not prefix.startswith("dsn-"):
            raise ValueError("test namespaces of this suite start with dsn-")
        self.tx_ns = f"{prefix}-tx"
        self.rx_ns = f"{prefix}-rx"
        self.tx_if = "tx0"
        self.rx_if = "rx0"
        self._sock: socket.socket | None = None

    def create(self) -> VethPair:
        self.delete()
        _ip("netns", "add", self.tx_ns)
        _ip("netns", "add", self.rx_ns)
        veth = f"link add {self.tx_if} address {TX_MAC} type veth peer name {self.rx_if} netns {self.rx_ns} address {RX_MAC}"
        _ip("-n", self.tx_ns, *veth.split())
        _ip("netns", "exec", self.tx_ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        _ip("netns", "exec", self.tx_ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
        _ip("-n", self.tx_ns, "link", "set", self.tx_if, "up")
        for a in RX_ADDRS:
            _ip("-n", self.rx_ns, "addr", "add", a, "dev", self.rx_if, *(["nodad"] if ":" in a else []))
        _ip("-n", self.rx_ns, "link", "set", self.rx_if, "up")
        _ip("-n", self.rx_ns, "link", "set", "lo", "up")
        with in_netns(self.tx_ns):
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            self._sock.bind((self.tx_if, 0))
        return self

    def delete(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for ns in (self.tx_ns, self.rx_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)

    def inside(self) -> contextlib.AbstractContextManager[None]:
        """Enter the receiving namespace."""
        return in_netns(self.rx_ns)

    def send(self, frames: Sequence[bytes], pps: float | None = None) -> None:
        """Send each frame once, in order, at most ``pps`` frames a second."""
        if self._sock is None:
            raise RuntimeError("pair not created")
        start = time.monotonic()
        for i, f in enumerate(frames):
            if pps is not None:
                delay = start + i / pps - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            self._sock.send(f)


def frame(pkt: Any) -> bytes:
    """A scapy IP/IPv6 packet as an Ethernet frame from tx0 to rx0."""
    from scapy.layers.l2 import Ether

    return bytes(Ether(src=TX_MAC, dst=RX_MAC) / pkt)


class Observer:
    """Counts, per source address, the packets that got past the shield's chains:
    a netdev table hooked after them (priority 100) in the namespace it is built in."""

    TABLE = "dsn_observer"

    def __init__(self, ifname: str) -> None:
        self.nft = nftables.Nftables()
        self.nft.set_json_output(True)
        t = {"family": "netdev", "table": self.TABLE}
        cmds: list[dict[str, Any]] = [{"add": {"table": {"family": "netdev", "name": self.TABLE}}}]
        for fam in (4, 6):
            cmds.append(
                {
                    "add": {
                        "set": {
                            **t,
                            "name": f"seen{fam}",
                            "type": f"ipv{fam}_addr",
                            "flags": ["timeout"],
                            "timeout": 3600,
                            "stmt": [{"counter": None}],
                        }
                    }
                }
            )
        cmds.append(
            {
                "add": {
                    "chain": {
                        **t,
                        "name": "in",
                        "type": "filter",
                        "hook": "ingress",
                        "prio": 100,
                        "dev": ifname,
                        "policy": "accept",
                    }
                }
            }
        )
        for fam, ip in ((4, "ip"), (6, "ip6")):
            update = {
                "set": {"op": "update", "elem": {"payload": {"protocol": ip, "field": "saddr"}}, "set": f"@seen{fam}"}
            }
            cmds.append({"add": {"rule": {**t, "chain": "in", "expr": [update]}}})
        self._run(cmds)

    def _run(self, cmds: list[dict[str, Any]]) -> Any:
        rc, out, err = self.nft.json_cmd({"nftables": cmds})
        if rc != 0:
            raise RuntimeError(err)
        return out

    def reset(self) -> None:
        t = {"family": "netdev", "table": self.TABLE}
        self._run([{"flush": {"set": {**t, "name": "seen4"}}}, {"flush": {"set": {**t, "name": "seen6"}}}])

    def received(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for fam in (4, 6):
            res = self._run([{"list": {"set": {"family": "netdev", "table": self.TABLE, "name": f"seen{fam}"}}}])
            for o in res["nftables"]:
                for e in o.get("set", {}).get("elem", []):
                    out[e["elem"]["val"]] = int(e["elem"]["counter"]["packets"])
        return out

    def close(self) -> None:
        self._run([{"delete": {"table": {"family": "netdev", "name": self.TABLE}}}])
