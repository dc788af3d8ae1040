"""From an attack's sampled packets to the narrowest matches that stop it.

Two shapes of answer:

* **sources** -- when a few sources carry (nearly) all of the attack, one match per
  source address: blocking them costs nobody else anything;
* **fingerprints** -- when sources are many or spoofed, the narrowest set of matches
  that holds nearly all of the attack (:data:`ATTACK_COVER`): per attack category, the
  attack's packets are grouped by protocol and exact TCP flags (a SYN-ACK reflection
  with a tail of RSTs gets two rules, not one that matches any TCP); each group's rule
  takes every field its packets share -- source and destination port, TCP flags, the
  narrowest length and TTL ranges, a common source prefix -- each field holding
  :data:`FIELD_COVER` of the group, then gives up the fields that cost the most
  coverage until the rule matches that share of the group.  Always scoped to the target.

Each candidate says which share of the attack's samples it matches
(``attack_share``; ``set_share`` is what its whole set matches) and which share of the
target's legitimate traffic it would also hit (``collateral_share``).  The legitimate
reference is what the target received in the other categories, and in the attack's
categories up to :data:`RAMP` seconds before the attack was seen or before its ramp,
whichever is earlier (its normal traffic: the engine keeps two seconds of samples, so a
rule built when the attack starts sees them; see :func:`reference_until`).  No I/O, no clock.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

from ddos_shield.detect.carpet import inner_mask
from ddos_shield.detect.sketch import heavy_rows
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

#: attack samples beyond which heavy sources are pre-filtered with a count-min pass
HEAVY_PREFILTER_ROWS = 4096
TCP_SYN = 0x02
TCP_ACK = 0x10
#: a fingerprint set matches at least this share of its category's attack samples
ATTACK_COVER = 0.99
#: each field of a rule holds at least this share of its group (so that, with a few
#: fields, the rule still holds ATTACK_COVER): outliers, such as a legitimate client's
#: packets caught among the attack's, stay out of the rule
FIELD_COVER = 0.995
#: rules per category at most; an attack needing more groups gets one rule per protocol
MAX_RULES = 4
#: a group below this share of its category gets no rule of its own (a legitimate
#: client's packets caught among the attack's must not get a rule)
GROUP_MIN = 0.01
#: a port range wider than this says nothing (random ports)
MAX_PORT_SPAN = 1024
#: a TTL range wider than this is left out: reflectors and botnets spread over many hop
#: counts, and a range taken from the first samples would miss the sources seen later
MAX_TTL_SPAN = 32
#: length and TTL ranges are taken from at least this many samples of a group
MIN_RANGE_SAMPLES = 100
#: a source is blocked by address only with at least this many samples of its own (a
#: reflection's first few samples come from a handful of its many reflectors)
MIN_SOURCE_SAMPLES = 8
#: the source prefix of a fingerprint holds at least this share of the group's packets
#: (below FIELD_COVER: a spoofed range is the field that best spares real clients, so a
#: stray percent of them among the attack's samples must not widen it)
COMMON_PREFIX_SHARE = ATTACK_COVER
#: the attack's categories before the attack started minus this lead are legitimate
#: reference (the attack may have ramped up just before it crossed the limit)
RAMP = 0.5
#: ...and before its ramp: the run of RAMP-long stretches before it was seen in which the
#: target received its categories at or over the attack's limit (quiet stretches of up to
#: RAMP_GAP seconds inside the run: flow records arrive in bursts).  When detection lags
#: (bursty flow records, a loaded machine), the attack's own first packets fall seconds
#: before ``started``; as reference they would make every rule look like it hit all of
#: the target's normal traffic.  Normal traffic is below the limit by definition.
RAMP_GAP = 2.0
#: without a packet limit (an attack judged on bits alone), this share of its rate marks the ramp
RAMP_SHARE = 0.5
_V4_MAPPED = np.array([0] * 10 + [0xFF, 0xFF], dtype=np.uint8)


@dataclass(frozen=True)
class Candidate:
    match: Match
    kind: Literal["source", "fingerprint"]
    attack_share: float
    collateral_share: float
    set_share: float = 0.0  # of the attack's samples matched by this candidate's whole set


def attack_samples(
    window: TrafficBatch, attack: Attack, since: float, others: Sequence[Attack] = ()
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Masks of the window's rows that belong to the attack (its categories at its target,
    sampled from ``since`` on), and of the target's legitimate reference: its traffic in
    the other categories, and in the attack's up to :data:`RAMP` seconds before ``since``.

    What the target received in the attack's categories just before ``since`` is neither:
    it may be normal traffic or the attack ramping up, so it judges nothing.  Rows of
    ``others`` on narrower targets inside this one (host attacks inside a carpet
    bomb's prefix) are theirs, not this attack's.
    """
    to_target = addresses_in(window["dst"], attack.target)
    in_cats = np.isin(window["category"], [int(c) for c in attack.categories])
    ts = window["ts"]
    mine = to_target & in_cats & (ts >= since)
    if others:
        mine &= ~inner_mask(window, attack, others)
    until = reference_until(window[to_target & in_cats & (ts < since)], attack, since)
    return mine, to_target & (~in_cats | (ts < until))


def reference_until(before: TrafficBatch, attack: Attack, since: float) -> float:
    """Until when the target's traffic in the attack's categories (``before``: its rows
    before ``since``) is its normal traffic: :data:`RAMP` seconds before the attack's
    ramp (see :data:`RAMP_GAP`), or before ``since`` when there was none."""
    level = attack.limit_pps if attack.limit_pps > 0 else RAMP_SHARE * attack.pps
    start = since
    if len(before) and level > 0:
        back = np.floor((since - before["ts"]) / RAMP).astype(np.int64)  # stretch 0: just before since
        sums = np.bincount(np.maximum(back, 0), weights=before["packets"].astype(np.float64))
        hot = np.nonzero(sums / RAMP >= level)[0].tolist()
        gap = int(RAMP_GAP / RAMP)
        last = -1
        for i in hot:  # the run from since backwards, quiet stretches of up to `gap` inside
            if i - last > gap + 1:
                break
            last = i
        start = since - (last + 1) * RAMP
    return start - RAMP


def build(
    attack: Attack,
    window: TrafficBatch,
    *,
    max_sources: int,
    source_share: float,
    min_samples: int,
    allowlist: list[IPNetwork] | None = None,
    lead: float = 0.1,
    others: Sequence[Attack] = (),
    open_fields: Sequence[str] = (),
) -> list[Candidate] | None:
    """Candidates for ``attack`` from recent samples, or None while samples are too few.

    Only samples from ``lead`` seconds before the attack was seen on count as the
    attack's: what the target received before is its normal traffic.  ``others`` are
    the other open attacks (see :func:`attack_samples`).  ``open_fields`` are left out
    of every fingerprint, for an enforcement point that cannot match on them (Flowspec
    has no TTL): the shares are then those of the wider rule really enforced.
    """
    if not attack.categories:
        return []  # reconnaissance (scans, sweeps): reported, never blocked by a rule
    atk_mask, other_mask = attack_samples(window, attack, attack.started - lead, others)
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
        return _as_set([Match(src=net) for net in sources], "source", atk, other)
    # Rows from sources the target already heard from before the attack are its clients'
    # traffic caught among the attack's (spoofed sources and reflectors are new): they
    # neither shape the fingerprint nor count in what it must cover.
    # (the reference in the attack's categories already ends before the ramp)
    before = window[other_mask & (window["ts"] < attack.started - lead - RAMP)]
    if len(before):
        known = np.unique(np.ascontiguousarray(before["src"]).view("V16").ravel())
        new = ~np.isin(np.ascontiguousarray(atk["src"]).view("V16").ravel(), known)
        if new.sum() >= min_samples:
            atk = atk[new]
    out = []
    for cat in attack.categories:
        rows = atk[atk["category"] == int(cat)]
        if len(rows) < max(3, min_samples // 4):
            continue
        fps = fingerprints(rows, cat, attack.target)
        if open_fields:
            # rules that differed only in an open field become one
            fps = list(dict.fromkeys(replace(m, **dict.fromkeys(open_fields)) for m in fps))
        out += _as_set(fps, "fingerprint", rows, other)
    return out


def _as_set(
    matches: list[Match], kind: Literal["source", "fingerprint"], atk: TrafficBatch, other: TrafficBatch
) -> list[Candidate]:
    w_atk = atk["packets"].astype(float)
    w_oth = other["packets"].astype(float)
    tot_atk, tot_oth = float(w_atk.sum()), float(w_oth.sum())
    union = np.zeros(len(atk), dtype=bool)
    out = []
    for m in matches:
        hit = m.matches(atk)
        union |= hit
        share = float(w_atk[hit].sum()) / tot_atk if tot_atk else 0.0
        coll = float(w_oth[m.matches(other)].sum()) / tot_oth if tot_oth else 0.0
        out.append(Candidate(m, kind, share, coll))
    set_share = float(w_atk[union].sum()) / tot_atk if tot_atk else 0.0
    return [Candidate(c.match, c.kind, c.attack_share, c.collateral_share, set_share) for c in out]


def fingerprints(rows: TrafficBatch, cat: Category, target: IPNetwork) -> list[Match]:
    """The narrowest matches that together hold :data:`ATTACK_COVER` of ``rows`` (one
    category of an attack), each scoped to ``target``."""
    w = rows["packets"].astype(np.float64)
    total = float(w.sum())
    later = (rows["flags"] & PacketFlag.FRAG_LATER) != 0
    proto = rows["proto"].astype(np.int64)
    flags = np.where((proto == 6) & ~later, rows["tcp_flags"].astype(np.int64), 256)
    sport = np.where(((proto == 6) | (proto == 17)) & ~later, rows["sport"].astype(np.int64), 65536)
    # finest grouping first: (protocol, flags, source port) -- a reflection from two
    # service ports gets a rule each --, then (protocol, flags), then protocol alone
    tiers = [((proto * 512 + flags) << 17) + sport, proto * 512 + flags, proto]
    for tier, key in enumerate(tiers):
        groups = _groups(key, w, total)
        if groups is not None or tier == len(tiers) - 1:
            break
    if groups is None:  # many protocols: the heaviest
        groups = [int(np.argmax(np.bincount(rows["proto"], w)))]
    return [_narrowest(rows[key == g], cat, target, exact_flags=tier < 2) for g in groups]


def _groups(key: npt.NDArray[np.int64], w: npt.NDArray[np.float64], total: float) -> list[int] | None:
    """The heaviest keys that together hold FIELD_COVER of the weight (None: more than MAX_RULES)."""
    vals, inv = np.unique(key, return_inverse=True)
    per = np.bincount(inv.ravel(), weights=w)
    order = np.argsort(per)[::-1]
    chosen: list[int] = []
    held = 0.0
    for i in order:
        if held >= ATTACK_COVER * total or per[i] < GROUP_MIN * total:
            break
        chosen.append(int(vals[i]))
        held += float(per[i])
    if len(chosen) > MAX_RULES or held < ATTACK_COVER * total:
        return None
    return chosen


def _narrowest(rows: TrafficBatch, cat: Category, target: IPNetwork, *, exact_flags: bool) -> Match:
    """Every field the group's packets share, then fewer until the rule holds ATTACK_COVER of them."""
    w = rows["packets"].astype(np.float64)
    proto = int(rows["proto"][0]) if bool(np.all(rows["proto"] == rows["proto"][0])) else None
    later = (rows["flags"] & PacketFlag.FRAG_LATER) != 0
    ports_ok = proto in (6, 17) and not later.any()
    fields: dict[str, object] = {}
    if ports_ok:
        for f in ("sport", "dport"):
            r = _span(rows[f], w, FIELD_COVER)
            if r is not None and r.hi - r.lo < MAX_PORT_SPAN:
                fields[f] = r
    if proto == 6 and not later.any():
        if exact_flags:
            fields["tcp_flags"] = (0xFF, int(rows["tcp_flags"][0]))
        elif cat == Category.TCP_SYN:
            fields["tcp_flags"] = (TCP_SYN | TCP_ACK, TCP_SYN)
    # flow records carry no TTL and only a mean length: such fields stay open; so do
    # ranges from too few samples (a slow attack's first samples may all come from one
    # of its reflectors, with its one TTL and answer size)
    ranges = len(rows) >= MIN_RANGE_SAMPLES
    if ranges and not (rows["flags"] & PacketFlag.LEN_MEAN).any():
        r = _span(rows["length"], w, FIELD_COVER)
        if r is not None and r.hi - r.lo < 1 << 15:
            fields["length"] = r
    if ranges and not (rows["flags"] & PacketFlag.TTL_UNKNOWN).any():
        r = _span(rows["ttl"], w, FIELD_COVER)
        if r is not None and r.hi - r.lo <= MAX_TTL_SPAN:
            fields["ttl"] = r
    src = _common_prefix(rows)
    if src is not None:
        fields["src"] = src

    def make(fs: dict[str, object]) -> Match:
        return Match(proto=proto, dst=target, **fs)  # type: ignore[arg-type]

    total = float(w.sum())

    def cover(fs: dict[str, object]) -> float:
        return float(w[make(fs).matches(rows)].sum()) / total if total else 0.0

    # Each field holds FIELD_COVER alone; together they may hold less (different
    # packets fall outside different fields): give up, one at a time, the field whose
    # loss wins back the most, until the rule holds ATTACK_COVER of the group.
    while fields and cover(fields) < ATTACK_COVER:
        best = max(fields, key=lambda f: cover({k: v for k, v in fields.items() if k != f}))
        del fields[best]
    return make(fields)


def _span(col: npt.NDArray[np.generic], w: npt.NDArray[np.float64], share: float) -> Range | None:
    """The shortest range of values that holds ``share`` of the weight."""
    vals, inv = np.unique(col, return_inverse=True)
    per = np.bincount(inv.ravel(), weights=w)
    cum = np.concatenate([[0.0], np.cumsum(per)])
    need = share * cum[-1]
    if need <= 0:
        return None
    # for each start i, the first end j with cum[j+1] - cum[i] >= need
    ends = np.searchsorted(cum, cum[:-1] + need - 1e-9, side="left") - 1
    ok = ends < len(vals)
    if not ok.any():
        return None
    starts = np.nonzero(ok)[0]
    width = vals[ends[ok]].astype(np.int64) - vals[starts].astype(np.int64)
    k = int(np.argmin(width))
    return Range(int(vals[starts[k]]), int(vals[ends[ok][k]]))


def _heavy_sources(atk: TrafficBatch, max_sources: int, need: float) -> list[IPNetwork] | None:
    """The few sources that together carry ``need`` of the attack, or None."""
    if max_sources == 0:
        return None
    weights = atk["packets"].astype(float)
    total = weights.sum()
    if len(atk) > HEAVY_PREFILTER_ROWS:
        # only sources that may hold their share can be chosen: one count-min pass finds
        # their rows (all rows of a source alike), so the sort below is of those alone
        # and a spoofed flood's sources are never sorted
        maybe = heavy_rows(atk["src"], weights, 0.5 / max_sources)
        atk, weights = atk[maybe], weights[maybe]
        if len(atk) == 0:
            return None
    keys = np.ascontiguousarray(atk["src"]).view("V16").ravel()
    uniq, inv = np.unique(keys, return_inverse=True)
    per = np.bincount(inv, weights=weights)
    rows_per = np.bincount(inv)
    order = np.argsort(per)[::-1]
    chosen: list[int] = []
    covered = 0.0
    for i in order[: max_sources + 1]:
        # a source must itself be a real share of the attack: a handful of samples from
        # a legitimate client caught in the window must never make the cut
        if per[i] / total < 0.5 / max_sources or rows_per[i] < MIN_SOURCE_SAMPLES:
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
