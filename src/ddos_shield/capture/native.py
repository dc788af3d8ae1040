"""The classic pcap record walk in C (``pcapwalk.c``), compiled at set-up, loaded with ctypes.

Why C, when the rest of the reader is numpy: a record's position depends on the
lengths of all the records before it.  The numpy walk in :mod:`~ddos_shield.capture.pcap`
finds it by scanning every byte of the file for what looks like a header, then
gathers each record's header and frame prefix and zeroes the bytes past its length:
three passes over the data, ~0.3 us of ``analyze``'s budget of 1 us a packet
(bench/RESULTS.md).  In C it is one pass of a few nanoseconds a record.  The pcap
libraries for Python (dpkt, scapy) hand out one Python object a packet, which is what
the reader exists to avoid.

``ddos-shield build`` (and so ``dev.sh setup``) compiles ``pcapwalk.c`` into
``_pcapwalk.so`` beside it with clang, as it compiles the XDP program.  When the
library is missing, older than its source or cannot be loaded, :func:`load` returns
None and the reader uses its numpy walk: the same records, more slowly.

>>> build()  # doctest: +SKIP
PosixPath('.../ddos_shield/capture/_pcapwalk.so')
>>> load() is not None  # doctest: +SKIP
True
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ddos_shield.errors import ShieldError

SOURCE = Path(__file__).resolve().with_name("pcapwalk.c")
LIBRARY = SOURCE.with_name("_pcapwalk.so")

#: state[1] after a walk: the record at state[0] is fine, cut short, or too long
WALK_OK, WALK_CUT_SHORT, WALK_CORRUPT = 0, 1, 2

_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p


class PcapWalker:
    """``ds_pcap_walk`` of the loaded library (see ``pcapwalk.c``)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        fn = lib.ds_pcap_walk
        fn.restype = _I64
        fn.argtypes = [_PTR, _I64, _I64, _I64, ctypes.c_int32, _I64, _I64, _I64, _I64, _PTR, _PTR, _PTR, _PTR]
        self._fn = fn
        self._state = np.zeros(2, dtype=np.int64)

    def walk(
        self,
        data: npt.NDArray[np.uint8],
        pos: int,
        end: int,
        *,
        swap: bool,
        max_record: int,
        skip: int,
        snap: int,
        max_n: int,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8], npt.NDArray[np.uint8], int, int]:
        """Up to ``max_n`` records starting at ``pos`` and before ``end``: (offsets,
        headers (n, 16), frame prefixes (n, snap) zeroed past each record's length,
        where the walk stopped, status)."""
        if not (0 <= pos <= len(data)) or snap < 0 or skip < 0 or max_n < 0:
            raise ValueError(f"pcap walk: bad arguments pos={pos} snap={snap} skip={skip} max_n={max_n}")
        offs = np.empty(max_n, dtype=np.int64)
        heads = np.empty((max_n, 16), dtype=np.uint8)
        frames = np.empty((max_n, snap), dtype=np.uint8)
        state = self._state
        n = int(
            self._fn(
                _addr(data),
                len(data),
                pos,
                end,
                int(swap),
                max_record,
                skip,
                snap,
                max_n,
                _addr(offs),
                _addr(heads),
                _addr(frames),
                _addr(state),
            )
        )
        return offs[:n], heads[:n], frames[:n], int(state[0]), int(state[1])


def _addr(a: npt.NDArray[Any]) -> int:
    if not a.flags.c_contiguous:
        raise ValueError("pcap walk: arrays must be contiguous")
    addr: int = a.ctypes.data
    return addr


_loaded: dict[int, PcapWalker | None] = {}  # by the library's mtime: loaded once a build


def load() -> PcapWalker | None:
    """The compiled walker, or None (not built, stale, or not loadable here)."""
    try:
        built = LIBRARY.stat().st_mtime_ns
        if built < SOURCE.stat().st_mtime_ns:
            return None  # built from an older source: its behaviour may differ
    except OSError:
        return None
    if built not in _loaded:
        try:
            _loaded[built] = PcapWalker(ctypes.CDLL(str(LIBRARY)))
        except (OSError, AttributeError):
            _loaded[built] = None
    return _loaded[built]


def build(force: bool = False) -> Path:
    """Compile ``pcapwalk.c`` into ``_pcapwalk.so`` (if stale or ``force``); returns its path.

    Raises :class:`~ddos_shield.errors.ShieldError` with the compiler's message on failure.
    """
    if not force and LIBRARY.exists() and LIBRARY.stat().st_mtime_ns >= SOURCE.stat().st_mtime_ns:
        return LIBRARY
    cc = shutil.which("clang") or shutil.which("cc")
    if cc is None:
        raise ShieldError("pcap walker: no C compiler (install clang)")
    # beside the final name, then renamed: a reader never loads half a file
    tmp = LIBRARY.with_name(f"{LIBRARY.name}.{os.getpid()}.tmp")
    try:
        proc = subprocess.run(
            [cc, "-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-o", str(tmp), str(SOURCE)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise ShieldError(f"pcap walker: {Path(cc).name} failed:\n{proc.stderr.strip()}")
        os.replace(tmp, LIBRARY)
    finally:
        tmp.unlink(missing_ok=True)
    return LIBRARY
