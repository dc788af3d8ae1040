"""NetFlow/IPFIX from real exporters nobody in this project wrote: softflowd and pmacct's
pmacctd (nfprobe plugin) watch a veth in one namespace and export to a
:class:`FlowCollector` with :class:`NetflowDecoder` listening in another.

Topology (namespaces made and removed here, prefix ``dnf-``)::

    dnf-src  dnf-s0 ---- dnf-r0  dnf-rtr  dnf-r1 ---- dnf-c0  dnf-col
    198.18.0.1/15        203.0.113.10/24   192.0.2.1/24       192.0.2.2/24
    2001:2::1/48         2001:db8:113::10/64 (exporter)       (collector, udp/2055)

Traffic is a bounded list of frames written to dnf-s0 with a packet socket, addressed
to the target (203.0.113.10 / 2001:db8:113::10) that lives in dnf-rtr; spoofed sources
only from 198.18.0.0/15 and 2001:2::/48.

Both exporters read dnf-r0 through libpcap's TPACKET_V3 ring, which hands packets over a
block at a time and, with the read timeout these exporters ask for, holds a part-filled
block until more traffic fills it.  So after the measured traffic, "filler" bursts of
large frames go to another address on dnf-r0 (198.51.100.1, 2001:db8:51::1; never
counted) until every measured flow has been exported.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from ddos_shield.capture.collector import FlowCollector
from ddos_shield.capture.netflow import NetflowDecoder
from ddos_shield.config import parse
from ddos_shield.dataplane.replay import ReplayDataPlane
from ddos_shield.engine import Engine
from ddos_shield.events import EventSink
from ddos_shield.lab.netns import in_netns, netns_socket
from ddos_shield.records import PacketFlag, Source, TrafficBatch, addr_bytes, empty_traffic

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces"),
]

NS_SRC, NS_RTR, NS_COL = "dnf-src", "dnf-rtr", "dnf-col"
SRC4, TARGET4 = "198.18.0.1", "203.0.113.10"
SRC6, TARGET6 = "2001:2::1", "2001:db8:113::10"
EXPORTER, COLLECTOR, PORT = "192.0.2.1", "192.0.2.2", 2055
FILLER4, FILLER6 = "198.51.100.1", "2001:db8:51::1"
SPOOF4 = ipaddress.ip_network("198.18.0.0/15")
SPOOF6 = ipaddress.ip_network("2001:2::/48")
PAYLOAD = 72  # UDP payload bytes: IPv4 packets of 100 bytes, IPv6 of 120
WAIT = 20.0  # seconds to wait for every flow to arrive at most


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def _cleanup() -> None:
    for ns in (NS_SRC, NS_RTR, NS_COL):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@dataclass
class Topo:
    rtr_mac: str
    src_mac: str

    def rx_packets(self) -> int:
        link = json.loads(ip("-n", NS_RTR, "-s", "-j", "link", "show", "dnf-r0"))[0]
        return int(link["stats64"]["rx"]["packets"])


@pytest.fixture
def topo() -> Iterator[Topo]:
    _cleanup()
    try:
        for ns in (NS_SRC, NS_RTR, NS_COL):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("link", "add", "dnf-s0", "netns", NS_SRC, "type", "veth", "peer", "name", "dnf-r0", "netns", NS_RTR)
        ip("link", "add", "dnf-r1", "netns", NS_RTR, "type", "veth", "peer", "name", "dnf-c0", "netns", NS_COL)
        for ns, dev, addrs in (
            (NS_SRC, "dnf-s0", [f"{SRC4}/15", f"{SRC6}/48"]),
            (NS_RTR, "dnf-r0", [f"{TARGET4}/24", f"{TARGET6}/64", f"{FILLER4}/24", f"{FILLER6}/64"]),
            (NS_RTR, "dnf-r1", [f"{EXPORTER}/24"]),
            (NS_COL, "dnf-c0", [f"{COLLECTOR}/24"]),
        ):
            for a in addrs:
                ip("-n", ns, "addr", "add", a, "dev", dev, *(["nodad"] if ":" in a else []))
            ip("-n", ns, "link", "set", dev, "up")
        ip("-n", NS_RTR, "route", "add", str(SPOOF4), "dev", "dnf-r0")
        ip("-n", NS_RTR, "-6", "route", "add", str(SPOOF6), "dev", "dnf-r0")
        ip("-n", NS_SRC, "route", "add", "203.0.113.0/24", "dev", "dnf-s0")
        ip("-n", NS_SRC, "-6", "route", "add", "2001:db8:113::/64", "dev", "dnf-s0")
        ip("-n", NS_SRC, "route", "add", "198.51.100.0/24", "dev", "dnf-s0")
        ip("-n", NS_SRC, "-6", "route", "add", "2001:db8:51::/64", "dev", "dnf-s0")

        def mac(ns: str, dev: str) -> str:
            return str(json.loads(ip("-n", ns, "-j", "link", "show", dev))[0]["address"])

        yield Topo(rtr_mac=mac(NS_RTR, "dnf-r0"), src_mac=mac(NS_SRC, "dnf-s0"))
    finally:
        _cleanup()


# ---- traffic -------------------------------------------------------------------------


def udp_frames(
    topo: Topo, n: int, sources: Sequence[str], dst: str, dport: int = 9, payload: int = PAYLOAD
) -> list[bytes]:
    """``n`` UDP frames cycling over ``sources`` (one flow per source and port)."""
    eth = Ether(src=topo.src_mac, dst=topo.rtr_mac)
    out = []
    for i in range(n):
        s = sources[i % len(sources)]
        l3 = IPv6(src=s, dst=dst, hlim=64) if ":" in s else IP(src=s, dst=dst, ttl=64)
        out.append(bytes(eth / l3 / UDP(sport=40000, dport=dport) / Raw(b"\0" * payload)))
    return out


def send(frames: Sequence[bytes], pps: float) -> int:
    """Write ``frames`` on dnf-s0 at about ``pps``; returns how many the kernel took."""
    sock = netns_socket(NS_SRC, socket.AF_PACKET, socket.SOCK_RAW, 0)
    sent = 0
    try:
        sock.bind(("dnf-s0", 0))
        t0 = time.monotonic()
        for i, f in enumerate(frames):
            if i % 50 == 0 and (ahead := i / pps - (time.monotonic() - t0)) > 0:
                time.sleep(ahead)
            sent += sock.send(f) == len(f)
    finally:
        sock.close()
    return sent


def spoofed(n: int, v6: bool = False, seed: int = 1) -> list[str]:
    rnd = random.Random(seed)
    net = SPOOF6 if v6 else SPOOF4
    return [str(net[rnd.randrange(1, net.num_addresses - 1)]) for _ in range(n)]


# ---- exporters -----------------------------------------------------------------------


@contextlib.contextmanager
def exporter(argv: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """Run an exporter in dnf-rtr (``ip netns exec`` execs it: the pid is the exporter's)."""
    if shutil.which(argv[0]) is None:
        pytest.skip(f"{argv[0]} is not installed (dev.sh installs it)")
    p = subprocess.Popen(["ip", "netns", "exec", NS_RTR, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield p
    finally:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def softflowd(version: int, tmp: Path, sampling: int = 0, v6: bool = False) -> list[str]:
    argv = [
        "softflowd",
        "-d",
        "-i",
        "dnf-r0",
        "-n",
        f"{COLLECTOR}:{PORT}",
        "-v",
        str(version),
        "-p",
        str(tmp / "softflowd.pid"),
        "-c",
        str(tmp / "softflowd.ctl"),
        # short timeouts so flows are exported within a second or two of the traffic
        *("-t", "maxlife=1", "-t", "expint=1", "-t", "general=1", "-t", "udp=1", "-t", "icmp=1", "-t", "tcp=1"),
    ]
    if sampling:
        argv += ["-s", str(sampling)]
    if v6:
        argv += ["-6"]
    return argv


def pmacctd(version: int, tmp: Path, sampling: int = 0) -> list[str]:
    conf = tmp / "pmacctd.conf"
    lines = [
        "daemonize: false",
        "pcap_interface: dnf-r0",
        "plugins: nfprobe",
        f"nfprobe_receiver: {COLLECTOR}:{PORT}",
        f"nfprobe_source_ip: {EXPORTER}",
        f"nfprobe_version: {version}",
        "nfprobe_timeouts: general=1:maxlife=1:expint=1:udp=1:tcp=1:icmp=1",
        "aggregate: src_host, dst_host, src_port, dst_port, proto, tos",
        f"pidfile: {tmp / 'pmacctd.pid'}",
    ]
    if sampling:
        lines.append(f"sampling_rate: {sampling}")
    conf.write_text("\n".join(lines) + "\n")
    return ["pmacctd", "-f", str(conf)]


# ---- collecting ----------------------------------------------------------------------


class Collected:
    """Keeps every batch a collector hands over, for the checks."""

    def __init__(self, collector: FlowCollector) -> None:
        self.collector = collector
        self.parts: list[TrafficBatch] = []

    def batch(self) -> TrafficBatch:
        b = self.collector.read()
        if len(b):
            self.parts.append(b)
        return np.concatenate(self.parts) if self.parts else empty_traffic()

    def towards(self, dst: str, sources: Sequence[str] | None = None) -> TrafficBatch:
        b = self.batch()
        b = b[np.all(b["dst"] == np.frombuffer(addr_bytes(dst), np.uint8), axis=1)]
        if sources is not None:
            want = {addr_bytes(s) for s in sources}
            b = b[np.array([bytes(s) in want for s in b["src"]], dtype=bool)]
        return b

    def wait(self, until: Callable[[], bool], timeout: float = WAIT) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if until():
                return True
            time.sleep(0.2)
        return until()


@contextlib.contextmanager
def collector(exporters: Sequence[str] = (EXPORTER,), default_rate: int = 1) -> Iterator[Collected]:
    c = FlowCollector("netflow", ("0.0.0.0", PORT), list(exporters), lambda: NetflowDecoder(default_rate=default_rate))
    with in_netns(NS_COL):  # the socket (and its thread) belong to dnf-col
        c.start()
    try:
        yield Collected(c)
    finally:
        c.close()


FILL_BURST = 200  # frames of 1400 bytes: enough to fill the ring blocks and push the rest through


def drive(topo: Topo, got: Collected, until: Callable[[], bool], v6: bool = False, timeout: float = WAIT) -> bool:
    """Send filler bursts (at most one a second) until ``until()`` holds or ``timeout``."""
    src, dst = ("2001:2::fffe", FILLER6) if v6 else ("198.19.255.254", FILLER4)
    frames = udp_frames(topo, FILL_BURST, [src], dst, dport=7, payload=1300)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if until():
            return True
        send(frames, 20000)
        got.wait(until, timeout=1.0)
    return until()


def warm_up(topo: Topo, got: Collected, v6: bool = False) -> None:
    """Filler until the exporter reports some: its capture and export are up."""
    assert drive(topo, got, lambda: len(got.towards(FILLER6 if v6 else FILLER4)) > 0, v6), "no flows from the exporter"


def totals(b: TrafficBatch) -> tuple[int, int]:
    return int(b["packets"].sum()), int(b["bytes"].sum())


# ---- exact counts, unsampled ---------------------------------------------------------

N_EXACT = 2000
N_FLOWS = 40

EXACT: list[tuple[str, Callable[[Path], list[str]], bool, Source]] = [
    # softflowd, one case per export version
    ("softflowd v5", lambda t: softflowd(5, t), False, Source.NETFLOW),
    ("softflowd v9", lambda t: softflowd(9, t), False, Source.NETFLOW),
    ("softflowd ipfix", lambda t: softflowd(10, t), False, Source.IPFIX),
    ("softflowd ipfix ipv6", lambda t: softflowd(10, t, v6=True), True, Source.IPFIX),
    # pmacctd's nfprobe
    ("pmacctd v9", lambda t: pmacctd(9, t), False, Source.NETFLOW),
    ("pmacctd ipfix", lambda t: pmacctd(10, t), False, Source.IPFIX),
]


@pytest.mark.parametrize(("name", "argv", "v6", "source"), EXACT, ids=[e[0] for e in EXACT])
def test_unsampled_totals_are_exact(
    topo: Topo, name: str, argv: Callable[[Path], list[str]], v6: bool, source: Source
) -> None:
    target = TARGET6 if v6 else TARGET4
    sources = spoofed(N_FLOWS, v6=v6)
    frames = udp_frames(topo, N_EXACT, sources, target)
    ip_len = len(frames[0]) - 14
    with tempfile.TemporaryDirectory(prefix="dnf-") as tmp, collector() as got, exporter(argv(Path(tmp))):
        warm_up(topo, got, v6)
        rx0 = topo.rx_packets()
        assert send(frames, pps=5000) == N_EXACT
        assert topo.rx_packets() - rx0 >= N_EXACT
        drive(topo, got, lambda: totals(got.towards(target, sources))[0] >= N_EXACT, v6)
        drive(topo, got, lambda: False, v6, timeout=2.0)  # anything late (a double count) would show now
        b = got.towards(target, sources)
    packets, octets = totals(b)
    assert packets == N_EXACT
    assert octets == N_EXACT * ip_len  # exporters count IP bytes (header included, no Ethernet)
    assert set(b["source"]) == {source}
    assert (b["sample_rate"] == 1).all()
    assert (b["proto"] == 17).all() and (b["dport"] == 9).all()
    assert (b["flags"] & PacketFlag.LEN_MEAN).all()
    assert (b["length"] == ip_len).all()
    assert bool((b["flags"] & PacketFlag.IPV6).all()) == v6
    assert {bytes(s) for s in b["src"]} == {addr_bytes(s) for s in sources}
    st = got.collector.stats()[EXPORTER]
    assert st.malformed == 0 and st.untrusted == 0


# ---- sampled -------------------------------------------------------------------------

N_SAMPLED = 10000
RATE = 10

SAMPLED: list[tuple[str, Callable[[Path], list[str]]]] = [
    # each exporter once (every export version is read unsampled above)
    ("softflowd v9 1 in 10", lambda t: softflowd(9, t, sampling=RATE)),
    ("pmacctd ipfix 1 in 10", lambda t: pmacctd(10, t, sampling=RATE)),
]


@pytest.mark.parametrize(("name", "argv"), SAMPLED, ids=[e[0] for e in SAMPLED])
def test_sampled_totals_within_sampling_error(topo: Topo, name: str, argv: Callable[[Path], list[str]]) -> None:
    """Both exporters announce the rate in options data; the collector scales by it.

    Tolerance: 5 standard deviations of a binomial sample of N packets at 1/RATE, scaled
    by RATE (15% here).  pmacctd samples at random; softflowd takes every RATE-th packet
    the capture sees, which is tighter, and the same bound covers it.
    """
    sources = spoofed(N_FLOWS)
    frames = udp_frames(topo, N_SAMPLED, sources, TARGET4)
    ip_len = len(frames[0]) - 14
    p = 1 / RATE
    tolerance = 5 * RATE * (N_SAMPLED * p * (1 - p)) ** 0.5
    with tempfile.TemporaryDirectory(prefix="dnf-") as tmp, collector() as got, exporter(argv(Path(tmp))):
        warm_up(topo, got)
        assert send(frames, pps=10000) == N_SAMPLED
        # every flow is exported within a few seconds; there is no exact total to wait for
        drive(topo, got, lambda: False, timeout=6.0)
        b = got.towards(TARGET4, sources)
    packets, octets = totals(b)
    assert (b["sample_rate"] == RATE).all()
    assert abs(packets - N_SAMPLED) <= tolerance, (packets, tolerance)
    assert octets == packets * ip_len
    assert (b["packets"] % RATE == 0).all()


# ---- untrusted exporters ---------------------------------------------------------------


def test_untrusted_exporter_is_counted_and_dropped(topo: Topo) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="dnf-") as tmp,
        collector(exporters=["192.0.2.99/32", "2001:db8:99::/48"]) as got,
        exporter(softflowd(9, Path(tmp))),
    ):
        send(udp_frames(topo, 100, spoofed(5), TARGET4), pps=5000)
        drive(topo, got, lambda: got.collector.stats().get(EXPORTER, None) is not None, timeout=WAIT)
        drive(topo, got, lambda: got.collector.stats()[EXPORTER].datagrams >= 3, timeout=WAIT)
        st = got.collector.stats()[EXPORTER]
        assert len(got.batch()) == 0
    assert st.datagrams >= 3
    assert st.untrusted == st.datagrams
    assert st.records == st.packets == st.bytes == st.malformed == 0


# ---- a flood seen only through flows ---------------------------------------------------

ENGINE_CONFIG = """
protected = ["203.0.113.0/24"]
[shield]
interval_ms = 100
dry_run = true
[[groups]]
name = "default"
hold_seconds = 5.0
end_after_seconds = 2.0
[groups.thresholds]
udp = { pps = 1000 }
"""


def test_flood_seen_only_through_flows_is_detected(topo: Topo) -> None:
    """UDP at 3000 pps from 500 spoofed sources for 4 s, seen by softflowd (IPFIX); the
    engine has no data plane of its own (a replay data plane named "none", as ``run``
    without interfaces) and ticks in real time."""
    dp = ReplayDataPlane()
    dp.name = "none"
    events = io.StringIO()
    c = FlowCollector("netflow", ("0.0.0.0", PORT), [EXPORTER], lambda: NetflowDecoder())
    engine = Engine(parse(ENGINE_CONFIG), dp, dp.backend, EventSink(events), sources=[c])
    frames = udp_frames(topo, 12000, spoofed(500), TARGET4)
    with tempfile.TemporaryDirectory(prefix="dnf-") as tmp, exporter(softflowd(10, Path(tmp))):
        with in_netns(NS_COL):  # the engine starts its sources: the collector's socket lives in dnf-col
            engine.start(time.time())
        try:
            flood = threading.Thread(target=send, args=(frames, 3000))
            t0 = time.time()
            flood.start()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not _events(events, "attack_start"):
                engine.tick(time.time())
                time.sleep(0.1)
            flood.join()
        finally:
            engine.close()
    started = _events(events, "attack_start")
    assert len(started) >= 1
    assert started[0]["target"] == f"{TARGET4}/32"
    assert started[0]["attack_types"] == ["udp_flood"]
    # flows leave softflowd a second or two after their packets (maxlife=1, expint=1)
    assert started[0]["ts"] - t0 < 8.0
    st = c.stats()[EXPORTER]
    assert st.records > 0 and st.malformed == 0


def _events(buf: io.StringIO, name: str) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, buf.getvalue().splitlines()) if e["event"] == name]
