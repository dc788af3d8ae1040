"""Sampled packet headers from an interface: AF_PACKET with a TPACKET_V3 ring.

The sampler keeps one incoming packet in N and only its first ``snaplen`` bytes, and
does both in the kernel: a classic BPF filter attached with ``SO_ATTACH_FILTER``
drops outgoing packets, draws a random number (``ld rand``), keeps the packet when
it is 0 modulo N and returns the snap length, so unsampled packets never reach the
socket.  Kept packets land in a memory-mapped TPACKET_V3 ring (``PACKET_RX_RING``):
the kernel fills whole blocks and hands them over, and :meth:`AfPacketSampler.read`
walks every ready block without a system call per packet, copies the frame prefixes
into one ``(n, snaplen)`` array and decodes them in one vectorised pass
(:func:`ddos_shield.capture.decode.decode_frames`).

AF_PACKET taps run before tc and netfilter's ingress hook, so the sampler sees the
offered load, including packets that nftables drops afterwards.  It serves the
nftables data plane and, bound to a mirror port, SPAN telemetry.

Written by hand on ``socket``/``mmap``/``struct``: no maintained Python library
exposes TPACKET_V3 rings (scapy and pcapy read one packet per system call, and
libpcap's Python bindings hide the ring and its statistics).

Example::

    s = AfPacketSampler("eth0", sample_every=100)
    select.select([s], [], [], 1.0)
    batch = s.read()          # TRAFFIC_DTYPE rows, packets and bytes scaled by 100
    s.stats()                 # {'packets': ..., 'drops': ..., 'freeze_q_cnt': ...}
    s.close()
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import socket
import struct
import time

import numpy as np
import numpy.typing as npt

from ddos_shield.capture.decode import decode_frames
from ddos_shield.records import PacketFlag, Source, TrafficBatch, empty_traffic

# <linux/if_packet.h>, <linux/filter.h>, <asm-generic/socket.h>
SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_IGNORE_OUTGOING = 23
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
TPACKET_V3 = 2
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1 << 0
TP_STATUS_VLAN_VALID = 1 << 4
SO_ATTACH_FILTER = 26
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SKF_AD_OFF = -0x1000
SKF_AD_PKTTYPE = 4
SKF_AD_RANDOM = 56
BPF_LD_W_ABS = 0x20
BPF_ALU_MOD_K = 0x94
BPF_JMP_JEQ_K = 0x15
BPF_RET_K = 0x06

# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1:
# block_status, num_pkts, offset_to_first_pkt, blk_len, seq_num, ts_first, ts_last
_BLOCK_HDR = struct.Struct("<IIIIIIQ")
# struct tpacket3_hdr: next_offset, sec, nsec, snaplen, len, status, mac, net
_PKT_HDR = struct.Struct("<IIIIIIHH")
_FRAME_SIZE = 2048  # only sizes the ring's bookkeeping: V3 packs packets by length


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def sample_filter(sample_every: int, snaplen: int) -> list[tuple[int, int, int, int]]:
    """The classic BPF program: incoming packets only, 1 in ``sample_every``, truncated.

    ``sample_every`` 0 keeps nothing.  Returns (code, jt, jf, k) instructions.
    """
    if sample_every < 0:
        raise ValueError(f"sample_every must be >= 0, got {sample_every}")
    if sample_every == 0:
        return [(BPF_RET_K, 0, 0, 0)]
    pkttype = (BPF_LD_W_ABS, 0, 0, (SKF_AD_OFF + SKF_AD_PKTTYPE) & 0xFFFFFFFF)
    if sample_every == 1:
        return [
            pkttype,
            (BPF_JMP_JEQ_K, 1, 0, PACKET_OUTGOING),  # outgoing -> ret 0
            (BPF_RET_K, 0, 0, snaplen),
            (BPF_RET_K, 0, 0, 0),
        ]
    return [
        pkttype,
        (BPF_JMP_JEQ_K, 4, 0, PACKET_OUTGOING),  # outgoing -> ret 0
        (BPF_LD_W_ABS, 0, 0, (SKF_AD_OFF + SKF_AD_RANDOM) & 0xFFFFFFFF),
        (BPF_ALU_MOD_K, 0, 0, sample_every),
        (BPF_JMP_JEQ_K, 0, 1, 0),  # rand % N == 0 -> keep
        (BPF_RET_K, 0, 0, snaplen),
        (BPF_RET_K, 0, 0, 0),
    ]


class AfPacketSampler:
    """Kernel-sampled packet headers of one interface (see the module docstring).

    The ring is ``blocks`` blocks of ``block_size`` bytes; the kernel hands a block
    over when it is full or ``block_timeout_ms`` after its first packet, which bounds
    how late a sample can be.  ``promisc`` puts the interface in promiscuous mode for
    the socket's lifetime, as a mirror (SPAN) port needs.

    ::

        s = AfPacketSampler("eth0", sample_every=10)
        batch = s.read()      # non-blocking; poll s.fileno() to wait
        s.set_sample_every(100)
        s.close()
    """

    def __init__(
        self,
        ifname: str,
        sample_every: int,
        snaplen: int = 128,
        block_size: int = 1 << 20,
        blocks: int = 8,
        *,
        block_timeout_ms: int = 20,
        promisc: bool = False,
    ) -> None:
        if snaplen <= 0 or snaplen > _FRAME_SIZE - 128:
            raise ValueError(f"snaplen must be in 1..{_FRAME_SIZE - 128}, got {snaplen}")
        if block_size % mmap.PAGESIZE or block_size < _FRAME_SIZE or blocks <= 0:
            raise ValueError(f"block_size must be a multiple of {mmap.PAGESIZE} >= {_FRAME_SIZE}, blocks > 0")
        self.ifname = ifname
        self.ifindex = socket.if_nametoindex(ifname)
        self.snaplen = snaplen
        self.block_size = block_size
        self.blocks = blocks
        self._sample_every = sample_every
        self._last_rate = max(1, sample_every)
        # (switch time in ns, N before it): rows stamped before a switch were sampled
        # with the old N (a block can hold packets from both sides of a switch).
        self._history: list[tuple[int, int]] = []
        self._totals = {"packets": 0, "drops": 0, "freeze_q_cnt": 0}
        self._next_block = 0
        # Protocol 0: nothing is queued before the filter is attached and bind() is called.
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            self._sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            frame_nr = block_size // _FRAME_SIZE * blocks
            req = struct.pack("<7I", block_size, blocks, _FRAME_SIZE, frame_nr, block_timeout_ms, 0, 0)
            self._sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self._mm = mmap.mmap(
                self._sock.fileno(), block_size * blocks, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
            )
            self._ring = np.frombuffer(self._mm, dtype=np.uint8)
            # Saves the clone of every sent packet on the way out (Linux >= 4.20);
            # the filter drops outgoing packets anyway.
            with contextlib.suppress(OSError):
                self._sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            self._attach(sample_every)
            if promisc:
                # A mirror port receives frames addressed to other hosts; the kernel
                # drops the membership (and the promiscuous mode) with the socket.
                mreq = struct.pack("<iHH8s", self.ifindex, PACKET_MR_PROMISC, 0, b"")
                self._sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            self._sock.bind((ifname, ETH_P_ALL))
            self._sock.setblocking(False)
        except BaseException:
            self.close()
            raise

    @property
    def sample_every(self) -> int:
        return self._sample_every

    def fileno(self) -> int:
        """The socket: readable when a block of samples is ready."""
        return self._sock.fileno()

    def _attach(self, sample_every: int) -> None:
        prog = sample_filter(sample_every, self.snaplen)
        insns = (_SockFilter * len(prog))(*(_SockFilter(*i) for i in prog))
        fprog = _SockFprog(len(prog), ctypes.cast(insns, ctypes.POINTER(_SockFilter)))
        self._sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))

    def set_sample_every(self, n: int) -> None:
        """Keep one packet in ``n`` from now on (0: none); swaps the kernel filter atomically."""
        if n == self._sample_every:
            return
        self._attach(n)
        self._history.append((time.time_ns(), self._sample_every))
        self._sample_every = n
        if n:
            self._last_rate = n

    def read(self) -> TrafficBatch:
        """Every sample ready now (non-blocking), decoded and scaled."""
        return self.read_frames()[0]

    def read_frames(self) -> tuple[TrafficBatch, tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]] | None]:
        """:meth:`read`, with the captured bytes of each frame (``snaplen`` wide, zeroed
        past the captured length) and its captured length, row for row."""
        chunks: list[tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]] = []
        for _ in range(self.blocks):
            base = self._next_block * self.block_size
            _, _, status, num, first, _, _ = _BLOCK_HDR.unpack_from(self._mm, base)
            if not status & TP_STATUS_USER:
                break
            # Walking the chain of packet headers is the only per-packet Python work;
            # the frames are gathered from the ring in one numpy indexing step.
            hdrs: list[tuple[int, ...]] = []
            off = base + first
            for _ in range(num):
                h = _PKT_HDR.unpack_from(self._mm, off)
                hdrs.append((off + h[6], *h[1:6]))
                off += h[0]
            if hdrs:
                chunks.append(self._gather(np.asarray(hdrs, dtype=np.int64)))
            struct.pack_into("<I", self._mm, base + 8, TP_STATUS_KERNEL)  # hand the block back
            self._next_block = (self._next_block + 1) % self.blocks
        if not chunks:
            return empty_traffic(0), None
        frames, hdr = np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])
        return self._batch(frames, hdr), (frames, np.minimum(hdr[:, 3], self.snaplen))

    def _gather(self, hdr: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
        """Copy the frames of one block out of the ring; ``hdr`` rows are
        (frame offset, sec, nsec, caplen, wirelen, status)."""
        idx = hdr[:, 0:1] + np.arange(self.snaplen, dtype=np.int64)
        frames = self._ring[np.minimum(idx, len(self._ring) - 1)]
        frames[idx - hdr[:, 0:1] >= hdr[:, 3:4]] = 0  # past the captured bytes
        return frames, hdr

    def _batch(self, frames: npt.NDArray[np.uint8], hdr: npt.NDArray[np.int64]) -> TrafficBatch:
        caplen = np.minimum(hdr[:, 3], self.snaplen)
        wirelen = hdr[:, 4]
        batch = decode_frames(frames, caplen, wirelen)
        ts_ns = hdr[:, 1] * 1_000_000_000 + hdr[:, 2]
        rate = np.full(len(batch), self._sample_every, dtype=np.int64)
        for t, n in reversed(self._history):
            rate[ts_ns <= t] = n
        # Once a sample stamped after a switch is read, every earlier one has been (FIFO).
        newest = int(ts_ns.max())
        self._history = [(t, n) for t, n in self._history if t >= newest]
        # A packet let through in the instant of switching to 0 counts at the last rate.
        rate[rate == 0] = self._last_rate
        batch["ts"] = ts_ns / 1e9
        batch["packets"] = rate
        batch["bytes"] = wirelen * rate
        batch["sample_rate"] = rate
        batch["ifindex"] = self.ifindex
        batch["source"] = int(Source.AF_PACKET)
        vlan = (hdr[:, 5] & TP_STATUS_VLAN_VALID) != 0  # tag taken off by offload, not in the frame
        batch["flags"] |= np.where(vlan, int(PacketFlag.VLAN), 0).astype(np.uint16)
        return batch

    def stats(self) -> dict[str, int]:
        """Cumulative PACKET_STATISTICS: packets kept by the filter (drops included),
        drops (ring full) and freeze_q_cnt (times the ring froze)."""
        if self._sock.fileno() >= 0:
            raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
            # The kernel resets its counters on every read: accumulate here.
            for k, v in zip(("packets", "drops", "freeze_q_cnt"), struct.unpack("<3I", raw), strict=True):
                self._totals[k] += v
        return dict(self._totals)

    def close(self) -> None:
        """Unmap the ring and close the socket (idempotent)."""
        if hasattr(self, "_ring"):
            del self._ring
        mm = getattr(self, "_mm", None)
        if mm is not None and not mm.closed:
            mm.close()
        self._sock.close()

    def __enter__(self) -> AfPacketSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
