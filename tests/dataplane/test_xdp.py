"""The XDP data plane on a real interface: a veth pair between two namespaces of ours.

::

    dsa-<id>-src  dsa0 ──veth── dsa1  dsa-<id>-dut   (XDP on dsa1)

The source writes whole echo-request frames (IPv4, IPv6, and IPv4 in a VLAN tag) on
a packet socket, a bounded number each time; the DUT's stack answers the untagged
ones.  Neighbours are static on both sides, so the only packets to the protected
addresses are ours and every counter can be checked exactly.  Replies are counted
with the source namespace's own ICMP counters.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from ddos_shield.dataplane.xdp import XdpDataPlane, detach
from ddos_shield.errors import DataPlaneError
from ddos_shield.lab.netns import in_netns
from ddos_shield.records import Action, Category, IPNetwork, Match, Range, Rule, as_network, bytes_addr

pytestmark = [pytest.mark.kernel, pytest.mark.lab]

SRC_MAC, DUT_MAC = "02:00:00:00:0a:01", "02:00:00:00:0a:02"
SRC4, DUT4 = "198.51.100.66", "198.51.100.1"
SRC6, DUT6 = "2001:db8:100::66", "2001:db8:100::1"
DUT4_VLAN = "203.0.113.10"  # no VLAN device on the DUT: counted by XDP, then dropped by the stack
E = Ether(src=SRC_MAC, dst=DUT_MAC)
FRAMES = {
    "v4": bytes(E / IP(src=SRC4, dst=DUT4) / ICMP(id=7) / Raw(b"p" * 56)),
    "v6": bytes(E / IPv6(src=SRC6, dst=DUT6) / ICMPv6EchoRequest(id=7) / Raw(b"p" * 56)),
    "vlan": bytes(E / Dot1Q(vlan=100) / IP(src=SRC4, dst=DUT4_VLAN) / ICMP(id=7) / Raw(b"p" * 56)),
}
DST = {"v4": DUT4, "v6": "2001:db8:100::", "vlan": DUT4_VLAN}  # IPv6 counted per /64 by default
PROTECTED: dict[IPNetwork, int] = {
    as_network(f"{DUT4}/32"): 1,
    as_network(f"{DUT6}/128"): 1,
    as_network(f"{DUT4_VLAN}/32"): 2,
}


def sh(*args: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)


def must(*args: str) -> None:
    p = sh(*args)
    if p.returncode:
        raise RuntimeError(f"{' '.join(args)}: {p.stderr.strip()}")


@dataclass
class Net:
    src: str
    dut: str
    dut_if: str = "dsa1"
    sock: socket.socket | None = field(default=None, repr=False)

    def send(self, path: str, count: int) -> int:
        """Write ``count`` echo requests; returns the echo replies the source received."""
        before = self.echo_replies(path)
        assert self.sock is not None
        for _ in range(count):
            self.sock.send(FRAMES[path])
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # replies come back within microseconds; allow slack
            got = self.echo_replies(path) - before
            if path == "vlan" or got >= count:
                break
            time.sleep(0.02)
        time.sleep(0.05)
        return self.echo_replies(path) - before

    def echo_replies(self, path: str) -> int:
        if path == "v6":
            out = sh("ip", "netns", "exec", self.src, "cat", "/proc/net/snmp6").stdout
            return next(int(line.split()[1]) for line in out.splitlines() if line.startswith("Icmp6InEchoReplies"))
        out = sh("ip", "netns", "exec", self.src, "cat", "/proc/net/snmp").stdout
        head, vals = [line.split() for line in out.splitlines() if line.startswith("Icmp:")][:2]
        return int(vals[head.index("InEchoReps")])

    def xdp_attached(self) -> bool:
        out = sh("ip", "-n", self.dut, "-j", "link", "show", self.dut_if).stdout
        return "xdp" in json.loads(out)[0]


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    tag = uuid.uuid4().hex[:6]
    n = Net(src=f"dsa-{tag}-src", dut=f"dsa-{tag}-dut")
    try:
        must("ip", "netns", "add", n.src)
        must("ip", "netns", "add", n.dut)
        must(
            "ip",
            "link",
            "add",
            "dsa0",
            "netns",
            n.src,
            "address",
            SRC_MAC,
            "type",
            "veth",
            "peer",
            "name",
            "dsa1",
            "netns",
            n.dut,
            "address",
            DUT_MAC,
        )
        for ns, dev, mine, theirs, peer_mac in (
            (n.src, "dsa0", (SRC4, SRC6), (DUT4, DUT6), DUT_MAC),
            (n.dut, "dsa1", (DUT4, DUT6), (SRC4, SRC6), SRC_MAC),
        ):
            must("ip", "-n", ns, "link", "set", "lo", "up")
            must("ip", "-n", ns, "link", "set", dev, "up")
            must("ip", "-n", ns, "addr", "add", f"{mine[0]}/24", "dev", dev)
            must("ip", "-n", ns, "addr", "add", f"{mine[1]}/64", "dev", dev, "nodad")
            for addr in theirs:
                must("ip", "-n", ns, "neigh", "replace", addr, "lladdr", peer_mac, "dev", dev, "nud", "permanent")
        with in_netns(n.src):
            n.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            n.sock.bind(("dsa0", 0))
        yield n
    finally:
        if n.sock is not None:
            n.sock.close()
        sh("ip", "netns", "del", n.src)
        sh("ip", "netns", "del", n.dut)


def open_plane(net: Net, pin_dir: str, mode: str = "auto") -> XdpDataPlane:
    with in_netns(net.dut):
        return XdpDataPlane.open([net.dut_if], pin_dir, mode=mode)


@pytest.mark.parametrize(
    ("path", "mode", "want_mode"),
    [
        ("v4", "auto", "native"),
        ("v6", "auto", "native"),
        ("vlan", "auto", "native"),
        ("v4", "generic", "generic"),
    ],
)
def test_exact_counters(net: Net, pin_dir: str, path: str, mode: str, want_mode: str) -> None:
    dp = open_plane(net, pin_dir, mode)
    try:
        assert dp.attach_modes == {net.dut_if: want_mode}
        dp.set_protected(PROTECTED)
        dp.set_sample_every(1)
        assert net.send(path, 20) == (0 if path == "vlan" else 20)
        rows = {str(bytes_addr(r["dst"])): r for r in dp.read_counters()}
        assert list(rows) == [DST[path]]
        row = rows[DST[path]]
        assert int(row["pkts"][Category.ICMP]) == 20 and int(row["pkts"].sum()) == 20
        assert int(row["bytes"][Category.ICMP]) == 20 * len(FRAMES[path])
        samples = dp.read_samples()
        assert len(samples) == 20
        assert set(samples["length"].tolist()) == {len(FRAMES[path])}
    finally:
        dp.close(detach=True)


def test_source_rule_drops_real_packets(net: Net, pin_dir: str) -> None:
    dp = open_plane(net, pin_dir)
    try:
        rule = dp.backend.apply(Rule(Match(src=as_network("198.51.100.66/32")), Action.DROP, time.time() + 60))
        assert net.send("v4", 5) == 0
        assert net.send("v6", 3) == 3  # other sources still pass
        st = dp.backend.stats()[rule.rule_id]
        assert (st.packets, st.dropped) == (5, 5)
    finally:
        dp.close(detach=True)


def test_blackhole_is_refused(net: Net, pin_dir: str) -> None:
    """BLACKHOLE is a BGP route and SYN_PROXY needs connection tracking (user space
    only): the XDP program has no such actions."""
    dp = open_plane(net, pin_dir)
    try:
        with pytest.raises(DataPlaneError, match="not enforced in the kernel"):
            dp.backend.apply(Rule(Match(dst=as_network("203.0.113.10/32")), Action.BLACKHOLE, time.time() + 60))
        synproxy = Match(proto=6, dst=as_network("203.0.113.10/32"), dport=Range(80, 80))
        with pytest.raises(DataPlaneError, match="the nftables backend enforces it"):
            dp.backend.apply(Rule(synproxy, Action.SYN_PROXY, time.time() + 60))
        assert dp.backend.list() == []
    finally:
        dp.close(detach=True)


def test_many_rules_in_one_call_take_distinct_ids(net: Net, pin_dir: str) -> None:
    dp = open_plane(net, pin_dir)
    try:
        exp = time.time() + 60
        rules = [Rule(Match(src=as_network(f"198.18.7.{i}/32")), Action.DROP, exp) for i in range(1, 51)]
        rules.append(Rule(Match(src=as_network("198.18.8.1/32")), Action.DROP, exp, rule_id=900))
        applied = dp.backend.apply_many(rules)
        ids = [r.rule_id for r in applied]
        assert len(set(ids)) == 51 and ids[-1] == 900
        assert sorted(r.rule_id for r in dp.backend.list()) == sorted(ids)
        after = dp.backend.apply(Rule(Match(src=as_network("198.18.8.2/32")), Action.DROP, exp))
        assert after.rule_id > max(ids)  # the reserved ids are never handed out again
    finally:
        dp.close(detach=True)


def test_rule_expires_by_itself(net: Net, pin_dir: str) -> None:
    dp = open_plane(net, pin_dir)
    try:
        dp.backend.apply(Rule(Match(proto=1), Action.DROP, time.time() + 1.0))
        assert net.send("v4", 3) == 0
        time.sleep(1.2)
        assert net.send("v4", 3) == 3
        assert dp.global_stats()["expired_hit"] == 3
        assert dp.backend.list() == []
    finally:
        dp.close(detach=True)


def test_kill_switch(net: Net, pin_dir: str) -> None:
    dp = open_plane(net, pin_dir)
    try:
        dp.backend.apply(Rule(Match(proto=1), Action.DROP, time.time() + 60))
        dp.backend.set_bypass(True)
        before = dp.global_stats()
        assert net.send("v4", 4) == 4  # the drop rule is there, yet every echo came back
        after = dp.global_stats()
        # at least our four passed as bypass: the source's own IPv6 chatter (router
        # solicitations a few seconds after link-up) may add a frame of its own
        assert after["bypass"] - before["bypass"] >= 4
        assert after["dropped"] == before["dropped"]
        dp.backend.set_bypass(False)
        assert net.send("v4", 2) == 0
    finally:
        dp.close(detach=True)


CHILD = """
import sys, time
from ddos_shield.dataplane.xdp import XdpDataPlane
from ddos_shield.records import Action, Match, Rule, as_network
from ddos_shield.lab.netns import in_netns
with in_netns(sys.argv[1]):
    dp = XdpDataPlane.open([sys.argv[2]], sys.argv[3])
rule = dp.backend.apply(Rule(Match(src=as_network("198.51.100.66/32")), Action.DROP, time.time() + 600))
print(rule.rule_id, flush=True)
time.sleep(60)
"""


def test_survives_a_killed_process_and_is_adopted(net: Net, pin_dir: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, net.dut, net.dut_if, pin_dir],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    try:
        assert child.stdout is not None
        rule_id = int(child.stdout.readline())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()
    assert net.send("v4", 4) == 0  # nobody runs, the kernel still drops

    dp = open_plane(net, pin_dir)
    try:
        assert dp.attach_modes == {net.dut_if: "native"}
        assert [(r.rule_id, r.match) for r in dp.backend.list()] == [
            (rule_id, Match(src=as_network("198.51.100.66/32")))
        ]
        assert dp.backend.stats()[rule_id].dropped == 4
        assert dp.backend.apply(Rule(Match(proto=17), Action.DROP, time.time() + 60)).rule_id == rule_id + 1
        assert net.send("v4", 2) == 0
    finally:
        dp.close()

    assert detach(pin_dir) == [net.dut_if]
    assert not net.xdp_attached()
    assert sorted(os.listdir(pin_dir)) == []
    assert net.send("v4", 3) == 3
