"""One lab for a whole test module, torn down even on failure; one lab user at a time."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from ddos_shield.lab.topology import Lab, lab_session

TOOLS = ("ip", "tc", "bridge", "nft", "hping3", "trafgen", "timeout", "taskset")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")
    with lab_session():
        the_lab = Lab()
        try:
            the_lab.up()
            yield the_lab
        finally:
            the_lab.down()
