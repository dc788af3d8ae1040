"""The dtypes and constants read from BTF agree with the kernel and with records."""

from __future__ import annotations

import dataclasses

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from ddos_shield.dataplane import libbpf
from ddos_shield.dataplane.abi import Abi, check_records, load_abi
from ddos_shield.dataplane.xdp import XdpDataPlane
from ddos_shield.errors import DataPlaneError
from ddos_shield.records import COUNTER_DTYPE, Action, Category, PacketFlag, as_network

# map name -> (key struct or None for a u32 index, value struct or scalar dtype)
MAPS = {
    "config": (None, "config"),
    "protected": ("lpm_key", "protected_val"),
    "allow": ("lpm_key", None),
    "rules": (None, "rule"),
    "rule_stats": (None, "rule_stats"),
    "src_index": ("lpm_key", "slot_ref"),
    "src_exact": ("lpm_key", "slot_ref"),
    "fp_index": ("lpm_key", "fp_list"),
    "dst_stats": ("dst_key", "dst_counters"),
}


@pytest.mark.kernel
@pytest.mark.parametrize("name", sorted(MAPS))
def test_dtype_sizes_match_the_kernel_maps(plane: XdpDataPlane, name: str) -> None:
    key, value = MAPS[name]
    info = libbpf.map_info(plane._maps.fd[name])
    assert info.key_size == (plane.abi.dtype(key).itemsize if key else 4)
    assert info.value_size == (plane.abi.dtype(value).itemsize if value else 4)


@pytest.mark.kernel
def test_sample_record_size_matches_the_ring(plane: XdpDataPlane) -> None:
    plane.set_sample_every(1)
    plane.set_protected({as_network("0.0.0.0/0"): 0})
    plane.test_run(bytes(Ether() / IP(dst="203.0.113.10") / UDP()))
    raw = plane.read_raw_samples()
    assert len(raw) == 1 and raw.dtype.itemsize == plane.abi.dtype("sample").itemsize


def test_enums_match_records() -> None:
    abi = load_abi()
    assert {n: abi[f"CAT_{n}"] for n in Category.__members__} == {c.name: int(c) for c in Category}
    assert abi["CAT_MAX"] == len(Category)
    kernel_actions = [a for a in Action if a.in_kernel]
    assert {a.name: abi[f"ACT_{a.name}"] for a in kernel_actions} == {a.name: int(a) for a in kernel_actions}
    # user-space only actions (BLACKHOLE: a BGP route) have no kernel twin
    assert not [a for a in Action if not a.in_kernel and f"ACT_{a.name}" in abi.consts]
    assert {n: abi[f"PKT_{n}"] for n in PacketFlag.__members__} == {f.name: int(f) for f in PacketFlag if f.name}
    assert abi.dtype("dst_counters")["pkts"].shape == COUNTER_DTYPE["pkts"].shape


def test_drifted_enum_is_refused() -> None:
    abi = load_abi()
    enums = {k: dict(v) for k, v in abi.enums.items()}
    enums["shield_cat"]["CAT_UDP"] = 9
    with pytest.raises(DataPlaneError, match="shield_cat"):
        check_records(dataclasses.replace(abi, enums=enums))


def test_constants_come_from_btf() -> None:
    abi: Abi = load_abi()
    assert abi["SHIELD_ABI_VERSION"] >= 1
    assert abi["SHIELD_FP_LIST_MAX"] == abi.dtype("fp_list")["slots"].shape[0]
    assert abi["SHIELD_SNAPLEN"] == abi.dtype("sample")["data"].shape[0]
    assert set(abi.members("ST_")) >= {"ST_RX", "ST_DROPPED", "ST_MAX"}
