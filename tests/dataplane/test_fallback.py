"""Where XDP cannot attach, the shield falls back to nftables and says so."""

from __future__ import annotations

import logging
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from ddos_shield.config import parse
from ddos_shield.dataplane import open_dataplane
from ddos_shield.dataplane.xdp import detach
from ddos_shield.lab.netns import in_netns
from ddos_shield.mitigate.nftables import remove_table

pytestmark = [pytest.mark.kernel]

PIN_DIR = "/sys/fs/bpf/ddos_shield_fallback_test"


@pytest.fixture
def ns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    name = f"dsa-fb-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        # a bridge has no driver XDP: native mode cannot attach there
        subprocess.run(["ip", "-n", name, "link", "add", "dum0", "type", "bridge"], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "dum0", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
        # the refused XDP attempt had loaded and pinned its maps before the attach failed
        detach(PIN_DIR)
        shutil.rmtree(PIN_DIR, ignore_errors=True)


def test_native_xdp_refused_falls_back_to_nftables(ns: str, caplog: pytest.LogCaptureFixture) -> None:
    cfg = parse(
        f'protected = ["203.0.113.0/24"]\n[shield]\ninterfaces = ["dum0"]\nxdp_mode = "native"\npin_dir = "{PIN_DIR}"\n'
    )
    with in_netns(ns), caplog.at_level(logging.WARNING):
        dp = open_dataplane(cfg)
        try:
            assert dp.name == "nftables"
            assert dp.backend.name == "nftables"
        finally:
            dp.close(detach=True)
            remove_table()
    assert any("falling back to nftables" in r.getMessage() for r in caplog.records)


def test_xdp_only_refuses_to_fall_back(ns: str) -> None:
    from ddos_shield.errors import DataPlaneError

    cfg = parse(
        'protected = ["203.0.113.0/24"]\n[shield]\ninterfaces = ["dum0"]\nxdp_mode = "native"\ndataplane = "xdp"\n'
        f'pin_dir = "{PIN_DIR}"\n'
    )
    with in_netns(ns), pytest.raises(DataPlaneError):
        open_dataplane(cfg)
