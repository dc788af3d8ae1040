"""The kernel's SYN proxy counters, for the tests that run one (nftables backend, lab)."""

from __future__ import annotations

import subprocess


def synproxy_stats(ns: str) -> dict[str, int]:
    """/proc/net/stat/synproxy of network namespace ``ns``, summed over CPUs (a line
    of hex counters per CPU under one line of names)."""
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "cat", "/proc/net/stat/synproxy"],
        check=True,
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    lines = out.splitlines()
    names = lines[0].split()
    total = dict.fromkeys(names, 0)
    for line in lines[1:]:
        for k, v in zip(names, line.split(), strict=False):
            total[k] += int(v, 16)
    return total
