"""Reports of an :class:`~ddos_shield.engine.offline.Analysis`: text, JSON and HTML.

* :func:`render_text` -- what ``ddos-shield analyze`` prints: per capture what was
  read, and per attack its type, target, times, peak rates, sources and rule;
* :func:`render_json` -- the same as one JSON object (``Analysis.to_json``);
* :func:`render_html` -- one self-contained page to send on: inline CSS and, per
  capture, an inline SVG timeline of traffic by category with each attack shaded
  and labelled, then a section per attack.  No script, no external asset.

:func:`progress` is the progress display for large captures (a rich bar when stderr
is a terminal, a line every tenth otherwise).

>>> from ddos_shield.engine.offline import analyze  # doctest: +SKIP
>>> html = render_html(analyze(["attack.pcap"]))  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import html
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO

import numpy as np

from ddos_shield.engine.offline import Analysis, AttackReport, CaptureAnalysis, RuleReport, Timeline
from ddos_shield.records import CATEGORY_NAMES

#: colours of the categories in the chart (tcp_syn, tcp, udp, icmp, frag, other)
COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#7f7f7f")


# ---- numbers and times -------------------------------------------------------------------


def si(v: float, unit: str) -> str:
    """``12345 -> '12.3 kpps'``."""
    for div, p in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.1f} {p}{unit}"
    return f"{v:.0f} {unit}"


def when(ts: float | None, date: bool = True) -> str:
    """UTC time of a capture timestamp, to the millisecond."""
    if ts is None:
        return "-"
    try:
        t = dt.datetime.fromtimestamp(ts, dt.UTC)
    except (OverflowError, ValueError, OSError):  # a broken capture's timestamp
        return f"{ts:.3f} (Unix time)"
    s = t.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S") + f".{t.microsecond // 1000:03d}"
    return s + (" UTC" if date else "")


def span(seconds: float) -> str:
    """A duration for people: ``0.04 s``, ``3 min 5 s``, ``5.8 years``."""
    if seconds < 60:
        return f"{seconds:.3g} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f} h"
    if seconds < 86400 * 365:
        return f"{seconds / 86400:.1f} days"
    return f"{seconds / (86400 * 365.25):.1f} years"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def rule_line(r: RuleReport) -> str:
    return (
        f"{r.action} {r.description}  (attack share {_pct(r.attack_share)}, collateral {_pct(r.collateral_share)}; "
        f"matched {r.hits:,} packets in the replay)"
    )


def sources_line(a: AttackReport) -> str:
    """Distinct sources, the spoofed-looking share when it is most of the attack, and
    the top sources (only those that carry a real share, for a spoofed one)."""
    spoofed = a.spoofed_share >= 0.5
    head = f"{a.distinct_sources:,} distinct"
    if spoofed:
        head += f", {_pct(a.spoofed_share)} of packets from sources seen only once (spoofed, or reflectors)"
    shown = [s for s in a.top_sources[:5] if not spoofed or s.share >= 0.01]
    tops = ", ".join(f"{s.address} {_pct(s.share)}" for s in shown)
    return f"{head}; top: {tops}" if tops else head


# ---- text ----------------------------------------------------------------------------------


def render_text(analysis: Analysis) -> str:
    """The plain-text report ``ddos-shield analyze`` prints."""
    n = len(analysis.attacks)
    out = [
        f"ddos-shield analyze: {len(analysis.captures)} capture(s), {n} attack(s) found",
        f"  {_config_line(analysis)}",
    ]
    for c in analysis.captures:
        out.append("")
        out.extend(_capture_text(c))
    return "\n".join(out) + "\n"


def _config_line(analysis: Analysis) -> str:
    d = analysis.groups.get("default", {}).get("thresholds", {})
    limits = ", ".join(f"{k} {si(v['pps'], 'pps')}" for k, v in d.items() if v.get("pps"))
    if analysis.config_path is None:
        return (
            f"every destination protected, default thresholds ({limits}); dry run, interval {analysis.interval_ms} ms"
        )
    return f"configuration {analysis.config_path}: groups {', '.join(analysis.groups)}; default group {limits}"


def _capture_text(c: CaptureAnalysis) -> list[str]:
    s = c.stats
    out = [
        f"{c.path}",
        f"  {c.format}, {', '.join(s.linktypes) or 'no interface'}; {s.packets:,} packets ({s.decoded:,} IP), "
        f"{span(c.duration)} from {when(s.first_ts)}",
        f"  replayed in {c.wall_seconds:.2f} s ({c.ticks:,} engine ticks)",
    ]
    skipped = [
        f"{v:,} {k}"
        for k, v in (("not IP", s.not_ip), ("malformed", s.malformed), ("of unsupported link types", s.unsupported))
        if v
    ]
    if skipped:
        out.append(f"  skipped: {', '.join(skipped)}")
    if s.error:
        out.append(f"  reading stopped early: {s.error}")
    if c.timeline.gaps:
        out.append(f"  gaps in time: {', '.join(span(b - a) for a, b in c.timeline.gaps)}")
    if not c.attacks:
        out.append("  no attack found")
    for a in c.attacks:
        out.extend(_attack_text(a))
    return out


def _attack_text(a: AttackReport) -> list[str]:
    ended = f", over at {when(a.ended, date=False)}" if a.ended is not None else ""
    out = [
        f"  attack {a.attack_id}: {', '.join(a.types)} on {a.target} (group {a.group})",
        f"    from {when(a.start)} to {when(a.end, date=False)} ({span(a.end - a.start)}); "
        f"detected {when(a.detected, date=False)}{ended}",
        f"    peak {si(a.peak_pps, 'pps')}, {si(a.peak_bps, 'bit/s')}; {a.packets:,} packets, {si(a.bytes, 'B')}",
        f"    sources: {sources_line(a)}",
    ]
    for r in a.rules:
        out.append(f"    rule: {rule_line(r)}")
    if not a.rules:
        out.append(f"    no rule: {a.skipped or 'too few samples to build one'}")
    return out


# ---- JSON ----------------------------------------------------------------------------------


def render_json(analysis: Analysis) -> str:
    """One JSON object (see :meth:`Analysis.to_json`)."""
    return json.dumps(analysis.to_json())


# ---- HTML ----------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:2em auto;max-width:1000px;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{font-size:1.05em;margin-bottom:.3em}.muted{color:#666}
table{border-collapse:collapse;margin:.4em 0}td,th{text-align:left;padding:.15em .8em .15em 0;vertical-align:top}
th{color:#555;font-weight:600}code{font:12px ui-monospace,Menlo,Consolas,monospace;background:#f4f4f4;padding:.1em .3em}
.attack{border-left:4px solid #d62728;padding-left:.8em;margin:1em 0}.none{color:#2a7a2a}
.legend span{display:inline-block;margin-right:1em}.legend i{display:inline-block;width:.9em;height:.9em;margin-right:.3em;vertical-align:-.1em}
svg{display:block;max-width:100%;height:auto}svg text{font:11px system-ui,sans-serif;fill:#333}
"""


def render_html(analysis: Analysis) -> str:
    """A self-contained HTML page: inline CSS and SVG, no script, no external asset."""
    e = html.escape
    n = len(analysis.attacks)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>DDoS Shield capture analysis: {n} attack(s)</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<h1>DDoS Shield: capture analysis</h1>",
        f'<p class="muted">{len(analysis.captures)} capture(s), {n} attack(s) found. {e(_config_line(analysis))}. '
        "Replayed through the shield's own detection at the captures' timestamps; rules are what the shield "
        "would have applied (dry run).</p>",
    ]
    for i, c in enumerate(analysis.captures, 1):
        parts.extend(_capture_html(c, i))
    parts += [
        f'<p class="muted">Generated by ddos-shield analyze on {e(when(dt.datetime.now(dt.UTC).timestamp()))}.</p>',
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"


def _capture_html(c: CaptureAnalysis, index: int) -> list[str]:
    e = html.escape
    s = c.stats
    rows = [
        ("file", f"<code>{e(c.path)}</code>"),
        ("format", e(f"{c.format}, {', '.join(s.linktypes) or 'no interface'}")),
        ("packets", e(f"{s.packets:,} ({s.decoded:,} IP; {s.not_ip:,} not IP, {s.malformed:,} malformed)")),
        ("time", e(f"{when(s.first_ts)} to {when(s.last_ts)} ({span(c.duration)})")),
        ("replay", e(f"{c.wall_seconds:.2f} s, {c.ticks:,} engine ticks")),
    ]
    if s.error:
        rows.append(("reading stopped", e(s.error)))
    out = [f"<section><h2>{e(c.path.rsplit('/', 1)[-1])}</h2>", _table(rows)]
    out.append(timeline_svg(c, str(index)))
    out.append(
        '<p class="legend">'
        + "".join(
            f'<span><i style="background:{col}"></i>{e(name)}</span>'
            for name, col in zip(CATEGORY_NAMES, COLOURS, strict=True)
        )
        + '<span><i style="background:#d62728;opacity:.18"></i>attack</span></p>'
    )
    if not c.attacks:
        out.append('<p class="none">No attack found.</p>')
    for a in c.attacks:
        out.extend(_attack_html(a, f"capture-{index}-attack-{a.attack_id}"))
    out.append("</section>")
    return out


def _attack_html(a: AttackReport, anchor: str) -> list[str]:
    e = html.escape
    rows = [
        ("type", e(", ".join(a.types))),
        ("target", f"<code>{e(a.target)}</code> (group {e(a.group)})"),
        ("start", e(when(a.start))),
        ("end", e(f"{when(a.end)} ({span(a.end - a.start)})")),
        ("detected", e(when(a.detected))),
        ("declared over", e(when(a.ended))),
        ("peak", e(f"{si(a.peak_pps, 'pps')}, {si(a.peak_bps, 'bit/s')}")),
        ("traffic", e(f"{a.packets:,} packets, {si(a.bytes, 'B')}")),
        ("sources", e(sources_line(a))),
    ]
    out = [f'<div class="attack" id="{anchor}"><h3>Attack {a.attack_id}: {e(", ".join(a.types))} on {e(a.target)}</h3>']
    out.append(_table(rows))
    if a.top_sources:
        out.append("<table><tr><th>top source</th><th>packets</th><th>share</th></tr>")
        for src in a.top_sources:
            out.append(
                f"<tr><td><code>{e(src.address)}</code></td><td>{src.packets:,}</td><td>{_pct(src.share)}</td></tr>"
            )
        out.append("</table>")
    for r in a.rules:
        fields = "".join(
            f"<tr><td>{e(k)}</td><td><code>{e(json.dumps(v))}</code></td></tr>" for k, v in r.match.items()
        )
        out += [
            f"<p><b>Rule</b> ({e(r.action)}): <code>{e(r.description)}</code></p>",
            f"<table><tr><th>match field</th><th>value</th></tr>{fields}</table>",
            _table(
                [
                    ("attack_share", e(_pct(r.attack_share))),
                    ("collateral_share", e(_pct(r.collateral_share))),
                    ("applied", e(when(r.applied_at))),
                    ("withdrawn", e(when(r.removed_at))),
                    ("matched in replay", e(f"{r.hits:,} packets")),
                    ("reason", e(r.reason)),
                ]
            ),
        ]
    if not a.rules:
        out.append(f"<p>No rule: {e(a.skipped or 'too few samples to build one')}.</p>")
    out.append("</div>")
    return out


def _table(rows: list[tuple[str, str]]) -> str:
    """Rows of (label, already escaped HTML)."""
    return "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


# ---- the timeline chart -------------------------------------------------------------------------

_W, _H = 960, 280
_LEFT, _RIGHT, _TOP, _BOTTOM = 48, 12, 34, 44
_GAP_W = 28  # pixels a gap takes, whatever its length
_MIN_SEG_W = 24  # pixels a segment takes at least


def timeline_svg(c: CaptureAnalysis, key: str = "1") -> str:
    """Traffic by category (stacked, the busiest second of each pixel column) with the
    attacks shaded and labelled; gaps in time drawn as narrow hatched breaks.  ``key``
    keeps the chart's ids apart from other charts on the same page."""
    e = html.escape
    tl = c.timeline
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" '
        f'role="img" aria-label="traffic timeline of {e(c.path)}">'
    )
    defs = (
        f'<defs><pattern id="hatch-{key}" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
        '<rect width="6" height="6" fill="#fafafa"/><line x1="0" y1="0" x2="0" y2="6" stroke="#bbb" stroke-width="2"/>'
        "</pattern></defs>"
    )
    if len(tl.t) == 0:
        return head + defs + f'<text x="{_W / 2}" y="{_H / 2}" text-anchor="middle">no IP traffic</text></svg>'
    xmap = _XMap(tl, _LEFT, _W - _RIGHT)
    plot_h = _H - _TOP - _BOTTOM
    total = tl.pps.sum(axis=1)
    top = _nice(float(total.max()))

    def y(v: float) -> float:
        return _TOP + plot_h * (1 - v / top)

    out = [
        head,
        defs,
        f'<rect x="{_LEFT}" y="{_TOP}" width="{_W - _LEFT - _RIGHT}" height="{plot_h}" fill="#fff" stroke="#ddd"/>',
    ]
    for i in range(5):
        v = top * i / 4
        out.append(f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{_LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{e(_short(v))}</text>')
    out.append(f'<text x="{_LEFT - 6}" y="{_TOP - 13}" text-anchor="end">pps</text>')
    # stacked columns: in each pixel column the busiest bin, split by category
    for x0, x1, row in xmap.columns(tl):
        base = 0.0
        for cat in range(len(CATEGORY_NAMES)):
            v = float(row[cat])
            if v <= 0:
                continue
            out.append(
                f'<rect x="{x0:.1f}" y="{y(base + v):.1f}" width="{max(x1 - x0, 0.6):.1f}" '
                f'height="{y(base) - y(base + v):.2f}" fill="{COLOURS[cat]}"/>'
            )
            base += v
    for gx, (g0, g1) in zip(xmap.gap_x, tl.gaps, strict=True):
        out.append(f'<rect x="{gx:.1f}" y="{_TOP}" width="{_GAP_W}" height="{plot_h}" fill="url(#hatch-{key})"/>')
        out.append(
            f'<text x="{gx + _GAP_W / 2:.1f}" y="{_TOP + plot_h + 30}" text-anchor="middle" class="gap">'
            f"gap {e(span(g1 - g0))}</text>"
        )
    # time labels at the start of each segment and at the end, none over another
    long = float(tl.t[-1]) - float(tl.t[0]) > 86400
    free = 0.0
    for sx, t, anchor in xmap.labels():
        text = _clock(t, long)
        width = 6.2 * len(text)
        lx = sx if anchor == "start" else sx - width
        if lx < free:
            continue
        free = lx + width + 8
        out.append(f'<text x="{sx:.1f}" y="{_TOP + plot_h + 15}" text-anchor="{anchor}">{e(text)}</text>')
    # attacks: shaded spans, labelled on one of two rows above the plot
    row_end = [-1e9, -1e9]
    for atk in c.attacks:
        x0 = xmap.x(atk.start)
        x1 = max(xmap.x(atk.end), x0 + 3)
        out.append(
            f'<rect x="{x0:.1f}" y="{_TOP}" width="{x1 - x0:.1f}" height="{plot_h}" fill="#d62728" '
            f'fill-opacity="0.18" stroke="#d62728" stroke-opacity="0.6"><title>{e(_attack_title(atk))}</title></rect>'
        )
        text = f"#{atk.attack_id} {', '.join(atk.types)} {atk.target}"
        level = 0 if x0 >= row_end[0] else 1 if x0 >= row_end[1] else 0
        row_end[level] = x0 + 6.5 * len(text)
        anchor = "end" if x0 + 6.5 * len(text) > _W else "start"
        out.append(
            f'<text x="{x0 if anchor == "start" else x1:.1f}" y="{13 + 14 * level}" text-anchor="{anchor}" '
            f'fill="#b01010" class="attack-label">{e(text)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _attack_title(a: AttackReport) -> str:
    return f"attack {a.attack_id}: {', '.join(a.types)} on {a.target}, {when(a.start)} to {when(a.end)}, peak {si(a.peak_pps, 'pps')}"


def _short(v: float) -> str:
    """An axis label: ``0``, ``750``, ``2.5k``, ``10k``, ``1.2M``."""
    for div, p in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:.3g}{p}"
    return f"{v:.3g}"


def _clock(ts: float, long: bool) -> str:
    try:
        t = dt.datetime.fromtimestamp(ts, dt.UTC)
    except (OverflowError, ValueError, OSError):
        return f"{ts:.0f}"
    return t.strftime("%Y-%m-%d %H:%M") if long else t.strftime("%H:%M:%S")


def _nice(v: float) -> float:
    """A round upper bound for the y axis."""
    if v <= 0:
        return 1.0
    mag = 10 ** np.floor(np.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * mag:
            return float(m * mag)
    return float(10 * mag)


class _XMap:
    """Capture time -> x, with every gap squeezed to a fixed width.

    Segments (the stretches between gaps) share the width in proportion to their
    length, each at least :data:`_MIN_SEG_W` pixels so a short burst stays visible.
    """

    def __init__(self, tl: Timeline, left: float, right: float) -> None:
        edges = [float(tl.t[0])] + [x for g in tl.gaps for x in g] + [float(tl.t[-1]) + tl.resolution]
        self.segments = [(edges[i], edges[i + 1]) for i in range(0, len(edges), 2)]
        avail = right - left - _GAP_W * len(tl.gaps)
        lengths = np.array([b - a for a, b in self.segments])
        widths = np.maximum(avail * lengths / max(lengths.sum(), 1e-9), _MIN_SEG_W)
        widths *= avail / widths.sum()
        self.x0: list[float] = []
        self.gap_x: list[float] = []
        pos = left
        for i, w in enumerate(widths):
            self.x0.append(pos)
            pos += float(w)
            if i < len(tl.gaps):
                self.gap_x.append(pos)
                pos += _GAP_W
        self.widths = [float(w) for w in widths]

    def x(self, t: float) -> float:
        for (a, b), x0, w in zip(self.segments, self.x0, self.widths, strict=True):
            if t <= b:
                return x0 + w * min(max((t - a) / max(b - a, 1e-9), 0.0), 1.0)
        return self.x0[-1] + self.widths[-1]

    def labels(self) -> Iterator[tuple[float, float, str]]:
        """(x, time, text-anchor) at each segment's start and end."""
        for (a, b), x0, w in zip(self.segments, self.x0, self.widths, strict=True):
            yield x0, a, "start"
            yield x0 + w, b, "end"

    def columns(self, tl: Timeline) -> Iterator[tuple[float, float, np.ndarray]]:
        """(x0, x1, pps row) per pixel column: the busiest bin in the column."""
        total = tl.pps.sum(axis=1)
        xs = np.array([self.x(float(t)) for t in tl.t])
        xe = np.array([self.x(float(t) + tl.resolution) for t in tl.t])
        col = np.floor(xs).astype(np.int64)
        order = np.lexsort((-total, col))  # per column, the busiest bin first
        seen: set[int] = set()
        for i in order:
            c = int(col[i])
            if c in seen:
                continue
            seen.add(c)
            yield float(xs[i]), float(max(xe[i], xs[i] + 1.0)), tl.pps[i]


# ---- progress ---------------------------------------------------------------------------------


@contextmanager
def progress(stream: IO[str] | None = None, label: str = "analyze") -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback drawing on ``stream`` (stderr): a rich bar
    on a terminal, otherwise a line at every tenth of a large job."""
    out = stream if stream is not None else sys.stderr
    if out.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

        bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(file=out),
            transient=True,
        )
        task = bar.add_task(label, total=None)
        with bar:

            def update(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            yield update
        return
    shown = [-1]

    def line(done: int, total: int) -> None:
        if total < 64 << 20:  # small jobs finish before anyone waits for them
            return
        tenth = done * 10 // max(total, 1)
        if tenth > shown[0]:
            shown[0] = tenth
            print(f"{label}: {tenth * 10}% ({done >> 20} of {total >> 20} MiB)", file=out, flush=True)

    yield line
