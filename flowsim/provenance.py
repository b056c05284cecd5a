"""What produced a result: library versions, BLAS and its threads, platform, git commit.

:func:`environment` is recorded in the metadata of every result (``Trajectory.metadata``,
the experiment commands' JSON), together with the parameters, seed, method and options.
"""
from __future__ import annotations

import functools
import hashlib
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

from ._version import __version__

#: Version of the layout of flowsim's JSON files (bumped when a field changes meaning).
FORMAT_VERSION = 2


def weights_digest(W) -> str:
    """SHA-256 of the bytes of W as a C-ordered float64 array (hex)."""
    return hashlib.sha256(np.ascontiguousarray(W, dtype=np.float64).tobytes()).hexdigest()


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the flowsim checkout this package runs from (None if not a checkout),
    with ``+dirty`` when tracked files differ from it."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def _blas():
    try:
        from threadpoolctl import threadpool_info

        pools = [
            {"library": p.get("internal_api"), "version": p.get("version"),
             "threads": p.get("num_threads"), "architecture": p.get("architecture")}
            for p in threadpool_info() if p.get("user_api") == "blas"
        ]
        if pools:
            return pools
    except Exception:  # noqa: BLE001 - provenance must never break a run
        pass
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return [{"library": blas.get("name"), "version": blas.get("version"), "threads": None}]
    except Exception:  # noqa: BLE001
        return []


def environment() -> dict:
    """Versions of flowsim, Python, numpy, scipy, numba; BLAS; platform; git commit."""
    import numba
    import scipy

    return {
        "flowsim_version": __version__,
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "numba": numba.__version__,
        "blas": _blas(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }
