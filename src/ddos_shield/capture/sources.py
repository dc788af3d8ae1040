"""The registry of telemetry sources: configuration entry -> live source."""

from __future__ import annotations

from ddos_shield.capture.base import TelemetrySource
from ddos_shield.config import Config, Source


def open_source(src: Source) -> TelemetrySource:
    """A (not yet started) source for one ``[[sources]]`` entry."""
    if src.type == "mirror":
        from ddos_shield.capture.mirror import MirrorSource

        return MirrorSource(src.interface, src.sample_every)
    from ddos_shield.capture.collector import FlowCollector

    rate = src.sampling_rate
    if src.type == "sflow":
        from ddos_shield.capture.sflow import SflowDecoder

        return FlowCollector("sflow", src.address(), src.exporters, lambda: SflowDecoder(default_rate=rate))
    from ddos_shield.capture.netflow import NetflowDecoder

    return FlowCollector("netflow", src.address(), src.exporters, lambda: NetflowDecoder(default_rate=rate))


def open_sources(config: Config) -> list[TelemetrySource]:
    return [open_source(s) for s in config.sources]
