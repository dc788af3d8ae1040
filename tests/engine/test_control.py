"""Operators' control of the engine (add, approve, withdraw, list), critical assets,
the never-block list and the record across restarts, over the user-space replay data
plane with hand-made traffic (the kernel path is in tests/test_policy_lab.py)."""

from __future__ import annotations

import ipaddress
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from ddos_shield.config import parse
from ddos_shield.engine.ledger import Entry, Ledger
from ddos_shield.records import Action, Category, Match, Rule, as_network
from tests.engine.test_engine import CONFIG, VICTIM, Harness, legit
from tests.traffic import packets, spoofed_v4

ATTACKER = "198.51.100.66"
OPERATOR = "cli:alice"


def syn_flood(now: float) -> np.ndarray:
    return packets(400, src=ATTACKER, dst=VICTIM, proto=6, category=Category.TCP_SYN, tcp_flags=0x02, ts=now)


def attacker_packets(now: float) -> np.ndarray:
    return packets(10, src=ATTACKER, dst="203.0.113.20", proto=17, category=Category.UDP, dport=9, ts=now)


def test_operator_adds_lists_and_withdraws_a_rule() -> None:
    h = Harness()
    rule = h.engine.add_mitigation(
        Match(src=as_network(f"{ATTACKER}/32")), Action.DROP, 30.0, actor=OPERATOR, reason="ticket 42"
    )
    assert rule.rule_id > 0
    assert h.dp.backend.offer(attacker_packets(h.now)).all()
    assert not h.dp.backend.offer(legit(h.now)).any()
    (m,) = h.engine.mitigations()
    assert (m["mitigation_id"], m["state"], m["backend"], m["actor"], m["reason"], m["origin"]) == (
        rule.rule_id,
        "active",
        "memory",
        OPERATOR,
        "ticket 42",
        "manual",
    )
    assert m["hits"]["dropped"] == 10 and m["time_left"] == 30.0
    (applied,) = h.events("mitigation_applied")
    assert (applied["actor"], applied["reason"], applied["rule"]["mitigation_id"]) == (
        OPERATOR,
        "ticket 42",
        rule.rule_id,
    )

    h.engine.withdraw_mitigation(rule.rule_id, actor="token:ops", reason="resolved")
    assert h.dp.backend.list() == [] and h.engine.mitigations() == []
    (removed,) = h.events("mitigation_removed")
    assert (removed["actor"], removed["reason"], removed["hits"]["dropped"]) == ("token:ops", "resolved", 10)
    with pytest.raises(KeyError):
        h.engine.withdraw_mitigation(rule.rule_id, actor=OPERATOR, reason="again")
    with pytest.raises(KeyError):
        h.engine.approve(999, actor=OPERATOR)


REFUSED = [
    # (match, action, ttl, keyword arguments, words of the reason)
    # allow-list and never-block
    (Match(src=as_network("198.51.100.10/32")), Action.DROP, 60.0, {}, "allow-list"),
    (Match(proto=17, dst=as_network("203.0.113.53/32")), Action.DROP, 60.0, {}, "never-block"),
    (Match(proto=17, dst=as_network("203.0.113.52/30")), Action.DROP, 60.0, {}, "narrower rules"),
    # invalid
    (Match(), Action.DROP, 60.0, {}, "match: empty"),
    (Match(proto=17), Action.RATE_LIMIT, 60.0, {}, "rate_pps"),
    (Match(proto=17), Action.DROP, 60.0, {"rate_pps": 10}, "rate_pps"),
    (Match(proto=17), Action.DROP, 0.0, {}, "ttl"),
    (Match(proto=17), Action.DROP, float("nan"), {}, "ttl"),
    (Match(proto=17), Action.DROP, 60.0, {"backend": "bgp"}, "backend: 'bgp' is not configured"),
    # blackholes: BGP routes for one address, never-block first
    (Match(dst=as_network("203.0.113.10/32")), Action.BLACKHOLE, 60.0, {}, "action blackhole: no BGP backend"),
    (Match(dst=as_network("203.0.113.10/32")), Action.BLACKHOLE, 60.0, {"backend": "xdp"}, "only the bgp backend"),
]


@pytest.mark.parametrize(("match", "action", "ttl", "kw", "why"), REFUSED)
def test_refused_rules_name_the_reason(match: Match, action: Action, ttl: float, kw: dict, why: str) -> None:  # type: ignore[type-arg]
    h = Harness(
        CONFIG.replace(
            "protected =", 'allowlist = ["198.51.100.10/32"]\nnever_block = ["203.0.113.53/32"]\nprotected ='
        )
    )
    with pytest.raises(ValueError, match=why.replace("(", r"\(")):
        h.engine.add_mitigation(match, action, ttl, actor=OPERATOR, reason="try", **kw)
    assert h.dp.backend.list() == [] and h.engine.mitigations() == []
    (refused,) = h.events("mitigation_refused")
    assert refused["actor"] == OPERATOR and why.split(":")[0] in refused["reason"]


def test_manual_rule_ends_with_its_ttl() -> None:
    h = Harness()
    r = h.engine.add_mitigation(
        Match(proto=17, dport=None, dst=as_network("203.0.113.20/32")),
        Action.RATE_LIMIT,
        1.0,
        rate_pps=100,
        actor=OPERATOR,
        reason="limit",
    )
    h.run(0.5, [])
    assert [m["mitigation_id"] for m in h.engine.mitigations()] == [r.rule_id]
    h.run(0.7, [])
    assert h.engine.mitigations() == [] and h.dp.backend.list() == []
    (removed,) = h.events("mitigation_removed")
    assert (removed["actor"], removed["reason"]) == ("shield", "TTL expired")


CRITICAL = CONFIG.replace("protected =", f'critical = ["{VICTIM}/32"]\nprotected =')


def test_critical_asset_is_rate_limited_until_an_operator_approves_the_drop() -> None:
    h = Harness(CRITICAL)
    h.run(1.0, [legit, syn_flood])
    (interim,) = h.events("mitigation_applied")
    assert interim["rule"]["action"] == "rate_limit" and interim["rule"]["match"] == {"src": f"{ATTACKER}/32"}
    (pending,) = h.events("mitigation_pending")
    assert pending["rule"]["action"] == "drop" and "critical" in pending["reason"]
    states = {m["mitigation_id"]: m["state"] for m in h.engine.mitigations()}
    pid = pending["rule"]["mitigation_id"]
    assert states == {interim["rule"]["mitigation_id"]: "active", pid: "pending"}
    # nothing is dropped beyond the rate limit while the drop waits
    assert [r.action for r in h.dp.backend.list()] == [Action.RATE_LIMIT]
    h.run(1.0, [legit, syn_flood])
    assert len(h.events("mitigation_pending")) == 1  # asked once

    rule = h.engine.approve(pid, actor=OPERATOR)
    assert rule.action == Action.DROP
    assert [(r.rule_id, r.action) for r in h.dp.backend.list()] == [(pid, Action.DROP)]
    assert h.events("mitigation_approved")[0]["actor"] == OPERATOR
    removed = h.events("mitigation_removed")
    assert [e["rule"]["mitigation_id"] for e in removed] == [interim["rule"]["mitigation_id"]]
    with pytest.raises(ValueError, match="not pending"):
        h.engine.approve(pid, actor=OPERATOR)
    # the approved drop is refreshed while the attack lasts, and goes after it
    h.run(1.0, [legit, syn_flood])
    assert [r.rule_id for r in h.dp.backend.list()] == [pid]
    h.run(4.0, [legit])
    assert h.dp.backend.list() == [] and h.engine.mitigations() == []


def test_pending_drop_goes_when_the_attack_ends_unapproved() -> None:
    h = Harness(CRITICAL)
    h.run(1.0, [syn_flood])
    assert len(h.events("mitigation_pending")) == 1
    h.run(4.0, [])
    assert h.engine.mitigations() == []
    reasons = [e["reason"] for e in h.events("mitigation_removed")]
    assert "the attack ended before approval" in reasons


def test_never_block_target_gets_a_rate_limit_instead_of_a_drop() -> None:
    h = Harness(CONFIG.replace("protected =", f'never_block = ["{VICTIM}/32"]\nprotected ='))
    srcs = spoofed_v4(3000)
    flood = lambda now: packets(1000, src=srcs, dst=VICTIM, proto=17, category=Category.UDP, dport=9, ts=now)  # noqa: E731
    h.run(1.0, [flood])
    (refused,) = h.events("mitigation_refused")
    assert "never-block" in refused["reason"] and refused["actor"] == "shield"
    assert [r.action for r in h.dp.backend.list()] == [Action.RATE_LIMIT]


def test_operator_withdrawal_of_an_automatic_rule_sticks() -> None:
    h = Harness()
    h.run(1.0, [syn_flood])
    (applied,) = h.events("mitigation_applied")
    h.engine.withdraw_mitigation(applied["rule"]["mitigation_id"], actor=OPERATOR, reason="false positive")
    h.run(5.0, [syn_flood])  # past settle_seconds: no further ladder step either
    assert h.dp.backend.list() == []
    assert len(h.events("mitigation_applied")) == 1


def test_dry_run_records_without_enforcing_elsewhere() -> None:
    h = Harness(CONFIG.replace("interval_ms = 100", "interval_ms = 100\ndry_run = true"))
    r = h.engine.add_mitigation(Match(proto=17), Action.DROP, 10.0, actor=OPERATOR, reason="what if")
    assert [m["state"] for m in h.engine.mitigations()] == ["dry_run"]
    assert h.events("mitigation_applied")[0]["state"] == "dry_run"
    h.engine.withdraw_mitigation(r.rule_id, actor=OPERATOR, reason="done")


def test_operator_calls_are_safe_while_the_loop_runs() -> None:
    h = Harness()
    stop = threading.Event()
    errors: list[BaseException] = []

    def operator(base: int) -> None:
        try:
            for i in range(50):
                net = ipaddress.ip_network(f"198.18.{base}.{i}/32")
                r = h.engine.add_mitigation(Match(src=net), Action.DROP, 60.0, actor=OPERATOR, reason="bulk")
                h.engine.mitigations()
                if i % 2:
                    h.engine.withdraw_mitigation(r.rule_id, actor=OPERATOR, reason="bulk")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=operator, args=(b,)) for b in range(4)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        h.run(0.1, [syn_flood])
    stop.set()
    assert errors == []
    manual = [m for m in h.engine.mitigations() if m["origin"] == "manual"]
    assert len(manual) == 100
    ids = [m["mitigation_id"] for m in h.engine.mitigations()]
    assert len(ids) == len(set(ids))


# ---- the record across restarts ------------------------------------------------------


def test_restart_reconciles_the_backend_with_the_record(tmp_path: Path) -> None:
    state = tmp_path / "mitigations.json"
    h = Harness(state_file=state)
    keep = h.engine.add_mitigation(
        Match(proto=17, dport=None, dst=as_network("203.0.113.20/32")), Action.DROP, 60.0, actor=OPERATOR, reason="keep"
    )
    lost = h.engine.add_mitigation(
        Match(proto=1, dst=as_network("203.0.113.21/32")), Action.DROP, 60.0, actor=OPERATOR, reason="lost"
    )
    saved = json.loads(state.read_text())
    assert saved["version"] == 1 and [m["reason"] for m in saved["mitigations"]] == ["keep", "lost"]
    # while the shield is down: one rule vanishes from the backend, a stranger appears
    h.dp.backend.withdraw(lost.rule_id)
    stranger = h.dp.backend.apply(
        Rule(Match(proto=6, dst=as_network("203.0.113.22/32")), Action.DROP, h.now + 60, rule_id=500)
    )
    h2 = Harness(state_file=state, dataplane=h.dp)
    (rec,) = h2.events("mitigations_reconciled")
    assert (rec["kept"], rec["reapplied"], rec["orphaned"]) == ([keep.rule_id], [lost.rule_id], [stranger.rule_id])
    assert sorted(r.rule_id for r in h.dp.backend.list()) == [keep.rule_id, lost.rule_id]
    # ids go on after the largest ever seen
    new = h2.engine.add_mitigation(Match(proto=47), Action.DROP, 5.0, actor=OPERATOR, reason="gre")
    assert new.rule_id > stranger.rule_id


def test_record_skips_malformed_entries_and_refuses_other_versions(tmp_path: Path) -> None:
    p = tmp_path / "m.json"
    good = {
        "rule": {"mitigation_id": 3, "action": "drop", "match": {"proto": 17}, "expires_at": 2e9},
        "backend": "xdp",
        "state": "active",
        "origin": "manual",
        "actor": "cli:a",
        "reason": "r",
    }
    bad = [dict(good, state="sleeping"), dict(good, rule={"action": "explode"}), "nonsense"]
    p.write_text(json.dumps({"version": 1, "next_id": 2, "mitigations": [good, *bad]}))
    led = Ledger.load(p)
    assert list(led.entries) == [3] and led.malformed == 3 and led.next_id == 4
    p.write_text(json.dumps({"version": 99, "mitigations": []}))
    with pytest.raises(Exception, match="format 99"):
        Ledger.load(p)


def test_changes_after_the_last_snapshot_survive_a_kill_through_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed between enforcing a rule and writing the record: the journal, written
    before the backend is touched, holds the change, so the restart keeps the rule the
    attack got and does not put back the one an operator withdrew."""
    state = tmp_path / "mitigations.json"
    h = Harness(state_file=state)
    manual = h.engine.add_mitigation(
        Match(src=as_network(f"{ATTACKER}/32")), Action.DROP, 60.0, actor=OPERATOR, reason="ticket 7"
    )
    assert state.exists() and not Path(f"{state}.journal").exists()  # a snapshot holds all
    monkeypatch.setattr(Ledger, "save", lambda self: None)  # from here on the process "dies" before each snapshot
    h.engine.withdraw_mitigation(manual.rule_id, actor=OPERATOR, reason="done")
    h.run(3.0, [syn_flood])
    (auto,) = h.dp.backend.list()
    assert [m["rule"]["mitigation_id"] for m in json.loads(state.read_text())["mitigations"]] == [
        manual.rule_id
    ]  # stale
    monkeypatch.undo()
    h2 = Harness(state_file=state, dataplane=h.dp)
    (rec,) = h2.events("mitigations_reconciled")
    assert (rec["kept"], rec["reapplied"], rec["orphaned"]) == ([auto.rule_id], [], [])
    assert [r.rule_id for r in h.dp.backend.list()] == [auto.rule_id]
    assert not Path(f"{state}.journal").exists()  # the restart's snapshot took it in


def test_a_torn_journal_line_is_counted_and_skipped(tmp_path: Path) -> None:
    p = tmp_path / "mitigations.json"
    led = Ledger(p)
    rule = Rule(Match(src=as_network("198.18.0.1/32")), Action.DROP, 2e9, rule_id=led.new_id())
    led.add(Entry(rule, backend="xdp", state="active", actor="cli:a", reason="x", origin="manual"))
    led.add(Entry(rule.with_id(2), backend="xdp", state="active", actor="cli:a", reason="y", origin="manual"))
    led.pop(2)
    with open(f"{p}.journal", "a") as f:
        f.write('{"put":{"rule":')  # the process killed in the middle of a line
    again = Ledger.load(p)
    assert (list(again.entries), again.malformed, again.next_id) == ([1], 1, 3)
    again.save()
    assert not Path(f"{p}.journal").exists() and list(Ledger.load(p).entries) == [1]


def test_a_per_source_rate_limit_is_recorded_and_reapplied_as_one(tmp_path: Path) -> None:
    state = tmp_path / "mitigations.json"
    h = Harness(state_file=state)
    rule = h.engine.add_mitigation(
        Match(proto=17, dst=as_network("203.0.113.20/32")),
        Action.RATE_LIMIT,
        60.0,
        rate_pps=100,
        per_source=True,
        actor=OPERATOR,
        reason="few heavy sources",
    )
    (saved,) = json.loads(state.read_text())["mitigations"]
    assert (saved["rule"]["rate_pps"], saved["rule"]["per_source"]) == (100, True)
    (ev,) = h.events("mitigation_applied")
    assert ev["rule"]["per_source"] is True
    # lost from the backend while the shield was down: put back as it was
    h.dp.backend.withdraw(rule.rule_id)
    h2 = Harness(state_file=state, dataplane=h.dp)
    (rec,) = h2.events("mitigations_reconciled")
    assert rec["reapplied"] == [rule.rule_id]
    assert [(r.rule_id, r.per_source) for r in h.dp.backend.list()] == [(rule.rule_id, True)]
    # a record whose per_source is not a boolean is counted and skipped
    saved["rule"]["per_source"] = "yes"
    state.write_text(json.dumps({"version": 1, "next_id": 9, "mitigations": [saved]}))
    led = Ledger.load(state)
    assert (list(led.entries), led.malformed) == ([], 1)
    with pytest.raises(ValueError, match="per_source: only for action rate_limit"):
        h2.engine.add_mitigation(Match(proto=17), Action.DROP, 60.0, per_source=True, actor=OPERATOR, reason="x")


def test_a_notify_backend_hears_of_every_action_under_the_same_id(tmp_path: Path) -> None:
    """A real notify backend with a real script: told of the automatic rule, its
    refreshes (quietly) and its withdrawal, and of an operator's rule."""
    import sys

    from ddos_shield.config import Notify
    from ddos_shield.mitigate.notify import NotifyBackend

    out = tmp_path / "seen.jsonl"
    recorder = "import sys; open(sys.argv[1], 'a').write(sys.stdin.read().replace(chr(10), ' ') + chr(10))"
    box: list[Harness] = []  # the notifier's expiry thread reads the harness's clock
    nb = NotifyBackend(
        Notify(script=[sys.executable, "-c", recorder, str(out)]), clock=lambda: box[0].now if box else 1000.0
    )
    h = Harness(backends=[nb])
    box.append(h)
    try:
        h.run(1.0, [syn_flood])
        (auto,) = h.events("mitigation_applied")
        manual = h.engine.add_mitigation(
            Match(proto=47, dst=as_network("203.0.113.20/32")), Action.DROP, 60.0, actor=OPERATOR, reason="gre"
        )
        with pytest.raises(ValueError, match="not configured to enforce"):
            h.engine.add_mitigation(Match(proto=47), Action.DROP, 60.0, backend="notify", actor=OPERATOR, reason="x")
        h.run(6.0, [syn_flood])  # refreshed past its first expiry: the notifier must not call it expired
        h.run(4.0, [])  # the attack ends, the rule goes after its hold time
        h.engine.withdraw_mitigation(manual.rule_id, actor=OPERATOR, reason="done")
        assert nb.drain(10)
    finally:
        nb.close()
    seen = [(d["event"], d["rule"]["mitigation_id"]) for d in map(json.loads, out.read_text().splitlines())]
    aid = auto["rule"]["mitigation_id"]
    assert seen == [("apply", aid), ("apply", manual.rule_id), ("withdraw", aid), ("withdraw", manual.rule_id)]


def test_a_reload_does_not_switch_dry_run() -> None:
    h = Harness(CONFIG.replace("interval_ms = 100", "interval_ms = 100\ndry_run = true"))
    h.engine.reload(parse(CONFIG))
    r = h.engine.add_mitigation(Match(proto=47), Action.DROP, 10.0, actor=OPERATOR, reason="still a dry run")
    assert [m["state"] for m in h.engine.mitigations()] == ["dry_run"] and r.rule_id > 0


# ---- a reload that changes the BGP settings (the real speaker: test_bgp_lab.py) -------------

BGP_ON = (
    CONFIG.replace("[shield]", 'never_block = ["203.0.113.200/32"]\n[shield]')
    + '[mitigation]\nbackends = ["bgp"]\n[bgp]\nlocal_as = 64513\nrouter_id = "192.0.2.1"\nblackhole = true\n'
    '[[bgp.peers]]\naddress = "192.0.2.2"\npeer_as = 64512\nlocal_address = "192.0.2.1"\n'
)


def test_a_reload_rebuilds_the_bgp_backend_on_its_in_memory_stand_in() -> None:
    from ddos_shield.dataplane.replay import ReplayDataPlane
    from ddos_shield.engine import Engine
    from ddos_shield.errors import MitigationError
    from ddos_shield.events import EventSink
    from ddos_shield.mitigate.base import Backend
    from ddos_shield.mitigate.memory import MemoryBackend

    opened: list[MemoryBackend] = []
    fail = [False]

    def opener(kind: str, cfg: object) -> Backend:
        if fail[0]:
            raise MitigationError("bgp: exabgp exited with 1")
        b = MemoryBackend(lambda: now)
        b.name = kind
        opened.append(b)
        return b

    now = 1000.0
    cfg = parse(BGP_ON)
    dp = ReplayDataPlane(clock=lambda: now)
    out = __import__("io").StringIO()
    engine = Engine(
        cfg, dp, dp.backend, EventSink(out), clock=lambda: now, backends=[opener("bgp", cfg)], opener=opener
    )
    engine.start(now)
    bh = engine.add_mitigation(
        Match(dst=as_network("203.0.113.10/32")), Action.BLACKHOLE, 60.0, actor=OPERATOR, reason="r"
    )
    fs = engine.add_mitigation(
        Match(proto=17, dst=as_network("203.0.113.11/32")), Action.DROP, 60.0, backend="bgp", actor=OPERATOR, reason="r"
    )

    def events(name: str) -> list[dict[str, object]]:
        return [e for e in map(json.loads, out.getvalue().splitlines()) if e["event"] == name]

    # changed settings: a new backend holds every BGP mitigation under its id
    engine.reload(
        parse(BGP_ON.replace("blackhole = true", 'blackhole = true\ncommunities = ["64513:666"]')), actor=OPERATOR
    )
    assert len(opened) == 2 and engine.backends["bgp"] is opened[1]
    assert sorted(r.rule_id for r in opened[1].list()) == [bh.rule_id, fs.rule_id]
    (rebuilt,) = events("backend_rebuilt")
    assert (rebuilt["reapplied"], rebuilt["actor"]) == ([bh.rule_id, fs.rule_id], OPERATOR)
    # a new backend that cannot be opened: refused, the old one keeps what it held, the configuration stays
    fail[0] = True
    with pytest.raises(MitigationError, match="exabgp exited"):
        engine.reload(parse(BGP_ON.replace("local_as = 64513", "local_as = 64999")))
    assert engine.config.bgp is not None and engine.config.bgp.local_as == 64513
    assert engine.backends["bgp"] is opened[1] and len(opened[1].list()) == 2
    fail[0] = False
    # BGP off: every BGP mitigation withdrawn and the backend out of service; a blackhole is refused
    engine.reload(parse(CONFIG.replace("[shield]", 'never_block = ["203.0.113.200/32"]\n[shield]')))
    assert "bgp" not in engine.backends and opened[1].list() == [] and engine.mitigations() == []
    assert events("backend_rebuilt")[-1]["enabled"] is False
    assert sorted(e["rule"]["mitigation_id"] for e in events("mitigation_removed")) == [bh.rule_id, fs.rule_id]
    with pytest.raises(ValueError, match="no BGP backend configured"):
        engine.add_mitigation(
            Match(dst=as_network("203.0.113.10/32")), Action.BLACKHOLE, 60.0, actor=OPERATOR, reason="r"
        )
    # and on again: the policy's upstream steps have a backend again
    engine.reload(parse(BGP_ON))
    assert engine.backends["bgp"] is opened[2]
    assert engine.add_mitigation(
        Match(dst=as_network("203.0.113.10/32")), Action.BLACKHOLE, 60.0, actor=OPERATOR, reason="r"
    )
    with pytest.raises(ValueError, match="never-block"):
        engine.add_mitigation(
            Match(dst=as_network("203.0.113.200/32")), Action.BLACKHOLE, 60.0, actor=OPERATOR, reason="r"
        )
