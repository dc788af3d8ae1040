"""Compile the XDP program and export its BTF.

``build()`` turns ``bpf/shield.bpf.c`` into ``bpf/shield.bpf.o`` with clang and dumps
the object's BTF to ``bpf/shield.btf.json`` with bpftool (both gitignored), which
:mod:`ddos_shield.dataplane.abi` reads.  It rebuilds only when the source or the header
is newer than the object.

Example::

    >>> from ddos_shield.dataplane.build import build
    >>> build().name
    'shield.bpf.o'
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

from ddos_shield.errors import DataPlaneError

BPF_DIR = pathlib.Path(__file__).resolve().parent / "bpf"
SOURCE = BPF_DIR / "shield.bpf.c"
HEADER = BPF_DIR / "shield.h"
OBJECT = BPF_DIR / "shield.bpf.o"
BTF_JSON = BPF_DIR / "shield.btf.json"


def _multiarch_include() -> list[str]:
    """The directory holding <asm/...> on Debian (not on clang's default path for BPF)."""
    for cmd in (["gcc", "-print-multiarch"], ["dpkg-architecture", "-qDEB_HOST_MULTIARCH"]):
        if shutil.which(cmd[0]) is None:
            continue
        out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
        if out and os.path.isdir(f"/usr/include/{out}"):
            return [f"-I/usr/include/{out}"]
    return []


def _run(cmd: list[str], what: str) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise DataPlaneError(f"{what}: {cmd[0]} not found (install clang and bpftool)") from e
    if proc.returncode != 0:
        raise DataPlaneError(f"{what} failed ({' '.join(cmd)}):\n{proc.stderr.strip()}")
    return proc


def _stale(target: pathlib.Path) -> bool:
    if not target.exists():
        return True
    newest = max(SOURCE.stat().st_mtime_ns, HEADER.stat().st_mtime_ns)
    return target.stat().st_mtime_ns < newest


def build(force: bool = False) -> pathlib.Path:
    """Compile ``shield.bpf.c`` (if stale or ``force``) and return the object's path.

    Raises :class:`DataPlaneError` carrying clang's (or bpftool's) stderr on failure.
    """
    if force or _stale(OBJECT) or _stale(BTF_JSON):
        # Write beside the final names and rename, so that a concurrent reader (two
        # test processes, or a build while the shield starts) never sees half a file.
        tmp_obj = OBJECT.with_suffix(f".o.{os.getpid()}.tmp")
        tmp_json = BTF_JSON.with_suffix(f".json.{os.getpid()}.tmp")
        try:
            _run(
                [
                    "clang",
                    "-O2",
                    "-g",
                    "-target",
                    "bpf",
                    "-Wall",
                    *_multiarch_include(),
                    "-I",
                    str(BPF_DIR),
                    "-c",
                    str(SOURCE),
                    "-o",
                    str(tmp_obj),
                ],
                "clang",
            )
            dump = _run(["bpftool", "btf", "dump", "file", str(tmp_obj), "format", "raw", "-j"], "bpftool btf dump")
            tmp_json.write_text(dump.stdout)
            os.replace(tmp_obj, OBJECT)
            os.replace(tmp_json, BTF_JSON)
        finally:
            for t in (tmp_obj, tmp_json):
                t.unlink(missing_ok=True)
    return OBJECT
