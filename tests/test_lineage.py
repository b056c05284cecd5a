"""Tests of flowsim.lineage: hand-built trajectories with expected values derived by hand,
the interference-free theory (order of |W_ik| preserved), bad input, the command, and
determinism across two fresh interpreters."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from flowsim import metrics
from flowsim.errors import FlowsimInputError
from flowsim.integrate import Stop, simulate
from flowsim.lineage import winner_lineage
from flowsim.model import Model

# Five features, four neurons.
#  f0: W0 leads on neuron 1 (-0.5); ends on neuron 1 (-1.0)          -> kept
#  f1: W0 leads on neuron 1 (+0.45); ends on neuron 1 (+0.9)          -> kept
#      f0, f1 collide on neuron 1 at init with opposite signs: benign; neuron 1 ends
#      polysemantic {0, 1}: incidental, at the same neuron, benign.
#  f2: W0 leads on neuron 2 (0.4), runner-up neuron 3 (0.35); ends on 3 -> not kept, rank 1
#  f3: W0 leads on neuron 3 (-0.6); ends on neuron 3                  -> kept
#      neuron 3 ends polysemantic {2, 3}: initial leaders 2 and 3 -> formed in training.
#  f4: W0 leads on neuron 0; ends with max |W| = 0.3 < 0.5: dead      -> not kept, rank -1
W0 = np.array([[0.10, -0.50, 0.20, 0.05],
               [-0.30, 0.45, 0.00, 0.10],
               [0.05, -0.20, 0.40, 0.35],
               [0.20, 0.10, -0.30, -0.60],
               [0.70, 0.10, 0.00, 0.20]])
W = np.array([[0.0, -1.0, 0.0, 0.0],
              [0.0, 0.9, 0.0, 0.0],
              [0.0, 0.0, 0.0, 0.95],
              [0.0, 0.0, 0.0, -1.0],
              [0.3, 0.0, 0.0, 0.0]])


def test_hand_built_features():
    lin = winner_lineage(W0, W)
    f = lin.features
    assert f.initial.tolist() == [1, 1, 2, 3, 0]
    assert f.final.tolist() == [1, 1, 3, 3, -1]
    assert f.kept.tolist() == [True, True, False, True, False]
    assert f.initial_rank.tolist() == [0, 0, 1, 0, -1]
    assert lin.probability == 3 / 5
    assert lin.dead == 1
    # metrics.lineage agrees on every represented feature (it ignores the threshold)
    alive = f.final >= 0
    assert (metrics.lineage(W0, W)[alive] == f.kept[alive]).all()


def test_hand_built_neurons():
    lin = winner_lineage(W0, W)
    assert [p.neuron for p in lin.neurons] == [1, 3]
    a, b = lin.neurons
    assert (a.features, a.initial_neurons, a.incidental, a.at_same_neuron, a.benign) == \
        ((0, 1), (1, 1), True, True, True)
    assert (b.features, b.initial_neurons, b.incidental, b.at_same_neuron, b.benign) == \
        ((2, 3), (2, 3), False, False, None)
    s = lin.summary()
    assert s == dict(kept=3, probability=0.6, dead=1, rank1=1, rank2plus=0, polysemantic=2,
                     incidental=1, incidental_same_neuron=1, incidental_benign=1, formed=1)
    json.dumps(s)
    # the count of polysemantic neurons is metrics' count
    assert s["polysemantic"] == metrics.count_polysemantic(W)


def test_malign_collision_that_moves_and_rank_two():
    """f0, f1 lead on neuron 0 with the same sign (malign), both end on neuron 2:
    incidental but not at the same neuron, not benign. f2 ends on its third-largest
    initial weight: rank 2."""
    W0 = np.array([[0.9, 0.1, 0.2], [0.8, -0.3, 0.1], [0.5, 0.4, 0.3]])
    W = np.array([[0, 0, 1.0], [0, 0, 0.8], [0, 0, 0.7]])
    lin = winner_lineage(W0, W)
    (p,) = lin.neurons
    assert (p.neuron, p.features, p.initial_neurons) == (2, (0, 1, 2), (0, 0, 0))
    assert p.incidental and not p.at_same_neuron and p.benign is False
    assert lin.features.initial_rank.tolist() == [1, 2, 2]
    assert lin.probability == 0.0
    assert lin.summary()["rank2plus"] == 2


def test_window_rule_changes_what_is_dead():
    # with the window (0.8, 1.2), f2's 0.95 passes, f1's 0.9 passes, the 0.3 row is dead;
    # threshold 0.96 kills f1 (0.9) and f2 (0.95): two dead, neuron 1 and 3 monosemantic
    assert winner_lineage(W0, W, window=(0.8, 1.2)).dead == 1
    lin = winner_lineage(W0, W, threshold=0.96)
    assert lin.dead == 3 and lin.neurons == () and lin.probability == 2 / 5


def test_three_way_group_with_one_stranger_is_formed():
    W0 = np.array([[0.9, 0.0], [0.8, 0.1], [0.1, 0.9]])
    W = np.array([[1.0, 0.0], [0.9, 0.0], [0.9, 0.0]])
    (p,) = winner_lineage(W0, W).neurons
    assert p.features == (0, 1, 2) and not p.incidental and p.benign is None


@pytest.mark.parametrize("args, match", [
    ((W0, W[:, :3]), "W.shape"),
    ((W0[0], W[0]), "ndim"),
    ((W0, np.where(W == 0.9, np.nan, W)), "non-finite"),
    ((W0, W, 0.0), "threshold"),
    ((W0, W, 0.5, (1.2, 0.8)), "window"),
    (("abc", W), "W0"),
])
def test_bad_input_one_line_error(args, match):
    with pytest.raises(FlowsimInputError, match=match) as e:
        winner_lineage(*args)
    assert "\n" not in str(e.value)


def test_without_interference_every_winner_is_the_initial_argmax():
    """Theory: without interference each row's flow is |w|' = a(t)|w| - λ with a common
    a(t), and the proximal Euler step maps |w| to max((1 + h a)|w| - hλ, 0), increasing in
    |w|: the order within a row never changes, so the probability is exactly 1."""
    model = Model(n=16, m=64, lam=0.02, interference=False, seed=3)
    W0 = model.initial_weights()
    tr = simulate(model, 2000.0, method="euler", dt=0.1, W0=W0, save_at=[], stop=Stop(tol=1e-6, window=50.0))
    assert tr.stats.status == "converged"
    lin = winner_lineage(W0, tr.W)
    assert lin.probability == 1.0 and lin.dead == 0
    # with interference (same W0) some feature does change neuron at this seed
    tr2 = simulate(model.replace(interference=True), 2000.0, method="euler", dt=0.1, W0=W0,
                   save_at=[], stop=Stop(tol=1e-6, window=50.0))
    assert winner_lineage(W0, tr2.W).probability < 1.0


PARAMS = dict(n=16, m=48, lam=0.02, c=1.0, seed=5, method="euler", dt=0.1, t_max=5000.0,
              tol=1e-6, window=50.0, threshold=0.5, sparse_below=0.15)


def test_determinism_across_two_interpreters():
    code = ("import json, sys; from flowsim.lineage import run_one; r = run_one(json.loads(sys.argv[1]));"
            "r.pop('run_seconds'); print(json.dumps(r, sort_keys=True))")
    outs = [subprocess.run([sys.executable, "-c", code, json.dumps(PARAMS)], capture_output=True,
                           text=True, timeout=120, check=True).stdout for _ in range(2)]
    assert outs[0] == outs[1]
    r = json.loads(outs[0])
    assert r["status"] == "converged" and 0.0 <= r["probability"] <= 1.0


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "flowsim.lineage", *args], capture_output=True,
                          text=True, timeout=300)


def test_cli_tiny_run_writes_files(tmp_path):
    p = _cli("--n", "8", "--m", "16", "32", "--lam", "0.02", "--seeds", "2", "--executor", "serial",
             "--quiet", "--out", str(tmp_path))
    assert p.returncode == 0, p.stderr
    for name in ("lineage.png", "lineage.csv", "lineage.json"):
        assert (tmp_path / name).stat().st_size > 0
    rows = list(csv.DictReader(open(tmp_path / "lineage.csv")))
    assert len(rows) == 4 and {r["m"] for r in rows} == {"16", "32"}
    meta = json.loads((tmp_path / "lineage.json").read_text())
    assert meta["environment"]["flowsim_version"] and meta["runs"] == 4
    assert [(t["m"], t["runs"]) for t in meta["table"]] == [(16, 2), (32, 2)]
    for t, m in zip(meta["table"], (16, 32)):
        ps = [float(r["probability"]) for r in rows if r["m"] == str(m) and r["status"] == "converged"]
        assert t["probability"] == pytest.approx(np.mean(ps))
    assert len(list((tmp_path / "lineage_runs").glob("*.json"))) == 4


@pytest.mark.parametrize("args, name", [(("--lam", "-1"), "--lam"), (("--seeds", "0"), "--seeds"),
                                        (("--dt", "0"), "--dt"), (("--n", "0"), "n")])
def test_cli_bad_input_exit_2_one_line(tmp_path, args, name):
    p = _cli(*args, "--out", str(tmp_path))
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and name in p.stderr and "Traceback" not in p.stderr
