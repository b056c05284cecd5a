"""Atomic writes and round trips of saved results."""
import csv
import json
import os

import numpy as np
import pytest

import flowsim
from flowsim import io


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    io.atomic_write_text(path, "old\n")
    io.atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n"

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        io.atomic_write_text(path, "partial")
    assert path.read_text() == "new\n" and os.listdir(tmp_path) == ["f.txt"]


def test_weights_round_trip_exactly(tmp_path):
    rng = np.random.default_rng(0)
    W = rng.standard_normal((4, 50))
    W[rng.random(W.shape) < 0.7] = 0.0
    io.save_weights(tmp_path / "w.npz", W)
    assert np.array_equal(io.load_weights(tmp_path / "w.npz"), W)


def test_saved_trajectory_matches_the_result(tmp_path):
    model = flowsim.Model(n=2, m=40, lam=0.01, seed=3)
    tr = flowsim.simulate(model, 5.0, method="heun", dt=0.1)
    paths = io.save_trajectory(tr, tmp_path, "run", extra_metadata={"note": "x"})
    rows = list(csv.DictReader(open(paths["csv"])))
    assert len(rows) == tr.t.size * 2
    got = np.array([float(r["l1"]) for r in rows]).reshape(tr.l1.shape)
    assert np.array_equal(got, tr.l1)  # repr round-trips floats exactly
    meta = json.loads(paths["json"].read_text())
    assert meta["model"] == json.loads(json.dumps(model.as_dict()))
    assert meta["method"] == "heun" and meta["dt"] == 0.1 and meta["note"] == "x"
    assert np.array_equal(io.load_weights(paths["weights"]), tr.W)
