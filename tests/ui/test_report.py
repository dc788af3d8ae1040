"""Reports of replayed captures: the JSON object's fields, a well-formed self-contained
HTML page with its SVG timeline and every attack, the text report, and the
``ddos-shield analyze`` command's output and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ddos_shield.engine.offline import Analysis, analyze
from ddos_shield.records import CATEGORY_NAMES
from ddos_shield.ui import report

DATA = Path(__file__).resolve().parent.parent / "data" / "captures"
ATTACK_FILES = [DATA / "ddosgrid_synflood.pcap", DATA / "stopddos_amp.UDP.snmp.src161.pcapng"]
FILES = [*ATTACK_FILES, DATA / "ndpi_ookla.pcap"]  # the last: no attack, two gaps of years


@pytest.fixture(scope="module")
def analysis() -> Analysis:
    result = analyze(FILES)
    assert len(result.attacks) == 2
    return result


# ---- JSON ------------------------------------------------------------------------------------


def test_json_is_one_object_with_every_field(analysis: Analysis) -> None:
    obj = json.loads(report.render_json(analysis))
    assert {"version", "config", "protected", "interval_ms", "groups", "captures"} <= set(obj)
    assert obj["groups"]["default"]["thresholds"]["syn"]["pps"] == 10000
    cap = obj["captures"][0]
    for key in ("path", "format", "packets", "bytes", "decoded", "not_ip", "malformed", "unsupported", "first_ts", "last_ts",
                "error", "linktypes", "duration", "ticks", "wall_seconds", "attacks", "timeline"):  # fmt: skip
        assert key in cap, key
    attack = cap["attacks"][0]
    for key in ("capture", "attack_id", "target", "group", "types", "start", "end", "detected", "ended", "peak_pps",
                "peak_bps", "packets", "bytes", "distinct_sources", "spoofed_share", "top_sources", "rules", "skipped"):  # fmt: skip
        assert key in attack, key
    assert attack["top_sources"][0] == {"address": "10.0.1.2", "packets": 7658, "share": 1.0}
    rule = attack["rules"][0]
    for key in ("rule_id", "action", "match", "description", "reason", "attack_share", "collateral_share", "applied_at",
                "removed_at", "hits", "dropped"):  # fmt: skip
        assert key in rule, key
    assert rule["match"] == {"src": "10.0.1.2/32"}
    tl = obj["captures"][2]["timeline"]
    assert tl["categories"] == list(CATEGORY_NAMES) and set(tl["pps"]) == set(CATEGORY_NAMES)
    assert len(tl["t"]) == len(tl["bps"]) == len(tl["pps"]["tcp"]) and len(tl["gaps"]) == 2


# ---- HTML ------------------------------------------------------------------------------------

VOID = {"meta", "link", "br", "hr", "img", "input", "col", "area", "base", "wbr", "source"}
SVG_LEAVES = {"rect", "line", "path", "circle", "polygon", "stop"}


class _Checker(HTMLParser):
    """Tracks open elements; every end tag must close the innermost open element."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_is_well_formed_self_contained_and_shows_every_attack(analysis: Analysis) -> None:
    page = report.render_html(analysis)
    chk = _Checker()
    chk.feed(page)
    chk.close()
    assert chk.errors == [] and chk.stack == []
    names = [t for t, _ in chk.tags]
    assert names.count("svg") == len(FILES) and "script" not in names
    # nothing fetched: no src, no link, hrefs only to the page itself
    assert "link" not in names and "img" not in names
    assert all(not a.get("src") for _, a in chk.tags)
    assert all((a.get("href") or "#").startswith("#") for _, a in chk.tags)
    assert "url(http" not in page and "@import" not in page
    # each attack: its section, and a shaded span with a label on the timeline
    text = "".join(chk.text)
    ids = [at["id"] for _, at in chk.tags if at.get("id")]
    assert len(ids) == len(set(ids))  # attack ids start at 1 in every capture: anchors name the capture too
    for i, c in enumerate(analysis.captures, 1):
        for a in c.attacks:
            assert f"capture-{i}-attack-{a.attack_id}" in ids
    for a in analysis.attacks:
        assert f"#{a.attack_id} {', '.join(a.types)} {a.target}" in text
        for r in a.rules:
            assert r.description in text
    spans = [at for t, at in chk.tags if t == "rect" and at.get("fill-opacity") == "0.18"]
    assert len(spans) == len(analysis.attacks)
    assert "attack_share" in text and "collateral_share" in text
    assert text.count("gap 47.2 years") == 1


def test_chart_of_a_capture_without_ip_traffic(tmp_path: Path) -> None:
    from tests.capture.test_pcap import eth, pcap_bytes

    p = tmp_path / "arp.pcap"
    p.write_bytes(pcap_bytes(1, [(1.0, eth(b"\x00" * 28, 0x0806))]))
    page = report.render_html(analyze([p]))
    chk = _Checker()
    chk.feed(page)
    assert chk.errors == [] and "no IP traffic" in page


# ---- text ------------------------------------------------------------------------------------


def test_text_report_mentions_every_capture_and_attack(analysis: Analysis) -> None:
    text = report.render_text(analysis)
    for c in analysis.captures:
        assert c.path in text
    for a in analysis.attacks:
        assert f"attack {a.attack_id}: {', '.join(a.types)} on {a.target}" in text
        assert all(r.description in text for r in a.rules)
    assert "no attack found" in text and "47.2 years" in text


# ---- the command -------------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ddos_shield.cli.main", "analyze", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_analyze_command_prints_writes_and_exits_zero(tmp_path: Path) -> None:
    html_file = tmp_path / "report.html"
    run = cli(*map(str, FILES), "--json", "--html", str(html_file))
    assert run.returncode == 0, run.stderr
    obj = json.loads(run.stdout)
    assert [len(c["attacks"]) for c in obj["captures"]] == [1, 1, 0]
    assert html_file.read_text().startswith("<!DOCTYPE html>")
    clean = cli(str(DATA / "zeek_snmpwalk-short.pcap"))
    assert clean.returncode == 0 and "no attack found" in clean.stdout


def test_analyze_command_takes_a_configuration(tmp_path: Path) -> None:
    cfg = tmp_path / "shield.toml"
    cfg.write_text(
        'protected = ["0.0.0.0/0"]\n[[groups]]\nname = "default"\n[groups.thresholds]\nfrag = { pps = 1000 }\n'
    )
    run = cli(str(DATA / "ndpi_ip_fragmented_garbage.pcap"), "--config", str(cfg), "--json")
    assert run.returncode == 0, run.stderr
    obj = json.loads(run.stdout)
    assert obj["config"] == str(cfg)
    assert [a["types"] for a in obj["captures"][0]["attacks"]] == [["fragment_flood"]]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is a text file\n", "not a pcap or pcapng file"),
        (None, "cannot read"),
    ],
)
def test_analyze_command_exits_two_on_an_unreadable_file(tmp_path: Path, content: bytes | None, message: str) -> None:
    p = tmp_path / "input.pcap"
    if content is not None:
        p.write_bytes(content)
    run = cli(str(DATA / "ddosgrid_synflood.pcap"), str(p))
    assert run.returncode == 2 and run.stdout == ""
    assert message in run.stderr and str(p) in run.stderr


def test_progress_lines_off_a_terminal(tmp_path: Path) -> None:
    out = tmp_path / "progress.txt"
    with out.open("w") as stream, report.progress(stream) as update:
        for done in range(0, 101 << 20, 8 << 20):
            update(done, 100 << 20)
        update(100 << 20, 100 << 20)
    lines = out.read_text().splitlines()
    assert lines[0].startswith("analyze: 0%") and lines[-1].startswith("analyze: 100%")
    assert len(lines) == 11
