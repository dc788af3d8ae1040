"""Telemetry sources behind one interface.

A source owns its I/O (a UDP socket, an AF_PACKET ring) and hands the engine traffic
batches (:data:`~ddos_shield.records.TRAFFIC_DTYPE`, ``packets`` and ``bytes`` already
scaled by the sampling rate).  The parsing itself lives in I/O-free decoders
(:class:`FlowDecoder`), so the same decoder serves a live collector and a capture file.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Protocol

from ddos_shield.records import TrafficBatch


@dataclass
class ExporterStats:
    """Counters kept per exporter (or per interface for a mirror port)."""

    datagrams: int = 0
    records: int = 0
    packets: int = 0  # scaled
    bytes: int = 0  # scaled
    malformed: int = 0  # datagrams (or parts of them) that could not be decoded
    untrusted: int = 0  # datagrams from an exporter not in the configuration, dropped
    last_error: str = ""
    extra: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Decoded:
    """What a decoder made of one datagram: every record it could decode, and, when
    part of the datagram was bad, why (the records before the bad part are kept)."""

    batch: TrafficBatch
    error: str | None = None


class FlowDecoder(Protocol):
    """Decodes the datagrams of one exporter (keeps that exporter's template state).

    ``exporter`` is the 16-byte exporter address (IPv4-mapped), stored in each record;
    ``now`` is the arrival time (Unix seconds), the records' ``ts``.  Never raises on
    bad input: the problem is in :attr:`Decoded.error`.
    """

    def decode(self, datagram: bytes, exporter: bytes, now: float) -> Decoded: ...

    def counters(self) -> dict[str, int]:
        """The decoder's own counters (samples by kind, sequence gaps, unknown templates...)."""
        ...


class TelemetrySource(abc.ABC):
    """A live source of traffic batches (see the module docstring)."""

    name: str = ""

    @abc.abstractmethod
    def start(self) -> None:
        """Open sockets and start receiving."""

    @abc.abstractmethod
    def read(self) -> TrafficBatch:
        """Every record received since the last call (non-blocking)."""

    @abc.abstractmethod
    def stats(self) -> dict[str, ExporterStats]:
        """Counters by exporter address (or interface)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop receiving and release the sockets."""
