"""Per-packet cost of the XDP program, next to xdp-tools' xdp-filter, by kernel test-run.

Both programs run in the kernel's BPF_PROG_TEST_RUN loop (no NIC, no traffic), on the
same frames, in the same process, interleaved:

* shield: 10,000 source rules (/32, in the exact-match hash) and 100 fingerprint rules
  (proto + destination /32 + destination port) loaded, 203.0.113.0/24 protected;
* xdp-filter: loaded (``xdp-filter load -m skb``) on a veth inside a namespace of our
  own, with 9,999 source addresses in its filter_ipv4 map (its limit is 10,000).

Frames: *pass* (UDP from an unlisted source to an unprotected address), *sampled*
(to a protected address, counted, and sampled with sample_every=1), *drop* (from a
listed source to a protected address: counted and dropped) and *drop-unprotected*
(the same source to an address outside the protected prefixes: dropped, not
counted per destination -- the same work as xdp-filter's).  Each figure is the
kernel's mean ns per repetition over 1,000,000 repetitions (the sampled case as 50
runs of 20,000 with the ring buffer drained between runs, since 1,000,000 samples
would overflow it), and the median over ``--runs`` such measurements.

Run as root: ``.venv/bin/python bench/xdp_cost.py [--runs 5]``; prints Markdown.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import shutil
import statistics
import subprocess
import time
import uuid

import numpy as np
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from ddos_shield.dataplane import libbpf
from ddos_shield.dataplane.xdp import XdpDataPlane, detach
from ddos_shield.records import Action, Match, Range, Rule, as_network

REPEAT = 1_000_000
SAMPLED_CHUNK = 20_000
N_SRC = 10_000
N_FP = 100
SPOOF_BASE = int(ipaddress.ip_address("198.18.0.0"))


def frame(src: str, dst: str) -> bytes:
    return bytes(Ether() / IP(src=src, dst=dst) / UDP(sport=40000, dport=53) / Raw(b"b" * 18))


FRAMES = {
    "pass": frame("198.19.200.1", "192.0.2.1"),
    "sampled": frame("198.19.200.1", "203.0.113.200"),
    "drop": frame(str(ipaddress.ip_address(SPOOF_BASE + 2 * 777 + 1)), "203.0.113.200"),
    "drop-unprotected": frame(str(ipaddress.ip_address(SPOOF_BASE + 2 * 777 + 1)), "192.0.2.1"),
}


def load_shield(pin_dir: str) -> XdpDataPlane:
    dp = XdpDataPlane.open([], pin_dir)
    expires = time.time() + 3600
    for i in range(N_SRC):
        net = ipaddress.ip_network((SPOOF_BASE + 2 * i + 1, 32))
        dp.backend.apply(Rule(Match(src=net), Action.DROP, expires))
    for i in range(N_FP):
        m = Match(proto=17, dst=as_network(f"203.0.113.{i}/32"), dport=Range(1000 + i, 1000 + i))
        dp.backend.apply(Rule(m, Action.DROP, expires))
    dp.set_protected({as_network("203.0.113.0/24"): 1})
    return dp


class XdpFilter:
    """xdp-filter on a veth in a private namespace; its program fd for test runs."""

    def __init__(self) -> None:
        if shutil.which("xdp-filter") is None:
            raise SystemExit("xdp-filter not found (apt-get install xdp-tools)")
        self.ns = f"dsa-bench-{uuid.uuid4().hex[:6]}"
        self._ip("netns", "add", self.ns)
        self._ip("-n", self.ns, "link", "add", "xf0", "type", "veth", "peer", "name", "xf1")
        self._ip("-n", self.ns, "link", "set", "xf0", "up")
        # libxdp pins its maps in bpffs, and `ip netns exec` remounts /sys: give it a
        # bpffs of its own that the namespace's view still holds.
        self.bpffs = f"/run/{self.ns}"
        os.makedirs(self.bpffs, exist_ok=True)
        subprocess.run(["mount", "-t", "bpf", "bpf", self.bpffs], check=True)
        load = subprocess.run(
            ["ip", "netns", "exec", self.ns, "xdp-filter", "load", "-m", "skb", "xf0"],
            capture_output=True,
            text=True,
            env={**os.environ, "LIBXDP_BPFFS": self.bpffs},
        )
        if load.returncode:
            self.close()
            raise SystemExit(f"xdp-filter load failed: {load.stderr.strip()}")
        link = json.loads(subprocess.check_output(["ip", "-n", self.ns, "-j", "link", "show", "xf0"]))[0]
        prog = link["xdp"]["prog"]
        self.prog_name = prog["name"]
        self.prog_fd = libbpf.prog_get_fd_by_id(prog["id"])
        info = json.loads(subprocess.check_output(["bpftool", "-j", "prog", "show", "id", str(prog["id"])]))
        for map_id in info.get("map_ids", []):
            m = json.loads(subprocess.check_output(["bpftool", "-j", "map", "show", "id", str(map_id)]))
            if m.get("name") == "filter_ipv4":
                self._fill(libbpf.map_get_fd_by_id(map_id), int(m["max_entries"]))

    def _fill(self, fd: int, max_entries: int) -> None:
        # Per-CPU hash keyed by the IPv4 address; value bit 0 = match on source.
        value = np.ones(libbpf.num_possible_cpus(), "<u8")
        for i in range(min(N_SRC, max_entries - 1)):
            key = np.frombuffer(ipaddress.ip_address(SPOOF_BASE + 2 * i + 1).packed, "<u4").copy()
            libbpf.map_update(fd, key, value)
        os.close(fd)

    @staticmethod
    def _ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    def close(self) -> None:
        if getattr(self, "prog_fd", None) is not None:
            os.close(self.prog_fd)
        subprocess.run(["ip", "netns", "del", self.ns], check=False, capture_output=True)
        subprocess.run(["umount", self.bpffs], check=False, capture_output=True)
        os.rmdir(self.bpffs)


def measure_sampled(dp: XdpDataPlane, data: bytes) -> float:
    total = 0
    for _ in range(REPEAT // SAMPLED_CHUNK):
        total += dp.test_run(data, SAMPLED_CHUNK).duration_ns
        dp.read_raw_samples()
    return total / (REPEAT // SAMPLED_CHUNK)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="measurements per case (median reported)")
    args = ap.parse_args()

    pin_dir = f"/sys/fs/bpf/dsa-bench-{os.getpid()}"
    dp = load_shield(pin_dir)
    xf = XdpFilter()
    shield: dict[str, list[float]] = {k: [] for k in FRAMES}
    other: dict[str, list[float]] = {"pass": [], "drop": [], "drop-unprotected": []}
    verdicts: dict[str, tuple[int, int | None]] = {}
    try:
        for _ in range(args.runs):
            for case, data in FRAMES.items():
                dp.set_sample_every(1 if case == "sampled" else 0)
                if case == "sampled":
                    shield[case].append(measure_sampled(dp, data))
                else:
                    shield[case].append(dp.test_run(data, REPEAT).duration_ns)
                if case in other:
                    other[case].append(libbpf.prog_test_run_xdp(xf.prog_fd, data, REPEAT).duration_ns)
        for case, data in FRAMES.items():
            their_verdict = libbpf.prog_test_run_xdp(xf.prog_fd, data).retval if case in other else None
            verdicts[case] = (dp.test_run(data).retval, their_verdict)
        stats = dp.global_stats()
    finally:
        xf.close()
        dp.close(detach=True)
        detach(pin_dir)
        os.rmdir(pin_dir)

    names = {1: "DROP", 2: "PASS"}
    print(f"Kernel {platform.release()}; {args.runs} runs; xdp-filter program {xf.prog_name}.\n")
    print("| frame | shield ns/pkt (median) | shield runs | xdp-filter ns/pkt (median) | ratio | verdicts |")
    print("|---|---:|---|---:|---:|---|")
    for case in FRAMES:
        ours = statistics.median(shield[case])
        runs = ", ".join(f"{x:.0f}" for x in shield[case])
        v_ours, v_theirs = verdicts[case]
        if case in other:
            theirs = statistics.median(other[case])
            print(
                f"| {case} | {ours:.0f} | {runs} | {theirs:.0f} | {ours / theirs:.2f} | "
                f"{names.get(v_ours)} / {names.get(v_theirs or 0)} |"
            )
        else:
            print(f"| {case} | {ours:.0f} | {runs} | n/a (no counting or sampling) | | {names.get(v_ours)} |")
    print(f"\nshield samples taken {stats['sampled']}, lost {stats['sample_lost']}")


if __name__ == "__main__":
    main()
