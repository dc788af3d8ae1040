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

from ddos_shield.dataplane.table import U64, key_words, sort_keys
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
    sel = np.flatnonzero((samples["category"] == Category.UDP) & (samples["ts"] > now - SPAN_SECONDS))
    if len(sel) == 0:
        return rates
    m = len(sel)
    # Distinct (destination, source, source port) pairs, found on one 64-bit number per
    # sample: each address replaced by its rank among the distinct ones (sorting 64-bit
    # words is several times cheaper than np.unique on 34-byte keys).  The rates'
    # destinations are ranked with the samples' so that each rates row finds its own
    # by rank, without a search.
    d_rank, hi, _ = _ranks(*key_words(np.concatenate([samples["dst"][sel], rates["dst"]])))
    s_rank, _, s_lo = _ranks(*key_words(samples["src"][sel]))
    sport = samples["sport"][sel].astype(np.uint64)
    u_rank = d_rank[:m]
    if len(hi) * len(s_lo) < 1 << 47:  # fits in 64 bits with the port
        pair = (u_rank * np.uint64(len(s_lo)) + s_rank) * np.uint64(65536) + sport
    else:  # some 10^7 samples a second: ranks of the pairs of ranks first
        pair = _ranks(u_rank, s_rank)[0] * np.uint64(65536) + sport
    order = np.argsort(pair)
    pair = pair[order]
    starts = np.flatnonzero(np.concatenate(([True], pair[1:] != pair[:-1])))
    # each distinct pair stands for as many as its sampling rate (the largest it was seen with)
    weight = np.maximum.reduceat(samples["sample_rate"][sel][order].astype(float).clip(min=1), starts)
    per_dst = np.bincount(u_rank[order[starts]].astype(np.intp), weight, len(hi))
    seen = np.bincount(u_rank.astype(np.intp), minlength=len(hi)) > 0
    r_rank = d_rank[m:].astype(np.intp)
    rows = np.flatnonzero(seen[r_rank])
    est = per_dst[r_rank[rows]] / SPAN_SECONDS
    rates["flows"][rows, Category.UDP] = np.minimum(est, rates["pps"][rows, Category.UDP])
    return rates


def _ranks(hi: U64, lo: U64) -> tuple[U64, U64, U64]:
    """(each key's rank among the distinct keys, the distinct keys' high and low words
    in order)."""
    order = sort_keys(hi, lo)
    s_hi, s_lo = hi[order], lo[order]
    new = np.concatenate(([True], (s_hi[1:] != s_hi[:-1]) | (s_lo[1:] != s_lo[:-1])))
    rank = np.empty(len(hi), dtype=np.uint64)
    rank[order] = np.cumsum(new) - 1
    return rank, s_hi[new], s_lo[new]
