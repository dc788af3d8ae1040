"""The lab tests' name for the shared lab fixture (``the_lab`` in tests/conftest.py)."""

from __future__ import annotations

import pytest

from ddos_shield.lab.topology import Lab


@pytest.fixture(scope="module")
def lab(the_lab: Lab) -> Lab:
    return the_lab
