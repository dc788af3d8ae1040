"""Side by side: DDoS Shield and FastNetMon fed the same NetFlow export, in the same run.

    .venv/bin/python bench/fastnetmon.py [--runs 5] [--pps 300000] [--seconds 6] [--kinds syn,udp,icmp]

Needs, besides the project's own set-up (run as root)::

    apt-get install fastnetmon softflowd netsniff-ng tcpdump

(pmacct is not needed: softflowd itself sends every export datagram to both collectors,
see below.)  FastNetMon is Debian's ``fastnetmon`` package (1.2.4, community edition)
run from ``/usr/sbin/fastnetmon`` with a configuration file written here.

Topology (namespaces made and removed here, prefix ``dfb-``)::

    dfb-gen  dfb-g0 ------ dfb-r0  dfb-rtr  dfb-r1 ------ dfb-c0  dfb-col
    trafgen              victims 203.0.113.x   192.0.2.1/24       192.0.2.2/24
                         softflowd (NetFlow v9) exporter          shield   udp/2056
                                                                  FastNetMon udp/2057
                                                                  tcpdump on dfb-c0

* dfb-gen: trafgen writes byte-exact frames (spoofed sources 198.18.0.0/16, inside the
  benchmarking range 198.18.0.0/15; random source ports) at a fixed rate, paced by a
  tbf on dfb-g0 as the lab does, bounded by ``-n COUNT`` and ``timeout``.
* dfb-rtr: each run floods its own victim address, 203.0.113.(10+i), assigned to
  dfb-r0, so neither tool carries state (FastNetMon's ban, the shield's attack) from
  one run into the next.  softflowd reads dfb-r0 (libpcap) with 1 s timeouts
  (``maxlife=1, expint=1``) and exports NetFlow v9 to *two* destinations
  (``-n 192.0.2.2:2056,192.0.2.2:2057``): every datagram is sent twice, once to each
  collector, so both get the same bytes at the same moment.  An nftables netdev
  ingress rule drops the flood after the capture tap (packet sockets see a frame
  before the ingress hook), so the router namespace spends nothing answering it.
* dfb-col: ``ddos-shield run`` (``[[sources]] type = "netflow"``, no interfaces:
  detection only, dry run) on 2056 and ``fastnetmon`` (``netflow = on``) on 2057;
  tcpdump on dfb-c0 timestamps every export datagram (kernel time, ns).

Measured per flood type (SYN, UDP, ICMP), ``--runs`` times:

* what trafgen really sent (dfb-g0's kernel tx counter) and the rate it reached;
* the exporter's delay: the first attack frame on dfb-r0 (tcpdump ``-c 1``) to the
  first export datagram that carries a record of the attack (every captured datagram
  is decoded with the shield's NetflowDecoder; "carries the attack" = a record whose
  destination is the run's victim);
* each tool's time to detect from that first datagram: the shield's ``attack_start``
  event ``ts``; FastNetMon's notify script (``ban`` action), which records the time it
  is started before it reads anything;
* datagrams: sent to each collector (the capture on dfb-c0), lost at each socket
  (``drops`` of that socket in dfb-col's /proc/net/udp: the kernel's per-socket
  receive-buffer overflows), FastNetMon's own received counter (its Prometheus
  endpoint), and dfb-col's Udp InDatagrams / RcvbufErrors (/proc/net/snmp).

Prints a Markdown report (paste into bench/RESULTS.md).  Everything it starts is
bounded (``timeout``) and stopped by pid, and the namespaces are deleted, on any exit.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import ipaddress
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dpkt
import numpy as np

from ddos_shield.capture.netflow import NetflowDecoder
from ddos_shield.config import parse
from ddos_shield.lab.netns import in_netns
from ddos_shield.records import addr_bytes

NS_GEN, NS_RTR, NS_COL = "dfb-gen", "dfb-rtr", "dfb-col"
GEN_IF, RTR_IN, RTR_OUT, COL_IF = "dfb-g0", "dfb-r0", "dfb-r1", "dfb-c0"
GEN_MAC, RTR_MAC = "02:df:b0:00:00:01", "02:df:b0:00:00:02"
EXPORTER, COLLECTOR = "192.0.2.1", "192.0.2.2"
SHIELD_PORT, FNM_PORT = 2056, 2057
FNM_METRICS = ("127.0.0.1", 9209)
SPOOF = ipaddress.ip_network("198.18.0.0/15")
GEN_ADDR = "198.18.0.1"
VICTIM_NET = ipaddress.ip_network("203.0.113.0/24")
FIRST_VICTIM = 10

#: daemons whose CPU time is reported
CPU_OF = ("shield", "fastnetmon", "softflowd")
#: per-protocol thresholds given to both tools (the shield's defaults)
THRESHOLDS = {"syn": 10000, "udp": 20000, "icmp": 5000}
#: seconds to wait for both detections after a flood ends
DETECT_WAIT = 15.0
#: seconds after a flood for the exporter's last flows to arrive before counters are read
DRAIN = 4.0
MAX_PPS = 1_000_000
MAX_SECONDS = 60.0

REPO = Path(__file__).resolve().parent.parent
SHIELD_BIN = REPO / ".venv" / "bin" / "ddos-shield"


# ---- small helpers -------------------------------------------------------------------


def run(*argv: str, check: bool = True, timeout: float = 30) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def ip(*args: str, check: bool = True) -> str:
    return run("ip", *args, check=check)


def tx_packets(ns: str, dev: str) -> int:
    """The kernel's transmit packet counter of ``dev`` in ``ns``, read without a subprocess
    (it is polled while the flood runs): /proc/thread-self/net is the calling thread's
    namespace."""
    with in_netns(ns):
        for line in Path("/proc/thread-self/net/dev").read_text().splitlines()[2:]:
            name, _, counters = line.partition(":")
            if name.strip() == dev:
                return int(counters.split()[9])
    raise RuntimeError(f"{dev} not found in {ns}")


def udp_socket_drops(ns: str) -> dict[int, int]:
    """Kernel drop counter of each bound UDP socket in ``ns``, by local port."""
    out: dict[int, int] = {}
    for line in run("ip", "netns", "exec", ns, "cat", "/proc/net/udp").splitlines()[1:]:
        f = line.split()
        out[int(f[1].split(":")[1], 16)] = int(f[-1])
    return out


def udp_snmp(ns: str) -> dict[str, int]:
    """The namespace's Udp line of /proc/net/snmp."""
    rows = [
        r.split() for r in run("ip", "netns", "exec", ns, "cat", "/proc/net/snmp").splitlines() if r.startswith("Udp:")
    ]
    return {k: int(v) for k, v in zip(rows[0][1:], rows[1][1:], strict=True)}


def median(xs: Sequence[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return statistics.median(v) if v else None


# ---- topology ------------------------------------------------------------------------


def cleanup_namespaces() -> None:
    for ns in (NS_GEN, NS_RTR, NS_COL):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def build_topology() -> None:
    cleanup_namespaces()
    for ns in (NS_GEN, NS_RTR, NS_COL):
        ip("netns", "add", ns)
        ip("-n", ns, "link", "set", "lo", "up")
    ip("link", "add", GEN_IF, "netns", NS_GEN, "address", GEN_MAC, "type", "veth",
       "peer", "name", RTR_IN, "netns", NS_RTR, "address", RTR_MAC)  # fmt: skip
    ip("link", "add", RTR_OUT, "netns", NS_RTR, "type", "veth", "peer", "name", COL_IF, "netns", NS_COL)
    ip("-n", NS_GEN, "addr", "add", f"{GEN_ADDR}/{SPOOF.prefixlen}", "dev", GEN_IF)
    ip("-n", NS_RTR, "addr", "add", f"{EXPORTER}/24", "dev", RTR_OUT)
    ip("-n", NS_COL, "addr", "add", f"{COLLECTOR}/24", "dev", COL_IF)
    for ns, dev in ((NS_GEN, GEN_IF), (NS_RTR, RTR_IN), (NS_RTR, RTR_OUT), (NS_COL, COL_IF)):
        ip("-n", ns, "link", "set", dev, "up")
    ip("-n", NS_GEN, "route", "add", str(VICTIM_NET), "dev", GEN_IF)
    # The flood is dropped at ingress, after the packet-socket tap softflowd reads:
    # no replies, no conntrack, nothing for the router namespace to do with it.
    rules = (
        "table netdev dfb {\n"
        f'  chain flood {{ type filter hook ingress device "{RTR_IN}" priority 0; '
        f"ip saddr {SPOOF} ip daddr {VICTIM_NET} drop; }}\n"
        "}\n"
    )
    subprocess.run(["ip", "netns", "exec", NS_RTR, "nft", "-f", "-"], input=rules, text=True, check=True, timeout=30)


def add_victim(i: int) -> str:
    target = str(VICTIM_NET[FIRST_VICTIM + i])
    ip("-n", NS_RTR, "addr", "add", f"{target}/32", "dev", RTR_IN)
    return target


# ---- processes -----------------------------------------------------------------------


@dataclass
class Daemons:
    """Every process started here, so that each is stopped by its own pid."""

    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, ns: str, argv: Sequence[str], bound: float, log: Path) -> subprocess.Popen[bytes]:
        # `timeout` forwards the TERM we send it to the daemon; the bound stops a daemon
        # that this script, for whatever reason, never got to stop.
        with log.open("wb") as out:
            p = subprocess.Popen(
                ["timeout", "-s", "TERM", "-k", "5", str(int(bound)), "ip", "netns", "exec", ns, *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = p
        return p

    def cpu_seconds(self, name: str) -> float:
        """CPU seconds (user + system, all threads) used so far by the daemon under
        ``timeout`` (``ip netns exec`` execs the daemon, so it is timeout's one child)."""
        p = self.procs[name]
        try:
            kids = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
            stat = Path(f"/proc/{kids[0]}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return 0.0
        return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        p = self.procs.pop(name, None)
        if p is None or p.poll() is not None:
            return
        p.send_signal(sig)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def wait_for(path: Path, pattern: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and re.search(pattern, path.read_text(errors="replace"), re.MULTILINE):
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.1)
    return False


# ---- the two detectors ---------------------------------------------------------------


def shield_config(tmp: Path) -> Path:
    t = THRESHOLDS
    text = f"""\
protected = ["{VICTIM_NET}"]
[shield]
interval_ms = 100
dry_run = true
state_dir = "{tmp / "shield-state"}"
[events]
file = "{tmp / "shield-events.jsonl"}"
[[groups]]
name = "default"
hold_seconds = 5.0
end_after_seconds = 2.0
[groups.thresholds]
syn = {{ pps = {t["syn"]} }}
udp = {{ pps = {t["udp"]} }}
icmp = {{ pps = {t["icmp"]} }}
[[sources]]
type = "netflow"
listen = "{COLLECTOR}:{SHIELD_PORT}"
exporters = ["{EXPORTER}"]
"""
    p = tmp / "shield.toml"
    p.write_text(text)
    return p


def fastnetmon_config(tmp: Path, average_seconds: int) -> Path:
    """FastNetMon's configuration: the packaged file's values, but for what this bench
    must set (NetFlow on our port, our network, per-protocol pps thresholds equal to the
    shield's, a notify script, no API and no usage report, files in ``tmp``)."""
    (tmp / "fnm-networks").write_text(f"{VICTIM_NET}\n")
    (tmp / "fnm-whitelist").write_text("")
    notify = tmp / "fnm-notify.sh"
    # The time is taken first: FastNetMon writes attack details to the script's stdin,
    # which must be read (FastNetMon's own example script warns it crashes otherwise).
    notify.write_text(
        f'#!/bin/sh\nt=$(date +%s.%N)\ncat > /dev/null\necho "$t $1 $2 $3 $4" >> {tmp / "fnm-notify.log"}\n'
    )
    notify.chmod(0o755)
    t = THRESHOLDS
    conf = {
        "logging_level": "info",
        "logging_local_syslog_logging": "off",
        "logging_remote_syslog_logging": "off",
        "disable_usage_report": "on",
        "enable_ban": "on",
        "enable_ban_ipv6": "on",
        "process_incoming_traffic": "on",
        "process_outgoing_traffic": "on",
        "ban_details_records_count": "20",
        "ban_time": "1900",
        "unban_only_if_attack_finished": "on",
        "networks_list_path": str(tmp / "fnm-networks"),
        "white_list_path": str(tmp / "fnm-whitelist"),
        "check_period": "1",
        "enable_connection_tracking": "on",
        # per protocol only, as the shield's per-category thresholds
        "ban_for_pps": "off",
        "ban_for_bandwidth": "off",
        "ban_for_flows": "off",
        "ban_for_tcp_pps": "on",
        "ban_for_udp_pps": "on",
        "ban_for_icmp_pps": "on",
        "threshold_tcp_pps": str(t["syn"]),
        "threshold_udp_pps": str(t["udp"]),
        "threshold_icmp_pps": str(t["icmp"]),
        "ban_for_tcp_bandwidth": "off",
        "ban_for_udp_bandwidth": "off",
        "ban_for_icmp_bandwidth": "off",
        "mirror_afpacket": "off",
        "mirror_afxdp": "off",
        "mirror_netmap": "off",
        "pcap": "off",
        "sflow": "off",
        "netflow": "on",
        "netflow_port": str(FNM_PORT),
        "netflow_host": COLLECTOR,
        "netflow_sampling_ratio": "1",
        "average_calculation_time": str(average_seconds),
        "speed_calculation_delay": "1",
        "notify_script_path": str(notify),
        "collect_attack_pcap_dumps": "off",
        "monitor_local_ip_addresses": "off",
        "pid_path": str(tmp / "fnm.pid"),
        "cli_stats_file_path": str(tmp / "fnm.dat"),
        "cli_stats_ipv6_file_path": str(tmp / "fnm6.dat"),
        "enable_api": "off",
        "prometheus": "on",
        "prometheus_host": FNM_METRICS[0],
        "prometheus_port": str(FNM_METRICS[1]),
    }
    p = tmp / "fastnetmon.conf"
    p.write_text("".join(f"{k} = {v}\n" for k, v in conf.items()))
    return p


def fnm_metrics() -> dict[str, float]:
    """FastNetMon's Prometheus counters (its endpoint listens inside dfb-col)."""
    with in_netns(NS_COL):
        # the socket is made (and stays) in dfb-col
        body = urllib.request.urlopen(f"http://{FNM_METRICS[0]}:{FNM_METRICS[1]}/metrics", timeout=5).read()
    out: dict[str, float] = {}
    for line in body.decode(errors="replace").splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def fnm_received() -> int:
    """FastNetMon's count of NetFlow v9 datagrams received."""
    return int(fnm_metrics().get("fastnetmon_netflow_v9_total_packets", 0))


def shield_detections(events: Path) -> dict[str, float]:
    """First ``attack_start`` ts per target address."""
    out: dict[str, float] = {}
    for e in _events(events):
        if e.get("event") == "attack_start":
            out.setdefault(str(e["target"]).split("/")[0], float(e["ts"]))
    return out


def shield_peaks(events: Path) -> dict[str, float]:
    """The highest ``peak_pps`` the shield reported per target address: its view of the
    flood's rate, from the datagrams it kept (over its telemetry window)."""
    out: dict[str, float] = {}
    for e in _events(events):
        if "peak_pps" in e and "target" in e:
            a = str(e["target"]).split("/")[0]
            out[a] = max(out.get(a, 0.0), float(e["peak_pps"]))
    return out


def _events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):  # a line still being written
            out.append(json.loads(line))
    return out


def fnm_detections(log: Path) -> dict[str, float]:
    """First ``ban`` notification time per target address."""
    out: dict[str, float] = {}
    if not log.exists():
        return out
    for line in log.read_text().splitlines():
        f = line.split()
        if len(f) >= 5 and f[4] == "ban":
            out.setdefault(f[1], float(f[0]))
    return out


# ---- the exporter ----------------------------------------------------------------------


def softflowd_argv(tmp: Path) -> list[str]:
    return [
        "softflowd", "-d", "-i", RTR_IN, "-v", "9",
        "-n", f"{COLLECTOR}:{SHIELD_PORT},{COLLECTOR}:{FNM_PORT}",
        "-p", str(tmp / "softflowd.pid"), "-c", str(tmp / "softflowd.ctl"),
        # flows leave at most about a second after their packets
        "-t", "maxlife=1", "-t", "expint=1", "-t", "general=1",
        "-t", "udp=1", "-t", "icmp=1", "-t", "tcp=1", "-t", "tcp.rst=1", "-t", "tcp.fin=1",
    ]  # fmt: skip


def softflowd_stats(tmp: Path) -> dict[str, int]:
    """A few of softflowd's own counters (``softflowctl statistics``)."""
    text = run(
        "ip", "netns", "exec", NS_RTR, "softflowctl", "-c", str(tmp / "softflowd.ctl"), "statistics", check=False
    )
    out: dict[str, int] = {}
    for key, pat in (
        ("packets", r"Packets processed:\s*(\d+)"),
        ("pcap_received", r"Packets received by libpcap:\s*(\d+)"),
        ("pcap_dropped", r"Packets dropped by libpcap:\s*(\d+)"),
        ("if_dropped", r"Packets dropped by interface:\s*(\d+)"),
        ("flows_exported", r"Flows exported:\s*(\d+)"),
        ("datagrams", r"Flows exported:.* in (\d+) packets"),
        ("export_failures", r"Flows exported:.*\((\d+) failures\)"),
        ("forced", r"Flows expired:\s*\d+ \((\d+) forced\)"),
    ):
        if m := re.search(pat, text):
            out[key] = int(m.group(1))
    with (tmp / "softflowd-stats.txt").open("a") as fh:
        fh.write(f"--- {time.time():.3f}\n{text}\n")
    return out


# ---- traffic -------------------------------------------------------------------------

PAYLOAD = {"syn": 0, "udp": 64, "icmp": 56}


def trafgen_config(kind: str, target: str) -> tuple[str, int]:
    """A trafgen packet (random source in 198.18.0.0/16 and random ports) and its length."""
    mac = ", ".join(f"0x{b}" for b in (RTR_MAC + ":" + GEN_MAC).split(":"))
    dst = ", ".join(str(int(b)) for b in target.split("."))
    proto = {"syn": 6, "udp": 17, "icmp": 1}[kind]
    l4_len = {"syn": 20, "udp": 8 + PAYLOAD["udp"], "icmp": 8 + PAYLOAD["icmp"]}[kind]
    items = [
        mac,
        "0x08, 0x00",
        f"0x45, 0x00, c16({20 + l4_len}), drnd(2), 0x00, 0x00, 64, {proto}, csumip(14, 33)",
        f"198, 18, drnd(2), {dst}",
    ]
    if kind == "syn":
        items.append("drnd(2), c16(80), drnd(4), 0, 0, 0, 0, 0x50, 0x02, c16(64240), csumtcp(14, 34), 0, 0")
    elif kind == "udp":
        items.append(f"drnd(2), c16(53), c16({l4_len}), csumudp(14, 34), fill(0x41, {PAYLOAD['udp']})")
    else:
        items.append(f"8, 0, csumicmp(34, {34 + l4_len - 1}), c16(0x4453), c16(1), fill(0x41, {PAYLOAD['icmp']})")
    return "{\n  " + ",\n  ".join(items) + "\n}\n", 14 + 20 + l4_len


def pace(pps: int, frame: int) -> None:
    """tbf at exactly pps x frame length: trafgen's rate mode sends each second's packets
    in one burst, which the tbf spreads evenly (as the lab's attacks do)."""
    rate = pps * frame * 8
    burst = max(4 * frame, pps * frame // 1000)
    run("tc", "-n", NS_GEN, "qdisc", "replace", "dev", GEN_IF, "root", "tbf", "rate", f"{rate}bit",
        "burst", str(burst), "limit", str(max(1 << 20, 4 * burst)))  # fmt: skip


@dataclass
class Flood:
    kind: str
    target: str
    pps: int
    seconds: float
    sent: int = 0
    started: float = 0.0  # wall clock, first rise of the tx counter
    ended: float = 0.0  # wall clock, last rise
    first_frame: float | None = None  # kernel timestamp of the first attack frame at dfb-r0

    @property
    def achieved_pps(self) -> float:
        return self.sent / (self.ended - self.started) if self.ended > self.started else 0.0


def flood(kind: str, target: str, pps: int, seconds: float, tmp: Path) -> Flood:
    if not (0 < pps <= MAX_PPS and 0 < seconds <= MAX_SECONDS):
        raise ValueError(f"rate {pps} pps for {seconds} s is outside the bounds")
    if ipaddress.ip_address(target) not in VICTIM_NET:
        raise ValueError(f"{target} is not a victim address of this bench")
    cfg, frame = trafgen_config(kind, target)
    cfg_path = tmp / f"{kind}.trafgen"
    cfg_path.write_text(cfg)
    count = int(pps * seconds)
    pace(pps, frame)
    f = Flood(kind, target, pps, seconds)
    first_pcap = tmp / f"first-{target}.pcap"
    # the first attack frame as dfb-r0 receives it: tcpdump exits after one packet
    first = subprocess.Popen(
        ["timeout", "-s", "INT", "-k", "2", str(int(seconds + 10)), "ip", "netns", "exec", NS_RTR,
         "tcpdump", "-i", RTR_IN, "-n", "-c", "1", "--time-stamp-precision=nano", "-w", str(first_pcap),
         "dst", "host", target],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert first.stderr is not None
    os.set_blocking(first.stderr.fileno(), False)
    deadline = time.monotonic() + 5
    seen = b""
    while b"listening on" not in seen and time.monotonic() < deadline:
        seen += first.stderr.read() or b""
        time.sleep(0.05)
    base = tx_packets(NS_GEN, GEN_IF)
    gen = subprocess.Popen(
        ["timeout", "-s", "INT", "-k", "2", str(seconds + 3), "ip", "netns", "exec", NS_GEN,
         "trafgen", "-o", GEN_IF, "-i", str(cfg_path), "-n", str(count), "-b", f"{pps}pps", "-P", "1",
         "--qdisc-path", "--no-sock-mem", "--notouch-irq", "--no-cpu-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    last = 0
    exited: float | None = None
    while True:
        c = tx_packets(NS_GEN, GEN_IF) - base
        now = time.time()
        if c > 0 and not f.started:
            f.started = now
        if c > last:
            last, f.ended = c, now
        if gen.poll() is not None:
            exited = exited or time.monotonic()
            if time.monotonic() - exited > 0.5:  # the tbf queue has drained by then
                break
        time.sleep(0.05)
    f.sent = last
    _, err = gen.communicate()
    if gen.returncode not in (0, 124):
        print(f"# trafgen exit {gen.returncode}: {err.decode(errors='replace').strip()[-300:]}", file=sys.stderr)
    try:
        first.wait(3)
    except subprocess.TimeoutExpired:
        first.send_signal(signal.SIGINT)
        first.wait(5)
    f.first_frame = first_packet_time(first_pcap)
    run("tc", "-n", NS_GEN, "qdisc", "del", "dev", GEN_IF, "root", check=False)
    return f


def first_packet_time(path: Path) -> float | None:
    if not path.exists() or path.stat().st_size == 0:
        return None
    with path.open("rb") as fh:
        for ts, _ in dpkt.pcap.Reader(fh):
            return float(ts)
    return None


# ---- the export capture ----------------------------------------------------------------


@dataclass
class Export:
    """The export datagrams captured on dfb-c0.  softflowd sends each datagram to both
    collectors, back to back, so the shield's copies are decoded and FastNetMon's are
    matched to them by their bytes."""

    ts: dict[int, list[float]]  # arrival times by destination port, in order
    shield_payloads: list[bytes]
    fnm_first: dict[bytes, float]  # FastNetMon's copy of each payload: first arrival

    @classmethod
    def read(cls, path: Path) -> Export:
        out = cls({SHIELD_PORT: [], FNM_PORT: []}, [], {})
        with path.open("rb") as fh:
            for ts, buf in dpkt.pcap.Reader(fh):
                ip4 = dpkt.ethernet.Ethernet(buf).data
                if not isinstance(ip4, dpkt.ip.IP) or not isinstance(ip4.data, dpkt.udp.UDP):
                    continue
                port, payload = int(ip4.data.dport), bytes(ip4.data.data)
                if port not in out.ts:
                    continue
                out.ts[port].append(float(ts))
                if port == SHIELD_PORT:
                    out.shield_payloads.append(payload)
                else:
                    out.fnm_first.setdefault(payload, float(ts))
        return out

    def count(self, port: int, lo: float, hi: float) -> int:
        t = self.ts[port]
        return bisect.bisect_right(t, hi) - bisect.bisect_left(t, lo)

    def attacks(self) -> dict[str, Carried]:
        """What the export says of each destination address."""
        dec = NetflowDecoder(default_rate=1)
        exporter = addr_bytes(EXPORTER)
        out: dict[str, Carried] = {}
        for ts, payload in zip(self.ts[SHIELD_PORT], self.shield_payloads, strict=True):
            b = dec.decode(payload, exporter, ts).batch
            if not len(b):
                continue
            dsts = b["dst"].view("V16").ravel()
            for key in np.unique(dsts):
                a6 = ipaddress.IPv6Address(bytes(key))
                a = str(a6.ipv4_mapped or a6)
                c = out.get(a)
                if c is None:
                    c = out[a] = Carried(first={SHIELD_PORT: ts})
                    if (t := self.fnm_first.get(payload)) is not None:
                        c.first[FNM_PORT] = t
                c.packets += int(b["packets"][dsts == key].sum())
        return out


@dataclass
class Carried:
    """For one destination: when the first datagram with a record towards it reached each
    collector, and how many packets its records add up to."""

    first: dict[int, float]
    packets: int = 0


# ---- one run -------------------------------------------------------------------------


@dataclass
class Result:
    """One flood and what each side made of it (counters as before/after pairs)."""

    kind: str
    flood: Flood
    window: tuple[float, float]
    detected: dict[int, float | None]  # by collector port
    drops: dict[int, int]  # per-socket kernel drops during the run, by port
    snmp: dict[str, int]  # dfb-col's Udp counters during the run
    fnm_counted: int  # FastNetMon's own NetFlow v9 datagram counter during the run
    exporter: dict[str, int]  # softflowd's counters during the run
    cpu: dict[str, float]  # CPU seconds each daemon used during the run
    shield_peak_pps: float  # the shield's highest reported rate of this flood
    # from the capture, at the end
    first_at: dict[int, float] = field(default_factory=dict)  # first datagram carrying the attack, by port
    arrived: dict[int, int] = field(default_factory=dict)  # datagrams captured during the run, by port
    attack_packets: int = 0  # packets the attack's flow records add up to

    def ttd(self, port: int) -> float | None:
        """Seconds from the first datagram carrying the attack to this collector's detection."""
        t, first = self.detected.get(port), self.first_at.get(port)
        return None if t is None or first is None else t - first

    def from_frame(self, port: int) -> float | None:
        """Seconds from the first attack frame at the exporter to this collector's detection."""
        t, first = self.detected.get(port), self.flood.first_frame
        return None if t is None or first is None else t - first

    @property
    def export_delay(self) -> float | None:
        first = self.first_at.get(SHIELD_PORT)
        return None if first is None or self.flood.first_frame is None else first - self.flood.first_frame

    @property
    def peak_share(self) -> float | None:
        pps = self.flood.achieved_pps
        return 100.0 * self.shield_peak_pps / pps if pps else None

    def lost(self, port: int) -> float | None:
        n = self.arrived.get(port, 0)
        return 100.0 * self.drops.get(port, 0) / n if n else None


def delta(after: dict[Any, int], before: dict[Any, int]) -> dict[Any, int]:
    return {k: v - before.get(k, 0) for k, v in after.items()}


def one_run(kind: str, i: int, args: argparse.Namespace, tmp: Path, daemons: Daemons) -> Result:
    target = add_victim(i)
    time.sleep(1.0)
    t0 = time.time()
    cpu0 = {n: daemons.cpu_seconds(n) for n in CPU_OF}
    drops0, snmp0, fnm0, sfd0 = udp_socket_drops(NS_COL), udp_snmp(NS_COL), fnm_received(), softflowd_stats(tmp)
    f = flood(kind, target, args.pps, args.seconds, tmp)
    deadline = time.monotonic() + DETECT_WAIT
    sd = fd = None
    while time.monotonic() < deadline:
        sd = shield_detections(tmp / "shield-events.jsonl").get(target)
        fd = fnm_detections(tmp / "fnm-notify.log").get(target)
        if sd is not None and fd is not None:
            break
        time.sleep(0.2)
    time.sleep(DRAIN)
    r = Result(
        kind=kind,
        flood=f,
        window=(t0, time.time()),
        detected={SHIELD_PORT: sd, FNM_PORT: fd},
        drops=delta(udp_socket_drops(NS_COL), drops0),
        snmp=delta(udp_snmp(NS_COL), snmp0),
        fnm_counted=fnm_received() - fnm0,
        exporter=delta(softflowd_stats(tmp), sfd0),
        cpu={n: daemons.cpu_seconds(n) - c for n, c in cpu0.items()},
        shield_peak_pps=shield_peaks(tmp / "shield-events.jsonl").get(target, 0.0),
    )
    print(
        f"# {kind} {target}: sent {f.sent} at {f.achieved_pps:.0f} pps; shield "
        f"{'-' if sd is None else f'{sd - f.started:+.2f}'} s, fastnetmon "
        f"{'-' if fd is None else f'{fd - f.started:+.2f}'} s after the first frame sent",
        file=sys.stderr,
        flush=True,
    )
    return r


# ---- report --------------------------------------------------------------------------


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def report(results: list[Result], args: argparse.Namespace, env: dict[str, str]) -> str:
    t = THRESHOLDS
    lines = [
        f"Machine: {env['machine']}; measured {env['date']} with ddos-shield at {env['commit']} "
        f"(telemetry_window_seconds={env['window']}), FastNetMon {env['fastnetmon']} "
        f"(average_calculation_time={args.fnm_average}), softflowd {env['softflowd']} (NetFlow v9 to both "
        f"collectors, maxlife=1, expint=1).  Floods: random sources in 198.18.0.0/16 and random ports, "
        f"{args.pps:,} pps asked for {args.seconds:g} s, {args.runs} run(s) per type.  Thresholds in both tools: "
        f"SYN (FastNetMon: TCP) {t['syn']:,}, UDP {t['udp']:,}, ICMP {t['icmp']:,} pps.  "
        f"net.core.rmem_default={env['rmem_default']}, rmem_max={env['rmem_max']}.  Capture on the collector "
        f"side: {env.get('capture', '?')}.",
        "",
        "Medians over the runs.  *sent pps*: dfb-g0's kernel counter.  *export delay*: first attack frame at "
        "the exporter to the first export datagram carrying a record of the attack.  *TTD*: from that "
        "datagram's arrival to the shield's `attack_start` / FastNetMon's `ban` notification (s); "
        f"*detected*: runs with a detection within {DETECT_WAIT:g} s of the flood's end.  *lost*: the "
        "collector socket's kernel `drops` over the datagrams that reached the collector's interface.  "
        "*shield's peak pps*: the highest `peak_pps` in its events for the flood (over its telemetry window), "
        "against the rate sent.  *CPU s*: CPU seconds each daemon used during the run.",
        "",
        "| flood | sent pps | export delay | shield TTD | FastNetMon TTD | detected shield / FNM "
        "| datagrams exported to each | lost at the shield's socket | lost at FastNetMon's socket "
        "| shield's peak pps / sent pps | CPU s shield / FNM / softflowd |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for kind in args.kinds:
        rs = [r for r in results if r.kind == kind]
        if not rs:
            continue
        n = len(rs)
        lines.append(
            f"| {kind.upper()} | {fmt(median([r.flood.achieved_pps for r in rs]), ',.0f')} "
            f"| {fmt(median([r.export_delay for r in rs]))} | {fmt(median([r.ttd(SHIELD_PORT) for r in rs]))} "
            f"| {fmt(median([r.ttd(FNM_PORT) for r in rs]))} "
            f"| {sum(r.detected[SHIELD_PORT] is not None for r in rs)}/{n} / "
            f"{sum(r.detected[FNM_PORT] is not None for r in rs)}/{n} "
            f"| {fmt(median([float(r.exporter.get('datagrams', 0)) for r in rs]), ',.0f')} "
            f"| {fmt(median([r.lost(SHIELD_PORT) for r in rs]), '.1f')}% "
            f"| {fmt(median([r.lost(FNM_PORT) for r in rs]), '.1f')}% "
            f"| {fmt(median([r.peak_share for r in rs]), '.0f')}% "
            f"| {' / '.join(fmt(median([r.cpu.get(name, 0.0) for r in rs]), '.1f') for name in CPU_OF)} |"
        )
    lines += [
        "",
        "Every run (times in s; *frame->*: from the first attack frame at the exporter):",
        "",
        "| flood | victim | frames sent | pps | in flow records | export delay | shield TTD | FNM TTD "
        "| shield frame-> | FNM frame-> | exported (softflowd) | arrived at each (capture) | shield socket drops "
        "| FNM socket drops | FNM counted | dfb-col Udp InDatagrams / RcvbufErrors | shield peak pps "
        "| CPU s shield / FNM / softflowd |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.kind} | {r.flood.target} | {r.flood.sent:,} | {r.flood.achieved_pps:,.0f} | {r.attack_packets:,} "
            f"| {fmt(r.export_delay)} | {fmt(r.ttd(SHIELD_PORT))} | {fmt(r.ttd(FNM_PORT))} "
            f"| {fmt(r.from_frame(SHIELD_PORT))} | {fmt(r.from_frame(FNM_PORT))} | {r.exporter.get('datagrams', 0):,} "
            f"| {r.arrived.get(SHIELD_PORT, 0):,} / {r.arrived.get(FNM_PORT, 0):,} | {r.drops.get(SHIELD_PORT, 0):,} "
            f"| {r.drops.get(FNM_PORT, 0):,} | {r.fnm_counted:,} "
            f"| {r.snmp.get('InDatagrams', 0):,} / {r.snmp.get('RcvbufErrors', 0):,} | {r.shield_peak_pps:,.0f} "
            f"| {' / '.join(f'{r.cpu.get(name, 0.0):.1f}' for name in CPU_OF)} |"
        )
    return "\n".join(lines) + "\n"


def environment() -> dict[str, str]:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "?",
    )

    def pkg(name: str) -> str:
        return run("dpkg-query", "-W", "-f", "${Version}", name, check=False).strip() or "?"

    return {
        "machine": f"Linux {platform.release()}, {cpu}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "softflowd": pkg("softflowd"),
        "fastnetmon": pkg("fastnetmon"),
        "commit": run("git", "-C", str(REPO), "rev-parse", "--short", "HEAD", check=False).strip()
        # the shield runs from the work tree: say when it differs from the commit
        + ("+uncommitted" if run("git", "-C", str(REPO), "status", "--porcelain", "src", check=False).strip() else ""),
        "window": str(parse('protected = ["192.0.2.0/24"]').shield.telemetry_window_seconds),
        "rmem_default": Path("/proc/sys/net/core/rmem_default").read_text().strip(),
        "rmem_max": Path("/proc/sys/net/core/rmem_max").read_text().strip(),
    }


# ---- main ----------------------------------------------------------------------------


def check_tools() -> None:
    missing = [
        t
        for t in ("trafgen", "softflowd", "softflowctl", "tcpdump", "fastnetmon", "nft", "tc")
        if shutil.which(t) is None
    ]
    if missing:
        sys.exit(f"missing: {', '.join(missing)} (apt-get install fastnetmon softflowd netsniff-ng tcpdump nftables)")
    if not SHIELD_BIN.exists():
        sys.exit(f"{SHIELD_BIN} not found: run `bash dev.sh setup` first")
    if os.geteuid() != 0:
        sys.exit("run as root (namespaces, packet sockets)")


@contextlib.contextmanager
def bench_session(tmp: Path, args: argparse.Namespace) -> Iterator[Daemons]:
    d = Daemons()
    bound = len(args.kinds) * args.runs * (args.seconds + DETECT_WAIT + DRAIN + 15) + 120
    try:
        build_topology()
        cap = d.start(
            "capture", NS_COL,
            ["tcpdump", "-i", COL_IF, "-n", "-s", "2048", "-B", "65536", "--time-stamp-precision=nano",
             "-w", str(tmp / "export.pcap"), "udp", "and", "dst", "host", COLLECTOR],
            bound, tmp / "tcpdump.log",
        )  # fmt: skip
        if not wait_for(tmp / "tcpdump.log", "listening on", 10, cap):
            raise RuntimeError(f"tcpdump did not start: {(tmp / 'tcpdump.log').read_text()}")
        sh = d.start("shield", NS_COL, [str(SHIELD_BIN), "run", "--config", str(shield_config(tmp)), "--no-live"],
                     bound, tmp / "shield.log")  # fmt: skip
        if not wait_for(tmp / "shield.log", r"^ready", 60, sh):
            raise RuntimeError(f"the shield did not start: {(tmp / 'shield.log').read_text()[-2000:]}")
        fnm = d.start(
            "fastnetmon", NS_COL,
            ["fastnetmon", "--configuration_file", str(fastnetmon_config(tmp, args.fnm_average)),
             "--log_file", str(tmp / "fastnetmon.log"), "--disable_pid_logic"],
            bound, tmp / "fastnetmon.out",
        )  # fmt: skip
        if not wait_for(tmp / "fastnetmon.log", "netflow plugin will listen", 20, fnm):
            raise RuntimeError(f"FastNetMon did not start: {(tmp / 'fastnetmon.out').read_text()[-2000:]}")
        sfd = d.start("softflowd", NS_RTR, softflowd_argv(tmp), bound, tmp / "softflowd.log")
        time.sleep(1.0)
        if sfd.poll() is not None:
            raise RuntimeError(f"softflowd exited: {(tmp / 'softflowd.log').read_text()}")
        yield d
    finally:
        d.stop_all()
        cleanup_namespaces()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pps", type=int, default=300000, help="asked rate; 2 vCPUs reach 200-270 k")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--kinds", default="syn,udp,icmp")
    ap.add_argument("--fnm-average", type=int, default=5, help="FastNetMon's average_calculation_time (package: 5)")
    ap.add_argument("--keep", help="copy the captures, logs and events into this directory")
    args = ap.parse_args()
    args.kinds = [k for k in args.kinds.split(",") if k]
    if not set(args.kinds) <= set(PAYLOAD):
        ap.error(f"--kinds: choose from {', '.join(PAYLOAD)}")
    if not (0 < args.pps <= MAX_PPS and 0 < args.seconds <= MAX_SECONDS and 0 < args.runs * len(args.kinds) <= 200):
        ap.error("rate, duration or number of runs out of bounds")
    check_tools()
    env = environment()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="dfb-") as t:
        tmp = Path(t)
        try:
            with bench_session(tmp, args) as daemons:
                # warm-up: templates reach both collectors before the first measured flood
                warm = flood("udp", add_victim(200), 2000, 2.0, tmp)
                time.sleep(3)
                print(f"# warm-up: {warm.sent} frames", file=sys.stderr)
                n = 0
                for _ in range(args.runs):
                    for kind in args.kinds:
                        results.append(one_run(kind, n, args, tmp, daemons))
                        n += 1
                daemons.stop("capture", signal.SIGINT)
            export = Export.read(tmp / "export.pcap")
            carried = export.attacks()
            for r in results:
                c = carried.get(r.flood.target)
                if c is not None:
                    r.first_at, r.attack_packets = c.first, c.packets
                r.arrived = {p: export.count(p, *r.window) for p in (SHIELD_PORT, FNM_PORT)}
            m = re.search(r"(\d+) packets dropped by kernel", (tmp / "tcpdump.log").read_text())
            n = sum(len(t) for t in export.ts.values())
            env["capture"] = f"{n:,} datagrams, {m.group(1) if m else '?'} dropped by the kernel"
        finally:
            if args.keep:
                shutil.copytree(tmp, args.keep, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.ctl"))
    print(report(results, args, env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
