"""Shared fixtures for the kernel data plane tests: a private pin directory on bpffs,
a loaded (unattached) data plane, and entering a network namespace."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator

import pytest

from ddos_shield.dataplane.xdp import XdpDataPlane, detach

BPFFS = "/sys/fs/bpf"


def _kernel_ready() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.ismount(BPFFS):
        return f"no bpffs at {BPFFS}"
    if shutil.which("clang") is None or shutil.which("bpftool") is None:
        return "needs clang and bpftool"
    return None


@pytest.fixture
def pin_dir() -> Iterator[str]:
    """A fresh pin directory on bpffs, emptied and removed afterwards."""
    reason = _kernel_ready()
    if reason:
        pytest.skip(reason)
    path = os.path.join(BPFFS, f"dsa-{uuid.uuid4().hex[:10]}")
    yield path
    detach(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def plane(pin_dir: str) -> Iterator[XdpDataPlane]:
    """The data plane loaded with fresh maps and attached nowhere (for test runs)."""
    dp = XdpDataPlane.open([], pin_dir)
    yield dp
    dp.close(detach=True)
