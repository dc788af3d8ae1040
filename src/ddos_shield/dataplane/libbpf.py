"""A small ctypes binding to the system's libbpf (Debian's libbpf.so.1, v1.1).

Only the calls the data plane needs: open/load an object with pinned maps, program
and map file descriptors, XDP links (create, update, pin, detach), map element and
batch operations, program test runs, the ring buffer, and a few queries.  Every
failure becomes a :class:`~ddos_shield.errors.DataPlaneError` naming the call and the
errno; libbpf's own messages (the verifier log among them) go to the
``ddos_shield.libbpf`` logger.

Buffers are numpy arrays (C-contiguous), ``bytes`` for input or ``bytearray`` for
output.

Example::

    >>> from ddos_shield.dataplane import libbpf
    >>> libbpf.num_possible_cpus() >= 1
    True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as errno_mod
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ddos_shield.errors import DataPlaneError

log = logging.getLogger("ddos_shield.libbpf")

Buffer = bytes | bytearray | np.ndarray[Any, Any]

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
BPF_XDP = 37  # enum bpf_attach_type
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_ATTACHED_NONE = 0
XDP_ATTACHED_DRV = 1
XDP_ATTACHED_SKB = 2
XDP_ATTACHED_HW = 3
XDP_ATTACHED_MULTI = 4

_c_size_t = ctypes.c_size_t
_u32 = ctypes.c_uint32
_u64 = ctypes.c_uint64
_vp = ctypes.c_void_p


class _LinkCreateOpts(ctypes.Structure):
    _fields_ = [
        ("sz", _c_size_t),
        ("flags", _u32),
        ("iter_info", _vp),
        ("iter_info_len", _u32),
        ("target_btf_id", _u32),
        ("_union", _u64 * 4),  # perf_event / kprobe_multi / tracing: unused for XDP
    ]


class _LinkUpdateOpts(ctypes.Structure):
    _fields_ = [("sz", _c_size_t), ("flags", _u32), ("old_prog_fd", _u32)]


class _TestRunOpts(ctypes.Structure):
    _fields_ = [
        ("sz", _c_size_t),
        ("data_in", _vp),
        ("data_out", _vp),
        ("data_size_in", _u32),
        ("data_size_out", _u32),
        ("ctx_in", _vp),
        ("ctx_out", _vp),
        ("ctx_size_in", _u32),
        ("ctx_size_out", _u32),
        ("retval", _u32),
        ("repeat", ctypes.c_int),
        ("duration", _u32),
        ("flags", _u32),
        ("cpu", _u32),
        ("batch_size", _u32),
    ]


class _BatchOpts(ctypes.Structure):
    _fields_ = [("sz", _c_size_t), ("elem_flags", _u64), ("flags", _u64)]


class _XdpQueryOpts(ctypes.Structure):
    _fields_ = [
        ("sz", _c_size_t),
        ("prog_id", _u32),
        ("drv_prog_id", _u32),
        ("hw_prog_id", _u32),
        ("skb_prog_id", _u32),
        ("attach_mode", ctypes.c_uint8),
    ]


class _MapInfo(ctypes.Structure):
    _fields_ = [
        ("type", _u32),
        ("id", _u32),
        ("key_size", _u32),
        ("value_size", _u32),
        ("max_entries", _u32),
        ("map_flags", _u32),
        ("name", ctypes.c_char * 16),
        ("ifindex", _u32),
        ("btf_vmlinux_value_type_id", _u32),
        ("netns_dev", _u64),
        ("netns_ino", _u64),
        ("btf_id", _u32),
        ("btf_key_type_id", _u32),
        ("btf_value_type_id", _u32),
        ("_pad", _u32),
        ("map_extra", _u64),
    ]


class _XdpMd(ctypes.Structure):
    _fields_ = [
        ("data", _u32),
        ("data_end", _u32),
        ("data_meta", _u32),
        ("ingress_ifindex", _u32),
        ("rx_queue_index", _u32),
        ("egress_ifindex", _u32),
    ]


_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, _vp)
_SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, _vp, _vp, _c_size_t)

_LEVELS = (logging.WARNING, logging.INFO, logging.DEBUG)  # LIBBPF_WARN, _INFO, _DEBUG


class _Lib:
    """The loaded library with argument types declared once."""

    def __init__(self) -> None:
        try:
            self.so = ctypes.CDLL("libbpf.so.1", use_errno=True)
        except OSError as e:
            raise DataPlaneError(f"cannot load libbpf.so.1 (install libbpf1): {e}") from e
        libc_name = ctypes.util.find_library("c") or "libc.so.6"
        self.libc = ctypes.CDLL(libc_name, use_errno=True)
        self.libc.vsnprintf.argtypes = [ctypes.c_char_p, _c_size_t, ctypes.c_char_p, _vp]
        self.libc.vsnprintf.restype = ctypes.c_int
        sigs: dict[str, tuple[list[Any], Any]] = {
            "libbpf_set_print": ([_PRINT_FN], _vp),
            "libbpf_num_possible_cpus": ([], ctypes.c_int),
            "bpf_object__open_file": ([ctypes.c_char_p, _vp], _vp),
            "bpf_object__load": ([_vp], ctypes.c_int),
            "bpf_object__close": ([_vp], None),
            "bpf_object__find_map_by_name": ([_vp, ctypes.c_char_p], _vp),
            "bpf_object__find_program_by_name": ([_vp, ctypes.c_char_p], _vp),
            "bpf_object__next_map": ([_vp, _vp], _vp),
            "bpf_map__name": ([_vp], ctypes.c_char_p),
            "bpf_map__set_pin_path": ([_vp, ctypes.c_char_p], ctypes.c_int),
            "bpf_map__fd": ([_vp], ctypes.c_int),
            "bpf_program__fd": ([_vp], ctypes.c_int),
            "bpf_link_create": (
                [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.POINTER(_LinkCreateOpts)],
                ctypes.c_int,
            ),
            "bpf_link_update": ([ctypes.c_int, ctypes.c_int, ctypes.POINTER(_LinkUpdateOpts)], ctypes.c_int),
            "bpf_link_detach": ([ctypes.c_int], ctypes.c_int),
            "bpf_obj_pin": ([ctypes.c_int, ctypes.c_char_p], ctypes.c_int),
            "bpf_obj_get": ([ctypes.c_char_p], ctypes.c_int),
            "bpf_obj_get_info_by_fd": ([ctypes.c_int, _vp, ctypes.POINTER(_u32)], ctypes.c_int),
            "bpf_prog_get_fd_by_id": ([_u32], ctypes.c_int),
            "bpf_map_get_fd_by_id": ([_u32], ctypes.c_int),
            "bpf_map_update_elem": ([ctypes.c_int, _vp, _vp, _u64], ctypes.c_int),
            "bpf_map_lookup_elem": ([ctypes.c_int, _vp, _vp], ctypes.c_int),
            "bpf_map_delete_elem": ([ctypes.c_int, _vp], ctypes.c_int),
            "bpf_map_get_next_key": ([ctypes.c_int, _vp, _vp], ctypes.c_int),
            "bpf_map_lookup_batch": (
                [ctypes.c_int, _vp, _vp, _vp, _vp, ctypes.POINTER(_u32), ctypes.POINTER(_BatchOpts)],
                ctypes.c_int,
            ),
            "bpf_prog_test_run_opts": ([ctypes.c_int, ctypes.POINTER(_TestRunOpts)], ctypes.c_int),
            "bpf_xdp_query": ([ctypes.c_int, ctypes.c_int, ctypes.POINTER(_XdpQueryOpts)], ctypes.c_int),
            "ring_buffer__new": ([ctypes.c_int, _SAMPLE_FN, _vp, _vp], _vp),
            "ring_buffer__consume": ([_vp], ctypes.c_int),
            "ring_buffer__free": ([_vp], None),
        }
        for name, (args, res) in sigs.items():
            fn = getattr(self.so, name)
            fn.argtypes = args
            fn.restype = res
        self._print_cb = _PRINT_FN(self._on_print)
        self.so.libbpf_set_print(self._print_cb)

    def _on_print(self, level: int, fmt: bytes | None, va_list: int | None) -> int:
        lvl = _LEVELS[level] if 0 <= level < len(_LEVELS) else logging.DEBUG
        if fmt is None or not log.isEnabledFor(lvl):
            return 0
        buf = ctypes.create_string_buffer(4096)
        self.libc.vsnprintf(buf, len(buf), fmt, va_list)
        log.log(lvl, "%s", buf.value.decode(errors="replace").rstrip())
        return 0


_lib_instance: _Lib | None = None


def lib() -> _Lib:
    """The process-wide binding (loaded on first use)."""
    global _lib_instance
    if _lib_instance is None:
        _lib_instance = _Lib()
    return _lib_instance


def _fail(call: str, err: int, what: str = "") -> DataPlaneError:
    err = abs(err)
    name = errno_mod.errorcode.get(err, str(err))
    detail = f" ({what})" if what else ""
    return DataPlaneError(f"{call}{detail}: {name}: {os.strerror(err)}")


def _check(call: str, rc: int, what: str = "") -> int:
    if rc < 0:
        raise _fail(call, rc, what)
    return rc


def _ptr(buf: Buffer | None) -> int | None:
    if buf is None:
        return None
    if isinstance(buf, np.ndarray):
        if not buf.flags.c_contiguous:
            raise ValueError("numpy buffer must be C-contiguous")
        return int(buf.ctypes.data)
    if isinstance(buf, bytearray):
        return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
    if isinstance(buf, bytes):
        return ctypes.cast(ctypes.c_char_p(buf), _vp).value
    raise TypeError(f"unsupported buffer type {type(buf).__name__}")


def num_possible_cpus() -> int:
    return _check("libbpf_num_possible_cpus", lib().so.libbpf_num_possible_cpus())


# ---- objects -----------------------------------------------------------------------


class BpfObject:
    """An opened (then loaded) BPF ELF object; ``close()`` releases libbpf's copy.

    Closing does not unload anything pinned or attached: pins and links hold their
    own references in the kernel.
    """

    def __init__(self, path: str) -> None:
        self._l = lib()
        ptr = self._l.so.bpf_object__open_file(path.encode(), None)
        if not ptr:
            raise _fail("bpf_object__open_file", ctypes.get_errno(), path)
        self._ptr: int | None = ptr
        self.path = path

    def _handle(self) -> int:
        if self._ptr is None:
            raise DataPlaneError(f"{self.path}: BPF object already closed")
        return self._ptr

    def map_names(self) -> list[str]:
        names, m = [], self._l.so.bpf_object__next_map(self._handle(), None)
        while m:
            names.append(self._l.so.bpf_map__name(m).decode())
            m = self._l.so.bpf_object__next_map(self._handle(), m)
        return names

    def _map(self, name: str) -> int:
        m = self._l.so.bpf_object__find_map_by_name(self._handle(), name.encode())
        if not m:
            raise DataPlaneError(f"{self.path}: no map named {name!r}")
        return int(m)

    def set_pin_path(self, map_name: str, path: str) -> None:
        """Pin ``map_name`` at ``path`` on load, or reuse the map already pinned there."""
        _check("bpf_map__set_pin_path", self._l.so.bpf_map__set_pin_path(self._map(map_name), path.encode()), path)

    def load(self) -> None:
        _check("bpf_object__load", self._l.so.bpf_object__load(self._handle()), self.path)

    def map_fd(self, name: str) -> int:
        return _check("bpf_map__fd", self._l.so.bpf_map__fd(self._map(name)), name)

    def program_fd(self, name: str) -> int:
        p = self._l.so.bpf_object__find_program_by_name(self._handle(), name.encode())
        if not p:
            raise DataPlaneError(f"{self.path}: no program named {name!r}")
        return _check("bpf_program__fd", self._l.so.bpf_program__fd(p), name)

    def close(self) -> None:
        if self._ptr is not None:
            self._l.so.bpf_object__close(self._ptr)
            self._ptr = None


# ---- pins and links ----------------------------------------------------------------


def obj_pin(fd: int, path: str) -> None:
    _check("bpf_obj_pin", lib().so.bpf_obj_pin(fd, path.encode()), path)


def obj_get(path: str) -> int:
    """File descriptor of a pinned object (raises with ENOENT if absent)."""
    return _check("bpf_obj_get", lib().so.bpf_obj_get(path.encode()), path)


def link_create_xdp(prog_fd: int, ifindex: int, flags: int) -> int:
    opts = _LinkCreateOpts(sz=ctypes.sizeof(_LinkCreateOpts), flags=flags)
    return _check(
        "bpf_link_create", lib().so.bpf_link_create(prog_fd, ifindex, BPF_XDP, ctypes.byref(opts)), f"ifindex {ifindex}"
    )


def link_update(link_fd: int, prog_fd: int) -> None:
    opts = _LinkUpdateOpts(sz=ctypes.sizeof(_LinkUpdateOpts))
    _check("bpf_link_update", lib().so.bpf_link_update(link_fd, prog_fd, ctypes.byref(opts)))


def link_detach(link_fd: int) -> None:
    _check("bpf_link_detach", lib().so.bpf_link_detach(link_fd))


def xdp_query(ifindex: int) -> tuple[int, int]:
    """(attach mode XDP_ATTACHED_*, attached program id) of an interface."""
    opts = _XdpQueryOpts(sz=ctypes.sizeof(_XdpQueryOpts))
    _check("bpf_xdp_query", lib().so.bpf_xdp_query(ifindex, 0, ctypes.byref(opts)), f"ifindex {ifindex}")
    return int(opts.attach_mode), int(opts.prog_id)


def prog_get_fd_by_id(prog_id: int) -> int:
    return _check("bpf_prog_get_fd_by_id", lib().so.bpf_prog_get_fd_by_id(prog_id), f"id {prog_id}")


def map_get_fd_by_id(map_id: int) -> int:
    return _check("bpf_map_get_fd_by_id", lib().so.bpf_map_get_fd_by_id(map_id), f"id {map_id}")


@dataclass(frozen=True)
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    map_flags: int
    name: str


def map_info(fd: int) -> MapInfo:
    info = _MapInfo()
    n = _u32(ctypes.sizeof(info))
    _check("bpf_obj_get_info_by_fd", lib().so.bpf_obj_get_info_by_fd(fd, ctypes.addressof(info), ctypes.byref(n)))
    return MapInfo(
        int(info.type),
        int(info.id),
        int(info.key_size),
        int(info.value_size),
        int(info.max_entries),
        int(info.map_flags),
        info.name.decode(),
    )


# ---- map elements ------------------------------------------------------------------


def map_update(fd: int, key: Buffer, value: Buffer, flags: int = BPF_ANY) -> None:
    _check("bpf_map_update_elem", lib().so.bpf_map_update_elem(fd, _ptr(key), _ptr(value), flags))


def map_lookup(fd: int, key: Buffer, value: Buffer) -> bool:
    """Fill ``value``; False when the key is absent."""
    rc = lib().so.bpf_map_lookup_elem(fd, _ptr(key), _ptr(value))
    if rc == -errno_mod.ENOENT:
        return False
    _check("bpf_map_lookup_elem", rc)
    return True


def map_delete(fd: int, key: Buffer) -> bool:
    """False when the key was absent."""
    rc = lib().so.bpf_map_delete_elem(fd, _ptr(key))
    if rc == -errno_mod.ENOENT:
        return False
    _check("bpf_map_delete_elem", rc)
    return True


def map_next_key(fd: int, key: Buffer | None, next_key: Buffer) -> bool:
    """Fill ``next_key`` with the key after ``key`` (first key if None); False at the end."""
    rc = lib().so.bpf_map_get_next_key(fd, _ptr(key), _ptr(next_key))
    if rc == -errno_mod.ENOENT:
        return False
    _check("bpf_map_get_next_key", rc)
    return True


def map_lookup_batch(
    fd: int, in_batch: Buffer | None, out_batch: Buffer, keys: Buffer, values: Buffer, count: int
) -> tuple[int, bool]:
    """One BPF_MAP_LOOKUP_BATCH call: (elements returned, whole map done).

    ``in_batch`` None starts from the beginning; ``out_batch`` receives the cursor to
    pass as ``in_batch`` next time.  Raises DataPlaneError with EINVAL/EOPNOTSUPP
    where the map type has no batch support (callers fall back to iteration) and
    ENOSPC when a hash bucket holds more than ``count`` entries.
    """
    n = _u32(count)
    opts = _BatchOpts(sz=ctypes.sizeof(_BatchOpts))
    rc = lib().so.bpf_map_lookup_batch(
        fd, _ptr(in_batch), _ptr(out_batch), _ptr(keys), _ptr(values), ctypes.byref(n), ctypes.byref(opts)
    )
    if rc == -errno_mod.ENOENT:
        return int(n.value), True
    _check("bpf_map_lookup_batch", rc)
    return int(n.value), False


# ---- test runs ---------------------------------------------------------------------


@dataclass(frozen=True)
class TestRun:
    retval: int
    duration_ns: int  # mean per repetition, as the kernel reports it
    data_out: bytes


def prog_test_run_xdp(prog_fd: int, data: bytes, repeat: int = 1, ingress_ifindex: int = 0) -> TestRun:
    """Run an XDP program on ``data`` ``repeat`` times in the kernel (BPF_PROG_TEST_RUN)."""
    out = ctypes.create_string_buffer(max(len(data), 64) + 512)
    ctx = _XdpMd(data=0, data_end=len(data), ingress_ifindex=ingress_ifindex)
    inbuf = ctypes.create_string_buffer(data, len(data))
    opts = _TestRunOpts(
        sz=ctypes.sizeof(_TestRunOpts),
        data_in=ctypes.addressof(inbuf),
        data_size_in=len(data),
        data_out=ctypes.addressof(out),
        data_size_out=len(out),
        ctx_in=ctypes.addressof(ctx),
        ctx_size_in=ctypes.sizeof(ctx),
        repeat=max(1, repeat),
    )
    _check("bpf_prog_test_run_opts", lib().so.bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)))
    return TestRun(int(opts.retval), int(opts.duration), out.raw[: opts.data_size_out])


# ---- ring buffer -------------------------------------------------------------------


class RingBuffer:
    """A BPF ring buffer drained by :meth:`consume`, which returns the raw records."""

    def __init__(self, map_fd: int) -> None:
        self._l = lib()
        self._records: list[bytes] = []
        records = self._records
        string_at = ctypes.string_at

        def on_record(_ctx: int | None, data: int | None, size: int) -> int:
            records.append(string_at(data, size))  # type: ignore[arg-type]
            return 0

        self._cb = _SAMPLE_FN(on_record)
        ptr = self._l.so.ring_buffer__new(map_fd, self._cb, None, None)
        if not ptr:
            raise _fail("ring_buffer__new", ctypes.get_errno())
        self._ptr: int | None = ptr

    def consume(self) -> list[bytes]:
        if self._ptr is None:
            raise DataPlaneError("ring buffer already closed")
        _check("ring_buffer__consume", self._l.so.ring_buffer__consume(self._ptr))
        out = self._records[:]
        self._records.clear()
        return out

    def close(self) -> None:
        if self._ptr is not None:
            self._l.so.ring_buffer__free(self._ptr)
            self._ptr = None
