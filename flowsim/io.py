"""Atomic saving and loading of results with the metadata that produced them."""
from __future__ import annotations

import contextlib
import csv
import io as _io
import json
import math
import numbers
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .errors import invalid
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
    return atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n")


def _csv_cell(value):
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return ""
    if isinstance(value, (bool, str)):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))
    return json.dumps(_jsonable(value))


def write_csv(path, rows, columns=None) -> Path:
    """Write a table to a CSV file atomically (the one CSV writer of flowsim).

    Parameters
    ----------
    path : str or path-like
        Output file; its folder is created if missing.
    rows : iterable of dict, or iterable of sequences
        All dicts: one line per dict, a missing cell is empty. All sequences: the cells
        of each line, in the order of ``columns``.
    columns : sequence of str, optional
        The header line. Default for dict rows: the union of their keys in first-seen
        order; for sequence rows: no header line.

    Cells: floats with ``repr`` (exact round trip; ``nan``, ``inf``), None as empty,
    strings and bools as they are, lists and dicts as JSON.
    """
    rows = list(rows)
    if rows and all(isinstance(r, Mapping) for r in rows):
        if columns is None:
            columns = list(dict.fromkeys(k for r in rows for k in r))
        rows = [[r.get(c) for c in columns] for r in rows]
    elif not all(isinstance(r, Sequence) and not isinstance(r, (str, bytes, Mapping)) for r in rows):
        raise invalid("rows", rows, "must be all dicts or all sequences of cells")
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if columns:
        writer.writerow(columns)
    writer.writerows([_csv_cell(v) for v in row] for row in rows)
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
    """Write ``<stem>.csv``, ``<stem>.json`` and ``<stem>_W.npz`` atomically (and
    ``<stem>_snapshots.npz`` when the trajectory has snapshots).

    :func:`load_trajectory` reads them back.

    Returns
    -------
    dict of str -> Path
    """
    directory = Path(directory)
    header, rows = trajectory_rows(traj, extra_columns)
    paths = {"csv": write_csv(directory / f"{stem}.csv", rows, header)}
    paths["weights"] = save_weights(directory / f"{stem}_W.npz", traj.W)
    if traj.snapshots is not None:
        buf = _io.BytesIO()
        np.savez_compressed(buf, t=traj.snapshot_t, W=traj.snapshots)
        paths["snapshots"] = atomic_write_bytes(directory / f"{stem}_snapshots.npz", buf.getvalue())
    meta = traj.metadata()
    meta.update(extra_metadata or {})
    meta["files"] = {k: p.name for k, p in paths.items()}
    paths["json"] = write_json(directory / f"{stem}.json", meta)
    return paths



def load_trajectory(path):
    """Read back a Trajectory written by :func:`save_trajectory` (or an experiment command).

    Parameters
    ----------
    path : str or path-like
        The ``<stem>.json`` file (or its path without the ``.json``).

    Returns
    -------
    Trajectory
        Model, method, dt, options, run stats, per-row statistics at the save times and
        the final W (snapshots too when they were saved); ``simulate(model, t_max,
        W0=traj.W, t0=traj.stats.t_end, ...)`` continues the run.
    """
    import dataclasses

    from .model import Model
    from .trajectory import RunStats, Trajectory

    path = Path(path)
    if path.suffix != ".json":
        path = path.with_name(path.name + ".json")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        files = meta["files"]
        fields = {f.name for f in dataclasses.fields(Model)}
        model = Model(**{k: v for k, v in meta["model"].items() if k in fields})
        stats = {f.name: meta["stats"].get(f.name) for f in dataclasses.fields(RunStats)
                 if f.name in meta["stats"]}
        stats = RunStats(**{k: (math.nan if v is None else v) for k, v in stats.items()})
        with open(path.parent / files["csv"], newline="", encoding="utf-8") as fh:
            table = list(csv.DictReader(fh))
        W = load_weights(path.parent / files["weights"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise invalid("path", str(path), f"must be a trajectory written by flowsim ({exc})") from None
    n = model.n
    t = np.array([float(r["t"]) for r in table[::n]])
    cols = {name: np.array([float(r[name]) for r in table]).reshape(t.size, n) for name in STAT_NAMES}
    cols["nnz"] = cols["nnz"].astype(np.int64)
    snap_t = snaps = None
    if "snapshots" in files:
        with np.load(path.parent / files["snapshots"]) as z:
            snap_t, snaps = z["t"], z["W"]
    return Trajectory(model=model, method=meta["method"], dt=meta["dt"], t=t, W=W, stats=stats,
                      snapshot_t=snap_t, snapshots=snaps, options=meta.get("options", {}), **cols)
