"""The UDP collector around decoders: trust, counting, isolation of bad datagrams.

The decoder here is a minimal one written for the test (one record per payload byte,
``b"!"`` marks a malformed tail); the real decoders are exercised in test_sflow.py
and test_netflow.py, and against real exporters in the interop tests.
"""

from __future__ import annotations

import socket
import time

import numpy as np

from ddos_shield.capture.base import Decoded
from ddos_shield.capture.collector import FlowCollector
from ddos_shield.records import empty_traffic


class ByteDecoder:
    def decode(self, datagram: bytes, exporter: bytes, now: float) -> Decoded:
        good, bad, _ = datagram.partition(b"!")
        b = empty_traffic(len(good))
        b["packets"] = 1
        b["bytes"] = np.frombuffer(good, dtype=np.uint8)
        b["exporter"] = list(exporter)
        b["ts"] = now
        return Decoded(b, "bad tail" if bad or datagram.endswith(b"!") else None)

    def counters(self) -> dict[str, int]:
        return {"calls": 1}


def collector() -> FlowCollector:
    return FlowCollector("test", ("127.0.0.1", 0), ["127.0.0.1", "2001:db8::/64"], ByteDecoder)


def test_trust_counting_and_partial_datagrams() -> None:
    c = collector()
    c.handle(b"abc", "127.0.0.1", 1.0)
    c.handle(b"de!xx", "127.0.0.1", 2.0)  # two records kept, then counted as malformed
    c.handle(b"zzz", "192.0.2.7", 3.0)  # not trusted: counted, dropped
    c.handle(b"q", "2001:db8::5", 4.0)
    batch = c.read()  # decoding happens here, per exporter
    assert len(batch) == 6
    assert bytes(batch["bytes"].astype(np.uint8)) == b"abcdeq"
    st = c.stats()
    assert (st["127.0.0.1"].datagrams, st["127.0.0.1"].records, st["127.0.0.1"].malformed) == (2, 5, 1)
    assert (st["192.0.2.7"].datagrams, st["192.0.2.7"].untrusted, st["192.0.2.7"].records) == (1, 1, 0)
    assert st["2001:db8::5"].records == 1
    assert st["127.0.0.1"].extra == {"calls": 1}  # the decoder's own counters
    assert len(c.read()) == 0  # drained


def test_a_decoder_bug_is_counted_not_fatal() -> None:
    class Broken:
        def decode(self, datagram: bytes, exporter: bytes, now: float) -> Decoded:
            raise IndexError("oops")

        def counters(self) -> dict[str, int]:
            return {}

    c = FlowCollector("test", ("127.0.0.1", 0), ["127.0.0.1"], Broken)
    c.handle(b"x", "127.0.0.1", 0.0)
    assert len(c.read()) == 0
    assert c.stats()["127.0.0.1"].malformed == 1


def test_real_socket_on_loopback() -> None:
    c = collector()
    c.start()
    try:
        host, port = c.address
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(50):
                s.sendto(b"hello", (host, port))
        deadline = time.monotonic() + 5
        got = 0
        while got < 250 and time.monotonic() < deadline:
            got += len(c.read())
            time.sleep(0.02)
        assert got == 250
        assert c.stats()["127.0.0.1"].datagrams == 50
    finally:
        c.close()
