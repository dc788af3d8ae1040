"""Real-packet fixtures for the nftables backend tests: a veth pair per test module
(named by the module's ``VETH_PREFIX``, so modules never share namespaces), a packet
observer on its receiving side, and a backend whose table (the module's ``TABLE``) is
removed after each test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ddos_shield.mitigate.nftables import NftablesBackend, remove_table
from tests.vethpair import Observer, VethPair


@pytest.fixture(scope="module")
def pair(request: pytest.FixtureRequest) -> Iterator[VethPair]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    p = VethPair(request.module.VETH_PREFIX).create()
    try:
        yield p
    finally:
        p.delete()


@pytest.fixture
def observer(pair: VethPair) -> Iterator[Observer]:
    with pair.inside():
        obs = Observer(pair.rx_if)
        try:
            yield obs
        finally:
            obs.close()


@pytest.fixture
def backend(request: pytest.FixtureRequest, pair: VethPair, observer: Observer) -> Iterator[NftablesBackend]:
    table: str = request.module.TABLE
    with pair.inside():
        b = NftablesBackend([pair.rx_if], table=table)
        try:
            yield b
        finally:
            b.close()
            remove_table(table)
