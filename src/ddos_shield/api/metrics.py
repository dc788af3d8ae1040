"""Prometheus metrics, read from :meth:`Engine.snapshot` at scrape time.

A custom collector (nothing is updated on the engine's thread): every scrape takes one
snapshot and turns it into metric families with conventional names and units.

=================================================  =========  ==========================================
metric                                             type       labels
=================================================  =========  ==========================================
``ddos_shield_traffic_packets_per_second``         gauge      ``protocol``, ``group``
``ddos_shield_traffic_bits_per_second``            gauge      ``protocol``, ``group``
``ddos_shield_destinations``                       gauge      destinations with traffic in the last interval
``ddos_shield_sample_every``                       gauge      the data plane's 1-in-N sampling rate
``ddos_shield_attacks_active``                     gauge      ``group``
``ddos_shield_attack_packets_per_second``          gauge      ``attack_id``, ``target``, ``group``
``ddos_shield_mitigations_active``                 gauge      ``backend``
``ddos_shield_rule_hits_total``                    counter    ``mitigation_id`` (packets matched)
``ddos_shield_rule_dropped_total``                 counter    ``mitigation_id`` (packets dropped)
``ddos_shield_dataplane_packets_total``            counter    ``counter`` (rx, dropped, malformed, ...)
``ddos_shield_collector_datagrams_total``          counter    ``source``, ``exporter``
``ddos_shield_collector_records_total``            counter    ``source``, ``exporter``
``ddos_shield_collector_errors_total``             counter    ``source``, ``exporter`` (malformed)
``ddos_shield_collector_untrusted_total``          counter    ``source``, ``exporter``
``ddos_shield_control_loop_seconds``               histogram  time of one control-loop tick
``ddos_shield_store_events_total``                 counter    ``outcome`` (written, dropped, failed)
``ddos_shield_alerts_total``                       counter    ``receiver``, ``outcome`` (sent, failed, dropped, throttled)
``process_*``, ``python_*``                        --         the process collector of prometheus_client
=================================================  =========  ==========================================

::

    registry = shield_registry(engine.snapshot, store=writer, alerts=dispatcher)
    body, content_type = render(registry)       # for a route of one's own
    app.mount("/metrics", asgi_app(registry))   # or the ASGI app of prometheus_client
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, make_asgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

Snapshot = Callable[[], dict[str, Any]]


class _Counted(Protocol):
    def stats(self) -> dict[str, Any]: ...


class ShieldCollector(Collector):
    """See the module docstring.  ``store`` and ``alerts`` are optional objects with a
    ``stats()`` method (:class:`~ddos_shield.store.StoreWriter`,
    :class:`~ddos_shield.alerts.AlertDispatcher`)."""

    def __init__(self, snapshot: Snapshot, *, store: _Counted | None = None, alerts: _Counted | None = None) -> None:
        self._snapshot = snapshot
        self._store = store
        self._alerts = alerts

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        pps = GaugeMetricFamily(
            "ddos_shield_traffic_packets_per_second",
            "Packets per second to protected destinations, by protocol category and host group",
            labels=["protocol", "group"],
        )
        bps = GaugeMetricFamily(
            "ddos_shield_traffic_bits_per_second",
            "Bits per second to protected destinations, by protocol category and host group",
            labels=["protocol", "group"],
        )
        groups: dict[str, Any] = snap.get("groups") or {"default": {"pps": snap["pps"], "bps": snap["bps"]}}
        for group, rates in groups.items():
            for proto, v in rates["pps"].items():
                pps.add_metric([proto, group], float(v))
            for proto, v in rates["bps"].items():
                bps.add_metric([proto, group], float(v))
        yield pps
        yield bps
        yield GaugeMetricFamily(
            "ddos_shield_destinations",
            "Protected destinations with traffic in the last control-loop interval",
            value=float(snap.get("destinations", 0)),
        )
        yield GaugeMetricFamily(
            "ddos_shield_sample_every", "The data plane samples one packet in this many", value=snap["sample_every"]
        )

        active = GaugeMetricFamily("ddos_shield_attacks_active", "Attacks under way", labels=["group"])
        per_attack = GaugeMetricFamily(
            "ddos_shield_attack_packets_per_second",
            "Current rate of each attack under way at its target",
            labels=["attack_id", "target", "group"],
        )
        count: dict[str, int] = dict.fromkeys(groups, 0)
        for a in snap.get("attacks", []):
            count[a["group"]] = count.get(a["group"], 0) + 1
            per_attack.add_metric([str(a["attack_id"]), a["target"], a["group"]], float(a["pps"]))
        for group, n in count.items():
            active.add_metric([group], n)
        yield active
        yield per_attack

        mitigations = GaugeMetricFamily(
            "ddos_shield_mitigations_active", "Rules in force, by enforcement backend", labels=["backend"]
        )
        hits = CounterMetricFamily(
            "ddos_shield_rule_hits", "Packets matched by each rule in force", labels=["mitigation_id"]
        )
        dropped = CounterMetricFamily(
            "ddos_shield_rule_dropped", "Packets dropped by each rule in force", labels=["mitigation_id"]
        )
        by_backend: dict[str, int] = {str(snap.get("backend", "unknown")): 0}
        for r in snap.get("rules", []):
            b = str(r.get("backend") or snap.get("backend", "unknown"))
            by_backend[b] = by_backend.get(b, 0) + 1
            hits.add_metric([str(r["mitigation_id"])], float(r.get("hits", 0)))
            dropped.add_metric([str(r["mitigation_id"])], float(r.get("dropped", 0)))
        for b, n in by_backend.items():
            mitigations.add_metric([b], n)
        yield mitigations
        yield hits
        yield dropped

        dp = CounterMetricFamily(
            "ddos_shield_dataplane_packets", "The data plane's global packet counters", labels=["counter"]
        )
        for name, v in (snap.get("dataplane") or {}).items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                dp.add_metric([name], float(v))
        yield dp

        coll = {
            key: CounterMetricFamily(f"ddos_shield_collector_{key}", help_, labels=["source", "exporter"])
            for key, help_ in (
                ("datagrams", "Datagrams (or captured frames) received per telemetry source and exporter"),
                ("records", "Flow records or samples decoded per telemetry source and exporter"),
                ("errors", "Malformed datagrams (or parts) skipped per telemetry source and exporter"),
                ("untrusted", "Datagrams from exporters not in the configuration, dropped"),
            )
        }
        field = {"datagrams": "datagrams", "records": "records", "errors": "malformed", "untrusted": "untrusted"}
        for source, exporters in (snap.get("sources") or {}).items():
            for exporter, st in exporters.items():
                for key, fam in coll.items():
                    fam.add_metric([source, exporter], float(st.get(field[key], 0)))
        yield from coll.values()

        loop = snap.get("loop_seconds")
        if loop:
            cum, buckets = 0, []
            for le, n in zip([*loop["buckets"], float("inf")], loop["counts"], strict=True):
                cum += n
                buckets.append(("+Inf" if le == float("inf") else repr(float(le)), float(cum)))
            yield HistogramMetricFamily(
                "ddos_shield_control_loop_seconds",
                "Time of one control-loop tick (read counters, detect, decide, enforce)",
                buckets=buckets,
                sum_value=float(loop["sum"]),
            )

        if self._store is not None:
            st = self._store.stats()
            fam = CounterMetricFamily(
                "ddos_shield_store_events", "Events handed to the history writer, by outcome", labels=["outcome"]
            )
            for outcome in ("written", "dropped", "failed"):
                fam.add_metric([outcome], float(st.get(outcome, 0)))
            yield fam
        if self._alerts is not None:
            fam = CounterMetricFamily(
                "ddos_shield_alerts", "Alerts per receiver, by outcome", labels=["receiver", "outcome"]
            )
            for receiver, counts in self._alerts.stats().items():
                for outcome, n in counts.items():
                    fam.add_metric([receiver, outcome], float(n))
            yield fam


def shield_registry(
    snapshot: Snapshot, *, store: _Counted | None = None, alerts: _Counted | None = None, process: bool = True
) -> CollectorRegistry:
    """A private registry (never the global default one, so that two shields in one
    test process do not collide) with the shield's collector and, unless ``process``
    is False, the process, platform and garbage-collector metrics."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(ShieldCollector(snapshot, store=store, alerts=alerts))
    if process:
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        GCCollector(registry=reg)
    return reg


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The text exposition of ``registry`` and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def asgi_app(registry: CollectorRegistry) -> Callable[..., Any]:
    """An ASGI app serving ``registry`` (prometheus_client's, with gzip when asked)."""
    app: Callable[..., Any] = make_asgi_app(registry)
    return app
