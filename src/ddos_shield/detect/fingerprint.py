"""From an attack's sampled packets to the narrowest matches that stop it.

Two shapes of answer:

* **sources** -- when a few sources carry (nearly) all of the attack, one match per
  source address: blocking them costs nobody else anything;
* **fingerprints** -- when sources are many or spoofed, one match per attack category
  built from what the attack's packets share: protocol, ports, TCP flags, length and
  TTL ranges, a common source prefix, always scoped to the target.

Each candidate says which share of the attack's samples it matches
(``attack_share``) and which share of the target's other sampled traffic it would
also hit (``collateral_share``).  No I/O, no clock.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from ddos_shield.records import (
    Attack,
    Category,
    IPNetwork,
    Match,
    PacketFlag,
    Range,
    TrafficBatch,
    addresses_in,
    bytes_addr,
)

TCP_SYN = 0x02
TCP_ACK = 0x10
#: a field is fixed when one value covers this share of the attack's packets
DOMINANT = 0.95
#: quantiles that bound length and TTL ranges (outliers, such as a legitimate client's
#: packets caught among the attack's, stay out of the rule)
TAIL = 0.01
#: the source prefix of a fingerprint holds at least this share of the attack's packets
COMMON_PREFIX_SHARE = 0.99
_V4_MAPPED = np.array([0] * 10 + [0xFF, 0xFF], dtype=np.uint8)


@dataclass(frozen=True)
class Candidate:
    match: Match
    kind: Literal["source", "fingerprint"]
    attack_share: float
    collateral_share: float


def attack_samples(
    window: TrafficBatch, attack: Attack, since: float
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Masks of the window's rows that belong to the attack (its categories at its target,
    sampled from ``since`` on), and of the target's traffic in its other categories.

    What the target received in the attack's categories before ``since`` is neither: it
    may be normal traffic or the attack ramping up, so it judges nothing.
    """
    to_target = addresses_in(window["dst"], attack.target)
    in_cats = np.isin(window["category"], [int(c) for c in attack.categories])
    return to_target & in_cats & (window["ts"] >= since), to_target & ~in_cats


def build(
    attack: Attack,
    window: TrafficBatch,
    *,
    max_sources: int,
    source_share: float,
    min_samples: int,
    allowlist: list[IPNetwork] | None = None,
    lead: float = 0.1,
) -> list[Candidate] | None:
    """Candidates for ``attack`` from recent samples, or None while samples are too few.

    Only samples from ``lead`` seconds before the attack was seen on count as the
    attack's: what the target received before is its normal traffic.
    """
    if not attack.categories:
        return []  # reconnaissance (scans, sweeps): reported, never blocked by a rule
    atk_mask, other_mask = attack_samples(window, attack, attack.started - lead)
    atk = window[atk_mask]
    other = window[other_mask]
    if len(atk) < min_samples:
        return None
    # Allow-listed sources are never dropped, so they take no part in any rule.
    allowed = np.zeros(len(atk), dtype=bool)
    for net in allowlist or []:
        allowed |= addresses_in(atk["src"], net)
    atk = atk[~allowed]
    if len(atk) < min_samples:
        return []
    sources = _heavy_sources(atk, max_sources, source_share)
    if sources is not None:
        return [_candidate(Match(src=net), "source", atk, other) for net in sources]
    out = []
    for cat in attack.categories:
        rows = atk[atk["category"] == int(cat)]
        if len(rows) < max(3, min_samples // 4):
            continue
        out.append(_candidate(_fingerprint(rows, cat, attack.target), "fingerprint", rows, other))
    return out


def _candidate(
    match: Match, kind: Literal["source", "fingerprint"], atk: TrafficBatch, other: TrafficBatch
) -> Candidate:
    w_atk = atk["packets"].astype(float)
    w_oth = other["packets"].astype(float)
    share = float(w_atk[match.matches(atk)].sum() / w_atk.sum()) if w_atk.sum() else 0.0
    coll = float(w_oth[match.matches(other)].sum() / w_oth.sum()) if w_oth.sum() else 0.0
    return Candidate(match, kind, share, coll)


def _heavy_sources(atk: TrafficBatch, max_sources: int, need: float) -> list[IPNetwork] | None:
    """The few sources that together carry ``need`` of the attack, or None."""
    if max_sources == 0:
        return None
    keys = np.ascontiguousarray(atk["src"]).view("V16").ravel()
    weights = atk["packets"].astype(float)
    total = weights.sum()
    uniq, inv = np.unique(keys, return_inverse=True)
    per = np.bincount(inv, weights=weights)
    order = np.argsort(per)[::-1]
    chosen: list[int] = []
    covered = 0.0
    for i in order[: max_sources + 1]:
        # a source must itself be a real share of the attack: a handful of samples from
        # a legitimate client caught in the window must never make the cut
        if per[i] / total < 0.5 / max_sources:
            break
        chosen.append(int(i))
        covered += per[i]
        if covered / total >= need:
            break
    if not chosen or covered / total < need or len(chosen) > max_sources:
        return None
    nets: list[IPNetwork] = []
    for i in chosen:
        a = bytes_addr(uniq[i].tobytes())
        nets.append(ipaddress.ip_network(a))
    return nets


def _fingerprint(rows: TrafficBatch, cat: Category, target: IPNetwork) -> Match:
    w = rows["packets"].astype(float)
    proto = _dominant(rows["proto"], w)
    later = (rows["flags"] & PacketFlag.FRAG_LATER) != 0
    ports_ok = not later.any()
    sport = dport = None
    tcp_flags = None
    if ports_ok and proto in (6, 17):
        sp = _dominant(rows["sport"], w)
        dp = _dominant(rows["dport"], w)
        sport = Range(sp, sp) if sp is not None else None
        dport = Range(dp, dp) if dp is not None else None
    if ports_ok and cat == Category.TCP_SYN:
        tcp_flags = (TCP_SYN | TCP_ACK, TCP_SYN)
    elif ports_ok and proto == 6:
        fl = _dominant(rows["tcp_flags"], w)
        if fl is not None:
            tcp_flags = (0xFF, fl)
    # flow records carry no TTL and only a mean length: such fields stay open
    length = None if (rows["flags"] & PacketFlag.LEN_MEAN).any() else _range(rows["length"], w, limit=1 << 16)
    ttl = None if (rows["flags"] & PacketFlag.TTL_UNKNOWN).any() else _range(rows["ttl"], w, limit=256)
    src = _common_prefix(rows)
    return Match(
        proto=proto,
        src=src,
        dst=target,
        sport=sport,
        dport=dport,
        tcp_flags=tcp_flags,
        length=length,
        ttl=ttl,
    )


def _dominant(col: npt.NDArray[np.generic], w: npt.NDArray[np.float64]) -> int | None:
    vals, inv = np.unique(col, return_inverse=True)
    per = np.bincount(inv, weights=w)
    i = int(np.argmax(per))
    return int(vals[i]) if per[i] >= DOMINANT * w.sum() else None


def _range(col: npt.NDArray[np.generic], w: npt.NDArray[np.float64], limit: int) -> Range | None:
    lo, hi = np.quantile(col.astype(float), [TAIL, 1 - TAIL], method="inverted_cdf", weights=w)
    lo_i, hi_i = int(lo), int(hi)
    if hi_i - lo_i >= limit // 2:  # spread over half the space: says nothing
        return None
    return Range(lo_i, hi_i)


def _common_prefix(rows: TrafficBatch) -> IPNetwork | None:
    """The longest prefix holding nearly all sources (a stray legitimate source in the
    window must not widen it), when it is narrow enough to help."""
    src = rows["src"]
    w = rows["packets"].astype(float)
    v4 = bool(np.all(src[:, :12] == _V4_MAPPED[None, :]))
    top = 12 if v4 else 0
    # reference: a source under the most common /16 (IPv4) or /48 (IPv6), where a
    # spoofed range lives, so that a stray legitimate source is not taken for it
    lead = np.ascontiguousarray(src[:, top : top + (2 if v4 else 6)]).view(f"V{2 if v4 else 6}").ravel()
    _, inv = np.unique(lead, return_inverse=True)
    ref = src[np.nonzero(inv == int(np.argmax(np.bincount(inv, weights=w))))[0][0]]
    # leading bits each source shares with the reference
    x = src ^ ref
    nz = x != 0
    first = np.where(nz.any(axis=1), nz.argmax(axis=1), 16)
    byte = x[np.arange(len(x)), np.minimum(first, 15)]
    bits = first * 8 + np.where(first < 16, 8 - np.floor(np.log2(np.maximum(byte, 1))).astype(int) - 1, 0)
    nbits = int(np.quantile(bits, 1 - COMMON_PREFIX_SHARE, method="inverted_cdf", weights=w))
    a = bytes_addr(ref.tobytes())
    if a.version == 4:
        plen = nbits - 96
        if plen < 8:
            return None
        return ipaddress.ip_network((a, plen), strict=False)
    if nbits < 24:
        return None
    return ipaddress.ip_network((a, nbits), strict=False)
