"""Connection attacks mitigated in the lab: a connection flood and a slow attack from a
host of their own (a second address in the client's namespace: their handshakes must
complete, which the attacker's namespace cannot do), the real shield process, the real
kernel.  The attacking source is dropped to the victim; the lab's legitimate clients
(both families, 10 requests a second each) keep being served and are blocked by no rule.
Each behaviour once, at modest rates; the detection matrices are in bench/quality.py."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ddos_shield import lab
from ddos_shield.lab.client import LegitTraffic
from ddos_shield.lab.connect import connection_flood, slow_attack
from ddos_shield.lab.demo import LabShield, legit_sources_blocked
from ddos_shield.lab.topology import Lab, lab_session, run_in

pytestmark = [pytest.mark.lab, pytest.mark.kernel]

VICTIM = f"{lab.VICTIM_V4}/32"
#: hosts of their own beside the client, in its namespace and the lab's outside prefix
FLOODER = str(lab.CLIENT_V4 + 1)
SLOWLORIS = str(lab.CLIENT_V4 + 2)


@pytest.fixture(scope="module")
def shield(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabShield]:
    with lab_session():
        lb = Lab()
        lb.up()
        plen = lab.OUTSIDE_V4.prefixlen
        s = LabShield(tmp_path_factory.mktemp("connmit"))
        try:
            for a in (FLOODER, SLOWLORIS):
                run_in(lab.NS_CLIENT, ["ip", "addr", "add", f"{a}/{plen}", "dev", lab.CLIENT_IF])
            s.start()
            yield s
        finally:
            s.stop()
            subprocess.run(
                ["ip", "netns", "exec", lab.NS_SHIELD, sys.executable, "-m", "ddos_shield.cli.main", "stop",
                 "--detach", "--config", str(s.config_path)],
                capture_output=True, timeout=60, check=False,
            )  # fmt: skip
            lb.down()


@pytest.fixture
def legit(shield: LabShield) -> Iterator[list[LegitTraffic]]:
    lt = [LegitTraffic.start(family=4, rate=10.0, seconds=40), LegitTraffic.start(family=6, rate=10.0, seconds=40)]
    try:
        yield lt
    finally:
        for x in lt:
            x.stop()


def _served(legit: list[LegitTraffic], since: float, until: float) -> tuple[int, int]:
    res = [r for lt in legit for r in lt.results() if since <= r["ts"] <= until]
    return sum(1 for r in res if r["ok"]), len(res)


def _dropped(shield: LabShield) -> int:
    """The data plane's count of dropped packets (the kernel's, read from its pinned maps)."""
    argv = ["ip", "netns", "exec", lab.NS_SHIELD, sys.executable, "-m", "ddos_shield.cli.main", "status", "--json",
            "--config", str(shield.config_path)]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    return int(json.loads(out)["dataplane"]["dropped"])


def _applied_to(shield: LabShield, source: str, since: int, timeout: float) -> dict[str, Any] | None:
    return shield.events.wait_for(
        lambda e: e["event"] == "mitigation_applied" and e["rule"]["match"].get("src") == f"{source}/32",
        timeout,
        since,
    )


def _rules(shield: LabShield) -> list[dict[str, Any]]:
    shield.events.poll()
    return [e["rule"] for e in shield.events.events if e["event"] == "mitigation_applied"]


def test_a_connection_flood_source_is_dropped_and_the_clients_are_served(
    shield: LabShield, legit: list[LegitTraffic]
) -> None:
    shield.events.poll()
    mark = len(shield.events.events)
    time.sleep(2.0)  # the clients' service before the flood, for reference
    t0 = time.time()
    before = _dropped(shield)
    # 400 connections a second (the detector's limit is 200), each attempt given 0.3 s:
    # once the source is dropped its attempts fail, and the flood gives up after 8 s
    report = connection_flood(count=1000, rate=400.0, source=FLOODER, connect_timeout=0.3, max_seconds=8.0)
    e = _applied_to(shield, FLOODER, mark, 5.0)
    assert e is not None, f"no rule for {FLOODER}; the flood: {report}"
    assert e["rule"]["action"] == "drop" and e["rule"]["match"] == {"src": f"{FLOODER}/32", "dst": VICTIM}
    assert "connection_flood" in e["reason"]
    found = [x for x in shield.events.events[mark:] if x["event"].startswith("attack_") and x["target"] == VICTIM]
    assert found and FLOODER in found[0]["sources"] and "connection_flood" in found[0]["attack_types"]
    # the flood opened enough to be seen (at least connection_min_flows), then was cut
    assert 100 <= report.opened < 900 and report.failed > 0, report
    # the source's new connections are cut now (the rule stays while the attack lasts)
    after = connection_flood(count=20, rate=40.0, source=FLOODER, connect_timeout=0.3, max_seconds=8.0)
    assert after.opened == 0, after
    assert _dropped(shield) - before >= after.failed  # each attempt's SYNs dropped in the kernel
    # the client, from its own address, still connects
    assert connection_flood(count=5, rate=5.0, connect_timeout=1.0).opened == 5
    time.sleep(2.0)
    ok, n = _served(legit, t0, time.time())
    assert n > 0 and ok >= 0.9 * n, f"clients served {ok} of {n} requests during the flood"
    assert legit_sources_blocked(_rules(shield)) == 0


def test_a_slow_attack_source_is_dropped_and_the_clients_are_served(
    shield: LabShield, legit: list[LegitTraffic]
) -> None:
    shield.events.poll()
    mark = len(shield.events.events)
    t0 = time.time()
    # Slowloris: 150 connections held 12 s, a header line every 3 s
    slow = threading.Thread(
        target=slow_attack, kwargs={"count": 150, "seconds": 12.0, "every": 3.0, "source": SLOWLORIS}
    )
    slow.start()
    try:
        e = _applied_to(shield, SLOWLORIS, mark, 16.0)
    finally:
        slow.join(30.0)
    assert e is not None, "no rule for the slow attack's source"
    assert e["rule"]["action"] == "drop" and e["rule"]["match"] == {"src": f"{SLOWLORIS}/32", "dst": VICTIM}
    assert "slow_attack" in e["reason"]
    after = connection_flood(count=10, rate=20.0, source=SLOWLORIS, connect_timeout=0.3, max_seconds=8.0)
    assert after.opened == 0, after
    ok, n = _served(legit, t0, time.time())
    assert n > 0 and ok >= 0.9 * n, f"clients served {ok} of {n} requests during the slow attack"
    assert legit_sources_blocked(_rules(shield)) == 0
