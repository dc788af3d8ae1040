"""Decode throughput per core: raw frames, ``analyze`` on a pcap, sFlow, NetFlow/IPFIX.

    .venv/bin/python bench/decode.py [--runs 5] [--packets 1200000] [--cpu 0] [--only frames,analyze,tick,sflow,netflow]

Runs in one process pinned to one CPU (``--cpu``), so every figure is per core:

* **frames** -- :func:`~ddos_shield.capture.decode.decode_frames` on the frame chunks
  of the generated capture (65,536 rows a call, as the capture reader hands them out).
* **analyze** -- :func:`~ddos_shield.engine.offline.analyze` end to end (reading the
  file, decoding, counting, the engine's ticks, the report) on a generated pcap of
  ``--packets`` packets: the packets of real benign captures (nDPI's Netflix, reddit,
  Teams and Firefox sessions, repeated with their timing over 30 s) mixed with a
  randomly spoofed SYN flood (sources from 198.18.0.0/15) at 100,000 pps for 6 s.  The
  file is written to a temporary directory and deleted afterwards.
* **tick** -- one engine tick (counters read, rates, detection, policy) over the
  replay data plane holding 3,000 and 30,000 destinations.
* **sflow** -- :class:`~ddos_shield.capture.sflow.SflowDecoder` on datagrams built like
  an agent's (8 flow samples with 128-byte raw headers of the capture's packets, 1 in
  1,000, plus the counter samples agents interleave), and on the real datagrams of
  ``tests/data/flow`` replayed many times; one datagram a call (``decode``) and all
  queued datagrams in one call (``decode_many``).
* **netflow** -- ``NetflowDecoder`` (when ``ddos_shield.capture.netflow`` exists) on the
  real NetFlow v5, v9 and IPFIX datagrams of ``tests/data/flow`` replayed many times
  (templates first), records per second.

Each figure is the median of ``--runs`` runs.  Prints a Markdown section (the machine,
the figures, each run's value) to paste into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ddos_shield.capture import pcap
from ddos_shield.capture.decode import decode_frames
from ddos_shield.capture.pcap import CaptureReader
from ddos_shield.capture.sflow import SflowDecoder
from ddos_shield.engine.offline import analyze
from ddos_shield.records import addr_bytes

ROOT = Path(__file__).resolve().parent.parent
#: ../shared beside the checkout (or beside the worktrees' parent, for /work/wt/<name> checkouts)
SHARED = next(
    (
        p
        for p in (ROOT.parent / "shared" / "data" / "captures", ROOT.parent.parent / "shared" / "data" / "captures")
        if p.exists()
    ),
    ROOT.parent / "shared" / "data" / "captures",
)
FLOW_DATA = ROOT / "tests" / "data" / "flow"
#: real benign captures whose packets fill the generated capture (first found wins)
BENIGN = [
    SHARED / "benign" / "ndpi_netflix.pcap",
    SHARED / "benign" / "ndpi_reddit.pcap",
    SHARED / "benign" / "ndpi_teams.pcap",
    SHARED / "benign" / "ndpi_443-firefox.pcap",
]
#: used when ../shared is not there (CI)
BENIGN_FALLBACK = [
    ROOT / "tests" / "data" / "captures" / "ndpi_youtube_quic.pcap",
    ROOT / "tests" / "data" / "captures" / "zeek_smtp.pcap",
    ROOT / "tests" / "data" / "captures" / "zeek_snmpwalk-short.pcap",
]
VICTIM = "203.0.113.10"
BENIGN_SECONDS = 30.0
FLOOD_START, FLOOD_PPS = 10.0, 100_000
T0 = 1_700_000_000.0
SFLOW_RATE = 1000
SFLOW_SAMPLES = 8  # flow samples per datagram


# ---- the capture ---------------------------------------------------------------------


def read_pcap(path: Path) -> list[tuple[float, bytes]]:
    """(timestamp, frame) of every record of a classic Ethernet pcap (microseconds)."""
    data = path.read_bytes()
    if data[:4] != b"\xd4\xc3\xb2\xa1" or struct.unpack_from("<I", data, 20)[0] != 1:
        return []
    out, pos = [], 24
    while pos + 16 <= len(data):
        sec, usec, incl, _orig = struct.unpack_from("<IIII", data, pos)
        out.append((sec + usec * 1e-6, data[pos + 16 : pos + 16 + incl]))
        pos += 16 + incl
    return out


def benign_packets() -> tuple[list[tuple[float, bytes]], list[str]]:
    """Packets of the benign captures laid one after the other, times from 0."""
    paths = [p for p in BENIGN if p.exists()] or [p for p in BENIGN_FALLBACK if p.exists()]
    out: list[tuple[float, bytes]] = []
    t = 0.0
    for p in paths:
        pk = read_pcap(p)
        if not pk:
            continue
        first = pk[0][0]
        out.extend((t + ts - first, frame) for ts, frame in pk)
        t = out[-1][0] + 0.001
    return out, [p.name for p in paths]


def syn_frames(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` Ethernet/IPv4/TCP SYN frames (60 bytes with padding) from random sources in
    198.18.0.0/15 and random ports to VICTIM:80."""
    head = bytes.fromhex("0200000000020200000000010800")
    ip = bytearray(bytes.fromhex("450000280000400040060000") + bytes(4) + bytes(map(int, VICTIM.split("."))))
    tcp = bytes.fromhex("0000005000000000000000005002ffff00000000")
    frame = np.frombuffer(head + bytes(ip) + tcp + bytes(6), dtype=np.uint8)
    out = np.tile(frame, (n, 1))
    src = (198 << 24 | 18 << 16) + rng.integers(0, 1 << 17, n)
    out[:, 26:30] = src.astype(">u4").view(np.uint8).reshape(n, 4)
    out[:, 18:20] = rng.integers(0, 1 << 16, n).astype(">u2").view(np.uint8).reshape(n, 2)  # IP id
    out[:, 22] = rng.integers(32, 128, n)  # TTL
    out[:, 34:36] = rng.integers(1024, 1 << 16, n).astype(">u2").view(np.uint8).reshape(n, 2)
    out[:, 38:42] = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(">u4").view(np.uint8).reshape(n, 4)
    return out


def write_capture(path: Path, packets: int, seed: int = 1) -> dict[str, Any]:
    """Write the benchmark capture (see the module docstring); returns what it holds."""
    rng = np.random.default_rng(seed)
    benign, names = benign_packets()
    n_flood = packets // 2
    n_benign = packets - n_flood
    span = benign[-1][0] + 0.001
    reps = -(-n_benign // len(benign))
    stretch = BENIGN_SECONDS / (span * reps)
    # benign: the captures repeated back to back, squeezed into BENIGN_SECONDS
    b_ts = np.concatenate([(np.array([t for t, _ in benign]) + r * span) * stretch for r in range(reps)])[:n_benign]
    b_idx = np.tile(np.arange(len(benign)), reps)[:n_benign]
    f_ts = FLOOD_START + np.sort(rng.random(n_flood)) * (n_flood / FLOOD_PPS)
    flood = syn_frames(n_flood, rng)
    ts = np.concatenate([b_ts, f_ts]) + T0
    order = np.argsort(ts, kind="stable")
    blobs = [f for _, f in benign]
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        sec = np.floor(ts).astype(np.int64)
        usec = np.round((ts - sec) * 1e6).astype(np.int64).clip(0, 999_999)
        parts = []
        for i in order.tolist():
            frame = blobs[b_idx[i]] if i < n_benign else flood[i - n_benign].tobytes()
            parts.append(struct.pack("<IIII", sec[i], usec[i], len(frame), len(frame)))
            parts.append(frame)
            if len(parts) > 100_000:
                f.write(b"".join(parts))
                parts = []
        f.write(b"".join(parts))
    return {
        "packets": packets,
        "benign": n_benign,
        "flood": n_flood,
        "benign_from": names,
        "bytes": path.stat().st_size,
    }


def pcap_payloads(path: Path) -> list[bytes]:
    """UDP payloads of the Ethernet (or Linux cooked) IPv4/IPv6 packets of a pcap."""
    data = path.read_bytes()
    if data[:4] != b"\xd4\xc3\xb2\xa1":
        return []
    linktype = struct.unpack_from("<I", data, 20)[0]
    out = []
    for _, frame in read_pcap_any(data):
        if linktype == 113:  # Linux cooked: 16-byte header, protocol at 14
            etype, pos = struct.unpack_from(">H", frame, 14)[0], 16
        else:
            etype, pos = struct.unpack_from(">H", frame, 12)[0], 14
            while etype in (0x8100, 0x88A8):
                etype, pos = struct.unpack_from(">H", frame, pos + 2)[0], pos + 4
        if etype == 0x0800:
            pos += (frame[pos] & 0x0F) * 4
        elif etype == 0x86DD:
            pos += 40
        else:
            continue
        out.append(frame[pos + 8 :])
    return out


def read_pcap_any(data: bytes) -> Iterator[tuple[float, bytes]]:
    pos = 24
    while pos + 16 <= len(data):
        sec, usec, incl, _orig = struct.unpack_from("<IIII", data, pos)
        yield sec + usec * 1e-6, data[pos + 16 : pos + 16 + incl]
        pos += 16 + incl


# ---- sFlow datagrams -------------------------------------------------------------------


def u32(*values: int) -> bytes:
    return struct.pack(f">{len(values)}I", *values)


def sflow_record(fmt: int, body: bytes) -> bytes:
    return u32(fmt, len(body)) + body


def sflow_datagrams(frames: list[bytes], count: int, rng: np.random.Generator) -> list[bytes]:
    """Datagrams as an agent sends them: SFLOW_SAMPLES flow samples each (a raw header of
    the first 128 bytes of a frame, frame length with FCS, and an extended switch
    record), a counter sample in every fifth datagram, sequence numbers in order."""
    out = []
    seq = 1
    for d in range(count):
        samples = []
        for _ in range(SFLOW_SAMPLES):
            frame = frames[int(rng.integers(len(frames)))]
            head = frame[:128]
            raw = sflow_record(
                1, u32(1, len(frame) + 4, len(frame) - len(head), len(head)) + head + bytes(-len(head) % 4)
            )
            switch = sflow_record(1001, u32(10, 0, 10, 0))
            body = u32(seq, 3, SFLOW_RATE, SFLOW_RATE * seq, 0, 3, 7, 2) + raw + switch
            samples.append(sflow_record(1, body))
            seq += 1
        if d % 5 == 0:
            samples.append(sflow_record(2, u32(d, 3, 1) + sflow_record(1, bytes(88))))
        head = u32(5, 1) + bytes([192, 0, 2, 1]) + u32(0, d + 1, 1000 + d, len(samples))
        out.append(head + b"".join(samples))
    return out


# ---- NetFlow v9 / IPFIX datagrams filled up --------------------------------------------


def fill_datagram(data: bytes, records_in: int, size: int = 1400) -> tuple[bytes, int] | None:
    """A NetFlow v9 or IPFIX datagram whose one data set holds ``records_in`` records,
    with that set's records repeated to fill ``size`` bytes (as a router's full export
    datagram): (datagram, records)."""
    version = struct.unpack_from(">H", data)[0]
    head_len = 20 if version == 9 else 16
    pos, sets = head_len, []
    while pos + 4 <= len(data):
        sid, length = struct.unpack_from(">HH", data, pos)
        if length < 4:
            return None
        sets.append((sid, data[pos : pos + length]))
        pos += length
    data_sets = [s for s in sets if s[0] >= 256]
    if len(data_sets) != 1 or records_in == 0:
        return None
    sid, body = data_sets[0]
    rec_len = (len(body) - 4) // records_in
    records = body[4 : 4 + rec_len * records_in]
    n = max(1, (size - head_len - 4) // rec_len)
    filled = (records * (n // records_in + 1))[: n * rec_len]
    new_set = struct.pack(">HH", sid, 4 + len(filled)) + filled
    if version == 9:
        header = data[:2] + struct.pack(">H", n) + data[4:20]
    else:
        header = data[:2] + struct.pack(">H", head_len + len(new_set)) + data[4:16]
    return header + new_set, n


# ---- measuring -------------------------------------------------------------------------


def median_rate(runs: int, work: Callable[[], int]) -> tuple[float, list[float]]:
    """Items per CPU second of ``work`` (which returns the items it handled), median of ``runs``."""
    rates = []
    for _ in range(runs):
        t = time.process_time()
        items = work()
        rates.append(items / (time.process_time() - t))
    return statistics.median(rates), rates


def machine() -> str:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f'Linux {platform.release()} (`uname -r`), CPU "{cpu}", {os.cpu_count()} CPUs, Python {platform.python_version()}, numpy {np.__version__}'


def fmt_rate(rate: float) -> str:
    return f"{rate / 1e6:.2f} M" if rate >= 1e6 else f"{rate / 1e3:.0f} k"


def fmt_runs(rates: list[float]) -> str:
    return ", ".join(fmt_rate(r) for r in rates)


def bench_frames(path: Path, runs: int) -> dict[str, Any]:
    chunks = list(CaptureReader(path).chunks())
    total = sum(len(c) for c in chunks)

    def work() -> int:
        for c in chunks:
            decode_frames(c.frames, c.caplen, c.wirelen)
        return total

    rate, rates = median_rate(runs, work)
    return {"rate": rate, "runs": rates, "packets": total, "chunk": int(statistics.median(len(c) for c in chunks))}


def bench_analyze(path: Path, runs: int) -> dict[str, Any]:
    rates, walls, found = [], [], ""
    for _ in range(runs):
        t, w = time.process_time(), time.perf_counter()
        result = analyze([path])
        cpu, wall = time.process_time() - t, time.perf_counter() - w
        packets = result.captures[0].stats.packets
        rates.append(packets / cpu)
        walls.append(packets / wall)
        found = "; ".join(f"{'+'.join(a.types)} on {a.target}" for a in result.attacks)
    return {"rate": statistics.median(rates), "runs": rates, "wall": statistics.median(walls), "found": found}


def bench_sflow(runs: int, rng: np.random.Generator) -> list[tuple[str, float, list[float]]]:
    benign, _ = benign_packets()
    frames = [f for _, f in benign] + [f.tobytes() for f in syn_frames(2000, rng)]
    built = sflow_datagrams(frames, 2000, rng)
    real = [d for p in sorted(FLOW_DATA.glob("*sflow*.pcap")) for d in pcap_payloads(p)]
    exporter = addr_bytes("192.0.2.1")
    out = []
    for label, datagrams, reps in (
        (f"built: {SFLOW_SAMPLES} raw-header samples a datagram", built, 1),
        (f"real datagrams of tests/data/flow ({len(real)}) replayed", real, max(1, 4000 // max(len(real), 1))),
    ):
        work = datagrams * reps

        def one_by_one(work: list[bytes] = work) -> int:
            dec = SflowDecoder(SFLOW_RATE)
            for d in work:
                dec.decode(d, exporter, T0)
            return dec.flow_samples

        def many(work: list[bytes] = work) -> int:
            dec = SflowDecoder(SFLOW_RATE)
            for i in range(0, len(work), 64):
                dec.decode_many([(d, T0) for d in work[i : i + 64]], exporter)
            return dec.flow_samples

        out.append((f"sFlow, {label}, `decode` per datagram", *median_rate(runs, one_by_one)))
        if hasattr(SflowDecoder, "decode_many"):  # not in older trees (bench/decode.py measures those too)
            out.append((f"sFlow, {label}, `decode_many` of 64 datagrams", *median_rate(runs, many)))
    return out


def bench_tick(destinations: int, ticks: int, rng: np.random.Generator) -> tuple[float, list[float]]:
    """CPU milliseconds of one engine tick over the replay data plane with ``destinations``
    destinations seen (IPv4 and IPv6, below every threshold), each fed a few packets
    between ticks: counters read, rates, detection, policy.  Median of ``ticks`` ticks."""
    import io

    from ddos_shield.dataplane.replay import ReplayDataPlane
    from ddos_shield.engine import Engine
    from ddos_shield.engine.offline import default_config
    from ddos_shield.events import EventSink
    from ddos_shield.records import empty_traffic

    cfg = default_config()
    now = [T0]
    dp = ReplayDataPlane(clock=lambda: now[0])
    engine = Engine(cfg, dp, dp.backend, EventSink(io.StringIO(), keep=1), clock=lambda: now[0])
    engine.start(now[0])
    b = empty_traffic(destinations * 2)
    dst = np.zeros((len(b), 16), dtype=np.uint8)
    host = np.tile(np.arange(destinations), 2)
    v6 = host % 4 == 0  # a quarter IPv6 /64s, the rest IPv4 addresses
    dst[:, 10:12] = 0xFF
    dst[:, 12:16] = (10 << 24 | host).astype(">u4").view(np.uint8).reshape(-1, 4)
    dst[v6] = 0
    dst[v6, :2] = (0x20, 0x01)
    dst[v6, 2:6] = host[v6].astype(">u4").view(np.uint8).reshape(-1, 4)
    b["dst"] = dst
    b["flags"] = np.where(v6, 1, 0)
    b["src"][:, 10:12] = 0xFF
    b["proto"], b["category"], b["packets"], b["bytes"], b["length"] = 17, 2, 1, 100, 100
    times = []
    for _ in range(ticks):
        b["ts"] = now[0]
        dp.feed(b[rng.permutation(len(b))])
        now[0] += 0.1
        t = time.process_time()
        engine.tick(now[0])
        times.append((time.process_time() - t) * 1000)
    return statistics.median(times[ticks // 10 :]), times


NETFLOW_CASES = [
    # label, files fed in order (templates first), fill the data datagrams up to 1400 bytes
    ("NetFlow v5 (akvorado nfv5.pcap, 29 records a datagram)", ["akvorado_nfv5"], False),
    (
        "NetFlow v9 (akvorado template + data, data set filled to 1400 bytes)",
        ["akvorado_nfv9_template", "akvorado_nfv9_data"],
        True,
    ),
    ("NetFlow v9 (pmacct 101-NFv9-CISCO as captured, 1-3 records a datagram)", ["pmacct_101-NFv9-CISCO"], False),
    (
        "IPFIX (akvorado ipfixprobe template + data, data set filled to 1400 bytes)",
        ["akvorado_ipfixprobe-templates", "akvorado_ipfixprobe-data"],
        True,
    ),
    ("IPFIX (pmacct 100-IPFIXv10-CISCO as captured)", ["pmacct_100-IPFIXv10-CISCO"], False),
]


def bench_netflow(runs: int) -> list[tuple[str, float, list[float]]]:
    try:
        from ddos_shield.capture.netflow import NetflowDecoder
    except ImportError:
        return []
    exporter = addr_bytes("192.0.2.1")
    out = []
    for label, files, fill in NETFLOW_CASES:
        datagrams = [d for f in files for d in pcap_payloads(FLOW_DATA / f"{f}.pcap")]
        if not datagrams:
            continue
        if fill:  # keep the template datagrams, fill the data ones
            dec = NetflowDecoder()
            filled = []
            for d in datagrams:
                n = len(dec.decode(d, exporter, T0).batch)
                f = fill_datagram(d, n) if n else None
                filled.append(f[0] if f else d)
            datagrams = filled
        # datagrams that make no records (templates, options) are fed once; the rest repeatedly
        dec = NetflowDecoder()
        made = [len(dec.decode(d, exporter, T0).batch) for d in datagrams]
        setup = [d for d, n in zip(datagrams, made, strict=True) if n == 0]
        data = [d for d, n in zip(datagrams, made, strict=True) if n]
        if not data:
            continue
        reps = max(1, 200_000 // sum(made))

        def work(setup: list[bytes] = setup, data: list[bytes] = data, reps: int = reps) -> int:
            dec = NetflowDecoder()
            for d in setup:
                dec.decode(d, exporter, T0)
            records = 0
            for _ in range(reps):
                for d in data:
                    records += len(dec.decode(d, exporter, T0).batch)
            return records

        def many(setup: list[bytes] = setup, data: list[bytes] = data, reps: int = reps, size: int = 64) -> int:
            dec = NetflowDecoder()
            for d in setup:
                dec.decode(d, exporter, T0)
            queue = [(d, T0) for _ in range(reps) for d in data]
            records = 0
            for i in range(0, len(queue), size):
                records += sum(len(o.batch) for o in dec.decode_many(queue[i : i + size], exporter))
            return records

        out.append((f"{label}, `decode` per datagram", *median_rate(runs, work)))
        if hasattr(NetflowDecoder, "decode_many"):  # not in older trees
            # 64 datagrams a call, as the sFlow figures; 512, a collector's queue of one
            # 0.1 s tick at ~5,000 datagrams a second
            for size in (64, 512):
                rate, rates = median_rate(runs, lambda size=size: many(size=size))  # type: ignore[misc]
                out.append((f"{label}, `decode_many` of {size} datagrams", rate, rates))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--packets", type=int, default=1_200_000)
    ap.add_argument("--cpu", type=int, default=0, help="CPU to pin the benchmark to")
    ap.add_argument("--only", default="frames,analyze,tick,sflow,netflow")
    args = ap.parse_args()
    only = set(args.only.split(","))
    os.sched_setaffinity(0, {args.cpu})
    rng = np.random.default_rng(7)
    lines = [
        "## Decoding and analyze throughput (`bench/decode.py`)",
        "",
        f"Machine: {machine()}; measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, one process",
        f"pinned to CPU {args.cpu}.  Rates are items per CPU second of that process (so per core),",
        f"median of {args.runs} runs; each run's figure follows.",
        "",
        "| what | per core (median) | runs |",
        "|---|---:|---|",
    ]
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dsbench-") as tmp:
        path = Path(tmp) / "bench.pcap"
        if only & {"frames", "analyze"}:
            info = write_capture(path, args.packets)
            notes.append(
                f"Capture: {info['packets']:,} packets, {info['bytes'] / 1e6:.0f} MB pcap: {info['benign']:,} packets of"
                f" {', '.join(info['benign_from'])} repeated over {BENIGN_SECONDS:.0f} s and {info['flood']:,} spoofed SYNs"
                f" (198.18.0.0/15 -> {VICTIM}:80) at {FLOOD_PPS:,} pps from t = {FLOOD_START:.0f} s."
            )
        if "frames" in only:
            r = bench_frames(path, args.runs)
            lines.append(
                f"| raw frames: `decode_frames` on the capture's chunks (median chunk {r['chunk']:,} rows) |"
                f" {fmt_rate(r['rate'])}packets/s | {fmt_runs(r['runs'])} |"
            )
        if "analyze" in only:
            r = bench_analyze(path, args.runs)
            lines.append(
                f"| `analyze` end to end on the capture | {fmt_rate(r['rate'])}packets/s | {fmt_runs(r['runs'])} |"
            )
            notes.append(f"analyze found: {r['found'] or 'nothing'}; wall-clock rate {fmt_rate(r['wall'])}packets/s.")
            walk = "the numpy walk"
            if getattr(pcap, "USE_NATIVE", False):  # trees before 9b4da1e have no compiled walker
                from ddos_shield.capture import native

                walk = "the compiled walker (capture/native.py)" if native.load() else walk
            notes.append(f"pcap records walked with {walk}.")
    if "tick" in only:
        for n in (3000, 30000):
            ms, _ = bench_tick(n, 100, rng)
            lines.append(
                f"| engine tick over the replay data plane, {n:,} destinations | {ms:.2f} ms a tick | median of 90 ticks |"
            )
    if "sflow" in only:
        for label, rate, rates in bench_sflow(args.runs, rng):
            lines.append(f"| {label} | {fmt_rate(rate)}samples/s | {fmt_runs(rates)} |")
    if "netflow" in only:
        nf = bench_netflow(args.runs)
        for label, rate, rates in nf:
            lines.append(f"| {label} | {fmt_rate(rate)}records/s | {fmt_runs(rates)} |")
        if not nf:
            notes.append("NetFlow/IPFIX: `ddos_shield.capture.netflow` is not there; not measured.")
    print("\n".join(lines))
    print()
    for note in notes:
        print(f"* {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
