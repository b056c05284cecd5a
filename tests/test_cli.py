"""The experiment commands, run as a user runs them (subprocesses)."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from flowsim.io import load_weights

TIMING = {"run_seconds", "compile_seconds", "wall_seconds"}


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_sparsify_small_run_writes_consistent_files(tmp_path):
    out = tmp_path / "out"
    r = run("flowsim.sparsify", "--m", "3000", "--lam", "1e-3", "--rows", "2", "--out", str(out), "--compare")
    assert r.returncode == 0, r.stderr
    assert "time to m'=1" in r.stdout
    names = {"figure2_sparsify.png", "figure6_relvar.png", "sparsify.csv", "sparsify.json", "sparsify_W.npz"}
    assert names <= {p.name for p in out.iterdir()}
    for png in ("figure2_sparsify.png", "figure6_relvar.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads((out / "sparsify.json").read_text())
    rows = read_csv(out / "sparsify.csv")
    times = sorted({float(r["t"]) for r in rows})
    assert len(rows) == 2 * len(times) == 2 * meta["saved_times"]
    assert meta["model"]["m"] == 3000 and meta["model"]["lam"] == 1e-3 and meta["model"]["seed"] == 0
    assert meta["model"]["interference"] is False and meta["method"] == "rk4" and meta["dt"] == 0.5
    assert meta["flowsim_version"] and meta["summary"]["status"] == "sparse"
    last = [r for r in rows if float(r["t"]) == times[-1]]
    assert [int(r["nnz"]) for r in last] == [1, 1] == meta["summary"]["final_nnz"]
    np.testing.assert_allclose([float(r["l1"]) for r in last], meta["summary"]["final_l1"], rtol=1e-12)
    W = load_weights(out / "sparsify_W.npz")
    assert W.shape == (2, 3000)
    np.testing.assert_allclose(np.abs(W).sum(axis=1), meta["summary"]["final_l1"], rtol=1e-12)
    # the exact reduced solution overlaid; rk4 at dt=0.5 is close to it
    assert meta["summary"]["compare_max_rel_diff_l1"] < 1e-2
    assert "l1_reduced" in rows[0] and "l1_theory" in rows[0]


def test_sparsify_reduced_method_and_fixed_t_max(tmp_path):
    r = run("flowsim.sparsify", "--m", "5000", "--lam", "1e-3", "--method", "reduced", "--t-max", "100",
            "--no-plot", "--quiet", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    meta = json.loads((tmp_path / "sparsify.json").read_text())
    assert meta["method"] == "reduced" and meta["stats"]["t_end"] == 100.0
    assert not (tmp_path / "figure2_sparsify.png").exists()


@pytest.mark.parametrize(
    "args, name",
    [
        (["--m", "0"], "m=0"),
        (["--lam", "-1"], "lam=-1.0"),
        (["--lam", "nan"], "lam=nan"),
        (["--method", "rk5"], "--method='rk5'"),
        (["--dt", "0"], "dt=0.0"),
        (["--rows", "0"], "n=0"),
        (["--c", "-2"], "c=-2.0"),
        (["--init-std", "0"], "init_std=0.0"),
        (["--lam", "0"], "--lam=0.0"),
        (["--t-max", "-5"], "t_max=-5.0"),
        (["--m", "abc"], "--m: invalid int value"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_sparsify_bad_arguments_exit_2_with_one_line(args, name, tmp_path):
    r = run("flowsim.sparsify", *args, "--out", str(tmp_path), "--quiet")
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if "warning" not in ln]
    assert len(lines) == 1 and name in lines[0], r.stderr
    assert "Traceback" not in r.stderr


SMALL = ["--n", "12", "--m", "24", "48", "--seeds", "2", "--lam", "0.02", "--dt", "0.1", "--quiet"]


def _comparable(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_polysemantic_serial_and_resume(tmp_path):
    out = tmp_path / "out"
    r = run("flowsim.polysemantic", *SMALL, "--executor", "serial", "--out", str(out))
    assert r.returncode == 0, r.stderr
    rows = read_csv(out / "polysemantic.csv")
    assert len(rows) == 4
    assert {r["status"] for r in rows} == {"converged"}
    meta = json.loads((out / "polysemantic.json").read_text())
    assert [t["m"] for t in meta["per_m"]] == [24, 48]
    m24 = [float(r["polysemantic"]) for r in rows if r["m"] == "24"]
    assert meta["per_m"][0]["mean"] == pytest.approx(np.mean(m24))
    assert (out / "figure3_polysemantic.png").exists() and (out / "figure3_collisions.png").exists()
    # an interrupted sweep: one stored run is missing; --resume runs only that one
    (out / "polysemantic_runs" / "n12_m48_seed1.json").unlink()
    r = run("flowsim.polysemantic", *SMALL, "--executor", "serial", "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / "polysemantic.json").read_text())
    assert meta["skipped"] == 3 and meta["finished"] == 4
    assert _comparable(read_csv(out / "polysemantic.csv")) == _comparable(rows)


def test_polysemantic_on_dask_matches_local(tmp_path):
    """A small sweep on a real Dask LocalCluster gives the same CSV as the local pool."""
    pytest.importorskip("distributed")
    results = {}
    for ex in ("local", "dask"):
        out = tmp_path / ex
        r = run("flowsim.polysemantic", *SMALL, "--executor", ex, "--workers", "2", "--out", str(out), "--no-plot")
        assert r.returncode == 0, r.stderr
        results[ex] = _comparable(read_csv(out / "polysemantic.csv"))
    assert results["local"] == results["dask"]


@pytest.mark.parametrize(
    "args, name",
    [
        (["--seeds", "0"], "--seeds=0"),
        (["--method", "RK45"], "--method='RK45'"),
        (["--lam", "0"], "--lam=0.0"),
        (["--m", "0"], "m=0"),
        (["--dt", "-1"], "--dt=-1.0"),
        (["--executor", "cloud"], "invalid choice"),
        (["--scheduler", "tcp://x:1"], "--scheduler"),
        (["--t-max", "-3"], "--t-max=-3.0"),
    ],
)
def test_polysemantic_bad_arguments(args, name, tmp_path):
    r = run("flowsim.polysemantic", *args, "--out", str(tmp_path), "--quiet")
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if "warning" not in ln]
    assert len(lines) == 1 and name in lines[0], r.stderr
