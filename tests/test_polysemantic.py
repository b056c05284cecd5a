"""Tests of flowsim.polysemantic (Figure 3): convergence bookkeeping, the result itself at a
small size, and the command as a user runs it (subprocesses)."""
import csv
import dataclasses
import inspect
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from flowsim import polysemantic
from flowsim.plotting import figure3, figure3_collisions
from flowsim.polysemantic import parser, per_m_table, run_one
from flowsim.sweep import run_sweep

TIMING = {"run_seconds", "compile_seconds", "wall_seconds"}
SMALL = ["--n", "12", "--m", "24", "48", "--seeds", "2", "--lam", "0.02", "--method", "euler", "--dt", "0.1"]
# the paper's settings (the CLI defaults) at n = 64
FIG3 = dict(n=64, lam=0.01, c=1.0, method="euler", dt=0.1, t_max=1e4, tol=1e-6, window=50.0,
            threshold=0.5, sparse_below=0.15)


def run(*args):
    return subprocess.run([sys.executable, "-m", "flowsim.polysemantic", *args],
                          capture_output=True, text=True, timeout=600)


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def read_strict_json(path):
    def reject(name):
        raise AssertionError(f"bare {name} in {path}")

    return json.loads(path.read_text(), parse_constant=reject)


def comparable(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


# ---------------------------------------------------------------- the result itself

def test_figure3_small_size_mean_within_band_of_theory():
    """n = 64, m = 256 and 1024, seeds 0-7: every run converges and the mean count of
    polysemantic neurons is within 3 standard errors (seed-to-seed std / √8) plus a model
    allowance of 25 % of n²/(4m) of the paper's n²/(4m).

    Measured (flowsim 0.1.0): m = 256: 4.00 (std 1.07), theory 4; m = 1024: 1.25 (std 1.16),
    theory 1. The allowance is the formula's own error at this size, measured over 64 seeds:
    m = 256: 3.41 ± 0.19 (−15 %, collisions beyond pairs and benign collisions that end with
    neither feature above the threshold); m = 1024: 1.06 ± 0.13. Halving dt (0.05) gives the
    same count on every run of m = 256 (checked below), so the count is a property of the
    flow, not of the step.
    """
    for m in (256, 1024):
        out = [run_one(dict(FIG3, m=m, seed=s)) for s in range(8)]
        assert {r["status"] for r in out} == {"converged"}
        assert all(0 < r["t_converged"] <= r["t_end"] < FIG3["t_max"] for r in out)
        y = np.array([r["polysemantic"] for r in out], dtype=float)
        theory = 64**2 / (4 * m)
        band = 3 * y.std(ddof=1) / math.sqrt(y.size) + 0.25 * theory
        print(f"m={m}: mean {y.mean():.2f}, std {y.std(ddof=1):.2f}, n²/4m {theory:.2f}, "
              f"band ±{band:.2f}")
        assert abs(y.mean() - theory) <= band
        if m == 256:
            half = [run_one(dict(FIG3, m=m, seed=s, dt=0.05))["polysemantic"] for s in range(8)]
            assert half == y.astype(int).tolist()


# ---------------------------------------------------------------- convergence bookkeeping

def test_run_that_hits_t_max_is_not_converged():
    params = dict(n=12, m=24, lam=0.02, c=1.0, seed=0, method="euler", dt=0.1, t_max=20.0,
                  tol=1e-6, window=50.0, threshold=0.5, sparse_below=0.15)
    out = run_one(params)
    assert out["status"] == "not converged" and math.isnan(out["t_converged"])
    assert out["t_end"] == pytest.approx(20.0)
    done = run_one(dict(params, t_max=5000.0))
    assert done["status"] == "converged" and 0 < done["t_converged"] <= done["t_end"] < 5000


def test_interrupted_run_is_not_a_result(monkeypatch):
    real = polysemantic.simulate

    def interrupted(*args, **kwargs):
        traj = real(*args, **kwargs)
        return dataclasses.replace(traj, stats=dataclasses.replace(traj.stats, status="interrupted"))

    monkeypatch.setattr(polysemantic, "simulate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_one(dict(FIG3, n=12, m=24, seed=0, t_max=10.0))


def rows_with_one_unconverged():
    rows = [dict(key=f"k{m}_{s}", m=m, status="converged", polysemantic=p, benign=p + 1)
            for m, s, p in [(24, 0, 2), (24, 1, 4), (48, 0, 1), (48, 1, 3)]]
    rows.append(dict(key="k24_2", m=24, status="not converged", polysemantic=9, benign=9))
    rows.append(dict(key="k96_0", m=96, status="not converged", polysemantic=5, benign=1))
    return rows


def test_per_m_table_counts_unconverged_runs_apart():
    table = per_m_table(rows_with_one_unconverged(), n=12)
    assert [(t["m"], t["runs"], t["converged"], t["not_converged"]) for t in table] == [
        (24, 3, 2, 1), (48, 2, 2, 0), (96, 1, 0, 1)]
    assert table[0]["mean"] == 3.0 and table[0]["std"] == pytest.approx(math.sqrt(2))
    assert table[0]["benign_mean"] == 4.0          # the unconverged 9 is left out
    assert math.isnan(table[2]["mean"]) and math.isnan(table[2]["std"])


def test_figures_show_unconverged_runs_apart():
    rows = rows_with_one_unconverged()
    for fig in (figure3(per_m_table(rows, 12), rows, 12), figure3_collisions(rows)):
        ax = fig.axes[0]
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert any(label.startswith("not converged (2 runs") for label in labels), labels
        hollow = [c for c in ax.collections if c.get_label().startswith("not converged")]
        assert len(hollow) == 1 and len(hollow[0].get_offsets()) == 2
        assert hollow[0].get_facecolor().size == 0          # drawn hollow


# ---------------------------------------------------------------- the command

def test_resume_default_is_the_same_in_cli_and_library():
    default = inspect.signature(run_sweep).parameters["resume"].default
    assert default is True and parser().parse_args([]).resume is default
    assert parser().parse_args(["--no-resume"]).resume is False
    assert parser().parse_args(["--resume"]).resume is True


def test_polysemantic_serial_resume_and_rerun(tmp_path):
    out = tmp_path / "out"
    r = run(*SMALL, "--quiet", "--executor", "serial", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "did not converge" not in r.stderr
    rows = read_csv(out / "polysemantic.csv")
    assert len(rows) == 4
    assert {r["status"] for r in rows} == {"converged"}
    meta = read_strict_json(out / "polysemantic.json")
    assert meta["format_version"] == polysemantic.JSON_FORMAT_VERSION
    assert [t["m"] for t in meta["per_m"]] == [24, 48] and meta["converged"] == 4
    m24 = [float(r["polysemantic"]) for r in rows if r["m"] == "24"]
    assert meta["per_m"][0]["mean"] == pytest.approx(np.mean(m24))
    assert (out / "figure3_polysemantic.png").exists() and (out / "figure3_collisions.png").exists()
    # an interrupted sweep: one stored run is missing; only that one runs
    (out / "polysemantic_runs" / "n12_m48_seed1.json").unlink()
    r = run(*SMALL, "--quiet", "--executor", "serial", "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    meta = read_strict_json(out / "polysemantic.json")
    assert meta["skipped"] == 3 and meta["finished"] == 4 and meta["rerun"] == {}
    assert comparable(read_csv(out / "polysemantic.csv")) == comparable(rows)
    # another dt: every stored run was made otherwise, so all run again, and it says so
    r = run(*SMALL, "--dt", "0.05", "--executor", "serial", "--out", str(out), "--no-plot")
    assert r.returncode == 0, r.stderr
    assert "(0 stored runs reused, 4 stored runs re-run" in r.stdout
    meta = read_strict_json(out / "polysemantic.json")
    assert meta["skipped"] == 0 and meta["parameters"]["dt"] == 0.05
    assert meta["rerun"]["n12_m24_seed0"] == "dt: stored 0.1, now 0.05"
    assert len(meta["rerun"]) == 4


def test_default_flow_is_bs32_at_its_default_tolerance(tmp_path):
    """The Figure 3 default (issue 10): bs32 at rtol 1e-3, atol 1e-6, no dt."""
    r = run("--n", "12", "--m", "24", "--seeds", "1", "--lam", "0.02", "--executor", "serial", "--no-plot",
            "--quiet", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    row = read_csv(tmp_path / "polysemantic.csv")[0]
    assert row["method"] == "bs32" and float(row["rtol"]) == 1e-3 and float(row["atol"]) == 1e-6
    assert row["dt"] == "" and row["status"] == "converged"


def test_polysemantic_warns_about_unconverged_runs(tmp_path):
    r = run(*SMALL, "--t-max", "20", "--quiet", "--executor", "serial", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if "did not converge" in ln]
    assert len(warnings) == 1 and "warning: 4 of 4 runs did not converge by t_max=20" in warnings[0]
    rows = read_csv(tmp_path / "polysemantic.csv")
    assert {r["status"] for r in rows} == {"not converged"} and {r["t_converged"] for r in rows} == {""}
    assert {float(r["t_end"]) for r in rows} == {20.0}
    meta = read_strict_json(tmp_path / "polysemantic.json")     # NaN is written as null
    assert meta["not_converged"] == 4 and meta["converged"] == 0
    assert [(t["converged"], t["mean"]) for t in meta["per_m"]] == [(0, None), (0, None)]


def test_polysemantic_on_dask_matches_local(tmp_path):
    """A small sweep on a real Dask LocalCluster gives the same CSV as the local pool."""
    pytest.importorskip("distributed")
    results = {}
    for ex in ("local", "dask"):
        out = tmp_path / ex
        r = run(*SMALL, "--quiet", "--executor", ex, "--workers", "2", "--out", str(out), "--no-plot")
        assert r.returncode == 0, r.stderr
        results[ex] = comparable(read_csv(out / "polysemantic.csv"))
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
        (["--rtol", "2"], "--rtol=2.0"),
        (["--atol", "0"], "--atol=0.0"),
        (["--method", "euler", "--rtol", "1e-3"], "--rtol=0.001"),
    ],
)
def test_polysemantic_bad_arguments(args, name, tmp_path):
    r = run(*args, "--out", str(tmp_path), "--quiet")
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if "warning" not in ln]
    assert len(lines) == 1 and name in lines[0], r.stderr


# ---------------------------------------------------------------- discrete optimizers (issue 12)

OPT = ["--n", "12", "--m", "24", "48", "--seeds", "2", "--steps", "300", "--lr", "0.01", "--l1", "0.01"]


def test_paper_sets_the_published_procedure():
    args = parser().parse_args(["--paper"])
    specs = polysemantic.specs_from_args(args)
    assert args.optimizer == "adamw" and args.count == "window" and args.seeds == 16
    assert len(specs) == 256 and {s.params["m"] for s in specs} == set(range(256, 4097, 256))
    p = specs[0].params
    assert p == dict(n=256, m=256, seed=0, optimizer="adamw", steps=7500, l1=1e-3, c=4.0, threshold=0.5,
                     lr=1e-3, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.01)
    both = polysemantic.specs_from_args(parser().parse_args(["--paper", "--compare", "--m", "512"]))
    assert [s.key for s in both[:2]] == ["n256_m512_seed0", "n256_m512_seed1"]
    assert both[16].key == "n256_m512_seed0_adamw" and "optimizer" not in both[0].params


def test_optimizer_run_is_train_on_the_same_initial_weights():
    from flowsim import Model
    from flowsim.metrics import count_polysemantic
    from flowsim.optim import Optimizer, train

    params = dict(n=12, m=24, seed=1, optimizer="adamw", steps=300, l1=0.01, c=4.0, threshold=0.5,
                  **polysemantic.optimizer_params("adamw", lr=0.01))
    assert params["betas"] == [0.9, 0.999] and params["weight_decay"] == 0.01
    out = run_one(params)
    model = Model(n=12, m=24, lam=0.01, c=4.0, seed=1)
    W = train(model, Optimizer("adamw", lr=0.01), 300, save_at=[]).W[0]
    assert out["status"] == "completed" and out["steps"] == 300 and out["t_end"] == pytest.approx(3.0)
    assert out["polysemantic_window"] == count_polysemantic(W, window=(0.8, 1.2))
    assert out["polysemantic"] == count_polysemantic(W, threshold=0.5)
    flow = run_one(dict(FIG3, n=12, m=24, seed=1, lam=0.02))
    assert flow["w0_sha256"] == out["w0_sha256"]


def test_optimizer_sweep_serial_and_resume(tmp_path):
    r = run(*OPT, "--optimizer", "adamw", "--quiet", "--executor", "serial", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    rows = read_csv(tmp_path / "polysemantic_adamw.csv")
    assert len(rows) == 4 and {x["status"] for x in rows} == {"completed"}
    assert {x["steps"] for x in rows} == {"300"} and {x["lr"] for x in rows} == {"0.01"}
    meta = read_strict_json(tmp_path / "polysemantic_adamw.json")
    assert meta["parameters"]["optimizer"] == "adamw" and meta["parameters"]["weight_decay"] == 0.01
    assert [t["m"] for t in meta["per_m"]] == [24, 48] and meta["count"] == "threshold"
    assert (tmp_path / "figure3_polysemantic_adamw.png").exists()
    assert not (tmp_path / "polysemantic.csv").exists()            # the flow's outputs are left alone
    r = run(*OPT, "--optimizer", "adamw", "--quiet", "--executor", "serial", "--out", str(tmp_path))
    meta = read_strict_json(tmp_path / "polysemantic_adamw.json")
    assert r.returncode == 0 and meta["skipped"] == 4 and meta["rerun"] == {}
    assert comparable(read_csv(tmp_path / "polysemantic_adamw.csv")) == comparable(rows)
    r = run(*OPT[:-4], "--lr", "0.02", "--l1", "0.01", "--optimizer", "adamw", "--quiet",
            "--executor", "serial", "--out", str(tmp_path), "--no-plot")
    meta = read_strict_json(tmp_path / "polysemantic_adamw.json")
    assert r.returncode == 0 and meta["rerun"]["n12_m24_seed0_adamw"] == "lr: stored 0.01, now 0.02"


def test_compare_pairs_flow_and_optimizer_on_the_same_initial_weights(tmp_path):
    r = run(*OPT, "--compare", "--optimizer", "adamw", "--lam", "0.02", "--count", "window",
            "--executor", "serial", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "flow   adamw" in r.stdout
    pairs = read_csv(tmp_path / "flow_vs_adamw.csv")
    assert len(pairs) == 4 and {p["same_w0"] for p in pairs} == {"True"}
    runs = {rec.stem: json.loads(rec.read_text())["result"]
            for rec in (tmp_path / "polysemantic_runs").glob("*.json")}
    for p in pairs:
        flow, opt = runs[f"n12_m{p['m']}_seed{p['seed']}"], runs[f"n12_m{p['m']}_seed{p['seed']}_adamw"]
        assert int(p["flow"]) == flow["polysemantic_window"] and int(p["adamw"]) == opt["polysemantic_window"]
        assert int(p["diff"]) == opt["polysemantic_window"] - flow["polysemantic_window"]
    meta = read_strict_json(tmp_path / "flow_vs_adamw.json")
    assert meta["pairs"] == 4 and meta["same_initial_weights"] == 4 and meta["count"] == "window"
    assert meta["flow_parameters"]["lam"] == 0.02 and meta["optimizer_parameters"]["l1"] == 0.01
    m24 = [p for p in pairs if p["m"] == "24"]
    t24 = meta["per_m"][0]
    assert t24["m"] == 24 and t24["mean"] == pytest.approx(np.mean([float(p["adamw"]) for p in m24]))
    assert t24["flow_mean"] == pytest.approx(np.mean([float(p["flow"]) for p in m24]))
    for name in ("figure3_flow_vs_adamw.png", "figure3_flow_vs_adamw_runs.png"):
        assert (tmp_path / name).exists()


@pytest.mark.parametrize(
    "args, name",
    [
        (["--optimizer", "adamw", "--lr", "0"], "--lr=0.0"),
        (["--optimizer", "adam", "--betas", "1", "0.9"], "--betas=(1.0, 0.9)"),
        (["--optimizer", "adamw", "--weight-decay", "-1"], "--weight-decay=-1.0"),
        (["--optimizer", "sgd", "--steps", "0"], "--steps=0"),
        (["--optimizer", "adamw", "--l1", "-1"], "--l1=-1.0"),
        (["--optimizer", "adamw", "--momentum", "0.5"], "--momentum=0.5"),
        (["--lr", "0.1"], "--lr=0.1"),
        (["--optimizer", "adamw", "--dt", "0.1"], "--dt=0.1"),
        (["--compare"], "--compare=True"),
        (["--paper", "--c", "4"], "--c=4.0"),
    ],
)
def test_optimizer_bad_arguments(args, name, tmp_path):
    r = run(*args, "--out", str(tmp_path), "--quiet")
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if "warning" not in ln]
    assert len(lines) == 1 and name in lines[0], r.stderr
