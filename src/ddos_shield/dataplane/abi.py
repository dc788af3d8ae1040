"""The kernel/user contract as Python sees it, read from the compiled object's BTF.

Nothing here re-declares a layout or a constant: every numpy dtype (one per struct of
``bpf/shield.h``) and every enum constant comes from the BTF that clang emitted for
``shield.bpf.o`` (dumped to JSON by :func:`ddos_shield.dataplane.build.build`).  At load
the enums that :mod:`ddos_shield.records` mirrors (categories, actions, packet flags)
are checked against the header, so the two cannot drift apart silently.

Example::

    >>> from ddos_shield.dataplane.abi import load_abi
    >>> abi = load_abi()
    >>> abi.dtype("rule").itemsize, abi["ACT_DROP"]
    (120, 1)
"""

from __future__ import annotations

import functools
import json
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ddos_shield.errors import DataPlaneError
from ddos_shield.records import Action, Category, PacketFlag

#: Structs of shield.h that Python reads or writes.
STRUCTS = (
    "config",
    "lpm_key",
    "protected_val",
    "rule",
    "rule_stats",
    "src_bucket",
    "slot_ref",
    "fp_list",
    "dst_key",
    "dst_counters",
    "sample",
)


@dataclass(frozen=True)
class Abi:
    """Dtypes and constants of one compiled data plane object."""

    path: pathlib.Path
    dtypes: Mapping[str, np.dtype[Any]]
    consts: Mapping[str, int]
    enums: Mapping[str, Mapping[str, int]]  # enum type name -> {member: value}

    def __getitem__(self, name: str) -> int:
        try:
            return self.consts[name]
        except KeyError:
            raise KeyError(f"{name}: not an enum constant of shield.h") from None

    def dtype(self, struct: str) -> np.dtype[Any]:
        try:
            return self.dtypes[struct]
        except KeyError:
            raise KeyError(f"struct {struct}: not in the object's BTF") from None

    def members(self, prefix: str) -> dict[str, int]:
        """Constants whose name starts with ``prefix`` (e.g. ``"ST_"``), prefix kept."""
        return {k: v for k, v in self.consts.items() if k.startswith(prefix)}


class _Btf:
    def __init__(self, types: list[dict[str, Any]]) -> None:
        self.by_id: dict[int, dict[str, Any]] = {t["id"]: t for t in types}

    def resolve(self, tid: int) -> dict[str, Any]:
        t = self.by_id[tid]
        while t["kind"] in ("TYPEDEF", "VOLATILE", "CONST", "RESTRICT", "TYPE_TAG"):
            t = self.by_id[t["type_id"]]
        return t

    def size(self, t: dict[str, Any]) -> int:
        t = self.resolve(t["id"])
        if t["kind"] == "ARRAY":
            return int(t["nr_elems"]) * self.size(self.by_id[t["type_id"]])
        if t["kind"] == "PTR":
            return 8
        return int(t["size"])

    def dtype(self, t: dict[str, Any]) -> np.dtype[Any]:
        t = self.resolve(t["id"])
        kind = t["kind"]
        if kind == "INT":
            signed = t.get("encoding") == "SIGNED"
            return np.dtype(f"<{'i' if signed else 'u'}{t['size']}")
        if kind in ("ENUM", "ENUM64"):
            return np.dtype(f"<u{t['size']}")
        if kind == "ARRAY":
            elem = self.dtype(self.by_id[t["type_id"]])
            return np.dtype((elem, (int(t["nr_elems"]),)))
        if kind == "STRUCT":
            names, formats, offsets = [], [], []
            for m in t["members"]:
                if m.get("bitfield_size"):
                    raise DataPlaneError(f"struct {t['name']}.{m['name']}: bit fields are not supported")
                names.append(m["name"])
                formats.append(self.dtype(self.by_id[m["type_id"]]))
                offsets.append(int(m["bits_offset"]) // 8)
            return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": int(t["size"])})
        raise DataPlaneError(f"BTF kind {kind} ({t.get('name')}) has no numpy form")


def parse_btf(doc: Mapping[str, Any], path: pathlib.Path) -> Abi:
    """Build an :class:`Abi` from ``bpftool btf dump ... format raw -j`` output."""
    btf = _Btf(list(doc["types"]))
    dtypes: dict[str, np.dtype[Any]] = {}
    consts: dict[str, int] = {}
    enums: dict[str, dict[str, int]] = {}
    for t in btf.by_id.values():
        if t["kind"] == "STRUCT" and t.get("name") in STRUCTS and t["name"] not in dtypes:
            dtypes[t["name"]] = btf.dtype(t)
        elif t["kind"] in ("ENUM", "ENUM64") and t.get("name", "(anon)") != "(anon)":
            members = {v["name"]: int(v["val"]) for v in t.get("values", [])}
            enums[t["name"]] = members
            consts.update(members)
    missing = [s for s in STRUCTS if s not in dtypes]
    if missing:
        raise DataPlaneError(f"{path}: BTF lacks struct(s) {', '.join(missing)}")
    abi = Abi(path=path, dtypes=dtypes, consts=consts, enums=enums)
    check_records(abi)
    return abi


def check_records(abi: Abi) -> None:
    """Raise :class:`DataPlaneError` unless records' enums equal the header's."""
    pairs: list[tuple[str, str, dict[str, int]]] = [
        ("shield_cat", "CAT_", {c.name: int(c) for c in Category}),
        ("shield_action", "ACT_", {a.name: int(a) for a in Action if a.in_kernel}),
        ("shield_pkt_flag", "PKT_", {f.name: int(f) for f in PacketFlag if f.name is not None}),
    ]
    for enum_name, prefix, py in pairs:
        kernel = abi.enums.get(enum_name)
        if kernel is None:
            raise DataPlaneError(f"{abi.path}: BTF lacks enum {enum_name}")
        # Sentinels (CAT_MAX) and the free-slot marker (ACT_NONE) have no Python twin.
        k = {name.removeprefix(prefix): v for name, v in kernel.items() if name not in ("CAT_MAX", "ACT_NONE")}
        if k != py:
            raise DataPlaneError(f"records and shield.h disagree on enum {enum_name}: kernel {k}, records {py}")


@functools.lru_cache(maxsize=8)
def _load_cached(path: pathlib.Path, mtime_ns: int) -> Abi:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataPlaneError(f"{path}: cannot read BTF dump: {e}") from e
    return parse_btf(doc, path)


def load_abi(btf_json: pathlib.Path | None = None) -> Abi:
    """The ABI of the built object (building it first if needed)."""
    if btf_json is None:
        from ddos_shield.dataplane.build import BTF_JSON, build

        build()
        btf_json = BTF_JSON
    try:
        mtime = btf_json.stat().st_mtime_ns
    except OSError as e:
        raise DataPlaneError(f"{btf_json}: {e.strerror}") from e
    return _load_cached(btf_json, mtime)
