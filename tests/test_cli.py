"""The experiment commands, run as a user runs them (subprocesses)."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from flowsim.io import load_weights


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
    assert "l1_reduced" in rows[0] and "l1_theory" in rows[0]
    assert meta["format_version"] >= 2 and meta["options"]["W0"] == {"source": "seed", "seed": 0}
    assert "NaN" not in (out / "sparsify.json").read_text()


def test_sparsify_published_run_matches_the_exact_solution_as_claimed(tmp_path):
    """The README's claim for the published run (m = 1e5, λ = 1e-5, rk4 at dt = 0.5): m′ = 1
    at t = 159 784 and ‖W‖₁ within 3.9e-4 of the exact reduced solution at every save
    time (5e-4 leaves the margin); the progress bar reaches 100 % on its own line."""
    r = run("flowsim.sparsify", "--m", "100000", "--lam", "1e-5", "--compare", "--no-plot",
            "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "sparsify.json").read_text())["summary"]
    assert s["time_to_nnz_1"] == [159784.0]
    assert s["compare_max_rel_diff_l1"] < 5e-4
    assert abs(s["compare_time_to_nnz_1"][0] - 159783.7) < 0.5
    bar = r.stderr.replace("\r", "\n").splitlines()
    assert any("m'<=1" in ln and "100%" in ln for ln in bar), r.stderr[-500:]
    assert r.stderr.endswith("\n")


def test_sparsify_unwritable_output_folder_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for out in ("/proc/forbidden/dir", str(blocker / "sub")):
        r = run("flowsim.sparsify", "--out", out, "--m", "100")
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and "invalid --out=" in r.stderr and "Traceback" not in r.stderr


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

