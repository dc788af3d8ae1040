"""The learned baselines on disk: one numpy ``.npz`` file in ``shield.state_dir``.

The arrays are those of :meth:`~ddos_shield.detect.baseline.Baselines.state`, with
their ``format_version`` (the format's, not the release's).  The file is written whole
to a temporary file beside it, flushed to disk and renamed over the old one, so a crash
at any moment leaves the old baselines or the new ones.  Reading never unpickles
(``allow_pickle=False``); a file of another format version, or one that is not a
baseline file, is refused with the reason, and the engine starts learning afresh
(keeping the refused file aside).

>>> import tempfile, pathlib
>>> from ddos_shield.config import Baseline as Settings
>>> from ddos_shield.detect.baseline import Baselines
>>> p = pathlib.Path(tempfile.mkdtemp()) / FILE_NAME
>>> save(p, Baselines(Settings()).state())
>>> len(load(p, Settings()))
0
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ddos_shield.config import Baseline as Settings
from ddos_shield.detect.baseline import Baselines
from ddos_shield.errors import ShieldError

FILE_NAME = "baselines.npz"


def save(path: Path, arrays: dict[str, npt.NDArray[Any]]) -> None:
    """Write ``arrays`` atomically (compressed: the daily profiles are mostly zeros)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as f:
            np.savez_compressed(f, **arrays)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ShieldError(f"{path}: cannot write the baselines: {e.strerror or e}") from e


def load(path: Path, settings: Settings) -> Baselines:
    """Read baselines back; raises :class:`~ddos_shield.errors.ShieldError` naming the
    file and what is wrong with it."""
    try:
        # our own handle: np.load leaks its own when the file is not a zip
        with path.open("rb") as f, np.load(f, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ShieldError(f"{path}: not a baseline file: {e}") from e
    try:
        return Baselines.from_state(settings, arrays)
    except (KeyError, ValueError) as e:
        raise ShieldError(f"{path}: {e}") from e
