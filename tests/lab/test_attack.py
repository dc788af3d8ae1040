"""Attack generators: refusals and packet construction (pure), then real packets in the lab."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Ether

from ddos_shield import lab as L
from ddos_shield.errors import LabError
from ddos_shield.lab import attack
from ddos_shield.lab.attack import KINDS, AttackSpec, _ones_sum, _trafgen_packet, _v6_pseudo, launch, plan
from ddos_shield.lab.client import LegitTraffic, ok_ratio
from ddos_shield.lab.topology import Lab, if_counters, popen_in, snmp

# ---- refusals: checked before anything runs ------------------------------------------

REFUSED = [
    # targets outside the lab
    AttackSpec("udp", target="8.8.8.8"),
    AttackSpec("syn", target="10.0.0.1"),
    AttackSpec("icmp", target="127.0.0.1"),
    AttackSpec("udp", family=6, target="2001:4860:4860::8888"),
    AttackSpec("syn-spoofed", family=6, target="::1"),
    AttackSpec("udp", target="not-an-address"),
    # a target of the other family, or in the source-only spoofing range
    AttackSpec("udp", family=4, target=str(L.VICTIM_V6)),
    AttackSpec("udp", target="198.18.0.1"),
    # fixed sources that are not the attacker's
    AttackSpec("syn", source=str(L.CLIENT_V4)),
    AttackSpec("udp", source="8.8.4.4"),
    AttackSpec("frag", family=6, source=str(L.VICTIM_V6)),
    AttackSpec("syn", source="198.18.0.1"),
    # spoofed sources outside the benchmarking ranges
    AttackSpec("udp-spoofed", spoof_net="10.0.0.0/8"),
    AttackSpec("udp-spoofed", spoof_net="198.20.0.0/16"),  # just past 198.18.0.0/15
    AttackSpec("syn-spoofed", spoof_net="198.16.0.0/13"),  # contains it, but is wider
    AttackSpec("syn-spoofed", family=6, spoof_net="2001:3::/48"),
    AttackSpec("udp-spoofed", family=6, spoof_net="2001::/16"),
    AttackSpec("udp-spoofed", family=6, spoof_net="198.18.0.0/15"),  # wrong family
    # spoofing prefixes too narrow for thousands of sources, and mixed-up options
    AttackSpec("udp-spoofed", spoof_net="198.18.0.0/25"),
    AttackSpec("syn-spoofed", family=6, spoof_net="2001:2::/120"),
    AttackSpec("udp-spoofed", source=str(L.ATTACKER_V4)),
    AttackSpec("udp", spoof_net="198.18.0.0/16"),
    # malformed
    AttackSpec("smurf"),
    AttackSpec("udp", family=5),
    AttackSpec("udp", pps=0),
    AttackSpec("udp", seconds=0.0),
    AttackSpec("udp", seconds=float("inf")),
    AttackSpec("udp", dport=0),
    AttackSpec("udp", payload=5000),
    AttackSpec("udp", cpu=4096),
    AttackSpec("frag", tool="hping3"),
    AttackSpec("udp", family=6, tool="hping3"),
    AttackSpec("udp", tool="scapy"),
    # spread-out floods: lab prefixes only, IPv4 /24 to /30, no fixed target besides
    AttackSpec("udp-spoofed", spread="192.0.2.0/24"),
    AttackSpec("udp-spoofed", spread="203.0.113.0/23"),
    AttackSpec("udp-spoofed", spread="203.0.113.128/31"),
    AttackSpec("udp-spoofed", spread="198.18.0.0/24"),
    AttackSpec("udp-spoofed", spread="203.0.113.129/25"),  # host bits set
    AttackSpec("udp-spoofed", spread="203.0.113.0/24", target=str(L.VICTIM_V4)),
    AttackSpec("udp-spoofed", family=6, spread="2001:db8:113::/120"),
    # a new source for every packet: SYNs over IPv6, from a range wide enough
    AttackSpec("udp-spoofed", family=6, many_sources=True),
    AttackSpec("syn-spoofed", family=4, many_sources=True),
    AttackSpec("syn", family=6, many_sources=True),
    AttackSpec("syn-spoofed", family=6, many_sources=True, spoof_net="2001:2::/112"),
]


@pytest.mark.parametrize("spec", REFUSED, ids=lambda s: f"{s.kind}/{s.family}")
def test_unsafe_or_malformed_attacks_are_refused_before_anything_runs(
    spec: AttackSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_run(*a: object, **k: object) -> None:
        raise AssertionError("a refused attack got as far as starting")

    monkeypatch.setattr(attack, "RunningAttack", must_not_run)
    with pytest.raises(LabError):
        launch(spec)


# ---- commands -------------------------------------------------------------------------

TOOL_FOR = [
    # hping3 where it fits: IPv4 from the attacker's own address, at rates it keeps up with
    (AttackSpec("syn", pps=5000), "hping3"),
    (AttackSpec("udp", pps=2000), "hping3"),
    (AttackSpec("icmp", pps=1000), "hping3"),
    (AttackSpec("syn", pps=20000), "trafgen"),
    # trafgen for the rest
    (AttackSpec("frag"), "trafgen"),
    (AttackSpec("udp-spoofed"), "trafgen"),
    (AttackSpec("syn-spoofed"), "trafgen"),
    *((AttackSpec(k, family=6), "trafgen") for k in KINDS),
    (AttackSpec("udp", tool="trafgen"), "trafgen"),
]


@pytest.mark.parametrize(
    ("spec", "tool"), TOOL_FOR, ids=lambda x: f"{x.kind}/{x.family}" if isinstance(x, AttackSpec) else x
)
def test_every_generator_is_bounded_by_count_and_time(spec: AttackSpec, tool: str) -> None:
    p = plan(spec)
    assert p.tool == tool
    assert p.argv[:6] == ["timeout", "-s", "INT", "-k", "2", str(spec.seconds + attack.TIME_MARGIN)]
    assert p.argv[6] == tool
    count = str(spec.count)
    if tool == "hping3":
        assert p.argv[p.argv.index("-c") + 1] == count
        assert p.argv[p.argv.index("-i") + 1] == f"u{round(1e6 / spec.pps)}"
        assert "--rand-source" not in p.argv and "--flood" not in p.argv
        assert p.argv[p.argv.index("-a") + 1] == str(L.ATTACKER_V4)
        assert p.config is None
    else:
        assert p.argv[p.argv.index("-n") + 1] == count
        assert p.argv[p.argv.index("-b") + 1] == f"{spec.pps}pps"
        assert p.argv[p.argv.index("-P") + 1] == "1"
        assert p.argv[p.argv.index("-o") + 1] == L.ATTACKER_IF
        assert p.config is not None
    assert p.target == str(L.VICTIM_V4 if spec.family == 4 else L.VICTIM_V6)


def test_spread_and_many_sources_become_counting_fields() -> None:
    p = plan(AttackSpec("udp-spoofed", pps=1000, seconds=1, spread=str(L.CARPET_V4)))
    assert p.tool == "trafgen" and p.target == "203.0.113.128/25"
    assert p.config is not None and "dinc(129, 254, 1)" in p.config and "csumudp" in p.config
    p = plan(AttackSpec("syn-spoofed", family=6, pps=1000, seconds=1, many_sources=True))
    assert p.config is not None
    assert all(f"dinc(0, {hi}, 1)" in p.config for hi in (252, 254, 255)) and "csumtcp6" in p.config
    assert p.sources == ["2001:2::/104"]


def test_cpu_pins_the_generator() -> None:
    cpu = max(os.sched_getaffinity(0))
    assert plan(AttackSpec("syn", cpu=cpu)).argv[:3] == ["taskset", "-c", str(cpu)]
    assert plan(AttackSpec("syn", family=6, cpu=cpu)).argv[:3] == ["taskset", "-c", str(cpu)]


# ---- packets: trafgen's static bytes read back with scapy ---------------------------


def _frame(spec: AttackSpec) -> Ether:
    p = plan(spec)
    target = ipaddress.ip_address(p.target)
    source = None if spec.spoofed else (L.ATTACKER_V4 if spec.family == 4 else L.ATTACKER_V6)
    spoof = ipaddress.ip_network(p.sources[0]) if spec.spoofed else None
    pkt = _trafgen_packet(spec, target, source, spoof)
    assert pkt.size == p.frame_bytes
    return Ether(bytes(pkt.static))


def test_frames_are_addressed_to_the_shield_from_the_attacker() -> None:
    for kind in KINDS:
        for family in (4, 6):
            f = _frame(AttackSpec(kind, family=family))
            assert (f.dst, f.src) == (L.SHIELD_OUT_MAC, L.ATTACKER_MAC)


FRAMES = [
    # (spec, layer expected after the IP header, checks on the parsed frame)
    (AttackSpec("syn", family=6, dport=8080), TCP, lambda f: f[TCP].flags == "S" and f[TCP].dport == 8080),
    (AttackSpec("syn-spoofed", dport=443), TCP, lambda f: f[TCP].flags == "S" and f[TCP].dport == 443),
    (AttackSpec("udp", family=6, payload=64), UDP, lambda f: f[UDP].len == 72 and f[UDP].dport == 80),
    (AttackSpec("udp-spoofed", family=6), UDP, lambda f: f[UDP].dport == 80),
    (AttackSpec("icmp", family=6), ICMPv6EchoRequest, lambda f: f[IPv6].nh == 58),
    (AttackSpec("icmp", tool="trafgen"), ICMP, lambda f: f[ICMP].type == 8),
    # non-first fragments: offset > 0, of UDP
    (AttackSpec("frag"), IP, lambda f: f[IP].frag == attack.FRAG_OFFSET_V4 // 8 and f[IP].proto == 17),
    (
        AttackSpec("frag", family=6),
        IPv6ExtHdrFragment,
        lambda f: f[IPv6ExtHdrFragment].offset == attack.FRAG_OFFSET_V6 // 8 and f[IPv6ExtHdrFragment].nh == 17,
    ),
]


@pytest.mark.parametrize(
    ("spec", "layer", "check"), FRAMES, ids=lambda x: f"{x.kind}/{x.family}" if isinstance(x, AttackSpec) else None
)
def test_frames_carry_the_kind(spec: AttackSpec, layer: Any, check: Any) -> None:
    f = _frame(spec)
    assert f.haslayer(layer)
    assert check(f)
    ip = f[IP] if spec.family == 4 else f[IPv6]
    assert ip.dst == str(L.VICTIM_V4 if spec.family == 4 else L.VICTIM_V6)
    if spec.spoofed:
        assert ipaddress.ip_address(ip.src) in (L.SPOOF_V4 if spec.family == 4 else L.SPOOF_V6)
    else:
        assert ip.src == str(L.ATTACKER_V4 if spec.family == 4 else L.ATTACKER_V6)


@pytest.mark.parametrize("spoofed", [False, True])
def test_udp_over_ipv6_never_gets_a_zero_checksum(spoofed: bool) -> None:
    # Exactly one 16-bit word varies (the source port, or the spoofed source's last word),
    # over every value whose low byte is at most 254; a zero UDP/IPv6 checksum is invalid.
    frame = bytes(_frame(AttackSpec("udp-spoofed" if spoofed else "udp", family=6)))
    word_at = 36 if spoofed else 54
    src, dst, udp = frame[22:38], frame[38:54], frame[54:]
    base = _ones_sum(_v6_pseudo(src, dst, len(udp), 17) + udp)  # the varying word is zero here

    def csum(word: int) -> int:
        s = base + word
        return 0xFFFF - ((s & 0xFFFF) + (s >> 16))

    words = [hi << 8 | lo for hi in range(256) for lo in range(255)]
    assert min(csum(w) for w in words) > 0
    # the shortcut agrees with scapy's own checksum on a few whole packets
    for w in (0x0000, 0x1234, 0xABFE, 0xFFFE):
        b = bytearray(frame)
        b[word_at : word_at + 2] = w.to_bytes(2, "big")
        pkt = Ether(bytes(b))
        del pkt[UDP].chksum
        assert Ether(bytes(pkt))[UDP].chksum == csum(w)


# ---- real packets in the lab -----------------------------------------------------------

PPS, SECONDS = 2000, 1.0
COUNT = round(PPS * SECONDS)

ARRIVALS = [
    # (kind, family, victim counter that counts each packet, as its kernel accepted it)
    ("syn", 4, "TcpInSegs"),
    ("udp", 4, "UdpNoPorts"),
    ("icmp", 4, "IcmpInEchos"),
    ("frag", 4, "IpReasmReqds"),
    ("udp-spoofed", 4, "UdpNoPorts"),
    ("syn-spoofed", 4, "TcpInSegs"),
    ("syn", 6, "TcpInSegs"),
    ("udp", 6, "Udp6NoPorts"),
    ("icmp", 6, "Icmp6InEchos"),
    ("frag", 6, "Ip6ReasmReqds"),
    ("udp-spoofed", 6, "Udp6NoPorts"),
    ("syn-spoofed", 6, "TcpInSegs"),
]
#: Counters of packets the victim threw away as malformed: they must not move.
MALFORMED = (
    "IpInHdrErrors", "Ip6InHdrErrors", "TcpInCsumErrors", "UdpInCsumErrors", "Udp6InCsumErrors",
    "IcmpInCsumErrors", "Icmp6InCsumErrors", "UdpInErrors", "Udp6InErrors",
)  # fmt: skip


@pytest.mark.lab
@pytest.mark.parametrize(("kind", "family", "counter"), ARRIVALS)
def test_attack_sends_exactly_its_count_and_it_arrives(lab: Lab, kind: str, family: int, counter: str) -> None:
    out0 = if_counters(L.NS_SHIELD, L.SHIELD_OUTSIDE_IF)
    victim = snmp(L.NS_VICTIM)
    report = launch(AttackSpec(kind, family=family, pps=PPS, seconds=SECONDS)).wait()
    assert report.packets_sent == COUNT
    assert report.requested == COUNT
    assert report.tool == ("hping3" if family == 4 and kind in ("syn", "udp", "icmp") else "trafgen")
    assert report.started_at < report.ended_at
    assert json.loads(json.dumps(report.to_json()))["packets_sent"] == COUNT
    assert if_counters(L.NS_SHIELD, L.SHIELD_OUTSIDE_IF)["rx_packets"] - out0["rx_packets"] >= COUNT
    # below the bottleneck's capacity, every packet reaches the victim and passes its checks
    deadline = time.monotonic() + 3.0
    while True:
        after = snmp(L.NS_VICTIM)
        if after[counter] - victim[counter] >= COUNT or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert after[counter] - victim[counter] >= COUNT
    assert {k: after[k] - victim[k] for k in MALFORMED} == dict.fromkeys(MALFORMED, 0)


CAPTURE = r"""
import json, socket, sys
n, victim = int(sys.argv[1]), sys.argv[2]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((sys.argv[3], 0))
s.settimeout(5.0)
print("ready", flush=True)
seen = []
try:
    while len(seen) < n:
        frame, addr = s.recvfrom(2048)
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        if frame[12:14] == b"\x08\x00" and socket.inet_ntop(socket.AF_INET, frame[30:34]) == victim:
            seen.append(socket.inet_ntop(socket.AF_INET, frame[26:30]))
        elif frame[12:14] == b"\x86\xdd" and socket.inet_ntop(socket.AF_INET6, frame[38:54]) == victim:
            seen.append(socket.inet_ntop(socket.AF_INET6, frame[22:38]))
except TimeoutError:
    pass
print(json.dumps(seen), flush=True)
"""


@pytest.mark.lab
@pytest.mark.parametrize("family", [4, 6])
def test_spoofed_sources_are_many_and_all_in_the_benchmarking_range(lab: Lab, family: int) -> None:
    victim = str(L.VICTIM_V4 if family == 4 else L.VICTIM_V6)
    cap = popen_in(
        L.NS_SHIELD, [sys.executable, "-c", CAPTURE, "1000", victim, L.SHIELD_OUTSIDE_IF],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert cap.stdout is not None and cap.stdout.readline().strip() == "ready"
        report = launch(AttackSpec("udp-spoofed", family=family, pps=PPS, seconds=SECONDS)).wait()
        seen = json.loads(cap.communicate(timeout=10)[0])
    finally:
        if cap.poll() is None:
            cap.kill()
            cap.communicate()
    allowed = L.SPOOF_V4 if family == 4 else L.SPOOF_V6
    assert len(seen) == 1000
    assert all(ipaddress.ip_address(a) in allowed for a in seen)
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network(report.sources[0]) for a in seen)
    assert len(set(seen)) > 900


@pytest.mark.lab
@pytest.mark.parametrize(
    "spec", [AttackSpec("udp", pps=2000, seconds=30), AttackSpec("udp", family=6, pps=2000, seconds=30)]
)
def test_stop_ends_an_attack_early_and_one_attack_runs_at_a_time(lab: Lab, spec: AttackSpec) -> None:
    running = launch(spec)
    try:
        with pytest.raises(LabError):
            launch(AttackSpec("icmp", pps=100, seconds=1))
        time.sleep(0.5)
        assert running.running
    finally:
        report = running.stop()
    assert report.stopped
    assert 0 < report.packets_sent < spec.count // 10
    settled = if_counters(L.NS_ATTACKER, L.ATTACKER_IF)["tx_packets"]
    time.sleep(0.3)
    assert if_counters(L.NS_ATTACKER, L.ATTACKER_IF)["tx_packets"] == settled
    assert not running.running
    launch(AttackSpec("icmp", pps=100, seconds=0.1)).wait()  # the lab is free again


@pytest.mark.lab
def test_flood_above_the_bottleneck_starves_the_legitimate_client(lab: Lab) -> None:
    lab.shape(5.0, 100)
    try:
        legit = LegitTraffic.start(family=4, rate=10.0, seconds=7.0)
        time.sleep(1.5)
        drops = lab.bottleneck()["dropped_packets"]
        # ~240-byte frames: even at hping3's ceiling here (~13 kpps) several times 5 Mbit/s
        report = launch(AttackSpec("udp", pps=30000, seconds=4.0, payload=200)).wait()
        drops = lab.bottleneck()["dropped_packets"] - drops
        results = legit.wait()
    finally:
        lab.shape(10.0, 100)
    assert drops > 0
    # requests that started (a client timeout) before the flood, and those during it
    assert ok_ratio(results, until=report.started_at - 1.0) == 1.0
    assert ok_ratio(results, since=report.started_at + 0.5, until=report.ended_at) < 0.9


# ---- the kinds of the classification tests (tests/detect/test_classify_lab.py) ----------

CLASSIFY_FRAMES = [
    (AttackSpec("ack-spoofed"), lambda f: f[TCP].flags == "A"),
    (AttackSpec("rst-spoofed", family=6), lambda f: f[TCP].flags == "R"),
    (AttackSpec("synack-spoofed"), lambda f: f[TCP].flags == "SA" and f[TCP].sport == 443),
    (AttackSpec("gre-spoofed", payload=100), lambda f: f[IP].proto == 47 and len(f[IP].payload) == 104),
    (AttackSpec("reflect-spoofed", sport=123, payload=440), lambda f: f[UDP].sport == 123 and f[UDP].len == 448),
    (AttackSpec("reflect-spoofed", family=6, sport=11211, payload=1200), lambda f: f[UDP].sport == 11211),
    (AttackSpec("scan", dport=0x1F00), lambda f: f[TCP].flags == "S" and f[TCP].dport >> 8 == 0x1F),
]


@pytest.mark.parametrize(("spec", "check"), CLASSIFY_FRAMES, ids=lambda x: x.kind if isinstance(x, AttackSpec) else "")
def test_classification_kinds_build_the_right_packets(spec: AttackSpec, check: object) -> None:
    f = _frame(spec)
    assert check(f)  # type: ignore[operator]
    p = plan(spec)
    assert p.tool == "trafgen" and p.argv[p.argv.index("-n") + 1] == str(spec.count)
    if spec.spoofed:
        net = ipaddress.ip_network(p.sources[0])
        assert net.subnet_of(L.SPOOF_V4 if net.version == 4 else L.SPOOF_V6)  # type: ignore[arg-type]
    else:
        assert p.sources == [str(L.ATTACKER_V4)]
