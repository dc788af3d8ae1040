"""BGP enforcement: the rule compiler on its own, then Debian's ExaBGP driven by the
backend in one namespace (dsn-bgp-shield) announcing to Debian's gobgpd in another
(dsn-bgp-peer), checked against what the router itself holds (``gobgp global rib -j``)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ddos_shield.config import Bgp, BgpPeer, parse
from ddos_shield.errors import ConfigError, MitigationError
from ddos_shield.lab.bgppeer import BgpPeerLab, community
from ddos_shield.lab.netns import in_netns
from ddos_shield.mitigate.bgp import (
    BgpBackend,
    compile_rule,
    exabgp_config,
    flowspec_match,
    set_speaker_bypass,
    stop_speaker,
)
from ddos_shield.records import Action, Match, Range, Rule, as_network

FAR = 2e9


def settings(**kw: Any) -> Bgp:
    base: dict[str, Any] = {
        "local_as": 64513,
        "router_id": "192.0.2.1",
        "peers": [BgpPeer(address="192.0.2.2", peer_as=64512, local_address="192.0.2.1")],
    }
    return Bgp(**{**base, **kw})


def net(s: str) -> Any:
    return as_network(s)


# ---- the compiler, no speaker ----------------------------------------------------------

COMPILE_ROWS = [
    # blackholes: BLACKHOLE first, extra communities, next hops per family
    (
        Rule(Match(dst=net("203.0.113.10/32")), Action.BLACKHOLE, FAR),
        {"blackhole": True, "communities": ["64513:666", "65535:666"]},
        "announce route 203.0.113.10/32 next-hop self community [65535:666 64513:666]",
        "withdraw route 203.0.113.10/32 next-hop self",
    ),
    (
        Rule(Match(dst=net("2001:db8:113::10/128")), Action.BLACKHOLE, FAR),
        {"blackhole": True, "next_hop6": "2001:db8::1"},
        "announce route 2001:db8:113::10/128 next-hop 2001:db8::1 community [65535:666]",
        "withdraw route 2001:db8:113::10/128 next-hop 2001:db8::1",
    ),
    # Flowspec discard: every component, frame length turned into IP packet length
    (
        Rule(
            Match(
                proto=6,
                src=net("198.18.0.0/15"),
                dst=net("203.0.113.11/32"),
                sport=Range(1024, 65535),
                dport=Range(80, 80),
                tcp_flags=(0x12, 0x02),
                length=Range(54, 74),
            ),
            Action.DROP,
            FAR,
        ),
        {},
        "announce flow route { match { destination 203.0.113.11/32; source 198.18.0.0/15; protocol =6; "
        "source-port >=1024&<=65535; destination-port =80; tcp-flags [ =syn&!ack ]; packet-length >=40&<=60; } "
        "then { discard; } }",
        "withdraw flow route { match { destination 203.0.113.11/32; source 198.18.0.0/15; protocol =6; "
        "source-port >=1024&<=65535; destination-port =80; tcp-flags [ =syn&!ack ]; packet-length >=40&<=60; } }",
    ),
    # TCP flags alone imply TCP; a value of 0 means "none of the mask's bits"
    (
        Rule(Match(dst=net("203.0.113.12/32"), tcp_flags=(0x14, 0)), Action.DROP, FAR),
        {"flowspec_communities": ["64513:1"]},
        "announce flow route { match { destination 203.0.113.12/32; protocol =6; tcp-flags [ !rst+ack ]; } "
        "then { discard; community [64513:1]; } }",
        "withdraw flow route { match { destination 203.0.113.12/32; protocol =6; tcp-flags [ !rst+ack ]; } }",
    ),
    # IPv6: next-header, packet length without the fixed header; rate in bytes/s
    (
        Rule(
            Match(proto=17, dst=net("2001:db8:113::/64"), length=Range(100, 120)),
            Action.RATE_LIMIT,
            FAR,
            rate_pps=1000,
        ),
        {},
        "announce flow route { match { destination 2001:db8:113::/64; next-header =17; packet-length >=46&<=66; } "
        "then { rate-limit 106000; } }",
        "withdraw flow route { match { destination 2001:db8:113::/64; next-header =17; packet-length >=46&<=66; } }",
    ),
    # no length: the configured packet size
    (
        Rule(Match(proto=17, dst=net("203.0.113.13/32")), Action.RATE_LIMIT, FAR, rate_pps=100),
        {"rate_packet_bytes": 512},
        "announce flow route { match { destination 203.0.113.13/32; protocol =17; } then { rate-limit 51200; } }",
        "withdraw flow route { match { destination 203.0.113.13/32; protocol =17; } }",
    ),
]


@pytest.mark.parametrize(("rule", "kw", "announce", "withdraw"), COMPILE_ROWS)
def test_compile(rule: Rule, kw: dict[str, Any], announce: str, withdraw: str) -> None:
    ann = compile_rule(rule, settings(**kw))
    assert ann.announce == (announce,) and ann.withdraw == (withdraw,)


REFUSE_ROWS = [
    # blackholes: off by default, one address, destination only, IPv6 needs a next hop
    (Rule(Match(dst=net("203.0.113.10/32")), Action.BLACKHOLE, FAR), {}, "bgp.blackhole = false"),
    (Rule(Match(dst=net("203.0.113.0/24")), Action.BLACKHOLE, FAR), {"blackhole": True}, "/32 or /128"),
    (
        Rule(Match(proto=17, dst=net("203.0.113.10/32")), Action.BLACKHOLE, FAR),
        {"blackhole": True},
        "only a destination",
    ),
    (Rule(Match(dst=net("2001:db8:113::10/128")), Action.BLACKHOLE, FAR), {"blackhole": True}, "bgp.next_hop6"),
    # Flowspec: off, TTL, no destination, mixed families, impossible combinations
    (Rule(Match(proto=17, dst=net("203.0.113.10/32")), Action.DROP, FAR), {"flowspec": False}, "bgp.flowspec"),
    (Rule(Match(dst=net("203.0.113.10/32"), ttl=Range(1, 3)), Action.DROP, FAR), {}, "no TTL component"),
    (Rule(Match(proto=17), Action.DROP, FAR), {}, "must name its destination"),
    (
        Rule(Match(src=net("2001:2::/48"), dst=net("203.0.113.10/32")), Action.DROP, FAR),
        {},
        "mixes IPv4 and IPv6",
    ),
    (Rule(Match(proto=17, dst=net("203.0.113.10/32"), tcp_flags=(2, 2)), Action.DROP, FAR), {}, "tcp_flags with"),
    (Rule(Match(proto=1, dst=net("203.0.113.10/32"), dport=Range(0, 0)), Action.DROP, FAR), {}, "ports only match"),
    (Rule(Match(dst=net("203.0.113.10/32"), tcp_flags=(2, 0x12)), Action.DROP, FAR), {}, "value outside mask"),
    (Rule(Match(dst=net("203.0.113.10/32"), length=Range(1, 10)), Action.DROP, FAR), {}, "no IPv4 packet"),
    (Rule(Match(dst=net("203.0.113.10/32")), Action.RATE_LIMIT, FAR), {}, "rate_pps > 0"),
    (Rule(Match(dst=net("203.0.113.10/32")), Action.OBSERVE, FAR), {}, "nothing to announce"),
    (
        Rule(Match(dst=net("203.0.113.10/32")), Action.RATE_LIMIT, FAR, rate_pps=100, per_source=True),
        {},
        "per_source: a Flowspec traffic-rate",
    ),
]


@pytest.mark.parametrize(("rule", "kw", "why"), REFUSE_ROWS)
def test_refused(rule: Rule, kw: dict[str, Any], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        compile_rule(rule, settings(**kw))


def test_flowspec_match_drops_only_ttl() -> None:
    m = Match(proto=17, dst=net("203.0.113.10/32"), ttl=Range(1, 3), length=Range(60, 60))
    wide = flowspec_match(m)
    assert wide.ttl is None and wide.fields() == ["proto", "dst", "length"]
    compile_rule(Rule(wide, Action.DROP, FAR), settings())


def test_exabgp_config_families_follow_the_settings() -> None:
    conf = exabgp_config(settings(), "python -m bridge")
    assert "run python -m bridge;" in conf and "local-address 192.0.2.1;" in conf and "peer-as 64512;" in conf
    assert "family { ipv4 flow; ipv6 flow; }" in conf  # no unicast while blackholes are off
    assert "ipv4 unicast;" in exabgp_config(settings(blackhole=True), "x")
    with pytest.raises(ValueError, match="both off"):
        exabgp_config(settings(flowspec=False), "x")


CONFIG_ROWS = [
    ('[bgp]\nlocal_as = 64513\nrouter_id = "192.0.2.1"\npeers = []\n', ":5: bgp.peers:"),
    ('[bgp]\nlocal_as = 64513\nrouter_id = "2001:db8::1"\n', ":4: bgp.router_id: '2001:db8::1' is not an IPv4"),
    ('[bgp]\nlocal_as = 64513\nrouter_id = "192.0.2.1"\ncommunities = ["65536:1"]\n', ":5: bgp.communities:"),
    ('[bgp]\nlocal_as = 64513\nrouter_id = "192.0.2.1"\ndeadman_seconds = 1\n', ":5: bgp.deadman_seconds:"),
    (
        '[bgp]\nlocal_as = 64513\nrouter_id = "192.0.2.1"\n[[bgp.peers]]\naddress = "192.0.2.300"\npeer_as = 1\nlocal_address = "192.0.2.1"\n',
        ":6: bgp.peers[0].address:",
    ),
]


@pytest.mark.parametrize(("text", "want"), CONFIG_ROWS)
def test_config_mistakes_are_named(text: str, want: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse('protected = ["203.0.113.0/24"]\n' + text)
    assert want in str(e.value)


def test_example_bgp_and_notify_sections_are_valid_uncommented() -> None:
    import re

    from ddos_shield.config import example

    lines = example().splitlines()
    kept = ['protected = ["203.0.113.0/24"]', "[mitigation]", 'backends = ["bgp", "notify"]']
    for line in lines[lines.index("# [bgp]") :]:
        text = line.removeprefix("# ")
        if re.match(r"^(\[|[a-z_]+ = )", text):
            kept.append(text)
    cfg = parse("\n".join(kept) + "\n")
    assert cfg.bgp is not None and not cfg.bgp.blackhole and cfg.bgp.peers[0].peer_as == 64512
    assert cfg.notify is not None and cfg.notify.script


def test_from_config_needs_a_section() -> None:
    with pytest.raises(ConfigError, match=r"\[bgp\]"):
        BgpBackend.from_config(parse('protected = ["203.0.113.0/24"]\n'))


# ---- a real speaker and a real router ------------------------------------------------------

DEADMAN = 3.0
BLACKHOLE = community("65535:666")


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BgpPeerLab]:
    lab = BgpPeerLab("dsn-bgp", tmp_path_factory.mktemp("bgppeer"), lifetime=600)
    lab.create()
    yield lab
    lab.delete()


class Speakers:
    """Backends made by a test, in the shield namespace; every speaker stopped at the end."""

    def __init__(self, peer: BgpPeerLab, tmp: Path) -> None:
        self.peer = peer
        self.run_dir = tmp / "bgp"
        self.backends: list[BgpBackend] = []

    def backend(self, **kw: Any) -> BgpBackend:
        kw.setdefault("deadman_seconds", DEADMAN)
        with in_netns(self.peer.shield_ns):
            b = BgpBackend(self.peer.shield_settings(**kw), self.run_dir)
        self.backends.append(b)
        self.established()
        return b

    def established(self) -> None:
        # A router that has just seen a session reset (the previous test's speaker) holds
        # the next one idle for some seconds, and ExaBGP backs off between attempts.
        self.peer.wait(self.peer.established, timeout=40, what="the BGP session established")

    def speaker_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.run_dir / "exabgp.pid").read_text())
            if b"exabgp" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        return None

    def cleanup(self) -> None:
        for b in self.backends:
            with contextlib.suppress(MitigationError):
                b.shutdown()
        pid = self.speaker_pid()  # one a killed shield left behind
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        self.peer.wait(lambda: self.peer.routes() == 0, what="an empty table after the test")


@pytest.fixture
def speakers(peer: BgpPeerLab, tmp_path: Path) -> Iterator[Speakers]:
    sp = Speakers(peer, tmp_path)
    yield sp
    sp.cleanup()


def blackholes(peer: BgpPeerLab, family: str = "ipv4") -> dict[str, tuple[str, list[int]]]:
    """prefix -> (next hop, communities) of the router's unicast routes."""
    out = {}
    for prefix, paths in peer.rib(family).items():
        attrs = {a["type"]: a for a in paths[0]["attrs"]}
        nh = attrs[3]["nexthop"] if 3 in attrs else attrs[14]["nexthop"]
        out[prefix] = (nh, attrs.get(8, {}).get("communities", []))
    return out


def flows(peer: BgpPeerLab, family: str = "ipv4-flowspec") -> dict[str, dict[str, Any]]:
    """The router's Flowspec rules: key -> {component type: values, "rate": traffic-rate}."""
    out = {}
    for key, paths in peer.rib(family).items():
        p = paths[0]
        comps = {c["type"]: c["value"] for c in p["nlri"]["value"]}
        ext = [e for a in p["attrs"] if a["type"] == 16 for e in a["value"]]
        rates = [e["rate"] for e in ext if e.get("subtype") == 6]
        out[key] = {"components": comps, "rate": rates[0] if rates else None}
    return out


RULES = [
    Rule(Match(dst=net("203.0.113.10/32")), Action.BLACKHOLE, FAR),
    Rule(Match(dst=net("2001:db8:113::10/128")), Action.BLACKHOLE, FAR),
    Rule(
        Match(proto=6, dst=net("203.0.113.11/32"), dport=Range(80, 80), tcp_flags=(0x12, 0x02), length=Range(54, 74)),
        Action.DROP,
        FAR,
    ),
    Rule(
        Match(proto=17, src=net("2001:2::/48"), dst=net("2001:db8:113::11/128")), Action.RATE_LIMIT, FAR, rate_pps=100
    ),
]
BH = {"blackhole": True, "communities": ["64513:666"], "next_hop6": "2001:db8::1"}


@pytest.mark.lab
def test_announced_to_the_peer_and_withdrawn(speakers: Speakers) -> None:
    peer = speakers.peer
    b = speakers.backend(**BH)
    applied = [b.apply(r) for r in RULES]
    assert len({r.rule_id for r in applied}) == 4 and all(r.rule_id > 0 for r in applied)
    peer.wait(lambda: peer.routes() == 4, what="four routes at the router")

    assert blackholes(peer) == {
        "203.0.113.10/32": ("192.0.2.1", [BLACKHOLE, community("64513:666")]),
    }
    assert blackholes(peer, "ipv6") == {"2001:db8:113::10/128": ("2001:db8::1", [BLACKHOLE, community("64513:666")])}
    (v4,) = flows(peer).values()
    assert v4["rate"] == 0  # discard is traffic-rate 0
    c = v4["components"]
    assert c[1] == {"prefix": "203.0.113.11/32"} and [x["value"] for x in c[3]] == [6]
    assert [x["value"] for x in c[5]] == [80] and [x["value"] for x in c[10]] == [40, 60]
    assert [x["value"] for x in c[9]] == [0x02, 0x10]  # =SYN and !ACK
    (v6,) = flows(peer, "ipv6-flowspec").values()
    assert v6["rate"] == 100 * 1500 and v6["components"][2]["prefix"] == "2001:2::/48"

    # read back exactly what was applied
    assert sorted(b.list(), key=lambda r: r.rule_id) == sorted(applied, key=lambda r: r.rule_id)
    assert set(b.stats()) == {r.rule_id for r in applied}  # zeros: the routers hold the counters

    # a refresh changes nothing at the router; a change of action replaces the rule
    b.apply(applied[2].refreshed(FAR + 10))
    b.apply(Rule(applied[2].match, Action.RATE_LIMIT, FAR, rate_pps=10, rule_id=applied[2].rule_id))
    peer.wait(lambda: [f["rate"] for f in flows(peer).values()] == [10 * 60], what="the rule rate-limited")
    assert peer.routes() == 4

    for r in applied:
        b.withdraw(r.rule_id)
    peer.wait(lambda: peer.routes() == 0, what="every route withdrawn")
    assert b.list() == []


@pytest.mark.lab
def test_refusals_and_allowlist(speakers: Speakers) -> None:
    b = speakers.backend()  # blackholes off: the default
    with pytest.raises(MitigationError, match=r"bgp\.blackhole = false"):
        b.apply(RULES[0])
    b.set_allowlist([net("198.18.7.0/24")])
    with pytest.raises(MitigationError, match="allow-listed"):
        b.apply(Rule(Match(src=net("198.18.0.0/15"), dst=net("203.0.113.10/32")), Action.DROP, FAR))
    r = b.apply(RULES[2])
    with pytest.raises(MitigationError, match="already announces"):
        b.apply(RULES[2])  # a second rule for the same route
    assert [x.rule_id for x in b.list()] == [r.rule_id]


@pytest.mark.lab
def test_bypass_withdraws_and_restores(speakers: Speakers) -> None:
    peer = speakers.peer
    b = speakers.backend()
    b.apply(RULES[2])
    peer.wait(lambda: peer.routes() == 1)
    b.set_bypass(True)
    peer.wait(lambda: peer.routes() == 0, what="nothing announced in bypass")
    assert len(b.list()) == 1  # still held
    # `ddos-shield bypass off` talks to the bridge itself (no shield process needed)
    assert set_speaker_bypass(speakers.run_dir, False)
    peer.wait(lambda: peer.routes() == 1, what="announced again")
    # what `ddos-shield stop --detach` does, from another process with only the state directory
    assert stop_speaker(speakers.run_dir)
    assert peer.routes() == 0 or peer.wait(lambda: peer.routes() == 0) >= 0
    assert speakers.speaker_pid() is None and not stop_speaker(speakers.run_dir)


# The shield side, in its own process so that it can be SIGKILLed.
CHILD = r"""
import json, sys, time
from ddos_shield.config import Bgp
from ddos_shield.mitigate.bgp import BgpBackend
from ddos_shield.records import Action, Match, Rule
b = BgpBackend(Bgp.model_validate_json(sys.argv[1]), sys.argv[2])
ids = []
for r in json.loads(sys.argv[3]):
    rule = Rule(Match.from_json(r["match"]), Action[r["action"].upper()], time.time() + 600, rate_pps=r.get("rate_pps", 0))
    ids.append(b.apply(rule).rule_id)
print(json.dumps(ids), flush=True)
time.sleep(600)
"""


def crashing_shield(speakers: Speakers, rules: list[Rule], **kw: Any) -> tuple[subprocess.Popen[str], list[int]]:
    """A shield process that applies ``rules`` and then idles (heartbeats running)."""
    s = speakers.peer.shield_settings(deadman_seconds=DEADMAN, **kw)
    args = [
        json.dumps({"match": r.match.to_json(), "action": r.action.name.lower(), "rate_pps": r.rate_pps}) for r in rules
    ]
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            speakers.peer.shield_ns,
            sys.executable,
            "-c",
            CHILD,
            s.model_dump_json(),
            str(speakers.run_dir),
            "[" + ",".join(args) + "]",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    assert ready, "the shield process did not apply its rules"
    ids = json.loads(proc.stdout.readline())
    speakers.established()
    return proc, ids


@pytest.mark.lab
def test_crashed_shield_deadman_withdraws_everything_then_reconcile(speakers: Speakers) -> None:
    peer = speakers.peer
    proc, ids = crashing_shield(speakers, RULES, **BH)
    try:
        peer.wait(lambda: peer.routes() == 4, what="four routes at the router")
        # alive and idle for longer than the dead-man's time: heartbeats keep everything up
        time.sleep(DEADMAN + 1)
        assert peer.routes() == 4
        proc.send_signal(signal.SIGKILL)
        t_kill = time.monotonic()
        proc.wait(5)
        time.sleep(DEADMAN / 2)
        assert peer.routes() == 4  # not before the dead-man's time
        peer.wait(
            lambda: peer.routes() == 0, timeout=DEADMAN + 5, what="every route withdrawn by the dead-man's switch"
        )
        gone_after = time.monotonic() - t_kill
        assert DEADMAN / 2 < gone_after < DEADMAN + 5
    finally:
        proc.kill()
        proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()

    # the restarted shield reconnects to the same speaker: nothing is announced any more
    b = speakers.backend(**BH)
    assert b.list() == []
    st = b.status()
    assert st["deadman_fired"] == 1 and speakers.speaker_pid() is not None
    # reconciliation re-applies what the shield still wants, under the same ids
    for r, rid in zip(RULES, ids, strict=True):
        b.apply(r.with_id(rid))
    peer.wait(lambda: peer.routes() == 4, what="the routes back")
    assert sorted(r.rule_id for r in b.list()) == sorted(ids)


@pytest.mark.lab
def test_shield_restarted_within_deadman_adopts_what_is_announced(speakers: Speakers) -> None:
    peer = speakers.peer
    proc, ids = crashing_shield(speakers, RULES[2:])
    pid = speakers.speaker_pid()
    try:
        peer.wait(lambda: peer.routes() == 2, what="two routes at the router")
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
    finally:
        proc.kill()
        proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()
    b = speakers.backend()
    found = b.list()
    assert sorted(r.rule_id for r in found) == sorted(ids)
    assert {(r.match, r.action, r.rate_pps) for r in found} == {(r.match, r.action, r.rate_pps) for r in RULES[2:]}
    assert speakers.speaker_pid() == pid  # the same speaker: the routes never left the router
    time.sleep(DEADMAN + 1)  # this backend's heartbeats keep them
    assert peer.routes() == 2


@pytest.mark.lab
def test_speaker_stops_with_its_bridge_and_comes_back(speakers: Speakers) -> None:
    """ExaBGP does not stop when its process dies: the bridge's guard stops it, so a
    killed bridge never leaves routes without a dead-man's switch."""
    peer = speakers.peer
    b = speakers.backend()
    b.apply(RULES[2])
    peer.wait(lambda: peer.routes() == 1)
    os.kill(b.status()["pid"], signal.SIGKILL)
    peer.wait(lambda: peer.routes() == 0, timeout=5, what="routes gone with the bridge")
    peer.wait(lambda: speakers.speaker_pid() is None, timeout=5, what="exabgp stopped")
    b.apply(RULES[3])  # the next request starts a new speaker, in the shield's namespace
    speakers.established()
    peer.wait(lambda: peer.routes() == 1, what="announced by the new speaker")


@pytest.mark.lab
def test_new_configuration_restarts_the_speaker(speakers: Speakers) -> None:
    peer = speakers.peer
    b = speakers.backend()
    b.apply(RULES[2])
    first = speakers.speaker_pid()
    b.close()
    b2 = speakers.backend(blackhole=True)  # other address families: another speaker
    assert speakers.speaker_pid() not in (None, first)
    assert b2.list() == []  # the old speaker's routes went with it
    peer.wait(lambda: peer.routes() == 0)


# ---- the engine's ladder on a real speaker ---------------------------------------------------

LADDER = """
protected = ["203.0.113.0/24"]
[shield]
interfaces = ["out0"]
interval_ms = 100
state_dir = "{state}"
[mitigation]
backends = ["bgp"]
[[groups]]
name = "default"
ladder = ["flowspec", "blackhole"]
allow_blackhole = true
settle_seconds = 1.0
hold_seconds = 2.0
end_after_seconds = 1.0
[groups.thresholds]
udp = {{ pps = 5000 }}
[bgp]
local_as = 64513
router_id = "192.0.2.1"
blackhole = true
deadman_seconds = 3
[[bgp.peers]]
address = "192.0.2.2"
peer_as = 64512
local_address = "192.0.2.1"
"""


@pytest.mark.lab
def test_engine_ladder_announces_flowspec_then_blackhole_and_withdraws_at_the_end(speakers: Speakers) -> None:
    """Detection -> policy -> BGP: a UDP flood on the replay data plane (which drops
    nothing: enforcement is upstream), the flowspec step announced, not enough (the
    traffic still arrives), so the blackhole; the flood ends and the peer's table empties."""
    import io

    import numpy as np

    from ddos_shield.dataplane.replay import ReplayDataPlane
    from ddos_shield.engine import Engine
    from ddos_shield.events import EventSink
    from ddos_shield.records import Category
    from tests.traffic import packets, spoofed_v4

    peer = speakers.peer
    cfg = parse(LADDER.format(state=speakers.run_dir.parent))
    assert cfg.bgp is not None
    with in_netns(peer.shield_ns):
        b = BgpBackend(cfg.bgp, speakers.run_dir)
    speakers.backends.append(b)
    speakers.established()
    now = [time.time()]  # the bridge keeps real time: the engine's clock starts there
    dp = ReplayDataPlane(clock=lambda: now[0])
    out = io.StringIO()
    engine = Engine(cfg, dp, dp.backend, EventSink(out), clock=lambda: now[0], backends=[b])
    engine.start(now[0])
    srcs = spoofed_v4(5000)

    def flood(t: float) -> np.ndarray:
        return packets(1000, src=srcs, dst="203.0.113.10", proto=17, category=Category.UDP, dport=9, length=60, ts=t)

    def run(seconds: float, feed: list[Any]) -> None:
        for _ in range(round(seconds / 0.1)):
            for make in feed:
                dp.feed(make(now[0]))
            now[0] += 0.1
            engine.tick(now[0])

    def events(name: str) -> list[dict[str, Any]]:
        return [e for e in map(json.loads, out.getvalue().splitlines()) if e["event"] == name]

    run(1.0, [flood])
    peer.wait(lambda: len(peer.rib("ipv4-flowspec")) == 1, what="the flowspec step at the router")
    (fs,) = flows(peer).values()
    assert fs["components"][1] == {"prefix": "203.0.113.10/32"} and fs["rate"] == 0
    assert 8 not in fs["components"]  # no TTL: Flowspec has none, the policy left it open
    # this router ignores Flowspec: the flood still arrives, so settle_seconds later the
    # step is rolled back and the next one taken
    for _ in range(30):
        run(0.1, [flood])
        if any(e["rule"]["action"] == "blackhole" for e in events("mitigation_applied")):
            break
    peer.wait(lambda: peer.routes() == 1 and "203.0.113.10/32" in blackholes(peer), what="the blackhole alone")
    assert BLACKHOLE in blackholes(peer)["203.0.113.10/32"][1]
    # the blackhole works: nothing reaches the target any more; the attack ends and the
    # route is withdrawn hold_seconds later
    run(6.0, [])
    assert events("attack_end")
    (removed,) = [e for e in events("mitigation_removed") if e["rule"]["action"] == "blackhole"]
    assert not removed["reason"].startswith("verify")
    peer.wait(lambda: peer.routes() == 0, what="every announcement withdrawn after the attack")


@pytest.mark.lab
def test_engine_restart_reconciles_what_is_announced(speakers: Speakers, tmp_path: Path) -> None:
    """The shield's record against the speaker after a crash: back within the dead-man's
    time, the rule is still announced and kept; back after it, the rule is re-applied;
    a rule announced but not in the record is withdrawn as orphaned."""
    import io

    from ddos_shield.dataplane.replay import ReplayDataPlane
    from ddos_shield.engine import Engine
    from ddos_shield.events import EventSink

    peer = speakers.peer
    cfg = parse(LADDER.format(state=speakers.run_dir.parent).replace('["flowspec", "blackhole"]', '["flowspec"]'))
    assert cfg.bgp is not None
    record = tmp_path / "mitigations.json"

    def start_engine() -> tuple[Engine, io.StringIO, BgpBackend]:
        assert cfg.bgp is not None
        with in_netns(peer.shield_ns):
            b = BgpBackend(cfg.bgp, speakers.run_dir)
        speakers.backends.append(b)
        speakers.established()
        dp = ReplayDataPlane()
        out = io.StringIO()
        engine = Engine(cfg, dp, dp.backend, EventSink(out), backends=[b], state_file=record)
        engine.start(time.time())
        return engine, out, b

    def reconciled(out: io.StringIO) -> dict[str, list[int]]:
        (ev,) = [e for e in map(json.loads, out.getvalue().splitlines()) if e["event"] == "mitigations_reconciled"]
        return {k: ev[k] for k in ("kept", "reapplied", "orphaned")}

    engine, _, b = start_engine()
    rule = engine.add_mitigation(
        Match(proto=17, dst=net("203.0.113.20/32"), dport=Range(53, 53)),
        Action.DROP,
        600.0,
        backend="bgp",
        actor="test",
        reason="test",
    )
    peer.wait(lambda: peer.routes() == 1, what="the operator's rule at the router")
    b.close()  # a crash: no more heartbeats, the record stays on disk

    # back at once: still announced, kept
    engine, out, b = start_engine()
    assert reconciled(out) == {"kept": [rule.rule_id], "reapplied": [], "orphaned": []}
    # a rule announced behind the shield's back is withdrawn as orphaned at the next start
    stray = b.apply(Rule(Match(proto=6, dst=net("203.0.113.21/32")), Action.DROP, time.time() + 600))
    peer.wait(lambda: peer.routes() == 2)
    b.close()
    engine, out, b = start_engine()
    assert reconciled(out) == {"kept": [rule.rule_id], "reapplied": [], "orphaned": [stray.rule_id]}
    peer.wait(lambda: peer.routes() == 1, what="the orphan withdrawn")

    b.close()
    time.sleep(DEADMAN + 0.5)  # down for longer than the dead-man's time: everything withdrawn
    peer.wait(lambda: peer.routes() == 0, what="the dead-man's switch")
    engine, out, b = start_engine()
    assert reconciled(out) == {"kept": [], "reapplied": [rule.rule_id], "orphaned": []}
    peer.wait(lambda: peer.routes() == 1, what="the rule re-applied")
    (back,) = flows(peer).values()
    assert back["components"][1] == {"prefix": "203.0.113.20/32"}
