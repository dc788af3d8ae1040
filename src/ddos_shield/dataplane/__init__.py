"""The kernel side: the XDP program (``bpf/``), its loader, and the nftables fallback.

:func:`open_dataplane` is the one place that chooses between them.
"""

from __future__ import annotations

import logging
from typing import Protocol

from ddos_shield.config import Config
from ddos_shield.dataplane.base import DataPlane
from ddos_shield.errors import DataPlaneError

log = logging.getLogger(__name__)


def open_dataplane(config: Config) -> DataPlane:
    """XDP where it attaches; nftables counters, sets and an AF_PACKET sampler otherwise."""
    sh = config.shield
    if not sh.interfaces:
        raise DataPlaneError("shield.interfaces is empty: name the interface(s) to protect")
    if sh.dataplane in ("auto", "xdp"):
        from ddos_shield.dataplane.xdp import XdpDataPlane

        try:
            return XdpDataPlane.open(sh.interfaces, sh.pin_dir, mode=sh.xdp_mode, ipv6_prefix_len=sh.ipv6_prefix_len)
        except DataPlaneError as e:
            if sh.dataplane == "xdp":
                raise
            log.warning("XDP could not be attached (%s): falling back to nftables and AF_PACKET sampling", e)
    from ddos_shield.dataplane.nft import NftDataPlane

    return NftDataPlane.open(sh.interfaces, ipv6_prefix_len=sh.ipv6_prefix_len)


def detach_all(config: Config) -> list[str]:
    """Remove every trace of the data plane (XDP pins and links, the nftables table)."""
    from ddos_shield.dataplane.xdp import detach
    from ddos_shield.mitigate.nftables import remove_table

    removed = detach(config.shield.pin_dir, config.shield.interfaces or None)
    if remove_table():
        removed.append("nftables table")
    return removed


class Control(Protocol):
    """What an operator's command needs of an attached data plane, running shield or not."""

    name: str

    @property
    def bypass(self) -> bool: ...

    def set_bypass(self, on: bool) -> None: ...

    def global_stats(self) -> dict[str, int]: ...

    def close(self) -> None: ...


def open_control(config: Config) -> Control:
    """The kill switch and counters of whichever data plane is in place: XDP pinned in
    ``shield.pin_dir``, else the nftables table."""
    from ddos_shield.dataplane.xdp import PinnedControl

    try:
        return PinnedControl(config.shield.pin_dir)
    except DataPlaneError as xdp_error:
        from ddos_shield.mitigate.nftables import NftablesBackend, table_exists

        if not table_exists():
            raise DataPlaneError(f"no data plane in place: {xdp_error}, and no nftables table") from None
        return NftablesBackend(config.shield.interfaces)
