"""What the network receives now, for people: top destinations, top sources, host groups.

:func:`summarize` takes the engine's last rate batch, its window of samples and the
configuration, and returns a JSON-serialisable summary.  No I/O, no clock; the engine
hands it its state (:meth:`~ddos_shield.engine.Engine.traffic`), the API shows it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ddos_shield.config import Config
from ddos_shield.records import (
    CATEGORY_NAMES,
    RateBatch,
    TrafficBatch,
    addresses_in,
    bytes_addr,
)


def _by_category(pps: npt.NDArray[np.float64]) -> dict[str, float]:
    return {n: round(float(v), 1) for n, v in zip(CATEGORY_NAMES, pps, strict=True)}


def group_index(dst: npt.NDArray[Any], config: Config) -> tuple[list[str], npt.NDArray[np.intp]]:
    """Each destination's host group (most specific prefix wins, as in the data plane):
    the group names and, per row, an index into them."""
    names = [g.name for g in config.groups]
    out = np.full(len(dst), names.index("default"), dtype=np.intp)
    prefixes = sorted(
        ((net, i) for i, g in enumerate(config.groups) for net in g.networks()), key=lambda x: x[0].prefixlen
    )
    for net, i in prefixes:  # shorter first, so a longer prefix overwrites
        out[addresses_in(dst, net)] = i
    return names, out


def summarize(
    rates: RateBatch, window: TrafficBatch, window_seconds: float, config: Config, top: int = 10
) -> dict[str, Any]:
    """Top ``top`` destinations by packet rate (with group and dropped rate), top sources
    by packet rate over the sample window (sampled rows are already scaled by their
    sampling rate, so these are estimates), and the rates of each host group."""
    total_pps = rates["pps"].sum(axis=1) if len(rates) else np.zeros(0)
    names, gidx = group_index(rates["dst"], config)
    order = np.argsort(-total_pps, kind="stable")[:top]
    destinations = [
        {
            "dst": str(bytes_addr(rates["dst"][i])),
            "group": names[gidx[i]],
            "pps": round(float(total_pps[i]), 1),
            "bps": round(float(rates["bps"][i].sum()), 1),
            "dropped_pps": round(float(rates["dropped_pps"][i]), 1),
            "by_category": _by_category(rates["pps"][i]),
        }
        for i in order
    ]
    groups = []
    for gi, name in enumerate(names):
        mask = gidx == gi
        pps = rates["pps"][mask].sum(axis=0) if mask.any() else np.zeros(len(CATEGORY_NAMES))
        bps = rates["bps"][mask].sum(axis=0) if mask.any() else np.zeros(len(CATEGORY_NAMES))
        groups.append(
            {
                "group": name,
                "destinations": int(mask.sum()),
                "pps": _by_category(pps),
                "bps": _by_category(bps),
                "dropped_pps": round(float(rates["dropped_pps"][mask].sum()), 1),
            }
        )
    sources: list[dict[str, Any]] = []
    if len(window):
        keys = np.ascontiguousarray(window["src"]).view("V16").ravel()
        uniq, inv = np.unique(keys, return_inverse=True)
        pkts = np.bincount(inv, weights=window["packets"].astype(np.float64), minlength=len(uniq))
        byts = np.bincount(inv, weights=window["bytes"].astype(np.float64), minlength=len(uniq))
        for i in np.argsort(-pkts, kind="stable")[:top]:
            sources.append(
                {
                    "src": str(bytes_addr(uniq[i].tobytes())),
                    "pps": round(float(pkts[i]) / window_seconds, 1),
                    "bps": round(float(byts[i]) * 8 / window_seconds, 1),
                }
            )
    return {
        "pps": _by_category(rates["pps"].sum(axis=0) if len(rates) else np.zeros(len(CATEGORY_NAMES))),
        "bps": _by_category(rates["bps"].sum(axis=0) if len(rates) else np.zeros(len(CATEGORY_NAMES))),
        "destinations": len(rates),
        "top_destinations": destinations,
        "top_sources": sources,
        "sources_window_seconds": window_seconds,
        "groups": groups,
    }
