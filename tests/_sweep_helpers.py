"""Toy sweep functions for tests/test_sweep.py.

They live in an importable module (tests/ is put on PYTHONPATH for worker processes) so
that spawn and Dask workers can unpickle them by reference.

If the environment variable FLOWSIM_SWEEP_TEST_DIR names a directory, every call leaves
a file ``exec.<tag>.<random>`` there (``tag`` = ``m<m>_s<seed>``) so tests can count how
often each run was executed, across processes.
"""
import os
import time
import uuid

import numpy as np

from flowsim.errors import DivergenceError, FlowsimInputError

LOG_ENV = "FLOWSIM_SWEEP_TEST_DIR"


def tag(params):
    return f"m{params['m']}_s{params['seed']}"


def _first_time(name):
    """True the first time ``name`` is asked for in the test directory (marker file)."""
    path = os.path.join(os.environ[LOG_ENV], f"marker.{name}")
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def toy(params):
    """A small deterministic computation; ``params["mode"]`` injects failures.

    mode: "ok" (default), "once" (raise on the first call), "always" (always raise),
    "input" (raise FlowsimInputError), "diverge" (raise DivergenceError), "exit_once"
    (kill the worker process on the first call), "interrupt" (raise KeyboardInterrupt),
    "bad_result" (return a non-JSON value), "nonfinite" (return NaN and infinities).
    Every mode first sleeps ``params.get("sleep", 0)`` seconds.
    """
    mode = params.get("mode", "ok")
    log_dir = os.environ.get(LOG_ENV)
    if log_dir:
        open(os.path.join(log_dir, f"exec.{tag(params)}.{uuid.uuid4().hex}"), "w").close()
    time.sleep(params.get("sleep", 0))
    if mode == "once" and _first_time(tag(params)):
        raise RuntimeError(f"first attempt of {tag(params)} fails")
    if mode == "always":
        raise RuntimeError(f"{tag(params)} always fails")
    if mode == "input":
        raise FlowsimInputError(f"invalid m={params['m']!r}: toy input error")
    if mode == "diverge":
        raise DivergenceError(f"{tag(params)} diverged at t=1.5", t=1.5, step=15)
    if mode == "exit_once" and _first_time(tag(params)):
        os._exit(1)
    if mode == "interrupt":
        raise KeyboardInterrupt
    if mode == "bad_result":
        return {"x": object()}
    if mode == "nonfinite":
        return {"nan": np.nan, "inf": [np.inf, 1.0], "deep": {"m_inf": -np.inf}}
    x = np.random.default_rng(params["seed"]).standard_normal(params["m"])
    return {
        "mean": np.mean(x),                  # a NumPy scalar: converted by the sweep
        "norm2": float(x @ x),
        "n_pos": int(np.count_nonzero(x > 0)),
        "quartiles": np.quantile(x, [0.25, 0.5, 0.75]),   # an array: stored as a list
        "pid_free": True,
    }
