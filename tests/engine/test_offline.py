"""Captures replayed through the engine: real attack captures reported with the right
type, target and rule, benign captures reported clean, silences of years replayed with
no ticks for them, and the sparse replay equal to ticking every interval."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ddos_shield.capture.pcap import CaptureReader
from ddos_shield.config import Config, Group, parse
from ddos_shield.dataplane.replay import ReplayDataPlane
from ddos_shield.engine import Engine, offline
from ddos_shield.engine.offline import analyze, default_config
from ddos_shield.errors import ShieldError
from ddos_shield.events import EventSink
from ddos_shield.records import CATEGORY_NAMES, Match, as_network
from ddos_shield.ui import report
from tests.capture.test_pcap import epb, eth, idb, ipv4, pcap_bytes, shb, tcp, udp

DATA = Path(__file__).resolve().parent.parent / "data" / "captures"
SHARED_BENIGN = Path(__file__).resolve().parents[3] / "shared" / "data" / "captures" / "benign"

# A floor below the default thresholds for captures whose floods are slower than a
# real network's: the fragment flood peaks at ~3.1 kpps over 100 ms (default limit 5 kpps).
LOW_FRAG = """
protected = ["0.0.0.0/0", "::/0"]
[[groups]]
name = "default"
[groups.thresholds]
frag = { pps = 1000 }
"""


def one(path: Path, config: Config | None = None) -> offline.CaptureAnalysis:
    return analyze([path], config).captures[0]


# ---- attacks ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "config", "types", "target", "rule_fields"),
    [
        # single source: blocked by source
        ("ddosgrid_synflood.pcap", None, ["syn_flood"], "10.0.1.12/32", ["src"]),
        # randomly spoofed: a fingerprint scoped to the victim (bursts reach ~75 kpps in 100 ms)
        (
            "stopddos_pkt.TCP.synflood.spoofed.pcap",
            None,
            ["syn_flood"],
            "10.10.10.10/32",
            ["proto", "dst", "dport", "tcp_flags", "length", "ttl"],
        ),
        # reflection from thousands of SNMP agents (udp/161), 4 k packets in 23 ms
        (
            "stopddos_amp.UDP.snmp.src161.pcapng",
            None,
            ["snmp_amplification"],
            "10.10.10.10/32",
            ["proto", "dst", "sport", "length"],
        ),
        # garbage fragments from one host, with a floor that suits the capture (LOW_FRAG)
        ("ndpi_ip_fragmented_garbage.pcap", LOW_FRAG, ["fragment_flood"], "10.128.0.2/32", ["src"]),
    ],
)
def test_attack_captures_are_reported_with_type_target_and_rule(
    name: str, config: str | None, types: list[str], target: str, rule_fields: list[str]
) -> None:
    c = one(DATA / name, parse(config) if config else None)
    assert [(a.types, a.target) for a in c.attacks] == [(types, target)]
    a = c.attacks[0]
    assert a.start <= a.detected <= a.end + 0.2 and a.ended is not None and a.ended > a.end
    assert a.peak_pps > 0 and a.peak_bps > 0 and a.packets > 0
    assert len(a.rules) == 1
    rule = a.rules[0]
    assert list(rule.match) == rule_fields and rule.action == "drop"
    assert rule.attack_share is not None and rule.attack_share > 0.95
    assert rule.removed_at is not None and rule.removed_at >= a.ended


def test_single_source_flood_names_its_source() -> None:
    a = one(DATA / "ddosgrid_synflood.pcap").attacks[0]
    assert [(s.address, s.share) for s in a.top_sources] == [("10.0.1.2", 1.0)]
    assert a.distinct_sources == 1 and a.spoofed_share == 0.0
    assert a.rules[0].match == {"src": "10.0.1.2/32"} and a.rules[0].collateral_share == 0.0
    assert a.peak_pps == pytest.approx(76580, rel=0.01)  # 7,658 SYNs within one 100 ms interval


def test_spoofed_flood_shows_its_spoofed_share() -> None:
    a = one(DATA / "stopddos_pkt.TCP.synflood.spoofed.pcap").attacks[0]
    assert a.spoofed_share > 0.95 and a.distinct_sources > 0.95 * a.packets
    assert a.top_sources[0].share < 0.01
    m = Match.from_json(a.rules[0].match)
    assert (m.dport and m.dport.lo, m.dst) == (25565, as_network("10.10.10.10/32"))
    assert a.rules[0].hits > 1000  # the rule would have stopped the rest of the flood


def test_a_configuration_decides_what_is_protected() -> None:
    cfg = """
protected = ["10.0.1.0/24", "198.51.100.0/24"]
[[groups]]
name = "lab"
prefixes = ["10.0.1.0/24"]
action = "observe"
[groups.thresholds]
syn = { pps = 20000 }
"""
    a = one(DATA / "ddosgrid_synflood.pcap", parse(cfg)).attacks
    assert [(x.target, x.group, x.rules, x.skipped) for x in a] == [
        ("10.0.1.12/32", "lab", [], "host group action is observe")
    ]
    elsewhere = one(DATA / "ddosgrid_synflood.pcap", parse('protected = ["198.51.100.0/24"]'))
    assert elsewhere.attacks == [] and elsewhere.stats.decoded == 7769


# ---- benign ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "zeek_snmpwalk-short.pcap",  # 400 SNMP packets in 86 ms (about 2 kpps per direction in 100 ms)
        "ndpi_youtube_quic.pcap",
        "ndpi_ookla.pcap",
        "zeek_smtp.pcap",
        "ndpi_dns.pcap",
        "ndpi_opc-ua.pcap",
        "pmacct_112-IPFIXv10-CISCO-options.pcap",
    ],
)
def test_benign_captures_report_no_attack(name: str) -> None:
    c = one(DATA / name)
    assert c.attacks == [] and c.stats.decoded > 0


@pytest.mark.skipif(not SHARED_BENIGN.is_dir(), reason="the shared capture collection is not mounted")
def test_every_shared_benign_capture_reports_no_attack() -> None:
    files = sorted(SHARED_BENIGN.iterdir())
    result = analyze(files)
    assert [(c.path, [a.types for a in c.attacks]) for c in result.captures if c.attacks] == []
    assert len(result.captures) == len(files) >= 10


# ---- silences ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "longest_gap_years"),
    [
        ("ndpi_ookla.pcap", 47.2),  # starts in 1970
        ("zeek_smtp.pcap", 5.8),
    ],
)
def test_years_of_silence_cost_no_ticks(name: str, longest_gap_years: float) -> None:
    c = one(DATA / name)
    ts = np.concatenate(list(CaptureReader(DATA / name).batches()))["ts"]
    busy = len(np.unique(np.floor((ts - ts[0]) / 0.1)))  # intervals that hold packets
    assert c.ticks <= 2 * busy + 2
    assert c.wall_seconds < 2.0
    years = max(b - a for a, b in c.timeline.gaps) / (365.25 * 86400)
    assert years == pytest.approx(longest_gap_years, abs=0.1)


def _flood_then_silence(tmp_path: Path, gap: float) -> Path:
    victim = "203.0.113.10"
    recs = []
    t = 1_500_000_000.0
    for i in range(3000):  # 30 kpps for 0.1 s: over the default SYN limit
        recs.append((t + i / 30000, eth(ipv4("198.51.100.7", victim, 6, tcp(40000 + i % 100, 80, 0x02)))))
    for i in range(20):  # ordinary traffic for 5 s after the flood
        recs.append((t + 0.2 + i * 0.25, eth(ipv4("198.51.100.8", victim, 17, udp(5000, 53)))))
    recs.append((t + gap, eth(ipv4("198.51.100.8", victim, 17, udp(5000, 53)))))
    p = tmp_path / "flood.pcap"
    p.write_bytes(pcap_bytes(1, recs))
    return p


def test_attack_before_a_long_silence_ends_and_its_rule_goes_on_time(tmp_path: Path) -> None:
    three_years = 3 * 365.25 * 86400
    c = one(_flood_then_silence(tmp_path, three_years))
    [a] = c.attacks
    assert a.types == ["syn_flood"] and a.rules[0].match == {"src": "198.51.100.7/32"}
    end_after = Group.model_fields["end_after_seconds"].default
    assert a.ended == pytest.approx(a.detected + end_after, abs=0.11)  # end_after_seconds after last over the limit
    assert a.ended is not None and a.rules[0].removed_at == pytest.approx(
        a.ended + 60.0, abs=0.11
    )  # hold_seconds after the end
    assert c.ticks < 200  # the flood, its 5 s tail, the refreshes and the end: none for the 3 years
    assert c.timeline.gaps and c.timeline.gaps[0][1] - c.timeline.gaps[0][0] > three_years - 10


def _dense(path: Path, cfg: Config, settle: float) -> list[dict[str, Any]]:
    """The same capture with a tick at every interval boundary, as the engine runs live."""
    batch = np.concatenate(list(CaptureReader(path).batches()))
    interval = cfg.shield.interval_ms / 1000
    now = [0.0]
    dp = ReplayDataPlane(cfg.shield.ipv6_prefix_len, clock=lambda: now[0])
    out = io.StringIO()
    engine = Engine(cfg, dp, dp.backend, EventSink(out), clock=lambda: now[0])
    t0 = now[0] = float(batch["ts"][0])
    engine.start(t0)
    k = np.maximum.accumulate(np.floor((batch["ts"] - t0) / interval).astype(np.int64))
    last = int(k[-1]) + round(settle / interval)
    bounds = np.searchsorted(k, np.arange(last + 2))
    for b in range(last + 1):
        rows = batch[bounds[b] : bounds[b + 1]]
        if len(rows):
            dp.feed(rows)
        now[0] = t0 + (b + 1) * interval
        engine.tick(now[0])
    return [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.mark.parametrize("name", ["stopddos_pkt.TCP.synflood.spoofed.pcap", "ddosgrid_synflood.pcap"])
def test_sparse_replay_decides_as_ticking_every_interval(name: str) -> None:
    cfg = default_config()
    sparse = one(DATA / name, cfg)
    events = _dense(DATA / name, cfg, settle=70.0)
    starts = {e["attack_id"]: e for e in events if e["event"] == "attack_start"}
    ends = {e["attack_id"]: e for e in events if e["event"] == "attack_end"}
    applied = {e["rule"]["mitigation_id"]: e for e in events if e["event"] == "mitigation_applied"}
    removed = {e["rule"]["mitigation_id"]: e for e in events if e["event"] == "mitigation_removed"}
    assert [a.attack_id for a in sparse.attacks] == sorted(starts)
    for a in sparse.attacks:
        assert (a.detected, a.ended, a.target) == (
            starts[a.attack_id]["ts"],
            ends[a.attack_id]["ts"],
            starts[a.attack_id]["target"],
        )
        assert (a.peak_pps, a.types) == (ends[a.attack_id]["peak_pps"], ends[a.attack_id]["attack_types"])
        for r in a.rules:
            assert (r.match, r.applied_at) == (applied[r.rule_id]["rule"]["match"], applied[r.rule_id]["ts"])
            assert (r.removed_at, r.hits) == (removed[r.rule_id]["ts"], removed[r.rule_id]["hits"]["packets"])
    assert sparse.ticks < len([e for e in events if e["event"] == "ready"]) + round(70.0 / 0.1)


# ---- bounded memory -----------------------------------------------------------------------------


def test_source_counts_stay_bounded_and_keep_the_heavy_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offline, "MAX_TRACKED_SOURCES", 1000)
    monkeypatch.setattr(offline, "SOURCE_BUFFER", 500)
    counter = offline._SourceCounter()
    rng = np.random.default_rng(1)
    heavy = np.zeros((1, 16), dtype=np.uint8)
    heavy[0, 10:] = [0xFF, 0xFF, 192, 0, 2, 1]
    for _ in range(20):
        spoofed = np.zeros((400, 16), dtype=np.uint8)
        spoofed[:, 10:12] = 0xFF
        spoofed[:, 12:] = rng.integers(0, 256, (400, 4))
        counter.add(np.concatenate([spoofed, np.repeat(heavy, 100, axis=0)]), np.ones(500, dtype=np.uint64))
        assert len(counter.keys) <= 1000
    top, distinct, once = counter.result(3)
    assert top[0] == ("192.0.2.1", 2000)
    assert counter.total == 10000
    assert distinct == pytest.approx(8001, abs=50) and once == pytest.approx(8000, abs=100)


def test_sources_of_all_open_attacks_share_one_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    exact = one(DATA / "stopddos_pkt.TCP.synflood.spoofed.pcap").attacks[0]
    monkeypatch.setattr(offline, "MAX_TOTAL_SOURCES", 2000)
    monkeypatch.setattr(offline, "SOURCE_BUFFER", 1000)
    held: list[int] = []
    shrink = offline._SourceCounter.shrink

    def watch(self: offline._SourceCounter, keep: int) -> None:
        shrink(self, keep)
        held.append(self.held)

    monkeypatch.setattr(offline._SourceCounter, "shrink", watch)
    bounded = one(DATA / "stopddos_pkt.TCP.synflood.spoofed.pcap").attacks[0]
    assert held and max(held) <= 1000
    assert bounded.packets == exact.packets
    assert bounded.distinct_sources == pytest.approx(exact.distinct_sources, rel=0.02)
    assert bounded.spoofed_share == pytest.approx(exact.spoofed_share, abs=0.02)


def test_broken_timestamps_are_replayed_without_error(tmp_path: Path) -> None:
    frame = eth(ipv4("198.51.100.1", "203.0.113.10", 17, udp(1, 2)))
    content = shb() + idb(1, tsoffset=1 << 62) + epb(0, 5, frame) + idb(1) + epb(1, 7, frame) + epb(0, 9, frame)
    p = tmp_path / "odd.pcapng"
    p.write_bytes(content)
    c = one(p)
    assert c.stats.decoded == 3 and c.attacks == []
    assert "Unix time" in report.render_text(analyze([p])) and "<svg" in report.render_html(analyze([p]))


def test_timeline_holds_every_packet_and_coarsens_past_its_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    c = one(DATA / "ddosgrid_synflood.pcap")
    assert c.timeline.resolution == 0.1  # short capture: fine bins
    assert c.timeline.pps.sum() * c.timeline.resolution == pytest.approx(c.stats.decoded)
    monkeypatch.setattr(offline, "MAX_TIMELINE_BINS", 8)
    small = one(DATA / "ddosgrid_synflood.pcap").timeline
    assert len(small.t) <= 8 and small.pps.sum() * small.resolution == pytest.approx(c.stats.decoded)
    assert list(small.to_json()["pps"]) == list(CATEGORY_NAMES)


# ---- several files, progress, bad files -----------------------------------------------------------


def test_several_files_each_replayed_on_its_own_with_progress() -> None:
    files = [
        DATA / "ddosgrid_synflood.pcap",
        DATA / "zeek_snmpwalk-short.pcap",
        DATA / "ndpi_ip_fragmented_garbage.pcap",
    ]
    seen: list[tuple[int, int]] = []
    result = analyze(files, progress=lambda d, t: seen.append((d, t)))
    assert [len(c.attacks) for c in result.captures] == [1, 0, 0]
    assert [a.attack_id for a in result.attacks] == [1]
    total = sum(f.stat().st_size for f in files)
    assert seen[-1] == (total, total) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert result.config_path is None and result.protected == ["0.0.0.0/0", "::/0"]


def test_an_unreadable_file_fails_before_any_replay(tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("not a capture\n")
    seen: list[int] = []
    with pytest.raises(ShieldError, match=r"notes\.txt"):
        analyze([DATA / "ddosgrid_synflood.pcap", bad], progress=lambda d, t: seen.append(d))
    assert seen == []


def test_truncated_capture_is_replayed_up_to_the_cut(tmp_path: Path) -> None:
    full = (DATA / "ddosgrid_synflood.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(full[: len(full) // 2])
    c = one(cut)
    assert c.stats.error is not None and 0 < c.stats.packets < 7769
    assert [a.types for a in c.attacks] == [["syn_flood"]]


def test_replay_is_quick() -> None:
    t = time.perf_counter()
    one(DATA / "stopddos_pkt.TCP.synflood.spoofed.pcap")
    assert time.perf_counter() - t < 5.0


# ---- carpet bombing ------------------------------------------------------------------------------

CARPET = """
protected = ["203.0.113.0/24"]
[shield]
dry_run = true
[[groups]]
name = "default"
[groups.thresholds]
udp = { pps = 5000 }
[groups.carpet.thresholds]
udp = { pps = 10000 }
"""


def test_carpet_bomb_in_a_capture_is_reported_on_its_prefix(tmp_path: Path) -> None:
    # 2 s: 20 kpps of DNS-looking UDP over 203.0.113.1-200 (100 pps each), and 8 kpps
    # at .10 from one source, which is the host's own attack
    rng = np.random.default_rng(3)
    frames = []
    for i in range(40_000):
        src = f"198.18.{rng.integers(0, 256)}.{rng.integers(1, 255)}"
        frames.append((1000.0 + i / 20_000, eth(ipv4(src, f"203.0.113.{1 + i % 200}", 17, udp(53, 4444, b"x" * 40)))))
    frames += [(1000.0 + i / 8_000, eth(ipv4("198.51.100.66", "203.0.113.10", 17, udp(1, 80)))) for i in range(16_000)]
    frames.sort(key=lambda f: f[0])
    p = tmp_path / "carpet.pcap"
    p.write_bytes(pcap_bytes(1, frames))
    c = one(p, parse(CARPET))
    got = {a.target: a for a in c.attacks}
    assert set(got) == {"203.0.113.0/24", "203.0.113.10/32"}
    carpet, host = got["203.0.113.0/24"], got["203.0.113.10/32"]
    assert carpet.types == ["udp_flood", "carpet_bombing"] and host.types == ["udp_flood"]
    # each packet counted once: the host's flood is not part of the carpet's
    assert carpet.packets <= 40_000 and host.packets <= 16_000 + 200
    assert carpet.packets >= 30_000 and host.top_sources[0].address == "198.51.100.66"
    assert carpet.spoofed_share > 0.5
    (rule,) = carpet.rules
    assert rule.match["dst"] == "203.0.113.0/24" and rule.match["sport"] == {"min": 53, "max": 53}
