"""A UDP flow collector: the server around the I/O-free flow decoders.

It binds one UDP socket, accepts datagrams only from the configured exporters (any
other sender is counted and dropped: a collector port is reachable by whoever can
send a packet to it, and a source address can be forged, so collectors belong on a
management network with anti-spoofing at its edge), keeps one decoder (and so one
template cache) per exporter, and queues the decoded batches for the engine.  A bad
datagram is counted against its exporter and skipped; what it held before the bad
part is kept.

Example::

    c = FlowCollector("sflow", ("0.0.0.0", 6343), ["192.0.2.1"], SflowDecoder)
    c.start()
    batch = c.read()
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from ddos_shield.capture.base import Decoded, ExporterStats, FlowDecoder, TelemetrySource
from ddos_shield.records import IPNetwork, TrafficBatch, addr_bytes, empty_traffic

log = logging.getLogger(__name__)

#: largest UDP payload
MAX_DATAGRAM = 65535
#: datagrams queued between two reads beyond this are dropped (counted) rather than
#: growing memory without bound (the engine reads every interval)
MAX_QUEUED_DATAGRAMS = 200_000


class FlowCollector(TelemetrySource):
    """See the module docstring.  ``clock`` gives the arrival time of each datagram."""

    def __init__(
        self,
        name: str,
        listen: tuple[str, int],
        exporters: Sequence[str | IPNetwork],
        decoder_factory: Callable[[], FlowDecoder],
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.name = name
        self.listen = listen
        self._trusted: list[IPNetwork] = [ipaddress.ip_network(str(e)) for e in exporters]
        self._factory = decoder_factory
        self._decoders: dict[str, FlowDecoder] = {}
        self._stats: dict[str, ExporterStats] = {}
        self._pending: dict[str, list[tuple[bytes, float]]] = {}
        self._queued = 0
        self._lock = threading.Lock()
        self._clock = clock or time.time
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (useful with port 0)."""
        if self._sock is None:
            raise RuntimeError("collector not started")
        host, port = self._sock.getsockname()[:2]
        return host, port

    def start(self) -> None:
        host, port = self.listen
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name=f"collector-{self.name}", daemon=True)
        self._thread.start()
        log.info("%s collector listening on %s:%d", self.name, *self.address)

    def _trusted_exporter(self, addr: str) -> bool:
        a = ipaddress.ip_address(addr)
        if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
            a = a.ipv4_mapped
        return any(a.version == n.version and a in n for n in self._trusted)

    def _run(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(MAX_DATAGRAM)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                raise
            self.handle(data, peer[0], self._clock())

    def handle(self, data: bytes, exporter: str, now: float) -> None:
        """Accept one datagram from ``exporter`` (the receive loop calls this).

        Datagrams are only queued here; :meth:`read` decodes each exporter's queue in
        one call where the decoder can (``decode_many``: sFlow's raw headers of many
        datagrams go through one vectorised header decode).
        """
        if exporter.startswith("::ffff:"):
            exporter = exporter.removeprefix("::ffff:")
        st = self._stats.setdefault(exporter, ExporterStats())
        st.datagrams += 1
        if not self._trusted_exporter(exporter):
            st.untrusted += 1
            return
        with self._lock:
            if self._queued >= MAX_QUEUED_DATAGRAMS:
                st.extra["queue_dropped"] = st.extra.get("queue_dropped", 0) + 1
                return
            self._pending.setdefault(exporter, []).append((data, now))
            self._queued += 1

    def _decode(self, exporter: str, datagrams: list[tuple[bytes, float]]) -> list[Decoded]:
        dec = self._decoders.get(exporter)
        if dec is None:
            dec = self._decoders[exporter] = self._factory()
        raw = addr_bytes(exporter)
        many = getattr(dec, "decode_many", None)
        if many is not None:
            try:
                out: list[Decoded] = many(datagrams, raw)
                return out
            except Exception:  # isolate the datagram that trips the decoder: one at a time
                log.exception("%s decoder failed on a batch from %s; decoding one by one", self.name, exporter)
        results = []
        for d, now in datagrams:
            try:
                results.append(dec.decode(d, raw, now))
            except Exception as e:  # a decoder bug must not stop the collector: count it
                log.exception("%s decoder failed on a datagram from %s", self.name, exporter)
                results.append(Decoded(empty_traffic(), f"decoder error: {e!r}"))
        return results

    def read(self) -> TrafficBatch:
        with self._lock:
            pending, self._pending, self._queued = self._pending, {}, 0
        parts: list[TrafficBatch] = []
        for exporter, datagrams in pending.items():
            st = self._stats[exporter]
            for out in self._decode(exporter, datagrams):
                if out.error is not None:
                    st.malformed += 1
                    st.last_error = out.error
                b = out.batch
                if len(b):
                    st.records += len(b)
                    st.packets += int(b["packets"].sum())
                    st.bytes += int(b["bytes"].sum())
                    parts.append(b)
        return np.concatenate(parts) if parts else empty_traffic()

    def stats(self) -> dict[str, ExporterStats]:
        for exporter, dec in self._decoders.items():
            self._stats[exporter].extra.update(dec.counters())
        return dict(self._stats)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
