"""New flows per second per destination: the ``flows`` column of a rate batch.

What is measured, and how well:

* **TCP** (category ``TCP_SYN``): a new flow is a connection attempt, one SYN without
  ACK.  The kernel counts every SYN, so this is exact: the SYN packet rate.
* **UDP**: UDP has no handshake, so a new flow is taken to be a distinct (source
  address, source port) pair at the destination.  The kernel does not count pairs;
  they are counted in the sampled packets of the last :data:`SPAN_SECONDS`, each
  distinct pair weighted by its sampling rate (1-in-N), and capped at the UDP packet
  rate.  Unsampled (N = 1) this is exact for *active* pairs per second: a pair that
  stays busy counts again each second, which is what a spoofed flood looks like (every
  packet a new pair) and close to what a DNS server sees (a fresh port per query).
  Sampled, it is an estimate that is right for floods of fresh pairs and too high for
  long flows (a flow with many packets is seen as several pairs only if their samples
  fall apart in time: at most once per sample), hence the cap.
* Other categories: not measured (0); the configuration refuses ``flows`` limits there.

No I/O, no clock.

>>> from ddos_shield.records import empty_rates, empty_traffic, addr_bytes, Category
>>> r = empty_rates(1); r["dst"][0] = list(addr_bytes("203.0.113.10")); r["pps"][0, Category.UDP] = 500
>>> s = empty_traffic(3); s["dst"] = list(addr_bytes("203.0.113.10")); s["category"] = Category.UDP
>>> s["ts"] = 10.0; s["sample_rate"] = 100; s["sport"] = [1, 2, 2]
>>> float(with_flows(r, s, now=10.0)["flows"][0, Category.UDP])
200.0
"""

from __future__ import annotations

import numpy as np

from ddos_shield.dataplane.table import find_keys, key_words, sort_keys
from ddos_shield.records import Category, RateBatch, TrafficBatch

#: seconds of samples counted for the UDP estimate
SPAN_SECONDS = 1.0


def with_flows(rates: RateBatch, samples: TrafficBatch, now: float) -> RateBatch:
    """``rates`` with its ``flows`` column filled (in place, and returned)."""
    if len(rates) == 0:
        return rates
    rates["flows"] = 0.0
    rates["flows"][:, Category.TCP_SYN] = rates["pps"][:, Category.TCP_SYN]
    if len(samples) == 0:
        return rates
    udp = samples[(samples["category"] == Category.UDP) & (samples["ts"] > now - SPAN_SECONDS)]
    if len(udp) == 0:
        return rates
    key = np.zeros((len(udp), 34), dtype=np.uint8)
    key[:, :16] = udp["dst"]
    key[:, 16:32] = udp["src"]
    key[:, 32:] = udp["sport"].astype(">u2").view(np.uint8).reshape(-1, 2)
    _, first, inv = np.unique(key.view("V34").ravel(), return_index=True, return_inverse=True)
    # each distinct pair stands for as many as its sampling rate (the largest it was seen with)
    weight = np.zeros(len(first))
    np.maximum.at(weight, inv.ravel(), udp["sample_rate"].astype(float).clip(min=1))
    dst = np.ascontiguousarray(udp["dst"][first])
    hi, lo = key_words(dst)
    order = sort_keys(hi, lo)
    hi, lo, weight = hi[order], lo[order], weight[order]
    cut = np.flatnonzero((hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])) + 1
    starts = np.concatenate(([0], cut))
    per_dst = np.add.reduceat(weight, starts)
    r_hi, r_lo = key_words(np.ascontiguousarray(rates["dst"]))
    pos, found = find_keys(hi[starts], lo[starts], r_hi, r_lo)
    rows = np.flatnonzero(found)
    est = per_dst[pos[rows]] / SPAN_SECONDS
    rates["flows"][rows, Category.UDP] = np.minimum(est, rates["pps"][rows, Category.UDP])
    return rates
