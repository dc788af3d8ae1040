"""The engine's BGP backend driven by operators, against Debian's gobgpd: blackholes (and
Flowspec rules) added and withdrawn by hand through the command line and the REST API,
and the backend rebuilt when a reload changes the BGP settings.  The shield's speaker
runs in dsn-l5-shield, the router in dsn-l5-peer; what the router holds is read with
its own CLI (``gobgp global rib -j``)."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from ddos_shield.api.app import create_app
from ddos_shield.api.server import ApiServer
from ddos_shield.api.tokens import TokenStore
from ddos_shield.api.view import ShieldView
from ddos_shield.cli.main import main as cli
from ddos_shield.config import Config, parse
from ddos_shield.dataplane.replay import ReplayDataPlane
from ddos_shield.engine import Engine
from ddos_shield.events import EventSink
from ddos_shield.lab.bgppeer import PEER_ADDR, PEER_AS, SHIELD_ADDR, SHIELD_AS, BgpPeerLab, community
from ddos_shield.lab.netns import in_netns
from ddos_shield.mitigate.base import Backend
from ddos_shield.mitigate.bgp import BgpBackend, speaker_pid, stop_speaker
from ddos_shield.mitigate.registry import open_backend
from ddos_shield.records import Action, Match, Rule

pytestmark = [pytest.mark.lab]

BLACKHOLE = community("65535:666")
VICTIM = "203.0.113.10"
NEVER = "203.0.113.200"


def config_text(state: Path, *, backends: str = '"bgp"', bgp: str = "") -> str:
    return f"""
protected = ["203.0.113.0/24"]
never_block = ["{NEVER}/32"]
[shield]
interfaces = ["out0"]
interval_ms = 100
state_dir = "{state}"
[mitigation]
backends = [{backends}]
[api]
listen = "127.0.0.1:8470"
[bgp]
local_as = {SHIELD_AS}
router_id = "{SHIELD_ADDR}"
deadman_seconds = 30
{bgp}
[[bgp.peers]]
address = "{PEER_ADDR}"
peer_as = {PEER_AS}
local_address = "{SHIELD_ADDR}"
"""


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BgpPeerLab]:
    lab = BgpPeerLab("dsn-l5", tmp_path_factory.mktemp("bgppeer"), lifetime=600)
    lab.create()
    yield lab
    lab.delete()


@dataclass
class Shield:
    """A real engine (replay data plane: enforcement is upstream here) whose BGP
    backends are opened in the shield namespace, its API on a loopback port."""

    peer: BgpPeerLab
    state: Path
    engine: Engine
    out: io.StringIO
    server: ApiServer
    secrets: dict[str, str] = field(default_factory=dict)

    def cli(self, role: str, *args: str) -> int:
        return cli([*args, "--url", self.server.url, "--token", self.secrets[role]])

    def reload(self, text: str) -> httpx.Response:
        return httpx.post(
            f"{self.server.url}/api/v1/config/reload",
            json={"text": text, "save": False},
            headers={"authorization": f"Bearer {self.secrets['admin']}"},
            timeout=120,
        )

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in map(json.loads, self.out.getvalue().splitlines()) if e["event"] == name]

    def unicast(self) -> dict[str, tuple[str, list[int]]]:
        """prefix -> (next hop, communities) of the router's IPv4 unicast routes."""
        out = {}
        for prefix, paths in self.peer.rib("ipv4").items():
            assert len(paths) == 1, paths  # one path: nothing stale beside the current one
            attrs = {a["type"]: a for a in paths[0]["attrs"]}
            out[prefix] = (attrs[3]["nexthop"], attrs.get(8, {}).get("communities", []))
        return out

    def flowspec(self) -> dict[str, list[int]]:
        """Flowspec destination -> communities of the router's IPv4 Flowspec rules."""
        out = {}
        for paths in self.peer.rib("ipv4-flowspec").values():
            assert len(paths) == 1, paths
            comps = {c["type"]: c["value"] for c in paths[0]["nlri"]["value"]}
            attrs = {a["type"]: a for a in paths[0]["attrs"]}
            out[comps[1]["prefix"]] = attrs.get(8, {}).get("communities", [])
        return out

    def speaker(self) -> int | None:
        return speaker_pid(self.state / "bgp")


@pytest.fixture
def shield(peer: BgpPeerLab, tmp_path: Path) -> Iterator[Shield]:
    state = tmp_path / "state"
    cfg = parse(config_text(state, bgp='blackhole = true\ncommunities = ["64513:666"]'))

    def opener(kind: str, config: Config) -> Backend:
        with in_netns(peer.shield_ns):  # the speaker runs where the router's link is
            return open_backend(kind, config)

    bgp = opener("bgp", cfg)
    dp = ReplayDataPlane()
    out = io.StringIO()
    events = EventSink(out)
    engine = Engine(cfg, dp, dp.backend, events, backends=[bgp], state_file=state / "mitigations.json", opener=opener)
    engine.start(time.time())
    view = ShieldView(engine, events)
    tokens = TokenStore(state)
    server = ApiServer(create_app(view, tokens), cfg.api, port=0)
    server.start()
    s = Shield(peer, state, engine, out, server)
    for role in ("operator", "admin"):
        s.secrets[role] = tokens.create(f"{role}-1", role)
    peer.wait(peer.established, timeout=40, what="the BGP session established")
    try:
        yield s
    finally:
        server.stop()
        view.close()
        for b in engine.backends.values():
            if isinstance(b, BgpBackend):
                b.shutdown()
        stop_speaker(state / "bgp")
        peer.wait(lambda: peer.routes() == 0, what="an empty table after the test")


def test_operators_blackhole_by_hand_announced_with_65535_666_and_withdrawn(
    shield: Shield, capsys: pytest.CaptureFixture[str]
) -> None:
    peer = shield.peer
    add = ("mitigation", "add", "--action", "blackhole", "--ttl", "300", "--reason", "saving the rest")
    # an operator may not take a host off the Internet: 403, and the attempt is recorded
    assert shield.cli("operator", *add, "--dst", VICTIM) == 2
    assert "403" in capsys.readouterr().err
    (refused,) = shield.events("mitigation_refused")
    assert refused["actor"] == "token:operator-1" and "admin" in refused["reason"]
    # an admin may: the route for the one address, with BLACKHOLE and the configured community
    assert shield.cli("admin", *add, "--dst", VICTIM) == 0
    added = capsys.readouterr().out
    assert "blackhole" in added
    mid = int(added.split()[1])
    peer.wait(lambda: VICTIM + "/32" in shield.unicast(), what="the blackhole at the router")
    assert shield.unicast() == {f"{VICTIM}/32": (SHIELD_ADDR, [BLACKHOLE, community("64513:666")])}
    (applied,) = shield.events("mitigation_applied")
    assert (applied["backend"], applied["actor"], applied["rule"]["action"]) == ("bgp", "token:admin-1", "blackhole")
    assert applied["rule"]["mitigation_id"] == mid

    # refusals, each a 4xx with its reason, none reaching the router
    refusals = [
        (["--dst", NEVER], "never-block"),  # the never-block list
        (["--dst", "203.0.113.0/24"], "one destination address"),  # a blackhole is one address
        (["--dst", VICTIM, "--backend", "xdp"], "only the bgp backend"),
    ]
    for extra, why in refusals:
        assert shield.cli("admin", *add, *extra) == 2
        err = capsys.readouterr().err
        assert "409" in err and why in err, err
    never = [e for e in shield.events("mitigation_refused") if "never-block" in e["reason"]]
    assert [e["rule"]["match"]["dst"] for e in never] == [f"{NEVER}/32"]  # the refusal is an event

    # Flowspec by hand: a drop on the bgp backend
    flow = ("mitigation", "add", "--backend", "bgp", "--dst", "203.0.113.11", "--proto", "udp", "--dport", "53")
    assert shield.cli("operator", *flow, "--ttl", "300", "--reason", "dns flood") == 0
    fid = int(capsys.readouterr().out.split()[1])
    peer.wait(lambda: "203.0.113.11/32" in shield.flowspec(), what="the Flowspec rule at the router")
    assert peer.routes() == 2

    # withdrawn by hand: gone from the router
    assert shield.cli("operator", "mitigation", "withdraw", str(mid)) == 0
    peer.wait(lambda: shield.unicast() == {}, what="the blackhole withdrawn")
    assert shield.cli("operator", "mitigation", "withdraw", str(fid)) == 0
    peer.wait(lambda: peer.routes() == 0, what="the Flowspec rule withdrawn")
    removed = shield.events("mitigation_removed")
    assert [(e["rule"]["mitigation_id"], e["actor"]) for e in removed] == [
        (mid, "token:operator-1"),
        (fid, "token:operator-1"),
    ]


def test_a_reload_rebuilds_the_bgp_backend_and_keeps_the_router_consistent(
    shield: Shield, capsys: pytest.CaptureFixture[str]
) -> None:
    peer, state = shield.peer, shield.state
    bh = shield.engine.add_mitigation(
        Match.from_json({"dst": f"{VICTIM}/32"}), Action.BLACKHOLE, 600.0, actor="test", reason="test"
    )
    fs = shield.engine.add_mitigation(
        Match.from_json({"dst": "203.0.113.11/32", "proto": 17}),
        Action.DROP,
        600.0,
        backend="bgp",
        actor="t",
        reason="t",
    )
    # and one announced behind the shield's back (not in its record)
    stray = shield.engine.backends["bgp"].apply(
        Rule(Match.from_json({"dst": "203.0.113.21/32", "proto": 6}), Action.DROP, time.time() + 600)
    )
    peer.wait(lambda: peer.routes() == 3, what="three at the router")
    first = shield.speaker()

    # new communities and next hop: the same speaker (no session reset), each route
    # announced again with the new attributes, nothing stale left at the router
    r = shield.reload(
        config_text(
            state,
            bgp='blackhole = true\ncommunities = ["64513:777"]\nnext_hop = "192.0.2.9"\n'
            'flowspec_communities = ["64513:100"]',
        )
    )
    assert r.status_code == 200, r.text
    peer.wait(
        lambda: shield.unicast() == {f"{VICTIM}/32": ("192.0.2.9", [BLACKHOLE, community("64513:777")])},
        what="the blackhole with its new next hop and community",
    )
    peer.wait(lambda: shield.flowspec() == {"203.0.113.11/32": [community("64513:100")]}, what="new flowspec comm.")
    peer.wait(lambda: peer.routes() == 2, what="the orphan withdrawn")
    assert shield.speaker() == first
    (rebuilt,) = shield.events("backend_rebuilt")
    assert (rebuilt["reapplied"], rebuilt["removed"], rebuilt["orphaned"]) == (
        [bh.rule_id, fs.rule_id],
        [],
        [stray.rule_id],
    )

    # blackholes off: the speaker's address families change, so a new speaker; the
    # blackhole is refused by the new settings and withdrawn, the Flowspec rule re-announced
    r = shield.reload(config_text(state, bgp='flowspec_communities = ["64513:100"]'))
    assert r.status_code == 200, r.text
    assert shield.speaker() not in (None, first)
    peer.wait(lambda: peer.established() and shield.unicast() == {}, what="the blackhole gone")
    peer.wait(lambda: list(shield.flowspec()) == ["203.0.113.11/32"], what="the Flowspec rule back")
    rebuilt = shield.events("backend_rebuilt")[-1]
    assert (rebuilt["reapplied"], rebuilt["removed"]) == ([fs.rule_id], [bh.rule_id])
    assert [m["mitigation_id"] for m in shield.engine.mitigations()] == [fs.rule_id]

    # BGP off: everything withdrawn, the speaker stopped, and a blackhole is refused
    r = shield.reload(config_text(state, backends=""))
    assert r.status_code == 200, r.text
    peer.wait(lambda: peer.routes() == 0, what="every route withdrawn")
    assert shield.speaker() is None and "bgp" not in shield.engine.backends
    assert shield.engine.mitigations() == []
    assert shield.events("backend_rebuilt")[-1]["enabled"] is False
    add = ("mitigation", "add", "--action", "blackhole", "--dst", VICTIM, "--ttl", "60", "--reason", "x")
    assert shield.cli("admin", *add) == 2
    assert "no BGP backend configured" in capsys.readouterr().err

    # and back on: announced again from a fresh speaker
    r = shield.reload(config_text(state, bgp="blackhole = true"))
    assert r.status_code == 200, r.text
    assert shield.cli("admin", *add) == 0
    peer.wait(lambda: list(shield.unicast()) == [f"{VICTIM}/32"], what="a blackhole from the new speaker")
