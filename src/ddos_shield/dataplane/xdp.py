"""The XDP data plane: load, pin and attach ``shield.bpf.o``; read its counters and
samples; enforce rules through its maps.

Everything lives under one *pin directory* on a bpffs: the maps in ``maps/<name>``,
the program in ``prog`` and one XDP link per interface in ``link_<ifname>``.  A
process that dies leaves all of it in place, so protection continues; the next
:meth:`XdpDataPlane.open` on the same directory adopts the maps (rules survive) and
atomically swaps the program behind the existing links.  :func:`detach` removes it
all, with or without a running shield (``ddos-shield stop --detach``).

Example::

    >>> dp = XdpDataPlane.open(["out0"], "/sys/fs/bpf/ddos-shield")  # doctest: +SKIP
    >>> rule = dp.backend.apply(Rule(Match(src=as_network("198.18.0.0/24")), Action.DROP, expires_at=time.time() + 60))
    >>> dp.read_counters()["pkts"].sum(axis=0)  # per category, all destinations
    >>> dp.close()  # protection stays attached; close(detach=True) removes it
"""

from __future__ import annotations

import ctypes
import ctypes.util
import heapq
import math
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ddos_shield.capture.decode import decode_frames
from ddos_shield.dataplane import libbpf
from ddos_shield.dataplane.abi import Abi, load_abi
from ddos_shield.dataplane.base import DataPlane
from ddos_shield.dataplane.build import build
from ddos_shield.errors import DataPlaneError
from ddos_shield.mitigate.base import Backend
from ddos_shield.records import (
    COUNTER_DTYPE,
    Action,
    IPNetwork,
    Match,
    Range,
    Rule,
    RuleStats,
    Source,
    TrafficBatch,
    addresses_in,
    empty_traffic,
    key_net,
    net_key,
)

PROG_NAME = "shield_xdp"
MAP_NAMES = (
    "config",
    "stats",
    "protected",
    "allow",
    "rules",
    "rule_stats",
    "src_index",
    "src_exact",
    "fp_index",
    "dst_stats",
    "samples",
    "src_buckets",
    "rule_buckets",
)
BPFFS_MAGIC = 0xCAFE4A11
MODES = ("auto", "native", "generic")
_MODE_NAMES = {libbpf.XDP_ATTACHED_DRV: "native", libbpf.XDP_ATTACHED_SKB: "generic", libbpf.XDP_ATTACHED_HW: "offload"}

#: Migrations of pinned maps, by the ABI version they migrate *from* (to version + 1).
#: Empty while there is only ABI v1.  A step receives the pin directory and the ABI of
#: the object about to be loaded, and must leave maps that object can reuse.
MIGRATIONS: dict[int, Callable[[str, Abi], None]] = {}

_ZERO16 = bytes(16)


# ---- helpers ---------------------------------------------------------------------------


def _statfs_magic(path: str) -> int:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type is the first long
    if libc.statfs(path.encode(), buf) != 0:
        err = ctypes.get_errno()
        raise DataPlaneError(f"statfs {path}: {os.strerror(err)}")
    return int(ctypes.c_long.from_buffer(buf).value) & 0xFFFFFFFF


def check_bpffs(pin_dir: str) -> None:
    """Raise DataPlaneError unless ``pin_dir`` (or its nearest existing parent) is on bpffs."""
    probe = os.path.abspath(pin_dir)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if _statfs_magic(probe) != BPFFS_MAGIC:
        raise DataPlaneError(
            f"pin directory {pin_dir}: {probe} is not on a BPF filesystem; mount one "
            f"(mount -t bpf bpf /sys/fs/bpf) or choose a directory under one"
        )


def _mask_bytes(plen: int) -> bytes:
    return (((1 << 128) - 1) ^ ((1 << (128 - plen)) - 1)).to_bytes(16, "big") if plen else _ZERO16


def _lpm_key(abi: Abi, plen: int, addr: bytes) -> np.ndarray[Any, Any]:
    k = np.zeros(1, abi.dtype("lpm_key"))
    k["prefixlen"] = plen
    k["addr"][0] = np.frombuffer(addr, np.uint8)
    return k


def _covers(outer: tuple[int, bytes], inner: tuple[int, bytes]) -> bool:
    plen, addr = outer
    if plen > inner[0]:
        return False
    shift = 128 - plen
    return int.from_bytes(addr, "big") >> shift == int.from_bytes(inner[1], "big") >> shift


def _ifindex(ifname: str) -> int:
    try:
        return socket.if_nametoindex(ifname)
    except OSError as e:
        raise DataPlaneError(f"interface {ifname!r}: {e.strerror or e}") from e


def _mono_offset() -> float:
    """Unix time minus CLOCK_MONOTONIC (bpf_ktime_get_ns), in seconds."""
    return time.time() - time.monotonic()


class _Maps:
    """File descriptors of the shield's maps with typed element access."""

    def __init__(self, abi: Abi, fds: Mapping[str, int], ncpu: int) -> None:
        self.abi = abi
        self.fd = dict(fds)
        self.ncpu = ncpu
        self.key0 = np.zeros(1, "<u4")

    # Per-CPU values are copied to user space with each CPU's value rounded up to 8 bytes.
    def percpu(self, dtype: np.dtype[Any], n: int = 1) -> np.ndarray[Any, Any]:
        if dtype.itemsize % 8:
            raise DataPlaneError(f"per-CPU value {dtype} is not a multiple of 8 bytes")
        return np.zeros((n, self.ncpu), dtype)

    def config(self) -> np.ndarray[Any, Any]:
        cfg = np.zeros(1, self.abi.dtype("config"))
        libbpf.map_lookup(self.fd["config"], self.key0, cfg)
        return cfg

    def write_config(self, cfg: np.ndarray[Any, Any]) -> None:
        libbpf.map_update(self.fd["config"], self.key0, cfg)

    def set_bypass(self, on: bool) -> None:
        cfg = self.config()
        cfg["bypass"] = 1 if on else 0
        self.write_config(cfg)

    def global_stats(self) -> dict[str, int]:
        out: dict[str, int] = {}
        vals = self.percpu(np.dtype("<u8"), 1)
        for name, idx in sorted(self.abi.members("ST_").items(), key=lambda kv: kv[1]):
            if name == "ST_MAX":
                continue
            vals[:] = 0
            libbpf.map_lookup(self.fd["stats"], np.array([idx], "<u4"), vals)
            out[name.removeprefix("ST_").lower()] = int(vals.sum())
        return out

    def lpm_items(self, name: str, value_dtype: np.dtype[Any]) -> dict[tuple[int, bytes], np.ndarray[Any, Any]]:
        """All (prefixlen, addr) -> value of an LPM trie."""
        fd = self.fd[name]
        out: dict[tuple[int, bytes], np.ndarray[Any, Any]] = {}
        key = np.zeros(1, self.abi.dtype("lpm_key"))
        nxt = np.zeros_like(key)
        first = True
        while libbpf.map_next_key(fd, None if first else key, nxt):
            first = False
            key[:] = nxt
            val = np.zeros(1, value_dtype)
            if libbpf.map_lookup(fd, key, val):
                out[(int(key["prefixlen"][0]), key["addr"][0].tobytes())] = val
        return out

    def read_array(self, name: str, dtype: np.dtype[Any], n: int) -> np.ndarray[Any, Any]:
        """Every element of a (non-per-CPU) array map, by batch when the kernel allows."""
        fd = self.fd[name]
        out = np.zeros(n, dtype)
        keys = np.zeros(n, "<u4")
        cursor_in = np.zeros(1, "<u8")
        cursor_out = np.zeros(1, "<u8")
        got, start = 0, True
        try:
            while got < n:
                cnt, done = libbpf.map_lookup_batch(
                    fd, None if start else cursor_in, cursor_out, keys[got:], out[got:], n - got
                )
                start = False
                got += cnt
                cursor_in[:] = cursor_out
                if done:
                    break
            return out
        except DataPlaneError:
            for i in range(n):
                k = np.array([i], "<u4")
                libbpf.map_lookup(fd, k, out[i : i + 1])
            return out


class PinnedControl:
    """The kill switch and global counters of a data plane pinned under ``pin_dir``.

    Opens the pinned ``config`` and ``stats`` maps only: nothing is loaded or attached,
    so it works the same whether a shield process runs, was killed, or was stopped --
    which is what an operator's kill switch needs.

    >>> PinnedControl("/sys/fs/bpf/ddos_shield").set_bypass(True)  # doctest: +SKIP
    """

    name = "xdp"

    def __init__(self, pin_dir: str) -> None:
        check_bpffs(pin_dir)
        abi = load_abi()
        fds = {}
        for name in ("config", "stats"):
            path = os.path.join(pin_dir, "maps", name)
            if not os.path.exists(path):
                raise DataPlaneError(f"no XDP data plane pinned in {pin_dir} ({path} is missing)")
            fds[name] = libbpf.obj_get(path)
        self._maps = _Maps(abi, fds, libbpf.num_possible_cpus())

    @property
    def bypass(self) -> bool:
        return bool(self._maps.config()["bypass"][0])

    def set_bypass(self, on: bool) -> None:
        self._maps.set_bypass(on)

    def global_stats(self) -> dict[str, int]:
        return self._maps.global_stats()

    def close(self) -> None:
        for fd in self._maps.fd.values():
            os.close(fd)


# ---- the data plane --------------------------------------------------------------------


class XdpDataPlane(DataPlane):
    """The XDP data plane on a set of interfaces (see the module docstring).

    Open it with :meth:`open`; ``backend`` enforces rules on the same program.

    >>> dp = XdpDataPlane.open(["out0"], "/sys/fs/bpf/ddos-shield", mode="auto")  # doctest: +SKIP
    >>> dp.attach_modes  # doctest: +SKIP
    {'out0': 'native'}
    """

    name = "xdp"

    def __init__(
        self,
        pin_dir: str,
        abi: Abi,
        obj: libbpf.BpfObject,
        maps: _Maps,
        prog_fd: int,
        attach_modes: dict[str, str],
    ) -> None:
        self.pin_dir = pin_dir
        self.abi = abi
        self._obj: libbpf.BpfObject | None = obj
        self._maps = maps
        self._prog_fd = prog_fd
        self._attach_modes = attach_modes
        self._ring = libbpf.RingBuffer(maps.fd["samples"])
        self._backend = XdpBackend(self)

    @classmethod
    def open(
        cls,
        interfaces: Sequence[str],
        pin_dir: str,
        mode: str = "auto",
        ipv6_prefix_len: int = 64,
    ) -> XdpDataPlane:
        """Load (or adopt) the data plane under ``pin_dir`` and attach it to ``interfaces``.

        ``mode``: ``"native"`` (driver XDP), ``"generic"`` (skb XDP) or ``"auto"`` (native,
        else generic).  Maps already pinned in ``pin_dir`` are reused when their
        ``config.abi_version`` equals the object's SHIELD_ABI_VERSION, so rules, the rule
        id allocator and the kill switch survive a restart.  Pinned maps of an older
        version are migrated through :data:`MIGRATIONS`; a version with no migration
        path raises DataPlaneError: the operator must then run
        ``ddos-shield stop --detach``, which removes the old maps *and the rules in
        them*, before starting again.  An interface whose link is already pinned has its
        program swapped atomically (no moment without protection).
        """
        if mode not in MODES:
            raise DataPlaneError(f"XDP mode {mode!r}: expected one of {', '.join(MODES)}")
        if not 0 <= ipv6_prefix_len <= 128:
            raise DataPlaneError(f"ipv6_prefix_len {ipv6_prefix_len}: expected 0..128")
        check_bpffs(pin_dir)
        maps_dir = os.path.join(pin_dir, "maps")
        os.makedirs(maps_dir, exist_ok=True)
        obj_path = build()
        abi = load_abi()
        _migrate(pin_dir, abi)

        obj = libbpf.BpfObject(str(obj_path))
        try:
            for name in MAP_NAMES:
                obj.set_pin_path(name, os.path.join(maps_dir, name))
            pinned = os.listdir(maps_dir)
            try:
                obj.load()
            except DataPlaneError as e:
                if not pinned:
                    raise
                raise DataPlaneError(
                    f"{e} -- the maps pinned in {maps_dir} may not fit this program (see the libbpf log); "
                    f"'ddos-shield stop --detach' removes them, and the rules in them"
                ) from e
            ncpu = libbpf.num_possible_cpus()
            maps = _Maps(abi, {n: obj.map_fd(n) for n in MAP_NAMES}, ncpu)
            prog_fd = obj.program_fd(PROG_NAME)

            cfg = maps.config()
            cfg["abi_version"] = abi["SHIELD_ABI_VERSION"]
            cfg["nr_cpus"] = ncpu
            cfg["ipv6_prefix_len"] = ipv6_prefix_len
            cfg["next_rule_id"] = max(1, int(cfg["next_rule_id"][0]))
            maps.write_config(cfg)

            prog_pin = os.path.join(pin_dir, "prog")
            if os.path.exists(prog_pin):
                os.unlink(prog_pin)
            libbpf.obj_pin(prog_fd, prog_pin)

            modes = {ifname: _attach(pin_dir, ifname, prog_fd, mode) for ifname in interfaces}
        except BaseException:
            obj.close()
            raise
        return cls(pin_dir, abi, obj, maps, prog_fd, modes)

    # -- properties ------------------------------------------------------------------

    @property
    def backend(self) -> XdpBackend:
        return self._backend

    @property
    def attach_modes(self) -> dict[str, str]:
        """Attach mode actually in use per interface: ``"native"`` or ``"generic"``."""
        return dict(self._attach_modes)

    @property
    def nr_cpus(self) -> int:
        return self._maps.ncpu

    @property
    def prog_fd(self) -> int:
        return self._prog_fd

    def config(self) -> dict[str, int]:
        """The ``config`` map as a dict (abi_version, bypass, sample_every, ...)."""
        cfg = self._maps.config()
        return {n: int(cfg[n][0]) for n in cfg.dtype.names or ()}

    # -- DataPlane -------------------------------------------------------------------

    def set_protected(self, prefixes: Mapping[IPNetwork, int]) -> None:
        vdt = self.abi.dtype("protected_val")
        fd = self._maps.fd["protected"]
        want: dict[tuple[int, bytes], int] = {net_key(n): int(g) for n, g in prefixes.items()}
        have = self._maps.lpm_items("protected", vdt)
        # Add and change first, then delete: a destination never goes uncounted.
        for key, group in want.items():
            cur = have.get(key)
            if cur is not None and int(cur["group_id"][0]) == group:
                continue
            val = np.zeros(1, vdt)
            val["group_id"] = group
            libbpf.map_update(fd, _lpm_key(self.abi, *key), val)
        for key in have.keys() - want.keys():
            libbpf.map_delete(fd, _lpm_key(self.abi, *key))
        # Counters of destinations whose protection or group changed go with the change:
        # detection must not go on reading counters of what it no longer protects.
        changed = {
            k
            for k in want.keys() | have.keys()
            if k not in have or k not in want or int(have[k]["group_id"][0]) != want[k]
        }
        if changed and have:
            self._forget_destinations([key_net(*k) for k in changed])

    def _forget_destinations(self, nets: list[IPNetwork]) -> None:
        kdt = self.abi.dtype("dst_key")
        keys, _ = self._read_percpu_hash("dst_stats", kdt, self.abi.dtype("dst_counters"))
        if not len(keys):
            return
        agg = int(self._maps.config()["ipv6_prefix_len"][0])
        hit = np.zeros(len(keys), dtype=bool)
        for net in nets:
            # IPv6 counters are kept per aggregate: widen a longer prefix to its aggregate
            if net.version == 6 and net.prefixlen > agg:
                net = net.supernet(new_prefix=agg)
            hit |= addresses_in(keys["addr"], net)
        fd = self._maps.fd["dst_stats"]
        for i in np.nonzero(hit)[0]:
            libbpf.map_delete(fd, keys[i : i + 1])

    def read_counters(self) -> np.ndarray[Any, Any]:
        kdt, vdt = self.abi.dtype("dst_key"), self.abi.dtype("dst_counters")
        keys, vals = self._read_percpu_hash("dst_stats", kdt, vdt)
        out = np.zeros(len(keys), COUNTER_DTYPE)
        if len(keys):
            out["dst"] = keys["addr"]
            out["pkts"] = vals["pkts"].sum(axis=1, dtype=np.uint64)
            out["bytes"] = vals["bytes"].sum(axis=1, dtype=np.uint64)
            out["dropped_pkts"] = vals["dropped_pkts"].sum(axis=1, dtype=np.uint64)
            out["dropped_bytes"] = vals["dropped_bytes"].sum(axis=1, dtype=np.uint64)
        return out

    def _read_percpu_hash(
        self, name: str, kdt: np.dtype[Any], vdt: np.dtype[Any]
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        fd = self._maps.fd[name]
        batch = 1024
        key_parts: list[np.ndarray[Any, Any]] = []
        val_parts: list[np.ndarray[Any, Any]] = []
        cursor_in = np.zeros(1, "<u8")
        cursor_out = np.zeros(1, "<u8")
        start = True
        try:
            while True:
                keys = np.zeros(batch, kdt)
                vals = self._maps.percpu(vdt, batch)
                try:
                    n, done = libbpf.map_lookup_batch(fd, None if start else cursor_in, cursor_out, keys, vals, batch)
                except DataPlaneError as e:
                    if "ENOSPC" in str(e) and batch < 1 << 20:
                        batch *= 4  # a hash bucket held more than one batch
                        continue
                    raise
                start = False
                key_parts.append(keys[:n])
                val_parts.append(vals[:n])
                cursor_in[:] = cursor_out
                if done:
                    break
        except DataPlaneError as e:
            if not any(s in str(e) for s in ("EINVAL", "EOPNOTSUPP", "ENOTSUPP", "ENOTSUP")):
                raise
            return self._iterate_percpu_hash(fd, kdt, vdt)
        if not key_parts:
            return np.zeros(0, kdt), self._maps.percpu(vdt, 0)
        return np.concatenate(key_parts), np.concatenate(val_parts)

    def _iterate_percpu_hash(
        self, fd: int, kdt: np.dtype[Any], vdt: np.dtype[Any]
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        keys: list[np.ndarray[Any, Any]] = []
        vals: list[np.ndarray[Any, Any]] = []
        key = np.zeros(1, kdt)
        nxt = np.zeros(1, kdt)
        first = True
        while libbpf.map_next_key(fd, None if first else key, nxt):
            first = False
            key[:] = nxt
            v = self._maps.percpu(vdt, 1)
            if libbpf.map_lookup(fd, key, v):
                keys.append(key.copy())
                vals.append(v)
        if not keys:
            return np.zeros(0, kdt), self._maps.percpu(vdt, 0)
        return np.concatenate(keys), np.concatenate(vals)

    def read_raw_samples(self) -> np.ndarray[Any, Any]:
        """Drain the ring buffer: the kernel's ``struct sample`` records as they are."""
        sdt = self.abi.dtype("sample")
        records = [r[: sdt.itemsize] for r in self._ring.consume() if len(r) >= sdt.itemsize]
        return np.frombuffer(b"".join(records), dtype=sdt) if records else np.zeros(0, sdt)

    def read_samples(self) -> TrafficBatch:
        return self.read_frames()[0]

    def read_frames(self) -> tuple[TrafficBatch, tuple[np.ndarray, np.ndarray] | None]:
        raw = self.read_raw_samples()
        if not len(raw):
            return empty_traffic(0), None
        snap = raw["data"].shape[1]
        caplen = raw["cap_len"].astype(np.int64)
        # Bytes past cap_len were never written by the kernel: zero them.
        frames = np.where(np.arange(snap)[None, :] < caplen[:, None], raw["data"], 0).astype(np.uint8)
        batch = decode_frames(frames, caplen, raw["pkt_len"])
        every = raw["sample_every"].astype(np.uint64)
        batch["ts"] = raw["ts_ns"] / 1e9 + _mono_offset()
        batch["packets"] = every
        batch["bytes"] = raw["pkt_len"].astype(np.uint64) * every
        batch["sample_rate"] = raw["sample_every"]
        batch["ifindex"] = raw["ifindex"]
        batch["source"] = int(Source.XDP)
        batch["verdict"] = raw["verdict"]
        batch["rule_id"] = raw["rule_id"]
        batch["flags"] |= raw["flags"]
        return batch, (frames, caplen)

    def set_sample_every(self, n: int) -> None:
        if n < 0:
            raise DataPlaneError(f"sample_every {n}: expected 0 or more")
        cfg = self._maps.config()
        cfg["sample_every"] = n
        self._maps.write_config(cfg)

    def set_bypass(self, on: bool) -> None:
        self._maps.set_bypass(on)

    def kill_switch_on(self) -> bool:
        return bool(self._maps.config()["bypass"][0])

    def global_stats(self) -> dict[str, int]:
        return self._maps.global_stats()

    def close(self, detach: bool = False) -> None:
        self._ring.close()
        if self._obj is not None:
            self._obj.close()
            self._obj = None
        if detach:
            _detach(self.pin_dir)

    # -- testing and benchmarks -----------------------------------------------------

    def test_run(self, frame: bytes, repeat: int = 1, ingress_ifindex: int = 0) -> libbpf.TestRun:
        """Run the loaded program on ``frame`` in the kernel (BPF_PROG_TEST_RUN),
        against the live maps.  ``ingress_ifindex`` must name an existing device or 0."""
        return libbpf.prog_test_run_xdp(self._prog_fd, frame, repeat, ingress_ifindex)


def _migrate(pin_dir: str, abi: Abi) -> None:
    cfg_pin = os.path.join(pin_dir, "maps", "config")
    if not os.path.exists(cfg_pin):
        return
    fd = libbpf.obj_get(cfg_pin)
    try:
        info = libbpf.map_info(fd)
        cfg = np.zeros(1, abi.dtype("config"))
        if info.value_size < 4:
            raise DataPlaneError(f"{cfg_pin}: not a shield config map")
        raw = np.zeros(max(info.value_size, cfg.itemsize), np.uint8)
        libbpf.map_lookup(fd, np.zeros(1, "<u4"), raw)
        version = int(raw[:4].view("<u4")[0])
    finally:
        os.close(fd)
    want = abi["SHIELD_ABI_VERSION"]
    if version in (0, want):  # 0: the previous run died before writing its config
        return
    while version != want:
        step = MIGRATIONS.get(version)
        if step is None:
            raise DataPlaneError(
                f"pinned maps in {pin_dir} have ABI version {version}, this program needs {want} and "
                f"no migration exists: run 'ddos-shield stop --detach' (this removes the pinned rules) and start again"
            )
        step(pin_dir, abi)
        version += 1


def _attach(pin_dir: str, ifname: str, prog_fd: int, mode: str) -> str:
    ifindex = _ifindex(ifname)
    link_pin = os.path.join(pin_dir, f"link_{ifname}")
    if os.path.exists(link_pin):
        link_fd = libbpf.obj_get(link_pin)
        try:
            libbpf.link_update(link_fd, prog_fd)
            attach_mode, _ = libbpf.xdp_query(ifindex)
            return _MODE_NAMES.get(attach_mode, "unknown")
        except DataPlaneError as e:
            # ENOLINK: the interface went away and came back, the old link is defunct.
            if "ENOLINK" not in str(e):
                raise
            os.unlink(link_pin)
        finally:
            os.close(link_fd)
    tries = {
        "native": [("native", libbpf.XDP_FLAGS_DRV_MODE)],
        "generic": [("generic", libbpf.XDP_FLAGS_SKB_MODE)],
        "auto": [("native", libbpf.XDP_FLAGS_DRV_MODE), ("generic", libbpf.XDP_FLAGS_SKB_MODE)],
    }[mode]
    err: DataPlaneError | None = None
    for name, flags in tries:
        try:
            link_fd = libbpf.link_create_xdp(prog_fd, ifindex, flags)
        except DataPlaneError as e:
            err = e
            continue
        try:
            libbpf.obj_pin(link_fd, link_pin)
        finally:
            os.close(link_fd)
        return name
    raise DataPlaneError(f"cannot attach XDP to {ifname} in {mode} mode: {err}")


def detach(pin_dir: str, interfaces: Sequence[str] | None = None) -> list[str]:
    """Detach the shield from ``interfaces`` (default: every pinned link) and, once no
    link is left, remove the pinned program and maps (and so every rule).

    Works without a running shield: everything needed is in ``pin_dir``.  Returns the
    names of the interfaces detached.
    """
    if not os.path.isdir(pin_dir):
        return []
    done: list[str] = []
    for entry in sorted(os.listdir(pin_dir)):
        if not entry.startswith("link_"):
            continue
        ifname = entry.removeprefix("link_")
        if interfaces is not None and ifname not in interfaces:
            continue
        path = os.path.join(pin_dir, entry)
        try:
            fd = libbpf.obj_get(path)
        except DataPlaneError:
            fd = -1
        if fd >= 0:
            try:
                libbpf.link_detach(fd)
            except DataPlaneError as e:
                if "ENOLINK" not in str(e):  # already defunct: nothing to detach
                    raise
            finally:
                os.close(fd)
        os.unlink(path)
        done.append(ifname)
    if any(e.startswith("link_") for e in os.listdir(pin_dir)):
        return done
    maps_dir = os.path.join(pin_dir, "maps")
    if os.path.isdir(maps_dir):
        for name in os.listdir(maps_dir):
            os.unlink(os.path.join(maps_dir, name))
        os.rmdir(maps_dir)
    prog = os.path.join(pin_dir, "prog")
    if os.path.exists(prog):
        os.unlink(prog)
    return done


_detach = detach  # XdpDataPlane.close has a parameter of the same name


# ---- enforcement -----------------------------------------------------------------------


@dataclass
class _Slot:
    rule_id: int
    kind: str  # "src": indexed by source (src_exact or src_index); "fp": by destination in fp_index
    key: tuple[int, bytes]  # (prefixlen, addr) of that index entry
    rec: np.ndarray[Any, Any]  # the kernel record, shape (1,)


class XdpBackend(Backend):
    """Rules enforced by the XDP program (obtained from :attr:`XdpDataPlane.backend`).

    A source-only rule (``Match(src=...)``) is one ``src_exact`` entry (single address)
    or ``src_index`` entry (shorter prefix); any other rule
    lives in the ``fp_index`` list of its destination prefix and of every prefix it
    covers, most specific prefix first, then oldest rule first.  Rule ids come from
    ``config.next_rule_id`` in the kernel, so they are never reused across restarts.

    >>> r = dp.backend.apply(Rule(Match(proto=17, dport=Range(53, 53)), Action.DROP, time.time() + 60))  # doctest: +SKIP
    >>> dp.backend.apply(r.refreshed(time.time() + 120))  # rewrites only the rule's slot  # doctest: +SKIP
    """

    name = "xdp"

    def __init__(self, plane: XdpDataPlane) -> None:
        self._plane = plane
        self._maps = plane._maps
        self.abi = plane.abi
        self._rule_dt = self.abi.dtype("rule")
        self._max_rules = self.abi["SHIELD_MAX_RULES"]
        self._fp_max = self.abi["SHIELD_FP_LIST_MAX"]
        self._f = self.abi.members("F_")
        self._slots: dict[int, _Slot] = {}
        self._batch_next: int | None = None  # next id to hand out inside apply_many
        self._by_id: dict[int, int] = {}
        self._src_keys: dict[tuple[int, bytes], int] = {}  # key -> rule_id
        self._fp_lists: dict[tuple[int, bytes], list[int]] = {}  # as in the kernel
        self._free: list[int] = []
        self._adopt()

    # -- state ---------------------------------------------------------------------

    def _read_rules(self) -> np.ndarray[Any, Any]:
        return self._maps.read_array("rules", self._rule_dt, self._max_rules)

    def _adopt(self) -> None:
        """Rebuild the user-space view from the kernel maps (after a restart)."""
        recs = self._read_rules()
        active = np.nonzero((recs["rule_id"] != 0) & (recs["action"] != self.abi["ACT_NONE"]))[0]
        used = set()
        for slot in active.tolist():
            rec = recs[slot : slot + 1].copy()
            kind, key = self._index_of(rec)
            self._slots[slot] = _Slot(int(rec["rule_id"][0]), kind, key, rec)
            self._by_id[int(rec["rule_id"][0])] = slot
            if kind == "src":
                self._src_keys[key] = int(rec["rule_id"][0])
            used.add(slot)
        self._free = [s for s in range(self._max_rules) if s not in used]
        heapq.heapify(self._free)
        fl_dt = self.abi.dtype("fp_list")
        for key, val in self._maps.lpm_items("fp_index", fl_dt).items():
            n = int(val["count"][0])
            self._fp_lists[key] = [int(s) for s in val["slots"][0][:n]]

    def _index_of(self, rec: np.ndarray[Any, Any]) -> tuple[str, tuple[int, bytes]]:
        fields = int(rec["fields"][0])
        if fields == self._f["F_SRC"]:
            return "src", (int(rec["src_plen"][0]), rec["src"][0].tobytes())
        if fields & self._f["F_DST"]:
            return "fp", (int(rec["dst_plen"][0]), rec["dst"][0].tobytes())
        return "fp", (0, _ZERO16)

    def _bump_generation(self) -> None:
        if self._batch_next is not None:
            return  # once, at the end of the batch
        cfg = self._maps.config()
        cfg["generation"] += 1
        self._maps.write_config(cfg)

    def apply_many(self, rules: Sequence[Rule]) -> list[Rule]:
        """:meth:`apply` each rule, with the configuration map written twice instead of
        twice a rule: the ids the batch may take are reserved first (so a crash midway
        never lets an id be handed out again), the rules' generation is bumped once at
        the end (until then the program may use its cached view of the old rules, as
        it would between two single applies)."""
        cfg = self._maps.config()
        start = max([1, int(cfg["next_rule_id"][0])] + [r.rule_id + 1 for r in rules])
        cfg["next_rule_id"] = start + sum(1 for r in rules if r.rule_id == 0)
        self._maps.write_config(cfg)
        self._batch_next = start
        try:
            return [self.apply(r) for r in rules]
        finally:
            self._batch_next = None
            self._bump_generation()

    def _new_id(self, wanted: int) -> int:
        if self._batch_next is not None:  # ids reserved by apply_many
            if wanted:
                return wanted
            self._batch_next += 1
            return self._batch_next - 1
        cfg = self._maps.config()
        nxt = max(1, int(cfg["next_rule_id"][0]))
        rid = wanted if wanted else nxt
        cfg["next_rule_id"] = max(nxt, rid + 1)
        self._maps.write_config(cfg)
        return rid

    # -- encoding ------------------------------------------------------------------

    def _encode(self, rule: Rule, rule_id: int, created_ns: int) -> np.ndarray[Any, Any]:
        m = rule.match
        rec = np.zeros(1, self._rule_dt)
        f = 0
        try:
            rec["rule_id"] = rule_id
            rec["attack_id"] = rule.attack_id
            if not Action(rule.action).in_kernel:
                raise ValueError(
                    f"action {rule.action.name.lower()} is not enforced in the kernel by the XDP program ("
                    + (
                        "the nftables backend enforces it"
                        if rule.action == Action.SYN_PROXY
                        else "the bgp backend announces it"
                    )
                    + ")"
                )
            rec["action"] = int(Action(rule.action))
            if m.proto is not None:
                f |= self._f["F_PROTO"]
                rec["proto"] = _u(m.proto, 8, "proto")
            for side in ("src", "dst"):
                net: IPNetwork | None = getattr(m, side)
                if net is None:
                    continue
                f |= self._f["F_SRC" if side == "src" else "F_DST"]
                plen, addr = net_key(net)
                rec[f"{side}_plen"] = plen
                rec[side][0] = np.frombuffer(addr, np.uint8)
                rec[f"{side}_mask"][0] = np.frombuffer(_mask_bytes(plen), "<u4")
            for side, flag in (("sport", "F_SPORT"), ("dport", "F_DPORT"), ("length", "F_LEN"), ("ttl", "F_TTL")):
                rng: Range | None = getattr(m, side)
                if rng is None:
                    continue
                f |= self._f[flag]
                bits = 8 if side == "ttl" else 16
                name = {"length": "len"}.get(side, side)
                rec[f"{name}_min"] = _u(rng.lo, bits, side)
                rec[f"{name}_max"] = _u(rng.hi, bits, side)
            if m.tcp_flags is not None:
                f |= self._f["F_TCP_FLAGS"]
                rec["tcp_flags_mask"] = _u(m.tcp_flags[0], 8, "tcp_flags mask")
                rec["tcp_flags_value"] = _u(m.tcp_flags[1], 8, "tcp_flags value")
        except ValueError as e:
            raise DataPlaneError(f"rule {rule_id}: {e}") from e
        rec["fields"] = f
        rec["flags"] = self.abi["RF_PER_SOURCE"] if rule.per_source else 0
        if rule.action == Action.RATE_LIMIT and rule.rate_pps <= 0:
            raise DataPlaneError(f"rule {rule_id}: rate_limit needs rate_pps > 0, got {rule.rate_pps}")
        rec["rate_pps"] = max(0, rule.rate_pps)
        rec["expires_ns"] = _expires_ns(rule.expires_at)
        rec["created_ns"] = created_ns
        return rec

    def _decode(self, rec: np.ndarray[Any, Any], offset: float) -> Rule:
        r = rec[0]
        fields = int(r["fields"])
        f = self._f
        kw: dict[str, Any] = {}
        if fields & f["F_PROTO"]:
            kw["proto"] = int(r["proto"])
        if fields & f["F_SRC"]:
            kw["src"] = key_net(int(r["src_plen"]), r["src"].tobytes())
        if fields & f["F_DST"]:
            kw["dst"] = key_net(int(r["dst_plen"]), r["dst"].tobytes())
        if fields & f["F_SPORT"]:
            kw["sport"] = Range(int(r["sport_min"]), int(r["sport_max"]))
        if fields & f["F_DPORT"]:
            kw["dport"] = Range(int(r["dport_min"]), int(r["dport_max"]))
        if fields & f["F_TCP_FLAGS"]:
            kw["tcp_flags"] = (int(r["tcp_flags_mask"]), int(r["tcp_flags_value"]))
        if fields & f["F_LEN"]:
            kw["length"] = Range(int(r["len_min"]), int(r["len_max"]))
        if fields & f["F_TTL"]:
            kw["ttl"] = Range(int(r["ttl_min"]), int(r["ttl_max"]))
        exp = int(r["expires_ns"])
        return Rule(
            match=Match(**kw),
            action=Action(int(r["action"])),
            expires_at=exp / 1e9 + offset if exp else math.inf,
            rate_pps=int(r["rate_pps"]),
            rule_id=int(r["rule_id"]),
            attack_id=int(r["attack_id"]),
            created_at=int(r["created_ns"]) / 1e9 + offset,
            per_source=bool(int(r["flags"]) & self.abi["RF_PER_SOURCE"]),
        )

    # -- fingerprint index ---------------------------------------------------------

    def _fp_rules(self) -> Iterator[tuple[int, _Slot]]:
        return ((s, e) for s, e in self._slots.items() if e.kind == "fp")

    def _fp_desired(self, keys: set[tuple[int, bytes]]) -> dict[tuple[int, bytes], list[int]]:
        """The fp_index lists that ``keys`` should hold given the current rule set."""
        rules = list(self._fp_rules())
        rule_keys = {e.key for _, e in rules}
        out: dict[tuple[int, bytes], list[int]] = {}
        # Only prefixes some rule names get an entry: any other destination falls to
        # the longest of those covering it, whose list already holds every rule that applies.
        for key in keys & rule_keys:
            covering = [(-e.key[0], e.rule_id, s) for s, e in rules if _covers(e.key, key)]
            if covering:
                out[key] = [s for _, _, s in sorted(covering)]
        return out

    def _fp_check(self, keys: set[tuple[int, bytes]]) -> dict[tuple[int, bytes], list[int]]:
        want = self._fp_desired(keys)
        for key, slots in want.items():
            if len(slots) > self._fp_max:
                raise DataPlaneError(
                    f"destination {key_net(*key)}: {len(slots)} fingerprint rules would apply, "
                    f"more than SHIELD_FP_LIST_MAX={self._fp_max}"
                )
        return want

    def _fp_write(self, keys: set[tuple[int, bytes]], want: dict[tuple[int, bytes], list[int]]) -> None:
        fd = self._maps.fd["fp_index"]
        fl_dt = self.abi.dtype("fp_list")
        for key, slots in want.items():
            if self._fp_lists.get(key) == slots:
                continue
            val = np.zeros(1, fl_dt)
            val["count"] = len(slots)
            val["slots"][0][: len(slots)] = slots
            libbpf.map_update(fd, _lpm_key(self.abi, *key), val)
            self._fp_lists[key] = slots
        for key in keys - want.keys():
            if key in self._fp_lists:
                libbpf.map_delete(fd, _lpm_key(self.abi, *key))
                del self._fp_lists[key]

    def _fp_affected(self, key: tuple[int, bytes]) -> set[tuple[int, bytes]]:
        keys = {e.key for _, e in self._fp_rules()} | set(self._fp_lists) | {key}
        return {k for k in keys if _covers(key, k)}

    # -- Backend -------------------------------------------------------------------

    def apply(self, rule: Rule) -> Rule:
        slot = self._by_id.get(rule.rule_id) if rule.rule_id else None
        if slot is not None:
            return self._update(slot, rule)
        if not self._free:
            raise DataPlaneError(f"no free rule slot: all SHIELD_MAX_RULES={self._max_rules} are in use")
        # Encode and check before taking an id, so a refused rule costs nothing.
        rec = self._encode(rule, rule.rule_id or 1, time.monotonic_ns())
        kind, key = self._index_of(rec)
        if kind == "src" and key in self._src_keys:
            raise DataPlaneError(
                f"source {key_net(*key)} is already blocked by rule {self._src_keys[key]}: update that rule instead"
            )
        slot = self._free[0]
        entry = _Slot(0, kind, key, rec)
        affected: set[tuple[int, bytes]] = set()
        if kind == "fp":
            self._slots[slot] = entry
            try:
                affected = self._fp_affected(key)
                self._fp_check(affected)
            finally:
                del self._slots[slot]
        rule_id = self._new_id(rule.rule_id)
        heapq.heappop(self._free)
        rec["rule_id"] = rule_id
        entry.rule_id = rule_id
        self._zero_stats(slot)
        libbpf.map_update(self._maps.fd["rules"], np.array([slot], "<u4"), rec)
        self._slots[slot] = entry
        self._by_id[rule_id] = slot
        if kind == "src":
            ref = np.array([slot], self.abi.dtype("slot_ref"))
            libbpf.map_update(self._maps.fd[_src_map(key)], _lpm_key(self.abi, *key), ref)
            self._src_keys[key] = rule_id
        else:
            self._fp_write(affected, self._fp_desired(affected))
        self._bump_generation()
        return rule.with_id(rule_id)

    def _update(self, slot: int, rule: Rule) -> Rule:
        old = self._slots[slot]
        rec = self._encode(rule, old.rule_id, int(old.rec["created_ns"][0]))
        kind, key = self._index_of(rec)
        if (kind, key) == (old.kind, old.key):
            # Same index entry: only the slot changes (expiry refresh is this path).
            libbpf.map_update(self._maps.fd["rules"], np.array([slot], "<u4"), rec)
            refresh_only = bool(np.array_equal(_without_expiry(rec), _without_expiry(old.rec)))
            old.rec = rec
            if not refresh_only:
                self._bump_generation()
            return rule
        # The rule moves to another index entry: withdraw and re-add under the same id.
        if kind == "src" and key in self._src_keys:
            raise DataPlaneError(f"source {key_net(*key)} is already blocked by rule {self._src_keys[key]}")
        self.withdraw(old.rule_id)
        return self.apply(rule)

    def withdraw(self, rule_id: int) -> None:
        slot = self._by_id.pop(rule_id, None)
        if slot is None:
            return
        entry = self._slots[slot]
        # Unindex first, then free the slot, so the kernel never follows a stale index.
        if entry.kind == "src":
            libbpf.map_delete(self._maps.fd[_src_map(entry.key)], _lpm_key(self.abi, *entry.key))
            self._src_keys.pop(entry.key, None)
            del self._slots[slot]
        else:
            affected = self._fp_affected(entry.key)
            del self._slots[slot]
            self._fp_write(affected, self._fp_desired(affected))
        libbpf.map_update(self._maps.fd["rules"], np.array([slot], "<u4"), np.zeros(1, self._rule_dt))
        self._zero_stats(slot)
        heapq.heappush(self._free, slot)
        self._bump_generation()

    def _zero_stats(self, slot: int) -> None:
        vals = self._maps.percpu(self.abi.dtype("rule_stats"), 1)
        libbpf.map_update(self._maps.fd["rule_stats"], np.array([slot], "<u4"), vals)
        # a full bucket for the slot's next rate limit
        bucket = np.zeros(1, self.abi.dtype("src_bucket"))
        libbpf.map_update(self._maps.fd["rule_buckets"], np.array([slot], "<u4"), bucket)

    def gc(self) -> list[int]:
        """Withdraw the rules past their expiry; returns their ids."""
        now = time.monotonic_ns()
        dead = [e.rule_id for e in self._slots.values() if 0 < int(e.rec["expires_ns"][0]) <= now]
        for rid in dead:
            self.withdraw(rid)
        return dead

    def list(self) -> list[Rule]:
        self.gc()
        recs = self._read_rules()
        now = time.monotonic_ns()
        live = (recs["rule_id"] != 0) & (recs["action"] != self.abi["ACT_NONE"])
        live &= (recs["expires_ns"] == 0) | (recs["expires_ns"] > now)
        offset = _mono_offset()
        rules = [self._decode(recs[i : i + 1], offset) for i in np.nonzero(live)[0].tolist()]
        return sorted(rules, key=lambda r: r.rule_id)

    def stats(self) -> dict[int, RuleStats]:
        out: dict[int, RuleStats] = {}
        vals = self._maps.percpu(self.abi.dtype("rule_stats"), 1)
        for slot, e in self._slots.items():
            vals[:] = np.zeros(1, vals.dtype)
            libbpf.map_lookup(self._maps.fd["rule_stats"], np.array([slot], "<u4"), vals)
            out[e.rule_id] = RuleStats(
                e.rule_id, int(vals["pkts"].sum()), int(vals["bytes"].sum()), int(vals["dropped"].sum())
            )
        return out

    def set_allowlist(self, sources: Sequence[IPNetwork]) -> None:
        fd = self._maps.fd["allow"]
        want = {net_key(n) for n in sources}
        have = set(self._maps.lpm_items("allow", np.dtype("<u4")))
        zero = np.zeros(1, "<u4")
        for key in want - have:
            libbpf.map_update(fd, _lpm_key(self.abi, *key), zero)
        for key in have - want:
            libbpf.map_delete(fd, _lpm_key(self.abi, *key))

    def set_bypass(self, on: bool) -> None:
        self._plane.set_bypass(on)

    def close(self) -> None:
        """Nothing to release: the data plane owns the maps."""


def _src_map(key: tuple[int, bytes]) -> str:
    """Single addresses go to the exact-match hash, shorter prefixes to the trie."""
    return "src_exact" if key[0] == 128 else "src_index"


def _u(v: int, bits: int, what: str) -> int:
    if not 0 <= int(v) < 1 << bits:
        raise ValueError(f"{what} {v}: out of range 0..{(1 << bits) - 1}")
    return int(v)


def _expires_ns(expires_at: float) -> int:
    """Unix time -> CLOCK_MONOTONIC ns (0 = never, for an infinite expiry)."""
    if math.isinf(expires_at) and expires_at > 0:
        return 0
    ns = time.monotonic_ns() + int((expires_at - time.time()) * 1e9)
    return max(1, ns)


def _without_expiry(rec: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    r = rec.copy()
    r["expires_ns"] = 0
    return r
