"""Connection floods and slow attacks: many TCP connections from few sources.

Both stay below packet-rate thresholds; both exhaust a server's connection table
rather than its link.  What the samples show, per (source, host) over the last
``connection_window_seconds``:

* **connections** -- distinct source ports of *established* TCP packets (ACK set, no
  SYN, no RST): each is one connection that completed its handshake (so the source is
  real, not spoofed);
* **new connections per second** -- SYNs (without ACK) from that source;
* **packets per connection per second** -- how busy those connections are.

A source with at least ``connection_min_flows`` connections to one host is a
**connection flood** when it opens them at ``connection_flood_min_rate`` or more (in its
busiest second: by default 200, far beyond one browser or API client opening a
connection per request), and a **slow attack** (Slowloris, slow POST, slow
read) when it holds them -- ``connection_min_flows`` open at once, half of them sending
for ``slow_min_hold_seconds`` or longer -- nearly idle, below ``slow_max_pps_per_flow``.
A client opening connections at its own pace, each used for a while and closed, holds
a few at a time and is neither.  Counts are of sampled packets (every packet without
load).  No fingerprint is built for these attacks (no categories): the target's TCP is
mostly its real clients', so none would be fair; each finding names its source, and the
policy narrows its rules to the named sources (see :mod:`ddos_shield.policy`).

No I/O, no clock: :meth:`ConnectionDetector.observe` takes the new samples and ``now``.
"""

from __future__ import annotations

import ipaddress
from collections import deque

import numpy as np
import numpy.typing as npt

from ddos_shield.config import Config
from ddos_shield.detect.distinct import DistinctWindow, address_words, group_hash, unique_addresses
from ddos_shield.detect.scan import EVALUATE_EVERY, Finding
from ddos_shield.detect.threshold import Observation
from ddos_shield.records import AttackType, IPNetwork, PacketFlag, TrafficBatch, bytes_addr, take_rows

TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10
#: TCP rows kept at most (the oldest go first)
MAX_ROWS = 400_000

_ROW_DTYPE = np.dtype(
    [("ts", "f8"), ("src", "u1", (16,)), ("dst", "u1", (16,)), ("sport", "u2"), ("flags", "u1"), ("packets", "u8")]
)


class ConnectionDetector:
    """See the module docstring.

    >>> from ddos_shield.config import parse
    >>> ConnectionDetector(parse('protected = ["203.0.113.0/24"]')).observe(np.zeros(0, dtype=_ROW_DTYPE), 0.0)
    []
    """

    def __init__(self, config: Config) -> None:
        self._config = config
        self._buf: deque[npt.NDArray[np.void]] = deque()
        self._held = 0
        self._last_eval = -np.inf
        self._found: list[Finding] = []
        # connections per (source, host) counted as samples arrive: an upper bound that
        # skips the exact count while no pair can reach connection_min_flows
        self._flows = DistinctWindow()
        self._exact_until: float | None = -np.inf  # None: from the next sample on, for a window

    def reconfigure(self, config: Config) -> None:
        self._config = config
        self._exact_until = None  # a longer window would reach back past what the bound kept

    def observe(self, samples: TrafficBatch, now: float) -> list[Finding]:
        c = self._config.classification
        if c.connection_min_flows == 0:
            return []
        if len(samples):
            t = take_rows(samples, (samples["proto"] == 6) & ((samples["flags"] & PacketFlag.FRAG_LATER) == 0))
            if len(t):
                rows = np.zeros(len(t), dtype=_ROW_DTYPE)
                rows["ts"], rows["src"], rows["dst"] = t["ts"], t["src"], t["dst"]
                rows["sport"], rows["flags"], rows["packets"] = t["sport"], t["tcp_flags"], t["packets"]
                self._buf.append(rows)
                self._held += len(rows)
                self._count_flows(rows, now)
        horizon = now - c.connection_window_seconds
        while self._buf and (self._buf[0]["ts"].max() < horizon or self._held > MAX_ROWS):
            self._held -= len(self._buf.popleft())
        if now - self._last_eval < EVALUATE_EVERY:
            return [f.at(now) for f in self._found]
        self._last_eval = now
        if self._exact_until is None:
            self._exact_until = now + c.connection_window_seconds
        if now >= self._exact_until and self._flows.max_per_group(horizon, 16) < c.connection_min_flows:
            self._found = []  # no (source, host) pair holds enough connections
            return []
        rows = np.concatenate(list(self._buf)) if self._buf else np.zeros(0, dtype=_ROW_DTYPE)
        rows = rows[rows["ts"] >= horizon]
        self._found = self._evaluate(rows, now) if len(rows) else []
        return list(self._found)

    def _count_flows(self, rows: npt.NDArray[np.void], now: float) -> None:
        """Log each established connection (source, host, source port) for the bound."""
        f = rows["flags"]
        est = rows[((f & TCP_ACK) != 0) & ((f & (TCP_SYN | TCP_RST)) == 0)]
        if not len(est):
            return
        pair = group_hash(*address_words(est["src"]), *address_words(est["dst"]))
        keys = (pair >> np.uint64(16) << np.uint64(16)) | est["sport"].astype(np.uint64)
        self._flows.add(keys, est["ts"])

    def _evaluate(self, rows: npt.NDArray[np.void], now: float) -> list[Finding]:
        c = self._config.classification
        # the window actually covered, so a detector that started a second ago does not
        # divide a second of packets by the whole window
        span = max(min(c.connection_window_seconds, now - float(rows["ts"].min())), 1.0)
        src_u, src_i = unique_addresses(rows["src"])
        dst_u, dst_i = unique_addresses(rows["dst"])
        pair = src_i * len(dst_u) + dst_i
        f = rows["flags"]
        est = ((f & TCP_ACK) != 0) & ((f & (TCP_SYN | TCP_RST)) == 0)
        syn = (f & (TCP_SYN | TCP_ACK)) == TCP_SYN
        if not est.any():
            return []
        ts = rows["ts"]
        flow = pair * (1 << 16) + rows["sport"].astype(np.int64)
        fkeys, finv = np.unique(flow[est], return_inverse=True)
        finv = finv.ravel()
        # each connection's first and last established packet: held connections last
        first = np.full(len(fkeys), np.inf)
        last = np.full(len(fkeys), -np.inf)
        np.minimum.at(first, finv, ts[est])
        np.maximum.at(last, finv, ts[est])
        pairs, pinv, flows = np.unique(fkeys >> 16, return_inverse=True, return_counts=True)
        busy = flows >= c.connection_min_flows
        out: list[Finding] = []
        w = rows["packets"].astype(np.float64)
        for i in np.nonzero(busy)[0].tolist():
            p, n = int(pairs[i]), int(flows[i])
            mine = pair == p
            # new connections in its busiest second, not over the window: a burst of
            # connections stays a burst once it is over, and a flood from a client
            # that was also talking before is not diluted by its earlier traffic
            active = max(float(ts[mine].max() - ts[mine].min()), 1.0)
            cps = _peak_rate(ts[mine & syn], w[mine & syn])
            per_flow = float(w[mine & est].sum()) / active / n
            its = pinv.ravel() == i
            held = float(np.median((last - first)[its]))
            # held connections first: a slow attack opens its connections in a burst too.
            # It exhausts the server by holding many AT ONCE: a client whose keep-alive
            # connections idle a while, opened one after another, holds a few at a time
            if (
                per_flow < c.slow_max_pps_per_flow
                and held >= c.slow_min_hold_seconds
                and _peak_open(first[its], last[its]) >= c.connection_min_flows
            ):
                kind = AttackType.SLOW_ATTACK
            elif cps >= c.connection_flood_min_rate:
                kind = AttackType.CONNECTION_FLOOD
            else:
                # many connections opened at a client's pace (a browser, an API client
                # opening one per request, a proxy holding busy ones): not an attack
                continue
            s, d = divmod(p, len(dst_u))
            target = self._host(dst_u[d])
            pps = float(w[mine].sum()) / span
            # no categories: the target's traffic in them is mostly its clients', so no
            # fingerprint of them could be fair; the attack is reported with its source
            obs = Observation(target, self._config.group_of(target).name, (), pps, 0.0, pps, now)
            out.append(Finding(obs, kind, bytes_addr(src_u[s].tobytes()), n))
        return out

    def _host(self, raw: np.void) -> IPNetwork:
        addr = bytes_addr(raw.tobytes())
        plen = 32 if addr.version == 4 else self._config.shield.ipv6_prefix_len
        return ipaddress.ip_network((addr, plen), strict=False)


def _peak_open(first: npt.NDArray[np.float64], last: npt.NDArray[np.float64]) -> int:
    """The most connections open at once, each from its first to its last packet seen.

    >>> _peak_open(np.array([0.0, 1.0, 2.0]), np.array([0.5, 1.5, 2.5]))  # one after another
    1
    >>> _peak_open(np.array([0.0, 1.0, 2.0]), np.array([9.0, 9.0, 9.0]))  # all held
    3
    """
    starts, ends = np.sort(first), np.sort(last)
    # at each opening: connections opened so far, minus those whose last packet came before
    open_at = np.arange(1, len(starts) + 1) - np.searchsorted(ends, starts, side="left")
    return int(open_at.max()) if len(open_at) else 0


def _peak_rate(ts: npt.NDArray[np.float64], w: npt.NDArray[np.float64], span: float = 1.0) -> float:
    """The most packets (weights ``w``) in any ``span`` seconds starting at a sample, per second.

    >>> _peak_rate(np.array([0.0, 0.1, 0.2, 5.0]), np.ones(4))
    3.0
    """
    if not len(ts):
        return 0.0
    order = np.argsort(ts)
    t = ts[order]
    cum = np.concatenate([[0.0], np.cumsum(w[order])])
    end = np.searchsorted(t, t + span, side="left")
    return float((cum[end] - cum[: len(t)]).max()) / span
