"""Detection quality: per attack type precision and recall, false alerts per hour of benign
traffic, and how much of the attack and of the legitimate traffic each fingerprint matches.

    .venv/bin/python bench/quality.py [--captures DIR] [--only captures,fixtures] [--json FILE]

Two sources of ground truth, both replayed through ``analyze`` (engine/offline.py):

* **real captures** in ``--captures`` (default ``../shared/data/captures``, skipped when
  absent): each attack capture of :data:`TRUTH` with its expected types and target and,
  for captures that are samples of larger attacks, the floor that suits their rate (as
  in tests/detect/test_classify.py); every other capture (benign, OT, flow exports,
  small protocol fixtures) must report nothing.
* **classification fixtures** written here as pcaps: each attack type of the vocabulary
  (every reflector of detect/classify.REFLECTORS, the TCP flag floods, UDP, ICMP,
  fragments, GRE, connection floods, slow attacks, scans, sweeps, several at once) at
  each of ``--rates`` (default 6 and 20 kpps, limits at 2-5 kpps) for 3 s (the slow
  types once, at their own pace) from 198.18.0.0/15, over a
  victim's ordinary traffic (web clients, its DNS and NTP answers) from 198.51.100.0/24,
  which also runs alone as a benign fixture.  Packets are labelled by source.

For each reported (target, type): a true positive when the truth has it, else a false
positive; each expected one not reported is a false negative.  A fingerprint's shares
are counted on every packet of the capture to the attack's target: *attack* = the
attack's packets (fixtures: by label; real captures: the attack's categories between
the categories of its types, as these captures hold one attack and the victim's other
traffic in other categories), *legit* = the rest.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ddos_shield.capture.pcap import CaptureReader
from ddos_shield.config import Config, parse
from ddos_shield.detect.classify import REFLECTORS
from ddos_shield.engine.offline import AttackReport, analyze, default_config
from ddos_shield.records import Match, addresses_in, as_network

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "captures"

PROTECT_ALL = 'protected = ["0.0.0.0/0", "::/0"]\n[[groups]]\nname = "default"\n'
LOW_FRAG = PROTECT_ALL + "[groups.thresholds]\nfrag = { pps = 1000 }\n"
IKE_FLOOR = PROTECT_ALL + "[groups.thresholds]\nudp = { pps = 1000 }\n"
DNS_FLOOR = PROTECT_ALL + "end_after_seconds = 10\n[groups.thresholds]\nudp = { pps = 20 }\nfrag = { pps = 20 }\n"

#: real attack captures: file -> (floor or None, expected types, target)
TRUTH: dict[str, tuple[str | None, set[str], str]] = {
    "ddos/ddosgrid_synflood.pcap": (None, {"syn_flood"}, "10.0.1.12/32"),
    "ddos/ddosgrid_portscan.pcap": (None, {"port_scan"}, "10.0.1.12/32"),
    "ddos/ndpi_synscan.pcap": (None, {"port_scan"}, "64.13.134.52/32"),
    # ~3.1 kpps of fragments over 100 ms (default limit 5 kpps)
    "ddos/ndpi_ip_fragmented_garbage.pcap": (LOW_FRAG, {"fragment_flood"}, "10.128.0.2/32"),
    "ddos/stopddos_amp.TCP.reflection.SYNACK.pcap": (None, {"synack_flood"}, "10.10.10.10/32"),
    "ddos/stopddos_amp.UDP.bacnet.IOT.37810.pcapng": (
        None,
        {"bacnet_amplification", "dvr_amplification"},
        "10.10.10.1/32",
    ),
    # ~12.5 kpps at its peak (default UDP limit 20 kpps)
    "ddos/stopddos_amp.UDP.isakmp.pcap": (IKE_FLOOR, {"ike_amplification"}, "10.10.10.10/32"),
    "ddos/stopddos_amp.UDP.snmp.src161.pcapng": (None, {"snmp_amplification"}, "10.10.10.10/32"),
    # ~40 pps of answers and fragments over 30 s
    "ddos/stopddos_amp.dns.RRSIG.fragmented.pcap": (
        DNS_FLOOR,
        {"dns_amplification", "fragment_flood"},
        "10.10.10.10/32",
    ),
    "ddos/stopddos_pkt.TCP.DOMINATE.syn.ecn.cwr.pcapng": (None, {"syn_flood"}, "10.10.10.10/32"),
    "ddos/stopddos_pkt.TCP.synflood.spoofed.pcap": (None, {"syn_flood"}, "10.10.10.10/32"),
    "labeled/cicddos2019_lucid_SynFlood.pcap": (None, {"syn_flood"}, "192.168.50.4/32"),
}
#: captures that are neither benign nor judged: too small or low-rate to be floods
#: (a 4-port probe, an nmap -sV of 40 packets, 896 packets over 14 minutes), a DHCP
#: starvation spread over 500 addresses (carpet bombing), and a low-rate HTTP attack
UNJUDGED = {
    "ddos/ndpi_tcp_scan.pcapng",
    "ddos/zeek_nmap-vsn.pcap",
    "ddos/stopddos_amp.TCP.syn.optionallyACK.optionallysamePort.pcapng",
    "ddos/zeek_dhcp_flood.pcap",
    "labeled/cicddos2019_lucid_WebDDoS.pcap",
}

# ---- fixtures --------------------------------------------------------------------------------

VICTIM = "203.0.113.10"
FIXTURE_CONFIG = (
    'protected = ["203.0.113.0/24"]\n[[groups]]\nname = "default"\n[groups.thresholds]\n'
    "syn = { pps = 2000 }\ntcp = { pps = 5000 }\nudp = { pps = 5000 }\nicmp = { pps = 2000 }\n"
    "frag = { pps = 2000 }\nother = { pps = 2000 }\n"
)
T0 = 1_700_000_000.0
RATE = 8000
SECONDS = 3.0
_SPOOF = int(ipaddress.IPv4Address("198.18.0.0"))


def _tcp(sport: int, dport: int, flags: int, payload: int = 0) -> bytes:
    return struct.pack(">HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 512, 0, 0) + b"\0" * payload


def _udp(sport: int, dport: int, payload: int) -> bytes:
    return struct.pack(">HHHH", sport, dport, 8 + payload, 0) + b"\0" * payload


def _ipv4(src: int, dst: str, proto: int, l4: bytes, ttl: int, frag: int = 0) -> bytes:
    head = struct.pack(">BBHHHBBH", 0x45, 0, 20 + len(l4), 1, frag, ttl, proto, 0)
    return head + struct.pack(">I", src) + ipaddress.IPv4Address(dst).packed + l4


def _eth(ip: bytes) -> bytes:
    return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip


def _pcap(records: list[tuple[float, bytes]]) -> bytes:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for ts, data in sorted(records, key=lambda r: r[0]):
        sec = int(ts)
        out.append(struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(data), len(data)) + data)
    return b"".join(out)


def _ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def background(rng: np.random.Generator, seconds: float = 8.0) -> list[tuple[float, bytes]]:
    """The victim's ordinary inbound traffic: 40 web clients (a handshake, then data and
    ACKs to port 443), its DNS and NTP answers, a few pings."""
    out: list[tuple[float, bytes]] = []
    for c in range(40):
        src = _ip("198.51.100.100") + c
        t = T0 + rng.uniform(0, seconds)
        sport = 40000 + c
        out.append((t, _eth(_ipv4(src, VICTIM, 6, _tcp(sport, 443, 0x02) + b"\0" * 20, 57))))
        for _ in range(int(rng.integers(20, 80))):
            size = int(rng.choice([0, 0, 500, 1400]))
            out.append(
                (
                    T0 + rng.uniform(0, seconds),
                    _eth(_ipv4(src, VICTIM, 6, _tcp(sport, 443, 0x18 if size else 0x10, size), 57)),
                )
            )
    for _ in range(int(40 * seconds)):
        out.append(
            (
                T0 + rng.uniform(0, seconds),
                _eth(
                    _ipv4(
                        _ip("198.51.100.53"),
                        VICTIM,
                        17,
                        _udp(53, int(rng.integers(30000, 60000)), int(rng.integers(60, 260))),
                        60,
                    )
                ),
            )
        )
    for _ in range(int(2 * seconds)):
        out.append(
            (T0 + rng.uniform(0, seconds), _eth(_ipv4(_ip("198.51.100.123"), VICTIM, 17, _udp(123, 123, 48), 60)))
        )
        out.append(
            (
                T0 + rng.uniform(0, seconds),
                _eth(_ipv4(_ip("198.51.100.7"), VICTIM, 1, b"\x00\x00\x00\x00\x00\x01\x00\x01" + b"\0" * 56, 60)),
            )
        )
    return out  # fmt: skip


def _spoofed(rng: np.random.Generator, n: int) -> np.ndarray:
    return _SPOOF + rng.integers(0, 1 << 17, n)


def flood(
    rng: np.random.Generator, make: Any, *, rate: int = RATE, seconds: float = SECONDS
) -> list[tuple[float, bytes]]:
    """``rate`` x ``seconds`` packets from random spoofed sources, starting 2 s in."""
    n = int(rate * seconds)
    ts = T0 + 2.0 + np.sort(rng.uniform(0, seconds, n))
    srcs = _spoofed(rng, n)
    return [(float(t), _eth(make(int(s), rng))) for t, s in zip(ts, srcs, strict=True)]


def _ttl(rng: np.random.Generator) -> int:
    return int(rng.integers(40, 60))


def tcp_flood(flags: int, sport: int | None = None) -> Any:
    def make(src: int, rng: np.random.Generator) -> bytes:
        sp = sport if sport is not None else int(rng.integers(1024, 65536))
        return _ipv4(src, VICTIM, 6, _tcp(sp, 80, flags), _ttl(rng))

    return make


def udp_flood(sport: int | None, size: int, dport: int | None = None) -> Any:
    def make(src: int, rng: np.random.Generator) -> bytes:
        sp = sport if sport is not None else int(rng.integers(1024, 65536))
        dp = dport if dport is not None else int(rng.integers(1, 65536))
        return _ipv4(src, VICTIM, 17, _udp(sp, dp, size + int(rng.integers(0, 40))), _ttl(rng))

    return make


def other_flood(proto: int, size: int, frag: int = 0) -> Any:
    def make(src: int, rng: np.random.Generator) -> bytes:
        return _ipv4(src, VICTIM, proto, b"\x08\x00\x00\x00\x00\x01\x00\x01" + b"\0" * size, _ttl(rng), frag)

    return make


def connection_flood(rng: np.random.Generator) -> list[tuple[float, bytes]]:
    """One client opening 400 connections a second for 4 s (twice the default
    ``connection_flood_min_rate``), each completing its handshake and sending a request."""
    out = []
    src = _ip("198.51.100.66")
    for i in range(1600):
        t = T0 + i / 400
        sp = 20000 + i
        out.append((t, _eth(_ipv4(src, VICTIM, 6, _tcp(sp, 80, 0x02) + b"\0" * 20, 64))))
        out.append((t + 0.001, _eth(_ipv4(src, VICTIM, 6, _tcp(sp, 80, 0x10), 64))))
        out.append((t + 0.002, _eth(_ipv4(src, VICTIM, 6, _tcp(sp, 80, 0x18, 200), 64))))
    return out


def slow_attack(rng: np.random.Generator) -> list[tuple[float, bytes]]:
    """One client holding 300 connections open, each sending a header line every 10 s."""
    out = []
    src = _ip("198.51.100.66")
    for i in range(300):
        for k in range(3):
            out.append(
                (T0 + rng.uniform(0, 1) + 10 * k, _eth(_ipv4(src, VICTIM, 6, _tcp(20000 + i, 80, 0x18, 20), 64)))
            )
    return out


def host_sweep(rng: np.random.Generator) -> list[tuple[float, bytes]]:
    src = _ip("198.51.100.66")
    return [
        (T0 + 2 + i * 0.02, _eth(_ipv4(src, f"203.0.113.{i + 1}", 6, _tcp(45000, 22, 0x02) + b"\0" * 4, 64)))
        for i in range(200)
    ]


def udp_scan(rng: np.random.Generator) -> list[tuple[float, bytes]]:
    src = _ip("198.51.100.66")
    return [(T0 + 2 + p * 0.005, _eth(_ipv4(src, VICTIM, 17, _udp(45000, p, 0), 64))) for p in range(1, 1001)]


def fixtures(rate: int = RATE, slow_kinds: bool = True) -> dict[str, tuple[set[str], str, Any]]:
    """name -> (expected types, target, generator of attack records); floods at ``rate``
    pps, and (with ``slow_kinds``) the types that do not depend on it."""
    host = VICTIM + "/32"

    def fl(r: np.random.Generator, make: Any) -> list[tuple[float, bytes]]:
        return flood(r, make, rate=rate)

    fx: dict[str, tuple[set[str], str, Any]] = {
        "syn_flood": ({"syn_flood"}, host, lambda r: fl(r, tcp_flood(0x02))),
        "ack_flood": ({"ack_flood"}, host, lambda r: fl(r, tcp_flood(0x10))),
        "rst_flood": ({"rst_flood"}, host, lambda r: fl(r, tcp_flood(0x04))),
        "synack_flood": ({"synack_flood"}, host, lambda r: fl(r, tcp_flood(0x12, sport=443))),
        "tcp_flood (FIN)": ({"tcp_flood"}, host, lambda r: fl(r, tcp_flood(0x01))),
        "udp_flood": ({"udp_flood"}, host, lambda r: fl(r, udp_flood(None, 60))),
        "icmp_flood": ({"icmp_flood"}, host, lambda r: fl(r, other_flood(1, 56))),
        "fragment_flood": ({"fragment_flood"}, host, lambda r: fl(r, other_flood(17, 600, frag=185))),
        "gre_flood": ({"gre_flood"}, host, lambda r: fl(r, other_flood(47, 500))),
        "several at once (SYN + NTP)": (
            {"syn_flood", "ntp_amplification"},
            host,
            lambda r: fl(r, tcp_flood(0x02)) + fl(r, udp_flood(123, 440, dport=80)),
        ),
    }
    if slow_kinds:
        fx["connection_flood"] = ({"connection_flood"}, host, connection_flood)
        fx["slow_attack"] = ({"slow_attack"}, host, slow_attack)
        fx["host_sweep"] = ({"host_sweep"}, "203.0.113.0/24", host_sweep)
        fx["port_scan (UDP)"] = ({"port_scan"}, host, udp_scan)
    for ref in REFLECTORS:
        port, size = ref.ports[0], ref.min_length + 150
        fx[ref.type.value] = (
            {ref.type.value},
            host,
            lambda r, p=port, s=size: fl(r, udp_flood(p, s - 42, dport=int(r.integers(1024, 65536)))),
        )
    return fx


# ---- scoring ----------------------------------------------------------------------------------


@dataclass
class Score:
    tp: dict[str, int] = field(default_factory=dict)
    fp: dict[str, int] = field(default_factory=dict)
    fn: dict[str, int] = field(default_factory=dict)
    false_alerts: int = 0
    benign_seconds: float = 0.0
    rules: list[dict[str, Any]] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)

    def judge(self, name: str, attacks: list[AttackReport], truth: set[str], target: str) -> None:
        got = {t for a in attacks if a.target == target for t in a.types}
        for t in got | truth:
            bucket = self.tp if t in got and t in truth else self.fp if t in got else self.fn
            bucket[t] = bucket.get(t, 0) + 1
        if got != truth:
            self.misses.append(f"{name}: expected {sorted(truth)} at {target}, got {sorted(got)}")
        for a in attacks:
            if a.target != target:
                for t in a.types:
                    self.fp[t] = self.fp.get(t, 0) + 1
                self.misses.append(f"{name}: unexpected {a.types} at {a.target}")


def active_seconds(path: Path) -> float:
    """Seconds of traffic in a capture: gaps between packets counted up to 60 s each."""
    ts = np.concatenate([b["ts"] for b in CaptureReader(path).batches()] or [np.zeros(0)])
    return float(np.minimum(np.diff(np.sort(ts)), 60.0).sum()) if len(ts) > 1 else 0.0


def rule_shares(path: Path, a: AttackReport, attack_mask_of: Any) -> list[dict[str, Any]]:
    """Each of the attack's rules: share of the attack's packets and of the target's
    legitimate packets it matches, over the whole capture."""
    batch = np.concatenate(list(CaptureReader(path).batches()))
    to_target = addresses_in(batch["dst"], as_network(a.target))
    atk = to_target & attack_mask_of(batch, a)
    matches = [Match.from_json(r.match) for r in a.rules]
    if matches and all(m.is_source_only() for m in matches):
        # blocked by address: everything those attackers send is the attack's
        for src_rule in matches:
            atk |= to_target & src_rule.matches(batch)
    legit = to_target & ~atk
    out = []
    union = np.zeros(len(batch), dtype=bool)
    for r in a.rules:
        hit = Match.from_json(r.match).matches(batch)
        union |= hit
        out.append(
            {
                "capture": path.name,
                "types": a.types,
                "rule": r.description,
                "attack_matched": float(hit[atk].sum() / max(atk.sum(), 1)),
                "legit_matched": float(hit[legit].sum() / max(legit.sum(), 1)),
                "legit_packets": int(legit.sum()),
            }
        )
    if len(a.rules) > 1:
        out.append(
            {
                "capture": path.name,
                "types": a.types,
                "rule": f"(the set of {len(a.rules)} rules)",
                "attack_matched": float(union[atk].sum() / max(atk.sum(), 1)),
                "legit_matched": float(union[legit].sum() / max(legit.sum(), 1)),
                "legit_packets": int(legit.sum()),
            }
        )
    return out


def real_attack_mask(batch: np.ndarray, a: AttackReport) -> np.ndarray:
    """A real capture's attack: every packet to the target in the categories of the
    attack's types (these captures hold one attack, and the victim's other traffic in
    other categories)."""
    tcp = {"synack_flood", "ack_flood", "rst_flood", "tcp_flood"}
    want = {
        0 if t == "syn_flood" else 1 if t in tcp else 3 if t == "icmp_flood" else 4 if t == "fragment_flood" else 2
        for t in a.types
    }
    out: np.ndarray = np.isin(batch["category"], list(want))
    return out


def labelled_attack_mask(batch: np.ndarray, a: AttackReport) -> np.ndarray:
    src = batch["src"]
    out: np.ndarray = addresses_in(src, as_network("198.18.0.0/15")) | addresses_in(src, as_network("198.51.100.66/32"))
    return out


def run_captures(root: Path, score: Score) -> None:
    files = sorted(p for p in root.rglob("*") if p.suffix in (".pcap", ".pcapng", ".cap"))
    for p in files:
        rel = str(p.relative_to(root))
        if rel in UNJUDGED:
            continue
        floor, truth, target = TRUTH.get(rel, (None, set(), ""))
        cfg: Config = parse(floor) if floor else default_config()
        attacks = analyze([p], cfg).attacks
        if rel in TRUTH:
            score.judge(rel, attacks, truth, target)
            for a in attacks:
                if a.target == target and a.rules:
                    score.rules += rule_shares(p, a, real_attack_mask)
        else:
            score.benign_seconds += active_seconds(p)
            score.false_alerts += len(attacks)
            for a in attacks:
                score.misses.append(f"{rel} (benign): {a.types} at {a.target}")
                for t in a.types:
                    score.fp[t] = score.fp.get(t, 0) + 1


SLOW_KINDS = {"connection_flood", "slow_attack", "host_sweep", "port_scan (UDP)"}


def run_fixtures(score: Score, rates: list[int], seed: int = 1) -> None:
    cfg = parse(FIXTURE_CONFIG)
    with tempfile.TemporaryDirectory(prefix="quality-") as tmp:
        rng = np.random.default_rng(seed)
        benign = Path(tmp) / "benign.pcap"
        benign.write_bytes(_pcap(background(rng, 30.0)))
        attacks = analyze([benign], cfg).attacks
        score.benign_seconds += active_seconds(benign)
        score.false_alerts += len(attacks)
        score.misses += [f"fixture benign: {a.types} at {a.target}" for a in attacks]
        todo = [(f"{name} @{rate // 1000}k" if fx_rate_dependent else name, truth, target, gen)
                for k, rate in enumerate(rates)
                for name, (truth, target, gen) in fixtures(rate, slow_kinds=k == 0).items()
                for fx_rate_dependent in [name not in SLOW_KINDS]]  # fmt: skip
        for name, truth, target, gen in todo:
            p = Path(tmp) / f"fixture {name}.pcap"
            p.write_bytes(_pcap(background(rng) + gen(rng)))
            found = analyze([p], cfg).attacks
            score.judge(f"fixture {name}", found, truth, target)
            for a in found:
                if a.target == target and a.rules:
                    score.rules += rule_shares(p, a, labelled_attack_mask)


def report(score: Score, elapsed: float) -> str:
    lines = [
        "## Detection quality (`bench/quality.py`)",
        "",
        f"Machine: Linux {platform.release()}, {_cpu()} ({os.cpu_count()} vCPUs), Python "
        f"{platform.python_version()}, measured {time.strftime('%Y-%m-%d', time.gmtime())}; the run took {elapsed:.0f} s.",
        "",
        "| type | true pos. | false pos. | false neg. | precision | recall |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    types = sorted(set(score.tp) | set(score.fp) | set(score.fn))
    for t in types:
        tp, fp, fn = score.tp.get(t, 0), score.fp.get(t, 0), score.fn.get(t, 0)
        prec = f"{tp / (tp + fp):.0%}" if tp + fp else "n/a"
        rec = f"{tp / (tp + fn):.0%}" if tp + fn else "n/a"
        lines.append(f"| `{t}` | {tp} | {fp} | {fn} | {prec} | {rec} |")
    tp, fp, fn = sum(score.tp.values()), sum(score.fp.values()), sum(score.fn.values())
    lines.append(f"| **all** | {tp} | {fp} | {fn} | {tp / max(tp + fp, 1):.1%} | {tp / max(tp + fn, 1):.1%} |")
    hours = score.benign_seconds / 3600
    lines += [
        "",
        f"False alerts over benign traffic: {score.false_alerts} in {score.benign_seconds:.0f} s of traffic "
        f"({score.false_alerts / hours if hours else 0:.1f} per hour).",
        "",
        "| capture | types | rule | attack matched | legit matched (of packets) |",
        "|---|---|---|---:|---:|",
    ]
    for r in score.rules:
        lines.append(
            f"| {r['capture']} | {', '.join(r['types'])} | `{r['rule']}` | {r['attack_matched']:.2%} | "
            f"{r['legit_matched']:.3%} ({r['legit_packets']}) |"
        )
    if score.misses:
        lines += ["", "Misses and false alerts:", ""] + [f"* {m}" for m in score.misses]
    return "\n".join(lines)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f'CPU "{line.split(":", 1)[1].strip()}"'
    except OSError:
        pass
    return "CPU unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--captures", type=Path, default=SHARED)
    ap.add_argument("--only", default="captures,fixtures")
    ap.add_argument("--rates", default="6000,20000", help="packets per second of the fixtures' floods")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    score = Score()
    t0 = time.perf_counter()
    if "captures" in only:
        if args.captures.is_dir():
            run_captures(args.captures, score)
        else:
            print(f"(no captures at {args.captures}: skipped)", file=sys.stderr)
    if "fixtures" in only:
        run_fixtures(score, [int(x) for x in args.rates.split(",")])
    print(report(score, time.perf_counter() - t0))
    if args.json:
        args.json.write_text(json.dumps(score.__dict__, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
