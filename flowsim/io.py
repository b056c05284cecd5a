"""Atomic saving and loading of results with the metadata that produced them."""
from __future__ import annotations

import contextlib
import csv
import io as _io
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .trajectory import STAT_NAMES, _jsonable


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return path


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path, obj) -> Path:
    """Write JSON-ready ``obj`` atomically (NumPy scalars/arrays converted)."""
    return atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def write_csv(path, header, rows) -> Path:
    """Write a CSV table atomically. rows: iterable of sequences matching ``header``."""
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow(header)
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def trajectory_rows(traj, extra=None):
    """Long-format table of a Trajectory: one line per (save time, row).

    Parameters
    ----------
    traj : Trajectory
    extra : dict of str -> ndarray (T, n), optional
        More per-row columns (for example a theory curve).

    Returns
    -------
    header : list of str
    rows : list of list
    """
    extra = extra or {}
    header = ["t", "row", *STAT_NAMES, *extra]
    rows = []
    T, n = traj.l1.shape
    for k in range(T):
        for i in range(n):
            line = [repr(float(traj.t[k])), i]
            for name in STAT_NAMES:
                v = traj.stat(name)[k, i]
                line.append(int(v) if name == "nnz" else repr(float(v)))
            line.extend(repr(float(col[k, i])) for col in extra.values())
            rows.append(line)
    return header, rows


def save_weights(path, W) -> Path:
    """Save W (n, m) atomically as a sparse ``.npz`` (rows, cols, values, shape)."""
    rows, cols = np.nonzero(W)
    buf = _io.BytesIO()
    np.savez_compressed(buf, rows=rows.astype(np.int64), cols=cols.astype(np.int64),
                        values=W[rows, cols], shape=np.array(W.shape, dtype=np.int64))
    return atomic_write_bytes(path, buf.getvalue())


def load_weights(path) -> np.ndarray:
    """Load a matrix written by :func:`save_weights`. Returns ndarray (n, m)."""
    with np.load(path) as z:
        W = np.zeros(tuple(z["shape"]))
        W[z["rows"], z["cols"]] = z["values"]
    return W


def save_trajectory(traj, directory, stem, *, extra_columns=None, extra_metadata=None):
    """Write ``<stem>.csv``, ``<stem>.json`` and ``<stem>_W.npz`` atomically.

    Returns
    -------
    dict of str -> Path
    """
    directory = Path(directory)
    header, rows = trajectory_rows(traj, extra_columns)
    paths = {"csv": write_csv(directory / f"{stem}.csv", header, rows)}
    paths["weights"] = save_weights(directory / f"{stem}_W.npz", traj.W)
    meta = traj.metadata()
    meta.update(extra_metadata or {})
    meta["files"] = {k: p.name for k, p in paths.items()}
    paths["json"] = write_json(directory / f"{stem}.json", meta)
    return paths

