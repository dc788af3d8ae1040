"""sFlow from a real exporter nobody here wrote: pmacct's ``pmacctd`` with its ``sfprobe``
plugin, read by :class:`FlowCollector` with :class:`SflowDecoder`, in private namespaces.

::

    dsf-src  s0 ──veth── m0  dsf-exp  e0 ──veth── c0  dsf-col
    (frames written      (pmacctd captures m0,      (FlowCollector on
     on a packet socket)  exports from 192.0.2.1)    192.0.2.2:6343)

The sender writes whole Ethernet frames to m0's MAC, with sources spoofed from
198.18.0.0/15 to addresses of dsf-exp (203.0.113.0/24); nothing leaves the namespaces
and IPv6 is off, so no neighbour chatter joins the count.  A second pmacctd exports the
same traffic from 192.0.2.3, an exporter the collector does not trust.

pmacctd's sfprobe sends what it has sampled only when it handles a packet (it ticks on
traffic, with a 60 s idle poll), so after each burst the test trickles packets to
203.0.113.250 until the victim's totals stop changing.  pmacctd reports a frame length
4 bytes longer than the frame (the FCS, which libpcap does not deliver, as sFlow v5
asks); the decoder's lengths are the frames as sent.
"""

from __future__ import annotations

import io
import ipaddress
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from ddos_shield.capture.base import ExporterStats, TelemetrySource
from ddos_shield.capture.collector import FlowCollector
from ddos_shield.capture.sflow import SflowDecoder
from ddos_shield.config import parse
from ddos_shield.dataplane.replay import ReplayDataPlane
from ddos_shield.engine import Engine
from ddos_shield.events import EventSink
from ddos_shield.lab.netns import in_netns
from ddos_shield.records import TrafficBatch, addr_bytes, addresses_in, as_network, bytes_addr, empty_traffic

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)"),
    pytest.mark.skipif(shutil.which("pmacctd") is None, reason="pmacctd is not installed (Debian package pmacct)"),
]

NS_SRC, NS_EXP, NS_COL = "dsf-src", "dsf-exp", "dsf-col"
SRC_MAC, MON_MAC = "02:00:00:00:5f:01", "02:00:00:00:5f:02"
EXPORTER, COLLECTOR, UNTRUSTED = "192.0.2.1", "192.0.2.2", "192.0.2.3"
PORT = 6343
VICTIM, FLUSH_DST = "203.0.113.10", "203.0.113.250"
SPOOFED = ipaddress.ip_network("198.18.0.0/15")
PAYLOAD = 60


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10).stdout


def _delete_namespaces() -> None:
    for ns in (NS_SRC, NS_EXP, NS_COL):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


@pytest.fixture(scope="module")
def topology() -> Iterator[None]:
    _delete_namespaces()
    try:
        for ns in (NS_SRC, NS_EXP, NS_COL):
            _ip("netns", "add", ns)
            _ip("netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            _ip("netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip(
            "-n",
            NS_SRC,
            *f"link add s0 address {SRC_MAC} type veth peer name m0 netns {NS_EXP} address {MON_MAC}".split(),
        )
        _ip("-n", NS_EXP, *f"link add e0 type veth peer name c0 netns {NS_COL}".split())
        _ip("-n", NS_EXP, "addr", "add", "203.0.113.1/24", "dev", "m0")
        _ip("-n", NS_EXP, "addr", "add", f"{EXPORTER}/29", "dev", "e0")
        _ip("-n", NS_EXP, "addr", "add", f"{UNTRUSTED}/29", "dev", "e0")
        _ip("-n", NS_COL, "addr", "add", f"{COLLECTOR}/29", "dev", "c0")
        for ns, dev in ((NS_SRC, "s0"), (NS_EXP, "m0"), (NS_EXP, "e0"), (NS_COL, "c0")):
            _ip("-n", ns, "link", "set", dev, "up")
        yield
    finally:
        _delete_namespaces()


# ---- the exporter, the collector, the sender ---------------------------------------------


class Pmacctd:
    """pmacctd with the sfprobe plugin, capturing m0 in dsf-exp; stopped by its process group."""

    def __init__(self, workdir: Path, source: str, sampling_rate: int) -> None:
        conf = workdir / f"pmacctd-{source}.conf"
        conf.write_text(
            "daemonize: false\n"
            "pcap_interface: m0\n"
            "plugins: sfprobe\n"
            f"sfprobe_receiver: {COLLECTOR}:{PORT}\n"
            f"sfprobe_agentip: {source}\n"
            f"sfprobe_source_ip: {source}\n"
            "sfprobe_agentsubid: 7\n"
            f"sampling_rate: {sampling_rate}\n"
            # room for a burst between the capture and the plugin
            "plugin_pipe_size: 20480000\n"
        )
        self.log = workdir / f"pmacctd-{source}.log"
        with self.log.open("w") as log:
            # `timeout` bounds the daemon's life even if this process dies
            self.proc = subprocess.Popen(
                ["timeout", "-s", "TERM", "-k", "2", "120", "ip", "netns", "exec", NS_EXP, "pmacctd", "-f", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        # the plugin is a child of the core process, in the same group
        with _suppress_missing():
            os.killpg(self.proc.pid, signal.SIGKILL)


class _suppress_missing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        return kind is ProcessLookupError


class NamespacedCollector(TelemetrySource):
    """A collector whose socket is bound inside network namespace ``ns``."""

    def __init__(self, ns: str, inner: FlowCollector) -> None:
        self.ns, self.inner, self.name = ns, inner, inner.name
        self._started = False

    def start(self) -> None:
        # the rig starts it to see the exporters; the engine's start finds it running
        if not self._started:
            with in_netns(self.ns):
                self.inner.start()
            self._started = True

    def read(self) -> TrafficBatch:
        return self.inner.read()

    def stats(self) -> dict[str, ExporterStats]:
        return self.inner.stats()

    def close(self) -> None:
        self.inner.close()


def collector() -> tuple[NamespacedCollector, list[SflowDecoder]]:
    decoders: list[SflowDecoder] = []

    def factory() -> SflowDecoder:
        decoders.append(SflowDecoder())
        return decoders[-1]

    return NamespacedCollector(NS_COL, FlowCollector("sflow", (COLLECTOR, PORT), [EXPORTER], factory)), decoders


class Sender:
    """Whole frames on a packet socket in dsf-src, paced, a bounded number of them."""

    def __init__(self) -> None:
        with in_netns(NS_SRC):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.sock.bind(("s0", 0))

    def send(self, frames: list[bytes], count: int, pps: float) -> None:
        start = time.monotonic()
        for i in range(count):
            self.sock.send(frames[i % len(frames)])
            if i % 50 == 49:
                ahead = start + (i + 1) / pps - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)

    def close(self) -> None:
        self.sock.close()


def udp_frames(n: int, dst: str = VICTIM, ttl: int = 57, seed: int = 1) -> list[bytes]:
    rng = np.random.default_rng(seed)
    srcs = [str(SPOOFED[int(x)]) for x in rng.integers(1, SPOOFED.num_addresses - 1, n)]
    eth = Ether(src=SRC_MAC, dst=MON_MAC)
    return [
        bytes(eth / IP(src=s, dst=dst, ttl=ttl) / UDP(sport=40000 + i, dport=53) / Raw(b"x" * PAYLOAD))
        for i, s in enumerate(srcs)
    ]


def syn_frames(n: int, dst: str = VICTIM, seed: int = 2) -> list[bytes]:
    rng = np.random.default_rng(seed)
    srcs = [str(SPOOFED[int(x)]) for x in rng.integers(1, SPOOFED.num_addresses - 1, n)]
    eth = Ether(src=SRC_MAC, dst=MON_MAC)
    return [
        bytes(eth / IP(src=s, dst=dst, ttl=50) / TCP(sport=1024 + i, dport=443, flags="S")) for i, s in enumerate(srcs)
    ]


def rx_packets() -> int:
    link = json.loads(_ip("-n", NS_EXP, "-s", "-j", "link", "show", "dev", "m0"))[0]
    return int(link["stats64"]["rx"]["packets"])


class Tally:
    """Everything the collector handed over, kept for the checks."""

    def __init__(self, source: TelemetrySource) -> None:
        self.source = source
        self.parts: list[TrafficBatch] = []

    def pull(self) -> None:
        b = self.source.read()
        if len(b):
            self.parts.append(b)

    def to(self, dst: str) -> TrafficBatch:
        b = np.concatenate(self.parts) if self.parts else empty_traffic()
        return b[addresses_in(b["dst"], as_network(f"{dst}/32"))]


def wait_until(cond: Callable[[], bool], timeout: float, each: Callable[[], None]) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        each()
        if cond():
            return True
        time.sleep(0.1)
    return False


def flush(sender: Sender, tally: Tally, settle: float = 2.0, timeout: float = 15.0) -> None:
    """Trickle packets to FLUSH_DST (pmacctd exports only when it handles a packet) until the
    victim's totals have not moved for ``settle`` seconds."""
    trickle = udp_frames(1, dst=FLUSH_DST)
    last, since = -1, time.monotonic()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        sender.send(trickle, 5, 1000)
        time.sleep(0.1)
        tally.pull()
        now = int(tally.to(VICTIM)["packets"].sum())
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= settle:
            return


@pytest.fixture
def rig(
    topology: None, tmp_path: Path
) -> Iterator[Callable[[int], tuple[NamespacedCollector, list[SflowDecoder], Sender, Tally]]]:
    """rig(sampling_rate): both pmacctds exporting, the collector started and seeing them."""
    daemons: list[Pmacctd] = []
    opened: list[Any] = []

    def make(rate: int) -> tuple[NamespacedCollector, list[SflowDecoder], Sender, Tally]:
        col, decoders = collector()
        col.start()
        opened.append(col)
        sender = Sender()
        opened.append(sender)
        daemons.append(Pmacctd(tmp_path, EXPORTER, rate))
        daemons.append(Pmacctd(tmp_path, UNTRUSTED, rate))
        tally = Tally(col)
        # ready when both exporters' datagrams arrive (pmacctd needs a moment to open the capture)
        ready = udp_frames(1, dst=FLUSH_DST)

        def poke() -> None:
            sender.send(ready, 10, 1000)
            tally.pull()

        ok = wait_until(
            lambda: len(tally.to(FLUSH_DST)) > 0 and col.stats().get(UNTRUSTED, ExporterStats()).datagrams > 0, 15, poke
        )
        assert ok, f"no sFlow from pmacctd: {[d.log.read_text()[-500:] for d in daemons]}"
        return col, decoders, sender, tally

    try:
        yield make
    finally:
        for d in daemons:
            d.stop()
        for o in opened:
            o.close()


# ---- totals --------------------------------------------------------------------------


def test_unsampled_totals_are_exact_and_untrusted_exporter_is_dropped(rig: Any) -> None:
    col, decoders, sender, tally = rig(1)
    frames = udp_frames(200)
    count = 2000
    before = rx_packets()
    sender.send(frames, count, 2000)
    flush(sender, tally)
    arrived = rx_packets() - before

    got = tally.to(VICTIM)
    frame_len = len(frames[0])  # pmacctd reports it with the FCS; the decoder takes it off
    assert arrived >= count  # the kernel saw every frame (plus the trickle)
    assert len(got) == count  # unsampled: one record per packet
    assert int(got["packets"].sum()) == count
    assert int(got["bytes"].sum()) == count * frame_len
    assert (got["sample_rate"] == 1).all() and (got["length"] == frame_len).all()
    assert (got["proto"] == 17).all() and (got["dport"] == 53).all() and (got["ttl"] == 57).all()
    assert all(bytes_addr(s) in SPOOFED for s in got["src"][:50])
    assert sorted(set(got["sport"].tolist())) == list(range(40000, 40200))
    assert {bytes(e) for e in got["exporter"]} == {addr_bytes(EXPORTER)}

    st = col.stats()
    assert st[UNTRUSTED].datagrams > 0 and st[UNTRUSTED].untrusted == st[UNTRUSTED].datagrams
    assert st[UNTRUSTED].records == 0
    assert st[EXPORTER].untrusted == 0 and st[EXPORTER].malformed == 0
    (dec,) = decoders  # one decoder: the untrusted exporter never got one
    assert dec.sequence_gaps == 0 and dec.undecodable_samples == 0
    print(
        f"unsampled: sent {count}, kernel rx {arrived}, sFlow packets {int(got['packets'].sum())}, "
        f"datagrams {st[EXPORTER].datagrams}, untrusted datagrams {st[UNTRUSTED].untrusted}, counters {dec.counter_samples}"
    )


def test_sampled_totals_within_sampling_error(rig: Any) -> None:
    rate = 10
    col, decoders, sender, tally = rig(rate)
    count = 6000
    sender.send(udp_frames(300, seed=3), count, 3000)
    flush(sender, tally)

    got = tally.to(VICTIM)
    assert (got["sample_rate"] == rate).all() and (got["packets"] == rate).all()
    estimate = int(got["packets"].sum())
    # each packet is taken with probability 1/rate: the estimate's standard deviation
    sigma = rate * math.sqrt(count * (1 / rate) * (1 - 1 / rate))
    assert abs(estimate - count) <= 4 * sigma, (estimate, count, sigma)
    assert int(got["bytes"].sum()) == estimate * len(udp_frames(1)[0])
    assert col.stats()[UNTRUSTED].untrusted > 0 and decoders[0].sequence_gaps == 0
    print(
        f"sampled 1 in {rate}: sent {count}, samples {len(got)}, estimate {estimate} ({(estimate - count) / count:+.1%}), 4 sigma {4 * sigma:.0f}"
    )


# ---- detection through sFlow only --------------------------------------------------------

ENGINE_CONFIG = """
protected = ["203.0.113.0/24"]
[shield]
interval_ms = 100
[[groups]]
name = "default"
[groups.thresholds]
udp = { pps = 1000 }
syn = { pps = 1000 }
"""


@pytest.mark.parametrize(("kind", "attack_type"), [("udp", "udp_flood"), ("syn", "syn_flood")])
def test_engine_detects_a_flood_seen_only_through_sflow(rig: Any, kind: str, attack_type: str) -> None:
    col, _decoders, sender, _tally = rig(10)
    dp = ReplayDataPlane()
    dp.name = "none"  # as `ddos-shield run` does with no interface: nothing but the sources
    out = io.StringIO()
    engine = Engine(parse(ENGINE_CONFIG), dp, dp.backend, EventSink(out), sources=[col])
    engine.start(time.time())
    stop = threading.Event()
    loop = threading.Thread(target=engine.run, args=(stop,), daemon=True)
    frames = udp_frames(500, seed=4) if kind == "udp" else syn_frames(500)
    # 3000 pps, three times the threshold, for at most 6 s
    flood = threading.Thread(target=sender.send, args=(frames, 18000, 3000), daemon=True)

    def events(name: str) -> list[dict[str, Any]]:
        return [e for line in out.getvalue().splitlines() if (e := json.loads(line))["event"] == name]

    loop.start()
    began = time.time()
    flood.start()
    try:
        wait_until(lambda: bool(events("mitigation_applied")), 12, lambda: None)
    finally:
        flood.join(timeout=10)
        stop.set()
        loop.join(timeout=5)
    started = events("attack_start")
    assert started, out.getvalue()
    attack = started[0]
    assert attack["target"] == f"{VICTIM}/32"
    assert attack_type in attack["attack_types"]
    # the rule built from sFlow samples matches the frames as the data plane would see them
    applied = events("mitigation_applied")
    assert applied, out.getvalue()
    match = applied[0]["rule"]["match"]
    assert match["dst"] == f"{VICTIM}/32"
    if "length" in match:
        assert match["length"]["min"] <= len(frames[0]) <= match["length"]["max"]
    assert engine.snapshot()["sources"]["sflow"][EXPORTER]["records"] > 0
    print(
        f"{kind}: detected after {attack['ts'] - began:.2f} s as {attack['attack_types']} at {attack['pps']:.0f} pps; "
        f"rule after {applied[0]['ts'] - began:.2f} s: {match}"
    )
