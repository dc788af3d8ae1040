"""A mirror (SPAN) port as a telemetry source: AF_PACKET with a kernel-side 1-in-N filter.

The switch copies the protected link's traffic to an interface of the shield host;
this source samples it (:class:`~ddos_shield.capture.afpacket.AfPacketSampler`, in
promiscuous mode, since mirrored frames are addressed to other hosts) and hands the
engine the samples, scaled by N.  Nothing is enforced on a mirror port.
"""

from __future__ import annotations

from ddos_shield.capture.afpacket import AfPacketSampler
from ddos_shield.capture.base import ExporterStats, TelemetrySource
from ddos_shield.records import TrafficBatch, empty_traffic


class MirrorSource(TelemetrySource):
    """See the module docstring."""

    def __init__(self, interface: str, sample_every: int = 1) -> None:
        self.name = f"mirror:{interface}"
        self.interface = interface
        self.sample_every = sample_every
        self._sampler: AfPacketSampler | None = None
        self._stats = ExporterStats()

    def start(self) -> None:
        self._sampler = AfPacketSampler(self.interface, self.sample_every, promisc=True)

    def read(self) -> TrafficBatch:
        if self._sampler is None:
            return empty_traffic()
        b = self._sampler.read()
        self._stats.records += len(b)
        self._stats.packets += int(b["packets"].sum())
        self._stats.bytes += int(b["bytes"].sum())
        return b

    def stats(self) -> dict[str, ExporterStats]:
        if self._sampler is not None:
            self._stats.extra = dict(self._sampler.stats())
        return {self.interface: self._stats}

    def close(self) -> None:
        if self._sampler is not None:
            self._sampler.close()
            self._sampler = None
