"""The demo: the lab, the shield, real attacks one after another, and a summary.

:class:`LabShield` runs ``ddos-shield run`` inside the lab's shield namespace and
follows its events; :func:`measure_attack` runs one attack against it while the
legitimate client keeps requesting, and measures what happened.  The benchmark
(bench/shield.py) and the lab tests use the same pieces.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddos_shield import lab
from ddos_shield.errors import LabError
from ddos_shield.lab.attack import AttackSpec, launch
from ddos_shield.lab.client import LegitTraffic
from ddos_shield.lab.probe import FirstPacketProbe
from ddos_shield.lab.topology import Lab, lab_session, popen_in
from ddos_shield.records import Category, IPNetwork, Match, PacketFlag, addr_bytes, empty_traffic

DEFAULT_ATTACKS = ("syn/4", "udp-spoofed/4", "icmp/6", "frag/4", "udp-spoofed/6", "syn-spoofed/4")


def lab_config(
    events_file: str,
    *,
    dataplane: str = "auto",
    hold_seconds: float = 3.0,
    allowlist: Sequence[str] = (),
    end_after_seconds: float = 1.5,
    action: str = "drop",
) -> str:
    """The shield's configuration for the lab (thresholds suit its 10 Mbit/s link);
    ``action`` is the default group's (``observe`` lets every attack run unhindered)."""
    return f"""
protected = ["{lab.INSIDE_V4}", "{lab.INSIDE_V6}"]
allowlist = {json.dumps(list(allowlist))}

[shield]
interfaces = ["{lab.SHIELD_OUTSIDE_IF}"]
dataplane = "{dataplane}"
interval_ms = 100
pin_dir = "{lab.LAB_PIN_DIR}"
state_dir = "/run/ddos-shield-lab/state"
sample_target_pps = 4000

[events]
file = "{events_file}"

[[groups]]
name = "default"
action = "{action}"
hold_seconds = {hold_seconds}
end_after_seconds = {end_after_seconds}
[groups.thresholds]
syn = {{ pps = 3000 }}
tcp = {{ pps = 20000 }}
udp = {{ pps = 5000 }}
icmp = {{ pps = 3000 }}
frag = {{ pps = 2000 }}
other = {{ pps = 3000 }}
"""


class EventLog:
    """Follows a JSON-lines event file as the shield writes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[dict[str, Any]] = []
        self._pos = 0

    def poll(self) -> list[dict[str, Any]]:
        new: list[dict[str, Any]] = []
        if not self.path.exists():
            return new
        with self.path.open() as f:
            f.seek(self._pos)
            while True:
                line = f.readline()
                if not line.endswith("\n"):
                    break
                self._pos = f.tell()
                new.append(json.loads(line))
        self.events += new
        return new

    def wait_for(self, pred: Any, timeout: float, since: int = 0) -> dict[str, Any] | None:
        """The first event from index ``since`` on for which ``pred`` holds, waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        seen = since
        while True:
            self.poll()
            for e in self.events[seen:]:
                if pred(e):
                    return e
            seen = len(self.events)
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)


class LabShield:
    """``ddos-shield run`` in the lab's shield namespace; stop it with :meth:`stop`."""

    def __init__(
        self,
        workdir: Path,
        *,
        dataplane: str = "auto",
        hold_seconds: float = 3.0,
        allowlist: Sequence[str] = (),
        extra_config: str = "",
        end_after_seconds: float = 1.5,
        action: str = "drop",
    ) -> None:
        """``extra_config`` is TOML appended to the lab configuration (e.g. ``[[sources]]``)."""
        self.workdir = workdir
        self.events = EventLog(workdir / "events.jsonl")
        self.config_path = workdir / "shield.toml"
        text = lab_config(
            str(self.events.path),
            dataplane=dataplane,
            hold_seconds=hold_seconds,
            allowlist=allowlist,
            end_after_seconds=end_after_seconds,
            action=action,
        )
        self.config_path.write_text(text + extra_config)
        self.stderr_path = workdir / "shield.stderr"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> dict[str, Any]:
        argv = [sys.executable, "-m", "ddos_shield.cli.main", "run", "--config", str(self.config_path), "--no-live"]
        with self.stderr_path.open("ab") as err:
            self.proc = popen_in(lab.NS_SHIELD, argv, stdout=subprocess.DEVNULL, stderr=err)
        ready = self.events.wait_for(lambda e: e["event"] == "ready", timeout)
        if ready is None:
            self.stop()
            raise LabError(f"the shield did not become ready; see {self.stderr_path}:\n{self.stderr_tail()}")
        return ready

    def stderr_tail(self, n: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.stderr_path.read_text().splitlines()[-n:])
        return ""

    def kill(self) -> None:
        """SIGKILL: what a crash looks like."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@dataclass
class AttackResult:
    kind: str
    family: int
    offered_pps: int
    seconds: float
    detected: bool
    attack_types: list[str]
    time_to_detect_ms: float | None
    time_to_mitigate_ms: float | None
    rules: list[dict[str, Any]]
    attack_packets_sent: int
    attack_packets_dropped: int
    legit_requests: int
    legit_ok: int
    legit_requests_after_rule: int
    legit_ok_after_rule: int
    legit_sources_blocked: int


def attack_sources(spec: AttackSpec) -> list[IPNetwork]:
    if spec.kind.endswith("spoofed"):
        return [lab.SPOOF_V4 if spec.family == 4 else lab.SPOOF_V6]
    a = lab.ATTACKER_V4 if spec.family == 4 else lab.ATTACKER_V6
    return [ipaddress.ip_network(a)]


def measure_attack(
    shield: LabShield, legit: list[LegitTraffic], spec: AttackSpec, settle: float = 10.0
) -> AttackResult:
    """Run one attack and measure detection, mitigation and the client's experience."""
    sources = attack_sources(spec)
    victim = lab.VICTIM_V4 if spec.family == 4 else lab.VICTIM_V6
    probe = FirstPacketProbe(lab.NS_SHIELD, lab.SHIELD_OUTSIDE_IF, sources, timeout=spec.seconds + 10)
    shield.events.poll()
    mark = len(shield.events.events)
    report = launch(spec).wait()
    first = probe.result(timeout=2.0)
    probe.stop()

    def mine(e: dict[str, Any]) -> bool:
        t = e.get("target")
        return t is not None and ipaddress.ip_address(victim) in ipaddress.ip_network(t)

    start = shield.events.wait_for(lambda e: e["event"] == "attack_start" and mine(e), 2.0, since=mark)
    aid = start["attack_id"] if start else None
    if aid is not None:
        shield.events.wait_for(lambda e: e["event"] == "attack_end" and e["attack_id"] == aid, settle, since=mark)
    events = shield.events.events[mark:]
    applied = [e for e in events if e["event"] == "mitigation_applied" and e["attack_id"] == aid]
    ids = {e["rule"]["mitigation_id"] for e in applied}
    if ids:
        # the rules go a hold time after the end: wait for all of them
        def all_removed(_e: dict[str, Any]) -> bool:
            gone = {
                x["rule"]["mitigation_id"] for x in shield.events.events[mark:] if x["event"] == "mitigation_removed"
            }
            return ids <= gone

        shield.events.wait_for(all_removed, settle, since=mark)
    events = shield.events.events[mark:]
    removed = [e for e in events if e["event"] == "mitigation_removed" and e["rule"]["mitigation_id"] in ids]
    dropped = sum(e.get("hits", {}).get("dropped", 0) for e in removed)
    rule_at = min((e["ts"] for e in applied), default=None)

    results = [r for lt in legit for r in lt.results() if report.started_at <= r["ts"] <= report.ended_at + 0.5]
    after = [r for r in results if rule_at is not None and r["ts"] >= rule_at]
    types = start["attack_types"] if start else []
    return AttackResult(
        kind=spec.kind,
        family=spec.family,
        offered_pps=spec.pps,
        seconds=spec.seconds,
        detected=start is not None,
        attack_types=types,
        time_to_detect_ms=(start["ts"] - first) * 1000 if start and first else None,
        time_to_mitigate_ms=(rule_at - first) * 1000 if rule_at and first else None,
        rules=[e["rule"] for e in applied],
        attack_packets_sent=report.packets_sent,
        attack_packets_dropped=dropped,
        legit_requests=len(results),
        legit_ok=sum(1 for r in results if r["ok"]),
        legit_requests_after_rule=len(after),
        legit_ok_after_rule=sum(1 for r in after if r["ok"]),
        legit_sources_blocked=legit_sources_blocked([e["rule"] for e in applied]),
    )


def legit_sources_blocked(rules: list[dict[str, Any]]) -> int:
    """How many of the client's addresses a rule would drop, judged on the client's own
    kinds of packets (handshake, data, acknowledgements, both families)."""
    blocked = 0
    for family, client, victim in ((4, lab.CLIENT_V4, lab.VICTIM_V4), (6, lab.CLIENT_V6, lab.VICTIM_V6)):
        kinds = [
            (Category.TCP_SYN, 0x02, 74 if family == 4 else 94),
            (Category.TCP, 0x10, 66 if family == 4 else 86),
            (Category.TCP, 0x18, 200),
            (Category.TCP, 0x11, 66 if family == 4 else 86),
        ]
        b = empty_traffic(len(kinds))
        b["src"] = list(addr_bytes(client))
        b["dst"] = list(addr_bytes(victim))
        b["proto"] = 6
        b["dport"] = lab.VICTIM_HTTP_PORT
        b["sport"] = 40000
        b["ttl"] = 64
        b["flags"] = int(PacketFlag.IPV6) if family == 6 else 0
        for i, (cat, fl, ln) in enumerate(kinds):
            b["category"][i], b["tcp_flags"][i], b["length"][i] = cat, fl, ln
        hit = np.zeros(len(b), dtype=bool)
        for r in rules:
            hit |= Match.from_json(r["match"]).matches(b)
        blocked += int(hit.any())
    return blocked


def parse_attacks(text: str | None) -> list[tuple[str, int]]:
    out = []
    for item in text.split(",") if text else DEFAULT_ATTACKS:
        kind, _, fam = item.strip().partition("/")
        out.append((kind, int(fam or 4)))
    return out


def run_demo(*, json_out: bool, attacks: str | None, pps: int, seconds: float) -> int:
    from rich.console import Console
    from rich.table import Table

    con = Console(stderr=True)
    plan = parse_attacks(attacks)
    the_lab = Lab()
    results: list[AttackResult] = []
    with lab_session(), tempfile.TemporaryDirectory(prefix="ddos-shield-demo-") as tmp:
        con.print("[bold]Building the lab[/] (namespaces, bottleneck, victim HTTP server)")
        the_lab.up()
        shield = LabShield(Path(tmp))
        legit: list[LegitTraffic] = []
        try:
            ready = shield.start()
            con.print(f"[bold]Shield ready[/]: data plane {ready['dataplane']} on {', '.join(ready['interfaces'])}")
            total = len(plan) * (seconds + 15) + 10
            legit = [
                LegitTraffic.start(family=4, rate=10.0, seconds=total),
                LegitTraffic.start(family=6, rate=10.0, seconds=total),
            ]
            time.sleep(1.0)
            for kind, fam in plan:
                spec = AttackSpec(kind=kind, family=fam, pps=pps, seconds=seconds)
                con.print(f"\n[bold red]Attack[/] {kind} over IPv{fam}: {pps} pps for {seconds:g} s")
                r = measure_attack(shield, legit, spec)
                results.append(r)
                _narrate(con, r)
        finally:
            for lt in legit:
                lt.stop()
            shield.stop()
            the_lab.down()
    summary = {"attacks": [asdict(r) for r in results], "passed": all(_ok(r) for r in results)}
    if json_out:
        print(json.dumps(summary))
    else:
        t = Table(title="Demo summary")
        for col in (
            "attack",
            "types",
            "detect ms",
            "mitigate ms",
            "sent",
            "dropped",
            "legit ok",
            "after rule",
            "legit blocked",
        ):
            t.add_column(col)
        for r in results:
            t.add_row(
                f"{r.kind}/{r.family}",
                ",".join(r.attack_types) or "-",
                _ms(r.time_to_detect_ms),
                _ms(r.time_to_mitigate_ms),
                str(r.attack_packets_sent),
                str(r.attack_packets_dropped),
                f"{r.legit_ok}/{r.legit_requests}",
                f"{r.legit_ok_after_rule}/{r.legit_requests_after_rule}",
                str(r.legit_sources_blocked),
            )
        Console().print(t)
    return 0 if summary["passed"] else 1


def _ok(r: AttackResult) -> bool:
    return r.detected and bool(r.rules) and r.legit_sources_blocked == 0


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def _narrate(con: Any, r: AttackResult) -> None:
    if not r.detected:
        con.print("  [yellow]not detected[/]")
        return
    con.print(f"  detected as {', '.join(r.attack_types)} after {_ms(r.time_to_detect_ms)} ms")
    for rule in r.rules:
        m = Match.from_json(rule["match"]).describe()
        con.print(f"  rule {rule['mitigation_id']} ({rule['action']}): {m}")
    con.print(
        f"  in force {_ms(r.time_to_mitigate_ms)} ms after the first attack packet; "
        f"dropped {r.attack_packets_dropped} of {r.attack_packets_sent} packets sent"
    )
    con.print(
        f"  legitimate requests during the attack: {r.legit_ok}/{r.legit_requests} ok "
        f"({r.legit_ok_after_rule}/{r.legit_requests_after_rule} after the rule); "
        f"legitimate sources blocked: {r.legit_sources_blocked}"
    )
