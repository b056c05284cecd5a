"""Tests of flowsim.sweep: executors agree, resume, retries, crashes, interrupts, store."""
import ast
import collections
import concurrent.futures as cf
import csv
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

import _sweep_helpers as helpers
from flowsim import sweep
from flowsim import __version__, io
from flowsim.errors import FlowsimInputError
from flowsim.io import write_csv
from flowsim.sweep import RECORD_FORMAT_VERSION, RunSpec, load_store, results_table, run_sweep

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
FIELDS = {"format_version", "key", "params", "result", "flowsim_version", "wall_seconds",
          "attempts"}


@pytest.fixture
def log_dir(tmp_path, monkeypatch):
    """Workers (spawned after this) can import _sweep_helpers and log their calls."""
    path = tmp_path / "log"
    path.mkdir()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [TESTS_DIR] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    monkeypatch.setenv(helpers.LOG_ENV, str(path))
    return path


def executions(log_dir):
    """tag -> number of calls of the toy fn, over all processes."""
    return collections.Counter(name.split(".")[1] for name in os.listdir(log_dir)
                               if name.startswith("exec."))


def specs_for(ms=(3, 5), seeds=(0, 1, 2), modes=None):
    """One spec per (m, seed); ``modes`` maps a key to the toy's failure mode."""
    modes = modes or {}
    out = []
    for m in ms:
        for s in seeds:
            key = f"m{m}_s{s}"
            params = {"n": 4, "m": m, "seed": s, "lam": 0.1}
            if key in modes:
                params.update(modes[key] if isinstance(modes[key], dict) else {"mode": modes[key]})
            out.append(RunSpec(key, params))
    return out


def sweep_csv(specs, store, path, **kw):
    res = run_sweep(helpers.toy, specs, store, progress=False, **kw)
    write_csv(path, results_table(specs, res))
    return res, path.read_bytes()


def stored_without_timing(store):
    return {k: {f: v for f, v in r.items() if f not in ("wall_seconds", "attempts")}
            for k, r in load_store(store).items()}


# ---------------------------------------------------------------- executors agree

def test_local_pool_and_given_executor_match_serial(tmp_path, log_dir):
    specs = specs_for()
    ser, ser_csv = sweep_csv(specs, tmp_path / "ser", tmp_path / "ser.csv", executor="serial")
    loc, loc_csv = sweep_csv(specs, tmp_path / "loc", tmp_path / "loc.csv",
                             executor="local", workers=2)
    with cf.ThreadPoolExecutor(2) as pool:
        giv, giv_csv = sweep_csv(specs, tmp_path / "giv", tmp_path / "giv.csv", executor=pool)
        assert pool.submit(int, "7").result() == 7          # used as given, not shut down
    assert loc_csv == ser_csv and giv_csv == ser_csv
    assert list(ser.results) == [s.key for s in specs]      # spec order
    assert loc.results == ser.results and not ser.failed and ser.skipped == [] and ser.rerun == {}
    assert stored_without_timing(tmp_path / "loc") == stored_without_timing(tmp_path / "ser")
    record = load_store(tmp_path / "ser")["m5_s2"]
    assert set(record) == FIELDS and record["attempts"] == 1
    assert record["format_version"] == RECORD_FORMAT_VERSION and record["flowsim_version"] == __version__
    assert record["params"] == specs[-1].params and record["result"] == ser.results["m5_s2"]
    # NumPy scalar and array results are stored as plain JSON numbers and lists
    assert isinstance(record["result"]["mean"], float) and len(record["result"]["quartiles"]) == 3
    rows = list(csv.DictReader(open(tmp_path / "ser.csv")))
    assert [r["key"] for r in rows] == [s.key for s in specs]
    assert float(rows[0]["norm2"]) == ser.results["m3_s0"]["norm2"]    # exact round trip
    assert executions(log_dir) == {s.key: 3 for s in specs}          # once per sweep


def test_dask_local_cluster_matches_serial(tmp_path, log_dir):
    pytest.importorskip("distributed")
    specs = specs_for()
    _, ser_csv = sweep_csv(specs, tmp_path / "ser", tmp_path / "ser.csv", executor="serial")
    t0 = time.perf_counter()
    res, dask_csv = sweep_csv(specs, tmp_path / "dask", tmp_path / "dask.csv",
                              executor="dask", workers=2)
    print(f"dask sweep (LocalCluster 2 workers, {len(specs)} runs): "
          f"{time.perf_counter() - t0:.2f} s")
    assert dask_csv == ser_csv and not res.failed
    assert stored_without_timing(tmp_path / "dask") == stored_without_timing(tmp_path / "ser")


def test_dask_scheduler_reschedules_run_of_dead_worker(tmp_path, log_dir):
    distributed = pytest.importorskip("distributed")
    specs = specs_for(modes={"m3_s1": "exit_once", "m5_s0": "once"})
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        res = run_sweep(helpers.toy, specs, tmp_path / "store", executor="dask",
                        scheduler=cluster.scheduler_address, progress=False)
        with distributed.Client(cluster) as client:           # the cluster was left running
            assert client.submit(int, "7").result() == 7
    calls = executions(log_dir)
    assert calls["m3_s1"] == 2 and calls["m5_s0"] == 2 and calls["m5_s1"] == 1
    assert not res.failed and list(res.results) == [s.key for s in specs]
    ref = run_sweep(helpers.toy, specs_for(), tmp_path / "ref", executor="serial",
                    progress=False)
    assert res.results == ref.results


# ---------------------------------------------------------------- resume, interrupt

def test_interrupted_sweep_resumes_only_missing_runs(tmp_path, log_dir):
    store = tmp_path / "store"
    interrupted = specs_for(modes={"m5_s0": "interrupt"})
    with pytest.raises(KeyboardInterrupt):
        run_sweep(helpers.toy, interrupted, store, executor="serial", progress=False)
    assert sorted(load_store(store)) == ["m3_s0", "m3_s1", "m3_s2"]   # finished before ^C
    assert not [n for n in os.listdir(store) if n.startswith(".")]    # no temp files
    first = executions(log_dir)
    specs = specs_for()
    res = run_sweep(helpers.toy, specs, store, executor="serial", progress=False)
    ran = executions(log_dir) - first
    assert res.skipped == ["m3_s0", "m3_s1", "m3_s2"]
    assert ran == {"m5_s0": 1, "m5_s1": 1, "m5_s2": 1}
    fresh = run_sweep(helpers.toy, specs, tmp_path / "fresh", executor="serial",
                      progress=False)
    assert res.results == fresh.results and list(res.results) == [s.key for s in specs]


def test_interrupt_from_local_pool_does_not_wait_for_running_runs(tmp_path, log_dir):
    # m3_s0 ends well before m3_s1 interrupts; m5_s0 then runs for a minute
    specs = specs_for(seeds=(0, 1), modes={"m3_s1": {"mode": "interrupt", "sleep": 1.0},
                                           "m5_s0": {"sleep": 60.0},
                                           "m5_s1": {"sleep": 60.0}})
    before = {p.pid for p in multiprocessing.active_children()}
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        run_sweep(helpers.toy, specs, tmp_path / "store", executor="local", workers=2,
                  progress=False)
    # a 60 s run may have started; it must have been terminated, not waited for
    assert time.perf_counter() - t0 < 20
    assert list(load_store(tmp_path / "store")) == ["m3_s0"]
    deadline = time.monotonic() + 10
    while {p.pid for p in multiprocessing.active_children()} - before:
        assert time.monotonic() < deadline, "pool workers still alive after the interrupt"
        time.sleep(0.05)
    assert "m5_s1" not in executions(log_dir)        # never submitted after the interrupt


def edit_record(store, key, change):
    path = store / f"{key}.json"
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def test_stored_runs_made_otherwise_are_rerun_and_counted(tmp_path, log_dir):
    store = tmp_path / "store"
    specs = [RunSpec(k, {"m": 3, "seed": s}) for s, k in enumerate("abcd")]
    run_sweep(helpers.toy, specs, store, executor="serial", progress=False)
    edit_record(store, "b", lambda r: r.pop("format_version"))          # an older flowsim
    edit_record(store, "c", lambda r: r.update(flowsim_version="0.0.1"))
    specs[0] = RunSpec("a", {"m": 4, "seed": 0})                         # other params
    before = executions(log_dir)
    res = run_sweep(helpers.toy, specs, store, executor="serial", progress=False)
    assert res.skipped == ["d"]
    assert res.rerun == {"a": "m: stored 3, now 4",
                         "b": f"format_version: stored None, now {RECORD_FORMAT_VERSION}",
                         "c": f"flowsim_version: stored '0.0.1', now {__version__!r}"}
    assert executions(log_dir) - before == {"m4_s0": 1, "m3_s1": 1, "m3_s2": 1}
    stored = load_store(store)
    assert stored["a"]["params"] == {"m": 4, "seed": 0}
    assert {r["format_version"] for r in stored.values()} == {RECORD_FORMAT_VERSION}
    assert {r["flowsim_version"] for r in stored.values()} == {__version__}
    fresh = run_sweep(helpers.toy, specs, tmp_path / "fresh", executor="serial", progress=False)
    assert res.results == fresh.results
    # resume=False: everything runs again and overwrites, nothing counts as reused
    before = executions(log_dir)
    res = run_sweep(helpers.toy, specs, store, executor="serial", resume=False,
                    progress=False)
    assert res.skipped == [] and res.rerun == {} and res.results == fresh.results
    assert sum((executions(log_dir) - before).values()) == 4


def test_run_that_now_fails_leaves_no_stored_record(tmp_path, log_dir):
    store = tmp_path / "store"
    specs = specs_for(ms=(3,), seeds=(0, 1, 2))
    run_sweep(helpers.toy, specs, store, executor="serial", progress=False)
    # resume=False and the same params: the run now fails, its old record goes
    failing = specs_for(ms=(3,), seeds=(0, 1, 2), modes={"m3_s0": "always"})
    res = run_sweep(helpers.toy, failing, store, executor="serial", resume=False, retries=1,
                    progress=False)
    assert list(res.failed) == ["m3_s0"]
    assert res.failed["m3_s0"].endswith("(after 2 attempts); the record of an earlier "
                                        "sweep was deleted")
    assert sorted(load_store(store)) == ["m3_s1", "m3_s2"]
    # resume: a stored run with other params is rerun; when that fails its record goes too
    failing = specs_for(ms=(3,), seeds=(0, 1, 2), modes={"m3_s1": "input"})
    res = run_sweep(helpers.toy, failing, store, executor="serial", progress=False)
    assert res.skipped == ["m3_s2"] and list(res.rerun) == ["m3_s1"]
    assert list(res.failed) == ["m3_s1"] and "deleted" in res.failed["m3_s1"]
    assert list(res.results) == ["m3_s0", "m3_s2"] and sorted(load_store(store)) == ["m3_s0", "m3_s2"]
    assert not [n for n in os.listdir(store) if n.startswith(".")]


def test_records_are_strict_json_with_null_for_nonfinite(tmp_path, log_dir):
    specs = specs_for(ms=(3,), seeds=(0,), modes={"m3_s0": "nonfinite"})
    res = run_sweep(helpers.toy, specs, tmp_path / "s", executor="serial", progress=False)

    def reject(name):
        raise AssertionError(f"bare {name} in a stored record")

    record = json.loads((tmp_path / "s" / "m3_s0.json").read_text(), parse_constant=reject)
    assert record["result"] == {"nan": None, "inf": [None, 1.0], "deep": {"m_inf": None}}
    assert res.results["m3_s0"] == record["result"]          # what is returned is what is stored
    assert record["format_version"] == RECORD_FORMAT_VERSION


# ---------------------------------------------------------------- failures

def test_run_that_raises_once_is_retried(tmp_path, log_dir):
    specs = specs_for(seeds=(0,), modes={"m3_s0": "once"})
    res = run_sweep(helpers.toy, specs, tmp_path / "s", executor="serial", progress=False)
    assert not res.failed and set(res.results) == {"m3_s0", "m5_s0"}
    assert load_store(tmp_path / "s")["m3_s0"]["attempts"] == 2
    assert executions(log_dir) == {"m3_s0": 2, "m5_s0": 1}


@pytest.mark.parametrize("mode, calls, text", [
    ("always", 3, "RuntimeError: m3_s0 always fails [_sweep_helpers.py:"),
    ("input", 1, "FlowsimInputError: invalid m=3: toy input error"),
    ("diverge", 1, "DivergenceError: m3_s0 diverged at t=1.5"),
    ("bad_result", 1, "not JSON-ready"),
])
def test_failing_run_is_recorded_and_others_go_on(tmp_path, log_dir, mode, calls, text):
    specs = specs_for(seeds=(0, 1), modes={"m3_s0": mode})
    res = run_sweep(helpers.toy, specs, tmp_path / "s", executor="serial", retries=2,
                    progress=False)
    assert list(res.failed) == ["m3_s0"] and text in res.failed["m3_s0"]
    assert list(res.results) == ["m3_s1", "m5_s0", "m5_s1"]
    assert sorted(load_store(tmp_path / "s")) == ["m3_s1", "m5_s0", "m5_s1"]
    assert executions(log_dir)["m3_s0"] == calls           # input errors are not retried
    assert [r["key"] for r in results_table(specs, res)] == list(res.results)


def test_dead_worker_loses_only_its_own_run(tmp_path, log_dir):
    specs = specs_for(modes={"m3_s1": "exit_once", "m5_s2": "always"})
    res = run_sweep(helpers.toy, specs, tmp_path / "s", executor="local", workers=2,
                    retries=1, progress=False)
    ref = run_sweep(helpers.toy, specs_for(), tmp_path / "ref", executor="serial",
                    progress=False)
    assert list(res.failed) == ["m5_s2"] and "(after 2 attempts)" in res.failed["m5_s2"]
    assert res.results == {k: v for k, v in ref.results.items() if k != "m5_s2"}
    calls = executions(log_dir) - collections.Counter(list(ref.results))   # minus ref sweep
    assert calls["m3_s1"] == 2 and calls["m5_s2"] == 2
    # a run in flight beside the crash is rerun at most once, and never charged for it
    assert all(1 <= calls[k] <= 2 for k in ref.results)
    assert load_store(tmp_path / "s")["m3_s1"]["attempts"] == 2


class ScriptedPool(cf.Executor):
    """In-process stand-in for a process pool whose worker dies on cue.

    The i-th submit follows ``script[i]`` (then "ok"): "ok" runs the call; "pending"
    leaves the future unfinished; "dies_all" breaks the pool under this call and every
    pending one; "broken" breaks the pending ones and raises at submission, as a real
    pool does once its manager thread has seen a dead worker.
    """

    def __init__(self, script):
        self.script = list(script)
        self.pending = []

    def _break_pending(self):
        for f in self.pending:
            f.set_exception(BrokenProcessPool("a worker died"))
        self.pending = []

    def submit(self, fn, /, *args):
        step = self.script.pop(0) if self.script else "ok"
        if step == "broken":
            self._break_pending()
            raise BrokenProcessPool("the pool is not usable anymore")
        future = cf.Future()
        self.pending.append(future)
        if step == "dies_all":
            self._break_pending()
        elif step == "ok":
            self.pending.remove(future)
            future.set_result(fn(*args))
        return future


@pytest.mark.parametrize("script, retries, attempts, failed", [
    # one run in flight when the pool breaks: it is the culprit and is charged
    (["ok", "pending", "broken"], 1, {"m3_s1": 2}, []),
    (["ok", "pending", "broken"], 0, {}, ["m3_s1"]),
    # two in flight: neither is charged; both rerun alone in a fresh pool
    (["pending", "dies_all"], 0, {"m3_s0": 2, "m3_s1": 2}, []),
])
def test_crash_is_charged_only_to_the_run_that_caused_it(tmp_path, monkeypatch, script,
                                                         retries, attempts, failed):
    pools = iter([ScriptedPool(script), ScriptedPool([])])
    monkeypatch.setattr(sweep._LocalBackend, "_new_pool", lambda self: next(pools))
    specs = specs_for(ms=(3,), seeds=(0, 1, 2, 3))
    res = run_sweep(helpers.toy, specs, tmp_path / "s", executor="local", workers=2,
                    retries=retries, progress=False)
    assert list(res.failed) == failed
    if failed:
        assert res.failed[failed[0]].startswith("BrokenProcessPool: the worker process")
    assert list(res.results) == [s.key for s in specs if s.key not in failed]
    stored = {k: r["attempts"] for k, r in load_store(tmp_path / "s").items()}
    assert stored == {k: attempts.get(k, 1) for k in res.results}
    assert next(pools, None) is None                       # the pool was rebuilt once


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("key", ["", "a/b", "../x", ".hidden", "-x", "a b", "x" * 201,
                                 "é", "a\\b", 3, None])
def test_bad_keys_rejected(key):
    with pytest.raises(FlowsimInputError, match=r"^invalid key="):
        RunSpec(key, {})


@pytest.mark.parametrize("params", [[("m", 1)], {1: 2}, {"x": object()}, {"x": float("nan")},
                                    {"x": [1.0, float("inf")]}])
def test_bad_params_rejected(params):
    with pytest.raises(FlowsimInputError, match=r"^invalid params"):
        RunSpec("ok", params)


def test_params_are_normalised():
    import numpy as np
    spec = RunSpec("A-1.b_2", {"t": (1, 2), "m": np.int64(3), "x": np.array([0.5])})
    assert spec.params == {"t": [1, 2], "m": 3, "x": [0.5]} and type(spec.params["m"]) is int


@pytest.mark.parametrize("kw, name", [
    (dict(executor="nope"), "executor"), (dict(workers=0), "workers"),
    (dict(retries=-1), "retries"), (dict(executor="serial", scheduler="tcp://x:1"), "scheduler"),
    (dict(specs=[RunSpec("ab", {}), RunSpec("AB", {})]), "specs"),
    (dict(specs=[{"key": "a"}]), "specs"), (dict(fn=lambda p: p), "fn"),
])
def test_bad_arguments_rejected(tmp_path, kw, name):
    args = dict(fn=helpers.toy, specs=[RunSpec("a", {"m": 1, "seed": 0})],
                store=tmp_path / "s", executor="local", progress=False)
    args.update(kw)
    with pytest.raises(FlowsimInputError, match=rf"^invalid {name}="):
        run_sweep(**args)


def test_missing_distributed_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)     # makes the import fail
    with pytest.raises(FlowsimInputError, match=r'pip install "flowsim\[dask\]"'):
        run_sweep(helpers.toy, [RunSpec("a", {"m": 1, "seed": 0})], tmp_path / "s",
                  executor="dask", progress=False)


def test_load_store_rejects_foreign_files(tmp_path):
    with pytest.raises(FlowsimInputError, match=r"^invalid store="):
        load_store(tmp_path / "missing")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(FlowsimInputError, match=r"x.json is not a readable run record"):
        load_store(tmp_path)
    rec = dict.fromkeys(FIELDS, 0) | {"key": "y"}
    (tmp_path / "x.json").write_text(json.dumps(rec))
    with pytest.raises(FlowsimInputError, match=r"holds key 'y'"):
        load_store(tmp_path)
    (tmp_path / "x.json").write_text(json.dumps({"key": "x"}))
    with pytest.raises(FlowsimInputError, match=r"needs fields"):
        run_sweep(helpers.toy, [RunSpec("x", {"m": 1, "seed": 0})], tmp_path,
                  executor="serial", progress=False)


# ---------------------------------------------------------------- tables and atomic writes

def test_results_table_and_write_csv(tmp_path):
    specs = [RunSpec("a", {"m": 2, "lam": 0.1}), RunSpec("b", {"m": 3}), RunSpec("c", {"m": 4})]
    results = {"b": {"loss": 1 / 3, "m": 3, "hist": [1, 2]}, "a": {"loss": float("nan")}}
    rows = results_table(specs, results)
    assert rows == [{"key": "a", "m": 2, "lam": 0.1, "loss": rows[0]["loss"]},
                    {"key": "b", "m": 3, "loss": 1 / 3, "hist": [1, 2]}]   # c failed: no row
    write_csv(tmp_path / "sub" / "t.csv", rows)
    got = list(csv.reader(open(tmp_path / "sub" / "t.csv")))
    assert got == [["key", "m", "lam", "loss", "hist"], ["a", "2", "0.1", "nan", ""],
                   ["b", "3", "", repr(1 / 3), "[1, 2]"]]
    assert float(got[2][3]) == 1 / 3
    assert os.listdir(tmp_path / "sub") == ["t.csv"]
    with pytest.raises(FlowsimInputError, match=r"field 'm' is 5 in the result"):
        results_table(specs, {"a": {"m": 5}})


def test_one_csv_writer_for_dict_and_sequence_rows(tmp_path):
    assert not hasattr(sweep, "write_csv")            # one CSV writer: flowsim.io.write_csv
    io.write_csv(tmp_path / "d.csv", [{"x": 0.1, "y": None}, {"y": True, "z": [1.5]}], ["z", "x"])
    io.write_csv(tmp_path / "s.csv", [[0.1, ""], ["1", 2]], ["x", "y"])
    assert (tmp_path / "d.csv").read_text() == 'z,x\n,0.1\n[1.5],\n'
    assert (tmp_path / "s.csv").read_text() == "x,y\n0.1,\n1,2\n"
    for rows in ([{"x": 1}, [1]], ["ab"], [3]):
        with pytest.raises(FlowsimInputError, match=r"^invalid rows="):
            io.write_csv(tmp_path / "bad.csv", rows)
    assert not (tmp_path / "bad.csv").exists()


def test_no_long_functions():
    """No function of the sweep module (with its docstring) is over 80 lines."""
    tree = ast.parse(open(sweep.__file__, encoding="utf-8").read())
    long = {f.name: f.end_lineno - f.lineno + 1 for f in ast.walk(tree)
            if isinstance(f, ast.FunctionDef) and f.end_lineno - f.lineno + 1 > 80}
    assert long == {}
