"""Entering a network namespace from Python, for one thread and one block.

``ip netns exec`` starts a new process and remounts /sys (hiding /sys/fs/bpf); this
switches only the calling thread's network namespace and back, so the process keeps
its mounts, and sockets made inside keep the namespace they were made in.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import socket
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the block with this thread in network namespace ``name`` (an ``ip netns`` name)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
        try:
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns back from {name}: {os.strerror(err)}")
    finally:
        os.close(target)
        os.close(home)


def netns_socket(ns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket created inside network namespace ``ns``."""
    with in_netns(ns):
        return socket.socket(family, kind, proto)
