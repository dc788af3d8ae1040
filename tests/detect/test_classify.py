"""Attack classification from sampled packets: one row per type, grouped by family.

Hand-made batches here; the same types on real captures are in tests/engine/test_offline.py
and through the real shield in tests/detect/test_classify_lab.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ddos_shield.config import parse
from ddos_shield.detect.classify import REFLECTORS, Classifier, classify
from ddos_shield.engine.offline import analyze
from ddos_shield.records import Attack, AttackType, Category, PacketFlag, as_network, empty_traffic
from tests.traffic import packets, spoofed_v4

VICTIM = "203.0.113.10"
T = AttackType


def attack(*cats: Category, target: str = VICTIM + "/32", attack_id: int = 1) -> Attack:
    return Attack(attack_id, as_network(target), "default", (), cats, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0)


def flood(n: int = 200, *, spoofed: bool = True, **kw: object) -> np.ndarray:
    src = spoofed_v4(n) if spoofed else "198.51.100.66"
    return packets(n, src=src, dst=VICTIM, ts=0.5, **kw)  # type: ignore[arg-type]


def reflection(port: int, length: int, n: int = 200) -> np.ndarray:
    return flood(n, proto=17, category=Category.UDP, sport=port, dport=40000, length=length)


@pytest.mark.parametrize(
    ("batch", "cat", "types"),
    [
        # ---- TCP, by flags
        (flood(proto=6, category=Category.TCP_SYN, tcp_flags=0x02), Category.TCP_SYN, [T.SYN_FLOOD]),
        (flood(proto=6, category=Category.TCP_SYN, tcp_flags=0xC2), Category.TCP_SYN, [T.SYN_FLOOD]),  # ECE+CWR
        (flood(proto=6, category=Category.TCP, tcp_flags=0x10), Category.TCP, [T.ACK_FLOOD]),
        (flood(proto=6, category=Category.TCP, tcp_flags=0x18), Category.TCP, [T.ACK_FLOOD]),  # PSH-ACK
        (flood(proto=6, category=Category.TCP, tcp_flags=0x04), Category.TCP, [T.RST_FLOOD]),
        (flood(proto=6, category=Category.TCP, tcp_flags=0x14), Category.TCP, [T.RST_FLOOD]),  # RST-ACK
        (flood(proto=6, category=Category.TCP, tcp_flags=0x12, sport=443), Category.TCP, [T.SYNACK_FLOOD]),
        (flood(proto=6, category=Category.TCP, tcp_flags=0x01), Category.TCP, [T.TCP_FLOOD]),  # FIN
        (flood(proto=6, category=Category.TCP, tcp_flags=0x29), Category.TCP, [T.TCP_FLOOD]),  # Xmas
        # ---- UDP, ICMP, fragments, other protocols
        (flood(proto=17, category=Category.UDP, sport=40000, dport=80), Category.UDP, [T.UDP_FLOOD]),
        (flood(proto=1, category=Category.ICMP, dport=0x0800), Category.ICMP, [T.ICMP_FLOOD]),
        (flood(proto=17, category=Category.FRAG), Category.FRAG, [T.FRAGMENT_FLOOD]),
        (flood(proto=47, category=Category.OTHER), Category.OTHER, [T.GRE_FLOOD]),
        (flood(proto=50, category=Category.OTHER), Category.OTHER, [T.IP_FLOOD]),  # ESP
    ],
)
def test_floods_by_protocol_and_flags(batch: np.ndarray, cat: Category, types: list[AttackType]) -> None:
    assert list(classify(batch, attack(cat), now=1.0)) == types


@pytest.mark.parametrize("ref", REFLECTORS, ids=[r.type.value for r in REFLECTORS])
def test_each_reflector_by_source_port_and_size(ref: object) -> None:
    r = ref  # a Reflector
    for port in r.ports:  # type: ignore[attr-defined]
        big = reflection(port, r.min_length + 200)  # type: ignore[attr-defined]
        assert classify(big, attack(Category.UDP), now=1.0) == (r.type,)  # type: ignore[attr-defined]
        # the same port with ordinary, small answers is no amplification
        small = reflection(port, max(60, r.min_length // 2))  # type: ignore[attr-defined]
        assert classify(small, attack(Category.UDP), now=1.0) == (T.UDP_FLOOD,)


# ---- what reflection is not --------------------------------------------------------------


def test_one_server_answering_is_not_reflection() -> None:
    # a single resolver sending big answers: a direct flood from port 53, not reflection
    b = flood(proto=17, category=Category.UDP, sport=53, length=1200, spoofed=False)
    assert classify(b, attack(Category.UDP), now=1.0) == (T.UDP_FLOOD,)


def test_answers_to_the_targets_own_requests_are_not_reflection() -> None:
    # an SNMP walk with big answers from many agents, each asked by the target first
    agents = spoofed_v4(200)
    answers = packets(200, src=agents, dst=VICTIM, proto=17, category=Category.UDP, sport=161, length=600, ts=0.5)
    asked = np.concatenate(
        [packets(1, src=VICTIM, dst=a, proto=17, category=Category.UDP, dport=161, ts=0.4) for a in agents]
    )
    w = np.concatenate([asked, answers])
    assert classify(w, attack(Category.UDP), now=1.0) == (T.UDP_FLOOD,)
    assert classify(answers, attack(Category.UDP), now=1.0) == (T.SNMP_AMPLIFICATION,)


def test_a_few_dns_answers_inside_a_udp_flood_are_not_named() -> None:
    w = np.concatenate(
        [
            flood(500, proto=17, category=Category.UDP, sport=40000),
            reflection(53, 1400, n=30),  # 6 %: below the share that names a type
        ]
    )
    assert classify(w, attack(Category.UDP), now=1.0) == (T.UDP_FLOOD,)


# ---- several at once ----------------------------------------------------------------------


def test_several_types_against_one_target() -> None:
    w = np.concatenate(
        [
            reflection(53, 1400, n=300),
            reflection(123, 480, n=300),
            flood(300, proto=6, category=Category.TCP_SYN, tcp_flags=0x02),
            flood(300, proto=6, category=Category.TCP, tcp_flags=0x12),
            flood(100, proto=17, category=Category.FRAG),
        ]
    )
    types = classify(w, attack(Category.TCP_SYN, Category.TCP, Category.UDP, Category.FRAG), now=1.0)
    assert types == (
        T.SYN_FLOOD,
        T.FRAGMENT_FLOOD,
        T.SYNACK_FLOOD,
        T.DNS_AMPLIFICATION,
        T.NTP_AMPLIFICATION,
    )


def test_reflection_mixed_with_a_plain_flood_names_both() -> None:
    w = np.concatenate([reflection(1900, 400, n=300), flood(300, proto=17, category=Category.UDP, sport=50000)])
    assert classify(w, attack(Category.UDP), now=1.0) == (T.UDP_FLOOD, T.SSDP_AMPLIFICATION)


# ---- which samples count ------------------------------------------------------------------


def test_too_few_samples_give_the_coarse_type() -> None:
    b = reflection(53, 1400, n=5)
    assert classify(b, attack(Category.UDP), now=1.0) == (T.UDP_FLOOD,)


def test_only_the_targets_samples_from_the_attacks_start_count() -> None:
    other_host = packets(
        300, src=spoofed_v4(300), dst="203.0.113.99", proto=17, category=Category.UDP, sport=123, length=480, ts=0.5
    )
    before = reflection(11211, 1400)
    before["ts"] = -5.0  # long before the attack started
    now = flood(50, proto=17, category=Category.UDP, sport=40000)
    w = np.concatenate([other_host, before, now])
    assert classify(w, attack(Category.UDP), now=1.0) == (T.UDP_FLOOD,)


def test_fragments_of_an_amplification_carry_no_ports() -> None:
    later = flood(200, proto=17, category=Category.FRAG, length=1514)
    later["flags"] = PacketFlag.FRAG | PacketFlag.FRAG_LATER
    later["sport"] = later["dport"] = 0
    w = np.concatenate([reflection(389, 1514), later])
    assert classify(w, attack(Category.UDP, Category.FRAG), now=1.0) == (T.FRAGMENT_FLOOD, T.CLDAP_AMPLIFICATION)


def test_ipv6_target() -> None:
    v6 = "2001:db8:113::10"
    b = packets(
        100,
        src=[f"2001:2::{i:x}" for i in range(100)],
        dst=v6,
        proto=17,
        category=Category.UDP,
        sport=53,
        length=1400,
        ts=0.5,
    )
    assert classify(b, attack(Category.UDP, target=v6 + "/128"), now=1.0) == (T.DNS_AMPLIFICATION,)


# ---- over an attack's life ----------------------------------------------------------------


def test_classifier_keeps_what_it_saw_and_drops_the_coarse_type() -> None:
    c = Classifier()
    a = attack(Category.UDP)
    assert c.update(a, reflection(53, 1400, n=3), 0.2, categories=(Category.UDP,)) == (T.UDP_FLOOD,)
    assert c.update(a, reflection(53, 1400), 1.0, categories=(Category.UDP,)) == (T.DNS_AMPLIFICATION,)
    # the reflection paused, a SYN flood joined: both named, the coarse UDP type stays out
    syn = flood(proto=6, category=Category.TCP_SYN, tcp_flags=2)
    assert c.update(a, syn, 2.0, categories=(Category.TCP_SYN,)) == (T.SYN_FLOOD, T.DNS_AMPLIFICATION)
    # without a look at the samples the answer stands
    assert c.update(a, syn, 2.1, look=False) == (T.SYN_FLOOD, T.DNS_AMPLIFICATION)
    c.forget(1)
    assert c.types(1) is None


def test_behaviour_hints_and_a_flood_to_many_ports() -> None:
    c = Classifier()
    a = attack()
    assert c.update(a, empty_traffic(), 1.0, hints=(T.PORT_SCAN,)) == (T.PORT_SCAN,)
    # the same source then floods: a flood to many ports is a flood, not a scan
    syn = flood(proto=6, category=Category.TCP_SYN, tcp_flags=2)
    assert c.update(a, syn, 2.0, categories=(Category.TCP_SYN,), hints=(T.PORT_SCAN,)) == (T.SYN_FLOOD,)
    b = attack(attack_id=2)
    assert c.update(b, syn, 1.0, hints=(T.SLOW_ATTACK,)) == (T.SLOW_ATTACK,)


# ---- real captures through `analyze` ------------------------------------------------------

DATA = Path(__file__).resolve().parent.parent / "data" / "captures"

# Floors for captures that are samples of larger attacks (each stated with its rate):
# the IKE reflection peaks at ~12.5 kpps in 100 ms (default UDP limit 20 kpps); the DNS
# amplification arrives at ~40 pps of answers and fragments, in bursts, over 30 s.
IKE_FLOOR = (
    'protected = ["0.0.0.0/0", "::/0"]\n[[groups]]\nname = "default"\n[groups.thresholds]\nudp = { pps = 1000 }\n'
)
DNS_FLOOR = (
    'protected = ["0.0.0.0/0", "::/0"]\n[[groups]]\nname = "default"\nend_after_seconds = 10\n'
    "[groups.thresholds]\nudp = { pps = 20 }\nfrag = { pps = 20 }\n"
)
LOW_UDP = 'protected = ["0.0.0.0/0", "::/0"]\n[[groups]]\nname = "default"\n[groups.thresholds]\nudp = { pps = 1000 }\n'


@pytest.mark.parametrize(
    ("name", "config", "types", "target"),
    [
        ("stopddos_amp.TCP.reflection.SYNACK.pcap", None, ["synack_flood"], "10.10.10.10/32"),
        ("stopddos_amp.UDP.snmp.src161.pcapng", None, ["snmp_amplification"], "10.10.10.10/32"),
        ("stopddos_amp.UDP.isakmp.pcap", IKE_FLOOR, ["ike_amplification"], "10.10.10.10/32"),
        (
            "stopddos_amp.dns.RRSIG.fragmented.pcap",
            DNS_FLOOR,
            ["fragment_flood", "dns_amplification"],
            "10.10.10.10/32",
        ),
        ("stopddos_pkt.TCP.synflood.spoofed.pcap", None, ["syn_flood"], "10.10.10.10/32"),
        ("ndpi_synscan.pcap", None, ["port_scan"], "64.13.134.52/32"),
    ],
)
def test_attack_captures_are_classified(name: str, config: str | None, types: list[str], target: str) -> None:
    c = analyze([DATA / name], parse(config) if config else None).captures[0]
    assert [(a.types, a.target) for a in c.attacks] == [(types, target)]


def test_a_scan_is_reported_with_its_source_not_blocked() -> None:
    [a] = analyze([DATA / "ndpi_synscan.pcap"]).attacks
    assert a.rules == [] and a.skipped is not None and a.skipped.startswith("reported, not mitigated")
    assert [s.address for s in a.top_sources] == ["172.16.0.8"]


def test_an_snmp_walk_is_never_snmp_reflection() -> None:
    """The walk bursts at ~2,300 pps of answers from udp/161, but they come from the one
    agent the manager asked, are small, and follow its own requests: not reflection."""
    assert analyze([DATA / "zeek_snmpwalk-short.pcap"]).attacks == []
    # even with a floor so low that the burst counts as a flood
    flagged = analyze([DATA / "zeek_snmpwalk-short.pcap"], parse(LOW_UDP)).attacks
    assert flagged and all("snmp_amplification" not in a.types for a in flagged)
