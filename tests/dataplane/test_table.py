"""User-space counters (CounterTable), their merge, the key search they use, and the
rates between two snapshots (counter_rates), each checked against a plain Python
reference built on dicts of 16-byte keys."""

from __future__ import annotations

import ipaddress
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ddos_shield.dataplane import table
from ddos_shield.dataplane.base import counter_rates
from ddos_shield.dataplane.table import CounterTable, find_keys, key_words, sort_keys, words_key
from ddos_shield.records import COUNTER_DTYPE, Category, PacketFlag, addr_bytes, as_network, empty_traffic
from tests.traffic import counters_by_dst

NCAT = len(Category)


def batch(rows: list[tuple[str, int, int, int]]) -> Any:
    """(destination, category, packets, bytes) per row."""
    b = empty_traffic(len(rows))
    for i, (dst, cat, pkts, byts) in enumerate(rows):
        b["dst"][i] = np.frombuffer(addr_bytes(dst), dtype=np.uint8)
        b["flags"][i] = PacketFlag.IPV6 if ":" in dst else 0
        b["category"][i], b["packets"][i], b["bytes"][i] = cat, pkts, byts
    return b


def counts(t: CounterTable) -> dict[str, tuple[list[int], list[int], int, int]]:
    return counters_by_dst(t.snapshot())


def cats(**kw: int) -> list[int]:
    out = [0] * NCAT
    for name, v in kw.items():
        out[Category[name.upper()]] = v
    return out


# ---- counting ----------------------------------------------------------------------------

PROTECTED = {as_network("203.0.113.0/24"): 0, as_network("2001:db8::/32"): 0}

CASES: list[tuple[str, list[tuple[str, int, int, int]], list[bool] | None, int, dict[str, Any]]] = [
    # ---- IPv4: per address and category
    (
        "one destination, two categories",
        [("203.0.113.10", 2, 1, 100), ("203.0.113.10", 2, 3, 300), ("203.0.113.10", 0, 1, 60)],
        None,
        5,
        {"203.0.113.10": (cats(udp=4, tcp_syn=1), cats(udp=400, tcp_syn=60), 0, 0)},
    ),
    (
        "unprotected rows are not counted",
        [("198.51.100.1", 2, 7, 700), ("203.0.113.11", 1, 2, 80)],
        None,
        2,
        {"203.0.113.11": (cats(tcp=2), cats(tcp=80), 0, 0)},
    ),
    (
        "dropped rows counted apart too",
        [("203.0.113.12", 3, 2, 120), ("203.0.113.12", 3, 5, 300)],
        [True, False],
        7,
        {"203.0.113.12": (cats(icmp=7), cats(icmp=420), 2, 120)},
    ),
    # ---- IPv6: aggregated per /64
    (
        "IPv6 hosts of one /64 share a counter",
        [("2001:db8:1:2::1", 2, 1, 100), ("2001:db8:1:2::ffff", 2, 1, 100), ("2001:db8:1:3::1", 4, 1, 50)],
        None,
        3,
        {
            "2001:db8:1:2::": (cats(udp=2), cats(udp=200), 0, 0),
            "2001:db8:1:3::": (cats(frag=1), cats(frag=50), 0, 0),
        },
    ),
    # ---- nothing to count
    ("empty batch", [], None, 0, {}),
    ("nothing protected", [("192.0.2.1", 2, 1, 1)], None, 0, {}),
]


@pytest.mark.parametrize(("name", "rows", "dropped", "counted", "want"), CASES, ids=[c[0] for c in CASES])
def test_counting(
    name: str, rows: list[tuple[str, int, int, int]], dropped: list[bool] | None, counted: int, want: dict[str, Any]
) -> None:
    t = CounterTable(PROTECTED)
    b = batch(rows)
    drop = np.array(dropped, dtype=bool) if dropped is not None else None
    assert t.add(b, drop) == counted
    assert counts(t) == want
    # a protected mask handed in gives the same
    t2 = CounterTable(PROTECTED)
    assert t2.add(b, drop, t2.protected_mask(b["dst"])) == counted
    assert counts(t2) == want


def test_counts_accumulate_and_snapshot_is_a_copy() -> None:
    t = CounterTable({as_network("0.0.0.0/0"): 0, as_network("::/0"): 0})
    b = batch([("192.0.2.1", 2, 1, 10), ("2001:db8::1", 1, 1, 10)])
    t.add(b)
    snap = t.snapshot()
    t.add(b)
    assert snap["pkts"].sum() == 2
    assert t.snapshot()["pkts"].sum() == 4


def test_set_protected_drops_what_is_no_longer_protected() -> None:
    t = CounterTable(PROTECTED)
    t.add(batch([("203.0.113.1", 2, 1, 1), ("2001:db8::1", 2, 1, 1)]))
    t.set_protected({as_network("2001:db8::/32"): 0})
    assert list(counts(t)) == ["2001:db8::"]
    t.add(batch([("203.0.113.1", 2, 1, 1), ("2001:db8::1", 2, 1, 1)]))
    assert counts(t)["2001:db8::"][0] == cats(udp=2)


# ---- against a reference, random batches -----------------------------------------------


def reference(out: dict[bytes, list[int]], b: Any, drop: Any, nets: list[Any], plen: int) -> None:
    """Count a batch into ``out`` one row at a time."""
    mask = (((1 << 128) - 1) ^ ((1 << (128 - plen)) - 1)).to_bytes(16, "big")
    for i, r in enumerate(b):
        key = bytes(r["dst"])
        addr = ipaddress.ip_address(key)
        plain = addr.ipv4_mapped or addr
        if not any(plain.version == n.version and plain in n for n in nets):
            continue
        if r["flags"] & PacketFlag.IPV6:
            key = bytes(x & m for x, m in zip(key, mask, strict=True))
        c = out.setdefault(key, [0] * (2 * NCAT + 2))
        c[int(r["category"])] += int(r["packets"])
        c[NCAT + int(r["category"])] += int(r["bytes"])
        if drop is not None and drop[i]:
            c[2 * NCAT] += int(r["packets"])
            c[2 * NCAT + 1] += int(r["bytes"])


def as_dict(snap: Any) -> dict[bytes, list[int]]:
    return {
        bytes(r["dst"]): [*r["pkts"].tolist(), *r["bytes"].tolist(), int(r["dropped_pkts"]), int(r["dropped_bytes"])]
        for r in snap
    }


def random_batch(rng: np.random.Generator, n: int, hosts: int, v6_share: float) -> Any:
    b = empty_traffic(n)
    d = np.zeros((n, 16), dtype=np.uint8)
    host = rng.integers(0, hosts, n)
    d[:, 10:12] = 0xFF
    d[:, 12:14] = (203, 0)
    d[:, 14] = 113 + host % 2
    d[:, 15] = host
    v6 = rng.random(n) < v6_share
    d6 = np.zeros((n, 16), dtype=np.uint8)
    d6[:, :4] = (0x20, 0x01, 0x0D, 0xB8)
    d6[:, 7] = host % 5  # a few /64s
    d6[:, 15] = host  # several hosts in each
    d[v6] = d6[v6]
    b["dst"] = d
    b["flags"] = np.where(v6, int(PacketFlag.IPV6), 0)
    b["category"] = rng.integers(0, NCAT, n)
    b["packets"] = rng.integers(1, 100, n)
    b["bytes"] = b["packets"] * rng.integers(40, 1500, n)
    return b


@pytest.mark.parametrize("plen", [48, 64, 128])
@pytest.mark.parametrize(
    "prefixes", [["203.0.113.0/24", "2001:db8::/32"], ["0.0.0.0/0", "::/0"], ["203.0.114.0/25", "2001:db8:0:2::/64"]]
)
@pytest.mark.parametrize("v6_share", [0.0, 0.3])
@pytest.mark.parametrize("fold", ["distinct", "alike"])
def test_random_batches_match_reference(
    monkeypatch: pytest.MonkeyPatch, plen: int, prefixes: list[str], v6_share: float, fold: str
) -> None:
    if fold == "alike":  # keys fold into one word alike (IPv6 hosts of several /64s): no folded index
        monkeypatch.setattr(table, "_FOLD", np.uint64(0))
    rng = np.random.default_rng(plen)
    nets = [as_network(p) for p in prefixes]
    t = CounterTable({n: 0 for n in nets}, plen)
    known = t._known
    short: list[bool] = []  # batches whose destinations were all known: counted without a sort

    def spy(hi: Any, lo: Any) -> Any:
        got = known(hi, lo)
        short.append(got is not None)
        return got

    t._known = spy  # type: ignore[method-assign]
    want: dict[bytes, list[int]] = {}
    for k in range(25):
        b = random_batch(rng, int(rng.integers(0, 400)), int(rng.integers(1, 200)), v6_share)
        drop = rng.random(len(b)) < 0.2 if k % 2 else None
        t.add(b, drop)
        reference(want, b, drop, nets, plen)
        assert as_dict(t.snapshot()) == want
    if fold == "distinct":
        assert any(short)


def test_keys_that_fold_alike_are_counted_by_the_sorting_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table, "_FOLD", np.uint64(0))  # two /64s differing in their high words only
    t = CounterTable({as_network("::/0"): 0}, 64)
    b = batch([("2001:db8:0:1::", 2, 1, 100), ("2001:db8:0:2::", 2, 1, 100)])
    t.add(b)
    assert t._known(*table.key_words(b["dst"])) is None
    t.add(b)
    assert [c[0][2] for c in counts(t).values()] == [2, 2]


def test_huge_counts_stay_exact() -> None:
    # sums beyond 2**53 cannot go through float weights: they must still be exact
    t = CounterTable({as_network("203.0.113.0/24"): 0})
    big = (1 << 62) + 1
    b = batch([("203.0.113.1", 2, big, big), ("203.0.113.1", 2, 1, 1)])
    t.add(b)
    assert int(t.snapshot()["pkts"][0][2]) == big + 1


# ---- eviction ----------------------------------------------------------------------------


def test_least_recently_seen_destinations_go_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table, "MAX_DESTINATIONS", 16)
    t = CounterTable({as_network("203.0.113.0/24"): 0})
    for i in range(16):
        t.add(batch([(f"203.0.113.{i}", 2, 1, 1)]))
    t.add(batch([("203.0.113.0", 2, 1, 1)]))  # .0 seen again: now .1 is the oldest
    t.add(batch([("203.0.113.100", 2, 1, 1), ("203.0.113.101", 2, 1, 1)]))
    held = counts(t)
    assert len(held) <= 16
    assert "203.0.113.1" not in held and "203.0.113.2" not in held
    assert held["203.0.113.0"][0] == cats(udp=2)
    assert "203.0.113.100" in held and "203.0.113.101" in held


def test_a_batch_never_evicts_its_own_destinations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table, "MAX_DESTINATIONS", 8)
    t = CounterTable({as_network("203.0.113.0/24"): 0})
    t.add(batch([(f"203.0.113.{i}", 2, 1, 1) for i in range(8)]))
    # 6 known and 4 new: only the 2 not in the batch may go, so 2 of the new find no room
    rows = [(f"203.0.113.{i}", 2, 1, 1) for i in range(6)] + [(f"203.0.113.{i}", 2, 1, 1) for i in range(50, 54)]
    t.add(batch(rows))
    held = counts(t)
    assert len(held) == 8
    for i in range(6):
        assert held[f"203.0.113.{i}"][0] == cats(udp=2)
    assert sum(f"203.0.113.{i}" in held for i in range(50, 54)) == 2


# ---- the key search ------------------------------------------------------------------------

keys = st.lists(
    st.tuples(st.integers(0, 3).map(lambda h: h * 0x0123456789ABCDEF), st.integers(0, 2**64 - 1)),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(table_keys=keys, queries=keys, spread=st.booleans())
def test_find_keys_matches_bisect(
    table_keys: list[tuple[int, int]], queries: list[tuple[int, int]], spread: bool
) -> None:
    if spread:  # many runs of equal high words (more than are searched one by one)
        table_keys = [(h + i % 11, lo) for i, (h, lo) in enumerate(table_keys)]
        queries = [*(table_keys[::3]), *((h + i % 11, lo) for i, (h, lo) in enumerate(queries))]
    else:
        queries = [*table_keys[::2], *queries]
    uniq = sorted(set(table_keys))
    s_hi = np.array([h for h, _ in uniq], dtype=np.uint64)
    s_lo = np.array([lo for _, lo in uniq], dtype=np.uint64)
    q_hi = np.array([h for h, _ in queries], dtype=np.uint64)
    q_lo = np.array([lo for _, lo in queries], dtype=np.uint64)
    import bisect

    pos, found = find_keys(s_hi, s_lo, q_hi, q_lo)
    for i, k in enumerate(queries):
        assert pos[i] == bisect.bisect_left(uniq, k)
        assert found[i] == (k in set(uniq))
    order = sort_keys(q_hi, q_lo)
    assert [queries[i] for i in order] == sorted(queries)


@settings(max_examples=150, deadline=None)
@given(
    table_lo=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=80),
    queries=st.lists(st.integers(0, 2**64 - 1), max_size=80),
    high=st.sampled_from([0, 0x0123456789ABCDEF]),
)
def test_find_keys_with_one_high_word_matches_bisect(table_lo: list[int], queries: list[int], high: int) -> None:
    # every key with the same high word (IPv4 keys): the short path
    import bisect

    uniq = sorted(set(table_lo))
    queries = [*uniq[::2], *queries, uniq[0], uniq[-1]]
    s_lo = np.array(uniq, dtype=np.uint64)
    pos, found = find_keys(
        np.full(len(uniq), high, np.uint64), s_lo, np.full(len(queries), high, np.uint64), np.array(queries, np.uint64)
    )
    assert pos.tolist() == [bisect.bisect_left(uniq, k) for k in queries]
    assert found.tolist() == [k in set(uniq) for k in queries]


@pytest.mark.parametrize("runs", [1, 5, 100])
def test_find_keys_many_keys(runs: int) -> None:
    # IPv6 keys longer than /64 make runs of equal high words: one, a few, or many
    import bisect

    rng = np.random.default_rng(runs)
    hi = rng.integers(0, runs, 3000).astype(np.uint64) << np.uint64(40)
    lo = rng.integers(0, 1 << 20, 3000).astype(np.uint64)
    uniq = sorted(set(zip(hi.tolist(), lo.tolist(), strict=True)))
    s_hi = np.array([h for h, _ in uniq], dtype=np.uint64)
    s_lo = np.array([x for _, x in uniq], dtype=np.uint64)
    q_hi = np.concatenate([hi[:1000], rng.integers(0, runs + 1, 1000).astype(np.uint64) << np.uint64(40)])
    q_lo = np.concatenate([lo[:1000], rng.integers(0, 1 << 20, 1000).astype(np.uint64)])
    pos, found = find_keys(s_hi, s_lo, q_hi, q_lo)
    present = set(uniq)
    for i, k in enumerate(zip(q_hi.tolist(), q_lo.tolist(), strict=True)):
        assert pos[i] == bisect.bisect_left(uniq, k)
        assert found[i] == (k in present)
    order = sort_keys(hi, lo)
    assert list(zip(hi[order].tolist(), lo[order].tolist(), strict=True)) == sorted(
        zip(hi.tolist(), lo.tolist(), strict=True)
    )


def test_key_words_round_trip_and_order() -> None:
    addrs = ["::", "::1", "::ffff:192.0.2.1", "2001:db8::1", "ffff::"]
    col = np.array([list(addr_bytes(a)) for a in addrs], dtype=np.uint8)
    hi, lo = key_words(col)
    assert (words_key(hi, lo) == col).all()
    assert sort_keys(hi, lo).tolist() == sorted(range(len(addrs)), key=lambda i: addr_bytes(addrs[i]))


# ---- merging snapshots and rates -------------------------------------------------------------


def snapshot(rng: np.random.Generator, n: int) -> Any:
    c = np.zeros(n, dtype=COUNTER_DTYPE)
    d = rng.integers(0, 256, (n, 16)).astype(np.uint8)
    v4 = rng.random(n) < 0.6
    d[v4, :10] = 0
    d[v4, 10:12] = 0xFF
    d[rng.random(n) < 0.2, :8] = 0  # some IPv6 keys in the IPv4 run of high words
    c["dst"] = d
    c["pkts"] = rng.integers(0, 1 << 40, (n, NCAT))
    c["bytes"] = c["pkts"] * 100
    c["dropped_pkts"] = rng.integers(0, 1 << 30, n)
    c["dropped_bytes"] = c["dropped_pkts"] * 100
    return np.unique(c)  # distinct keys, as a data plane reports them


def test_counter_rates_of_nothing() -> None:
    assert len(counter_rates(np.zeros(0, COUNTER_DTYPE), np.zeros(0, COUNTER_DTYPE), 1.0)) == 0
    c = np.zeros(3, COUNTER_DTYPE)
    assert (counter_rates(c, c, 0.0)["pps"] == 0).all()
