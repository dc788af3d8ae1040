"""records.addresses_in against the ipaddress module, rows grouped by kind of network."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest

from ddos_shield.records import (
    RATE_DTYPE,
    TRAFFIC_DTYPE,
    Action,
    Match,
    Rule,
    addr_bytes,
    addresses_in,
    as_network,
    empty_traffic,
    join_rows,
    net_key,
    put_rows,
    take_rows,
)

ADDRESSES = [
    # IPv4 (IPv4-mapped in the column)
    "203.0.113.10",
    "203.0.113.11",
    "203.0.112.255",
    "10.0.0.1",
    "0.0.0.0",
    "255.255.255.255",
    # IPv6
    "2001:db8::1",
    "2001:db8:0:1::1",
    "2001:db9::",
    "::1",
    "::ffff:1",  # shares the IPv4-mapped prefix's first bytes, but not its ffff
    "ffff::",
]

NETWORKS = [
    # IPv4: host, prefixes on and off byte boundaries, everything
    "203.0.113.10/32",
    "203.0.113.0/24",
    "203.0.112.0/23",
    "203.0.113.8/29",
    "0.0.0.0/0",
    # IPv6: host, /64, /48, odd lengths, everything
    "2001:db8::1/128",
    "2001:db8::/64",
    "2001:db8::/47",
    "2001:db8::/31",
    "::/0",
    "::/127",
]


def _prefix(raw: bytes, plen: int) -> int:
    return int.from_bytes(raw, "big") >> (128 - plen)


@pytest.mark.parametrize("net", NETWORKS)
@pytest.mark.parametrize("layout", ["column of a batch", "plain array", "non-contiguous copy"])
def test_addresses_in_matches_ipaddress(net: str, layout: str) -> None:
    network = as_network(net)
    batch = empty_traffic(len(ADDRESSES))
    batch["dst"] = np.array([list(addr_bytes(a)) for a in ADDRESSES], dtype=np.uint8)
    column = batch["dst"]
    if layout == "plain array":
        column = np.ascontiguousarray(column)
    elif layout == "non-contiguous copy":
        column = np.asfortranarray(column)
    # in the column's 16-byte space, where IPv4 is IPv4-mapped (so ::/0 holds IPv4 too)
    plen, raw = net_key(network)
    want = [_prefix(addr_bytes(a), plen) == _prefix(raw, plen) for a in ADDRESSES]
    assert addresses_in(column, network).tolist() == want


def test_addresses_in_every_prefix_length_of_random_addresses() -> None:
    rng = np.random.default_rng(9)
    col = rng.integers(0, 256, (400, 16), dtype=np.uint8)
    col[:200, :10], col[:200, 10:12] = 0, 0xFF  # half IPv4
    base = col[7]  # prefixes of one of them, so that some rows match at every length
    col[200:260, :8] = col[7, :8]
    for plen in range(129):
        raw = int.from_bytes(base.tobytes(), "big") >> (128 - plen) << (128 - plen) if plen else 0
        net = ipaddress.IPv6Network((raw, plen))
        want = [
            (int.from_bytes(r.tobytes(), "big") >> (128 - plen)) == (raw >> (128 - plen)) if plen else True for r in col
        ]
        assert addresses_in(col, net).tolist() == want, plen
    assert len(col) == 400 and not np.array_equal(col[0], col[1])  # sanity: the rows differ


# ---- whole-row copies --------------------------------------------------------------------


def _random_rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    b = empty_traffic(n)
    b.view(np.uint8)[:] = rng.integers(0, 256, b.nbytes, dtype=np.uint8)  # every byte of every field
    return b


@pytest.mark.parametrize("dtype", [TRAFFIC_DTYPE, RATE_DTYPE])
def test_row_copies_are_numpys_own(dtype: np.dtype) -> None:
    b = np.zeros(300, dtype=dtype)
    b.view(np.uint8)[:] = np.random.default_rng(2).integers(0, 256, b.nbytes, dtype=np.uint8)
    mask = np.random.default_rng(3).random(300) < 0.4
    idx = np.array([5, 5, 0, 299, 17])
    for view in (b, b[::3]):  # contiguous and strided
        m = mask[: len(view)]
        assert take_rows(view, m).dtype == dtype and take_rows(view, idx % len(view)).dtype == dtype
        assert take_rows(view, m).tobytes() == view[m].tobytes()
        assert take_rows(view, idx % len(view)).tobytes() == view[idx % len(view)].tobytes()
    parts = [b[:10], b[50:50], b[100:250:2]]
    assert join_rows(parts).tobytes() == np.concatenate(parts).tobytes()
    dest, want = np.zeros(300, dtype=dtype), np.zeros(300, dtype=dtype)
    put_rows(dest, np.flatnonzero(mask), b[: mask.sum()])
    want[mask] = b[: mask.sum()]
    put_rows(dest, slice(250, 300), b[:50])
    want[250:300] = b[:50]
    put_rows(dest, slice(0, 100), dest[50:150])  # overlapping, as the sample window moves its rows down
    want[0:100] = want[50:150].copy()
    assert dest.tobytes() == want.tobytes()
    with pytest.raises(ValueError, match="put into"):
        put_rows(empty_traffic(3), slice(0, 3), np.zeros(3, dtype=RATE_DTYPE))


def test_row_copies_of_traffic_keep_every_field() -> None:
    b = _random_rows(50, 4)
    got = take_rows(b, np.arange(50) % 2 == 0)
    for name in TRAFFIC_DTYPE.names or ():
        assert np.ascontiguousarray(got[name]).tobytes() == np.ascontiguousarray(b[name][::2]).tobytes(), name


# ---- rules ---------------------------------------------------------------------------

PER_SOURCE = Rule(Match(proto=17, dst=as_network("2001:db8:113::10/128")), Action.RATE_LIMIT, 2e9, rate_pps=100,
                  rule_id=3, per_source=True)  # fmt: skip


def test_a_per_source_rate_limit_round_trips_through_json() -> None:
    data = PER_SOURCE.to_json()
    assert (data["rate_pps"], data["per_source"]) == (100, True)
    assert Rule.from_json(data) == PER_SOURCE
    aggregate = Rule(PER_SOURCE.match, Action.RATE_LIMIT, 2e9, rate_pps=100)
    assert "per_source" not in aggregate.to_json()  # records written before it existed read the same
    assert not Rule.from_json(aggregate.to_json()).per_source


@pytest.mark.parametrize(
    ("change", "says"),
    [
        # not a boolean
        ({"per_source": "yes"}, "per_source: expected true or false, got 'yes'"),
        ({"per_source": 1}, "per_source: expected true or false, got 1"),
        # on an action other than a rate limit
        ({"action": "drop"}, "per_source: only for action rate_limit, not drop"),
    ],
)
def test_a_bad_per_source_names_the_field(change: dict[str, object], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        Rule.from_json({**PER_SOURCE.to_json(), **change})
    if "action" in change:
        with pytest.raises(ValueError, match=says):
            Rule(PER_SOURCE.match, Action.DROP, 2e9, per_source=True)
