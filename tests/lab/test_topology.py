"""The lab network: structure read back from the kernel, the guard, reachability, the client."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from typing import Any

import pytest

from ddos_shield import lab as L
from ddos_shield.lab.client import LegitTraffic
from ddos_shield.lab.topology import NAMESPACES, Lab, if_counters, lab_namespaces, run_in

pytestmark = pytest.mark.lab


def _route(ns: str, dst: str) -> dict[str, Any]:
    out = subprocess.run(["ip", "-n", ns, "-j", "route", "get", dst], capture_output=True, text=True, check=True)
    route: dict[str, Any] = json.loads(out.stdout)[0]
    return route


def _sysctl(ns: str, key: str) -> str:
    return run_in(ns, ["sysctl", "-n", key]).stdout.strip()


ADDRESSES = [
    # the outside segment
    (
        L.NS_ATTACKER,
        L.ATTACKER_IF,
        [f"{a}/24" for a in L.ATTACKER_SOURCES_V4] + [f"{a}/64" for a in L.ATTACKER_SOURCES_V6],
    ),
    (L.NS_CLIENT, L.CLIENT_IF, [f"{L.CLIENT_V4}/24", f"{L.CLIENT_V6}/64"]),
    (L.NS_SHIELD, L.SHIELD_OUTSIDE_IF, [f"{L.SHIELD_OUT_V4}/24", f"{L.SHIELD_OUT_V6}/64"]),
    # the inside segment
    (L.NS_SHIELD, L.SHIELD_INSIDE_IF, [f"{L.SHIELD_IN_V4}/24", f"{L.SHIELD_IN_V6}/64"]),
    (L.NS_VICTIM, L.VICTIM_IF, [f"{L.VICTIM_V4}/24", f"{L.VICTIM_V6}/64"]),
]


def test_status_reports_the_built_lab(lab: Lab) -> None:
    st = lab.status()
    json.dumps(st)  # serialisable as promised
    assert st["up"] and lab.is_up()
    assert st["namespaces"] == dict.fromkeys(NAMESPACES, True)
    for ns, ifname, addrs in ADDRESSES:
        assert sorted(st["interfaces"][ns][ifname]["addresses"]) == sorted(addrs), (ns, ifname)
    assert set(st["interfaces"][L.NS_UPSTREAM]) == {L.UPSTREAM_BRIDGE, *L.UPSTREAM_PORTS.values()}
    assert st["victim"]["alive"] and st["victim"]["pid"] > 0
    assert st["shaping"]["kind"] == "htb+pfifo"
    assert st["shaping"]["capacity_mbit"] == 10.0
    assert st["shaping"]["queue_packets"] == 100
    assert st["xdp_out0"]["attached"] is False
    assert st["bpffs"]["mounted"] is True
    assert set(st["guard"]) == set(NAMESPACES)


ROUTES = [
    # (namespace, destination, expected output interface, expected gateway)
    # end hosts go through the shield
    (L.NS_ATTACKER, str(L.VICTIM_V4), L.ATTACKER_IF, str(L.SHIELD_OUT_V4)),
    (L.NS_ATTACKER, str(L.VICTIM_V6), L.ATTACKER_IF, str(L.SHIELD_OUT_V6)),
    (L.NS_CLIENT, str(L.VICTIM_V4), L.CLIENT_IF, str(L.SHIELD_OUT_V4)),
    (L.NS_CLIENT, str(L.VICTIM_V6), L.CLIENT_IF, str(L.SHIELD_OUT_V6)),
    (L.NS_VICTIM, str(L.CLIENT_V4), L.VICTIM_IF, str(L.SHIELD_IN_V4)),
    (L.NS_VICTIM, str(L.CLIENT_V6), L.VICTIM_IF, str(L.SHIELD_IN_V6)),
    # answers to spoofed sources go back to the attacker
    (L.NS_SHIELD, "198.18.7.9", L.SHIELD_OUTSIDE_IF, str(L.ATTACKER_V4)),
    (L.NS_SHIELD, "2001:2::7:9", L.SHIELD_OUTSIDE_IF, str(L.ATTACKER_V6)),
    # the shield reaches both segments directly
    (L.NS_SHIELD, str(L.VICTIM_V4), L.SHIELD_INSIDE_IF, None),
    (L.NS_SHIELD, str(L.CLIENT_V6), L.SHIELD_OUTSIDE_IF, None),
]


@pytest.mark.parametrize(("ns", "dst", "dev", "gateway"), ROUTES)
def test_routes(lab: Lab, ns: str, dst: str, dev: str, gateway: str | None) -> None:
    r = _route(ns, dst)
    assert r["dev"] == dev
    assert r.get("gateway") == gateway


def test_shield_forwards_without_reverse_path_filtering(lab: Lab) -> None:
    assert _sysctl(L.NS_SHIELD, "net.ipv4.ip_forward") == "1"
    assert _sysctl(L.NS_SHIELD, "net.ipv6.conf.all.forwarding") == "1"
    for ns, key in [
        (L.NS_SHIELD, "net.ipv4.conf.all.rp_filter"),
        (L.NS_SHIELD, f"net.ipv4.conf.{L.SHIELD_OUTSIDE_IF}.rp_filter"),
        (L.NS_SHIELD, f"net.ipv4.conf.{L.SHIELD_INSIDE_IF}.rp_filter"),
        (L.NS_VICTIM, f"net.ipv4.conf.{L.VICTIM_IF}.rp_filter"),
    ]:
        assert _sysctl(ns, key) == "0", (ns, key)


def _guard(ns: str) -> dict[str, Any]:
    out = run_in(ns, ["nft", "-j", "list", "table", "inet", L.GUARD_TABLE])
    items = json.loads(out.stdout)["nftables"]
    sets = {i["set"]["name"]: i["set"] for i in items if "set" in i}
    chains = {i["chain"]["name"]: i["chain"] for i in items if "chain" in i}
    rules: dict[str, list[list[dict[str, Any]]]] = {}
    for i in items:
        if "rule" in i:
            rules.setdefault(i["rule"]["chain"], []).append(i["rule"]["expr"])
    return {"sets": sets, "chains": chains, "rules": rules}


def _elements(s: dict[str, Any]) -> set[str]:
    out = set()
    for e in s["elem"]:
        p = e["prefix"] if isinstance(e, dict) else {"addr": e, "len": 32 if "." in e else 128}
        out.add(str(ipaddress.ip_network(f"{p['addr']}/{p['len']}")))
    return out


def _drops_outside(rule: list[dict[str, Any]], family: str, set_name: str) -> bool:
    match = next((e["match"] for e in rule if "match" in e), None)
    return (
        match is not None
        and match["op"] == "!="
        and match["left"] == {"payload": {"protocol": family, "field": "daddr"}}
        and match["right"] == f"@{set_name}"
        and any("counter" in e for e in rule)
        and rule[-1] == {"drop": None}
    )


@pytest.mark.parametrize("ns", NAMESPACES)
def test_guard_drops_everything_leaving_the_lab(lab: Lab, ns: str) -> None:
    g = _guard(ns)
    assert _elements(g["sets"]["lab4"]) == {str(n) for n in L.LAB_NETS if n.version == 4}
    assert _elements(g["sets"]["lab6"]) == {str(n) for n in L.LAB_NETS if n.version == 6}
    for chain in ("output", "forward"):
        c = g["chains"][chain]
        assert (c["hook"], c["policy"]) == (chain, "accept")
        rules = g["rules"][chain]
        assert any(_drops_outside(r, "ip", "lab4") for r in rules), chain
        assert any(_drops_outside(r, "ip6", "lab6") for r in rules), chain
    # the only other exceptions are loopback and link scope
    accepts = [r for r in g["rules"]["output"] if r[-1] == {"accept": None}]
    assert len(accepts) == 2


@pytest.mark.parametrize("family", [4, 6])
def test_client_is_served_without_attack(lab: Lab, family: int) -> None:
    before = if_counters(L.NS_CLIENT, L.CLIENT_IF)
    results = LegitTraffic.start(family=family, rate=20.0, seconds=2.0).wait()
    assert len(results) == 40
    assert all(r["ok"] and r["error"] is None for r in results)
    assert all(r["latency_ms"] < 1000 for r in results)
    # every request is a fresh TCP connection: at least SYN, request, ACK of the answer, FIN
    assert if_counters(L.NS_CLIENT, L.CLIENT_IF)["tx_packets"] - before["tx_packets"] >= 4 * 40


def test_shape_changes_the_bottleneck(lab: Lab) -> None:
    try:
        lab.shape(5.0, 50)
        b = lab.bottleneck()
        assert (b["capacity_mbit"], b["queue_packets"]) == (5.0, 50)
    finally:
        lab.shape(10.0, 100)
    assert (lab.bottleneck()["capacity_mbit"], lab.bottleneck()["queue_packets"]) == (10.0, 100)


def test_down_removes_everything_and_up_rebuilds(lab: Lab) -> None:
    lab.down()
    st = lab.status()
    assert not st["up"] and not lab.is_up()
    assert lab_namespaces() == []
    assert st["bpffs"]["mounted"] is False
    assert st["victim"]["alive"] is False
    lab.up(capacity_mbit=8.0, queue_packets=64)
    lab.up()  # idempotent: removes the previous lab first
    assert lab.is_up()
    assert lab.bottleneck()["capacity_mbit"] == 10.0
