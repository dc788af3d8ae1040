"""The first attack packet on the shield's outside interface, timestamped by the kernel.

Time to detect and time to mitigate are measured from the moment the first attack
packet reaches the shield, not from when the generator was started.  The probe
opens an AF_PACKET socket inside the shield's namespace (:func:`~ddos_shield.lab.netns.netns_socket`), asks for kernel receive timestamps, and reads until a
packet from one of the attack's sources arrives.  The kernel stamps each packet on
arrival, so the answer is exact even if this thread reads late.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Sequence

import numpy as np

from ddos_shield.capture.decode import decode_frames_valid
from ddos_shield.lab.netns import netns_socket
from ddos_shield.records import IPNetwork, addresses_in

ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = 35
PACKET_OUTGOING = 4
SNAP = 128


class FirstPacketProbe:
    """Start before the attack; :meth:`result` gives the first matching packet's time.

    ``sources`` are the attack's source prefixes; only packets from them count.
    """

    def __init__(self, ns: str, ifname: str, sources: Sequence[IPNetwork], timeout: float = 30.0) -> None:
        self._sources = list(sources)
        self._sock = netns_socket(ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._sock.bind((ifname, 0))
        self._sock.settimeout(0.2)
        self._deadline = time.monotonic() + timeout
        self._first: float | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="first-packet-probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while time.monotonic() < self._deadline and not self._done.is_set():
                try:
                    data, anc, _flags, addr = self._sock.recvmsg(SNAP, socket.CMSG_SPACE(16))
                except TimeoutError:
                    continue
                if addr[2] == PACKET_OUTGOING:
                    continue
                frames = np.zeros((1, SNAP), dtype=np.uint8)
                frames[0, : len(data)] = np.frombuffer(data, dtype=np.uint8)
                batch, valid = decode_frames_valid(frames, [len(data)], [len(data)])
                if not valid[0] or not any(addresses_in(batch["src"], n)[0] for n in self._sources):
                    continue
                for level, kind, payload in anc:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                        sec, nsec = struct.unpack("qq", payload[:16])
                        self._first = sec + nsec / 1e9
                if self._first is None:
                    self._first = time.time()
                return
        finally:
            self._sock.close()
            self._done.set()

    def result(self, timeout: float = 5.0) -> float | None:
        """Unix time of the first attack packet, or None if none came."""
        self._done.wait(timeout)
        return self._first

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=1)
