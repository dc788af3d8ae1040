"""Each attack type through the real shield in the lab: real packets, the real kernel,
the `ddos-shield run` process, and the type its events name.

One lab and one shield for the module; each attack once, for 1.5 s, at about twice
its category's limit in the lab (the TCP flag floods at 30 kpps over a 20 kpps limit,
UDP at 10 kpps over 5 kpps; ICMP at three times), so a generator slowed by a busy machine still crosses it.  The matrices of
rates and the precision figures are in bench/quality.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from ddos_shield import lab
from ddos_shield.lab.attack import AttackSpec, launch
from ddos_shield.lab.connect import connection_flood, slow_attack
from ddos_shield.lab.demo import LabShield
from ddos_shield.lab.topology import Lab, lab_session

pytestmark = [pytest.mark.lab, pytest.mark.kernel]

VICTIM = f"{lab.VICTIM_V4}/32"

FLOODS = [
    (AttackSpec("syn-spoofed", pps=6000, seconds=1.5), "syn_flood"),
    (AttackSpec("ack-spoofed", pps=30000, seconds=1.5), "ack_flood"),
    (AttackSpec("rst-spoofed", pps=30000, seconds=1.5), "rst_flood"),
    (AttackSpec("synack-spoofed", pps=30000, seconds=1.5), "synack_flood"),
    (AttackSpec("udp-spoofed", pps=10000, seconds=1.5), "udp_flood"),
    (AttackSpec("gre-spoofed", pps=6000, seconds=1.5), "gre_flood"),
    (AttackSpec("reflect-spoofed", sport=53, payload=1200, pps=10000, seconds=1.5), "dns_amplification"),
    (AttackSpec("reflect-spoofed", sport=123, payload=440, pps=10000, seconds=1.5), "ntp_amplification"),
    (AttackSpec("reflect-spoofed", sport=1900, payload=300, pps=10000, seconds=1.5), "ssdp_amplification"),
    (AttackSpec("reflect-spoofed", sport=11211, payload=1400, pps=10000, seconds=1.5), "memcached_amplification"),
    (AttackSpec("reflect-spoofed", sport=389, payload=1400, pps=10000, seconds=1.5), "cldap_amplification"),
    # 3x the limit: a generator slowed by a loaded machine, sending only the 90 % of its
    # count the test asks for in its 3 s time bound, still averages 4,050 pps over 3,000
    (AttackSpec("icmp", pps=9000, seconds=1.5, tool="trafgen"), "icmp_flood"),
    (AttackSpec("frag", pps=4000, seconds=1.5), "fragment_flood"),
]


@pytest.fixture(scope="module")
def shield(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabShield]:
    with lab_session():
        lb = Lab()
        lb.up()
        # observe: each attack runs unhindered (the client's slow attack would otherwise get
        # it dropped, and its connection flood could not open its connections)
        s = LabShield(tmp_path_factory.mktemp("classify"), action="observe")
        try:
            s.start()
            yield s
        finally:
            s.stop()
            lb.down()


def _typed(shield: LabShield, want: str, since: int, timeout: float) -> dict[str, Any] | None:
    return shield.events.wait_for(
        lambda e: e["event"].startswith("attack_") and e["target"] == VICTIM and want in e["attack_types"],
        timeout,
        since,
    )


def _quiet(shield: LabShield, since: int) -> None:
    """Wait until the victim's attack has ended, so the next one starts afresh."""
    shield.events.wait_for(lambda e: e["event"] == "attack_end" and e["target"] == VICTIM, 8.0, since)


@pytest.mark.parametrize(("spec", "want"), FLOODS, ids=[f"{s.kind}:{t}" for s, t in FLOODS])
def test_each_flood_is_classified(shield: LabShield, spec: AttackSpec, want: str) -> None:
    shield.events.poll()
    mark = len(shield.events.events)
    report = launch(spec).wait()
    assert report.packets_sent >= 0.9 * spec.count
    e = _typed(shield, want, mark, 5.0)
    sent = (
        f"{report.packets_sent} packets in {report.ended_at - report.started_at:.2f} s (at {report.achieved_pps} pps)"
    )
    _quiet(shield, mark)
    got = [x["attack_types"] for x in shield.events.events[mark:] if x["event"].startswith("attack_")]
    assert e is not None, f"{spec.kind}: expected {want}, events named {got}; the generator sent {sent}"
    # nothing coarser or unrelated named alongside
    assert set(got[-1]) == {want}, got


def test_port_scan_then_slow_attack_then_connection_flood(shield: LabShield) -> None:
    shield.events.poll()
    mark = len(shield.events.events)
    # 255 ports of the victim in about a second, from the attacker's own address
    launch(AttackSpec("scan", dport=0x0100, pps=500, seconds=1.0)).wait()
    scan = _typed(shield, "port_scan", mark, 5.0)
    assert scan is not None and scan["sources"] == [str(lab.ATTACKER_V4)]
    skipped = shield.events.wait_for(lambda e: e["event"] == "mitigation_skipped", 3.0, mark)
    assert skipped is not None and skipped["reason"].startswith("reported, not mitigated")

    # Slowloris from the client: 150 connections held 12 s, a header line every 3 s
    mark = len(shield.events.events)
    slow = threading.Thread(target=slow_attack, kwargs={"count": 150, "seconds": 12.0, "every": 3.0})
    slow.start()
    found = _typed(shield, "slow_attack", mark, 14.0)
    slow.join(20.0)
    assert found is not None and str(lab.CLIENT_V4) in found["sources"]

    mark = len(shield.events.events)
    # 500 connections a second from one source (the default limit is 200)
    report = connection_flood(count=1000, rate=500.0)
    assert report.opened >= 900
    assert report.opened / report.seconds >= 250, f"the generator fell short: {report}"
    flood = _typed(shield, "connection_flood", mark, 5.0)
    assert flood is not None and str(lab.CLIENT_V4) in flood["sources"]
