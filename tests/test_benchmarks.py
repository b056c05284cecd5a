"""The benchmark scripts still run (at their --quick sizes) and write their JSON."""
import json
import pathlib
import subprocess
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("script, extra", [("bench_polysemantic.py", ["--no-torch"]),
                                           ("bench_sparsify.py", ["--repeats", "1"]),
                                           ("bench_noise.py", ["--no-torch", "--repeats", "1"]),
                                           ("bench_optim.py", ["--no-torch"]),
                                           ("bench_sparse_phase.py", ["--repeats", "1", "--no-compile"]),
                                           ("bench_adaptive.py", ["--repeats", "1", "--no-reference"]),
                                           ("study_dt.py", [])])
def test_benchmark_script_quick(script, extra, tmp_path):
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--json", str(out), *extra],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["machine"]["cpu_count"] >= 1
    if script == "bench_polysemantic.py":
        assert data["identical_supports"] is True
        assert data["ratio_numpy_over_flowsim"] > 0  # a speed is measured, not asserted here
    elif script == "bench_sparsify.py":
        assert data["runs"]["euler_dt0.5"]["nnz_vs_baseline"]["differing_times"] == 0
    elif script == "bench_adaptive.py":
        assert data["runs"]["bs32 (rtol=1e-3)"]["phases"][-1]["status"] == "converged"
    elif script == "study_dt.py":
        assert data["summary"]["rk4 dt=0.01"]["differing_runs"] == 0  # the reference against itself
    elif script == "bench_sparse_phase.py":
        assert data["figure3"]["identical_supports"] is True
        assert data["figure3"]["max_abs_diff_final_W"] <= 1e-12
        assert data["fixed_horizon"]["identical_supports"] is True
