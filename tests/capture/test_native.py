"""The compiled pcap record walk (capture/native.py): built, loaded, and walking exactly
as the header-to-header walk does -- records, headers, frame prefixes zeroed past each
record's length, and where and why it stops.  The reader's own tests
(tests/capture/test_pcap.py) run on both walks."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from ddos_shield.capture import native
from tests.capture.test_pcap import FRAMES, _decoy, _walk_by_hand, pcap_bytes


@pytest.fixture(scope="module")
def walker() -> native.PcapWalker:
    native.build()  # set-up has built it; a no-op unless the source is newer
    w = native.load()
    assert w is not None
    return w


def _walk(
    w: native.PcapWalker, content: bytes, *, max_n: int = 10_000, skip: int = 0, snap: int = 128, swap: bool = False
) -> tuple[list[int], np.ndarray, np.ndarray, int, int]:
    data = np.frombuffer(content, dtype=np.uint8)
    offs, heads, frames, pos, status = w.walk(
        data, 24, len(data), swap=swap, max_record=256 << 10, skip=skip, snap=snap, max_n=max_n
    )
    return offs.tolist(), heads, frames, pos, status


def test_build_is_a_no_op_when_up_to_date() -> None:
    before = native.build().stat().st_mtime_ns
    assert native.build().stat().st_mtime_ns == before


@pytest.mark.parametrize("order", ["<", ">"])
def test_walk_matches_the_walk_by_hand(walker: native.PcapWalker, order: str) -> None:
    rng = np.random.default_rng(3)
    records = []
    for i in range(200):
        frame = FRAMES[i % len(FRAMES)]
        if i % 5 == 0:  # payloads that look like headers, and random bytes
            frame += _decoy(1000 + i, order) * 3 + rng.integers(0, 256, int(rng.integers(0, 300)), np.uint8).tobytes()
        records.append((1000.0 + i, frame))
    content = pcap_bytes(1, records, order=order)
    offs, heads, frames, pos, status = _walk(walker, content, swap=order != "<")
    assert offs == _walk_by_hand(content, order) and pos == len(content) and status == native.WALK_OK
    for i, at in enumerate(offs):
        assert heads[i].tobytes() == content[at : at + 16]
        (incl,) = struct.unpack_from(order + "I", content, at + 8)
        keep = min(incl, 128)
        assert frames[i, :keep].tobytes() == content[at + 16 : at + 16 + keep]
        assert not frames[i, keep:].any()  # the next record's bytes are not this one's


def test_link_header_skipped_and_rows_limited(walker: native.PcapWalker) -> None:
    content = pcap_bytes(1, [(1.0, b"\x01\x02\x03" + f) for f in FRAMES])
    offs, _, frames, pos, status = _walk(walker, content, max_n=2, skip=3, snap=16)
    assert len(offs) == 2 and status == native.WALK_OK and pos == offs[1] + 16 + 3 + len(FRAMES[1])
    assert frames[0].tobytes() == FRAMES[0][:16]


@pytest.mark.parametrize(
    ("tail", "status"),
    [
        (struct.pack("<IIII", 1, 0, 10_000_000, 10_000_000), native.WALK_CORRUPT),  # longer than any record
        (struct.pack("<IIII", 1, 0, 60, 60) + b"\x00" * 10, native.WALK_CUT_SHORT),  # data cut short
        (b"\x00" * 9, native.WALK_CUT_SHORT),  # header cut short
    ],
)
def test_walk_stops_at_a_bad_record(walker: native.PcapWalker, tail: bytes, status: int) -> None:
    good = pcap_bytes(1, [(1.0, FRAMES[0]), (2.0, FRAMES[1])])
    offs, _, _, pos, got = _walk(walker, good + tail)
    assert len(offs) == 2 and pos == len(good) and got == status


def test_bad_arguments_are_refused(walker: native.PcapWalker) -> None:
    data = np.zeros(100, dtype=np.uint8)
    with pytest.raises(ValueError, match="pos=200"):
        walker.walk(data, 200, 100, swap=False, max_record=1000, skip=0, snap=128, max_n=10)
    with pytest.raises(ValueError, match="contiguous"):
        walker.walk(np.zeros(200, np.uint8)[::2], 24, 100, swap=False, max_record=1000, skip=0, snap=128, max_n=10)
