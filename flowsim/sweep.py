"""Parameter sweeps over any ``concurrent.futures`` executor, with a resumable store.

A sweep is a list of :class:`RunSpec` (a file-safe key and a JSON-ready parameter dict)
and a picklable top-level function ``fn(params) -> dict``. :func:`run_sweep` runs ``fn``
on every spec that is not already in the store, writes each finished run at once and
atomically to ``<store>/<key>.json``, retries failures, and returns a
:class:`SweepResult` whose contents do not depend on the executor or on the order in
which runs finished::

    specs = [RunSpec(f"m{m}_s{s}", {"n": 256, "m": m, "seed": s}) for m in ms for s in seeds]
    res = run_sweep(fn, specs, "out/runs", executor="local", workers=2)
    flowsim.io.write_csv("out/table.csv", results_table(specs, res))

Executors: ``"serial"`` (in-process), ``"local"`` (a process pool started with the
``spawn`` method), ``"dask"`` (a ``dask.distributed`` cluster: an existing one at
``scheduler``, else a ``LocalCluster`` started and closed here), or any
``concurrent.futures.Executor`` instance, used as given and never shut down.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import json
import multiprocessing
import os
import pickle
import re
import signal
import sys
import time
import traceback
from collections.abc import Mapping

import numpy as np
from tqdm import tqdm

from . import io as _io
from ._version import __version__
from .errors import DivergenceError, FlowsimInputError, check_int, invalid

__all__ = ["RunSpec", "SweepResult", "run_sweep", "load_store", "results_table",
           "strict_json", "RECORD_FORMAT_VERSION"]

#: Version of the run-record format. A stored record of another version (or none: an
#: older flowsim) is re-run on resume.
RECORD_FORMAT_VERSION = 1

_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_KEY_ALLOWED = ("must be a string of 1-200 characters from A-Z a-z 0-9 . _ -, "
                "not starting with . _ or -")
_RECORD_FIELDS = ("key", "params", "result", "flowsim_version", "wall_seconds", "attempts")
_EXECUTORS = ("local", "dask", "serial")
_DETERMINISTIC = (FlowsimInputError, DivergenceError)   # the same again on a retry


# --------------------------------------------------------------------------- specs/results

@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of a sweep.

    Parameters
    ----------
    key : str
        Name of the run and of its file ``<store>/<key>.json``: 1-200 characters from
        ``A-Z a-z 0-9 . _ -``, starting with a letter or digit.
    params : dict
        Argument of ``fn``: string keys, JSON-ready values (numbers, strings, bools,
        None, lists, dicts; NumPy scalars and arrays are converted; floats must be
        finite). Stored as a normalised copy (what a JSON round trip gives, e.g. tuples
        become lists), so a resumed run compares equal to a fresh one. Treat it as
        read-only.
    """

    key: str
    params: dict

    def __post_init__(self):
        if not isinstance(self.key, str) or not _KEY_RE.fullmatch(self.key):
            raise invalid("key", self.key, _KEY_ALLOWED)
        if not isinstance(self.params, Mapping) or not all(isinstance(k, str) for k in self.params):
            raise invalid("params", self.params, "must be a dict with string keys")
        try:
            text = json.dumps(dict(self.params), default=_json_default, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise invalid(f"params[{self.key}]", self.params,
                          f"values must be JSON-ready with finite floats ({exc})") from None
        object.__setattr__(self, "params", json.loads(text))


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """Outcome of :func:`run_sweep`.

    Attributes
    ----------
    results : dict
        key -> result dict of every run that succeeded or was loaded from the store, in
        spec order. Each result is what is stored on disk (a JSON round trip of what
        ``fn`` returned).
    failed : dict
        key -> one-line error of every run that still failed after its retries, in spec
        order.
    skipped : list of str
        Keys whose stored result was reused (``resume=True``), in spec order.
    wall_seconds : float
        Wall time of the whole sweep.
    rerun : dict
        key -> why, for every stored run that was not reused because it was made with
        other params, another flowsim version or record format (``resume=True``), in
        spec order. These runs were run again (and are in ``results`` or ``failed``).
    """

    results: dict
    failed: dict
    skipped: list
    wall_seconds: float
    rerun: dict = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------- worker side

def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def strict_json(obj):
    """What strict JSON makes of ``obj``: NumPy scalars and arrays as numbers and lists,
    tuples as lists, NaN and infinities as None (null). Raises TypeError for other types.
    """
    text = json.dumps(obj, default=_json_default, allow_nan=True)
    return json.loads(text, parse_constant=lambda name: None)


def _one_line(exc):
    """``Type: first line of message [file:line]`` of an exception."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        text += f" [{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}]"
    return text[:500]


def _run_one(fn, params, attempt):
    """Run ``fn`` on a copy of ``params`` where the executor put it.

    Never raises an ``Exception`` (only ``BaseException``s such as KeyboardInterrupt get
    through), so no custom exception has to survive pickling back to the main process.
    ``attempt`` only makes every submission distinct (Dask would otherwise reuse the
    result of an identical earlier task).

    Returns
    -------
    tuple (status, payload, wall_seconds)
        ``("ok", result_dict, s)`` (non-finite floats become None); ``("error", message,
        s)`` (retried); ``("fatal", message, s)`` for a deterministic failure
        (FlowsimInputError, DivergenceError) or a result that is not a dict of
        JSON-ready values (not retried).
    """
    del attempt
    t0 = time.perf_counter()
    try:
        result = fn(json.loads(json.dumps(params)))
    except _DETERMINISTIC as exc:
        return "fatal", _one_line(exc), time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - every failure of a run is reported, not raised
        return "error", _one_line(exc), time.perf_counter() - t0
    wall = time.perf_counter() - t0
    if not isinstance(result, Mapping) or not all(isinstance(k, str) for k in result):
        return "fatal", f"fn returned {type(result).__name__}, not a dict with string keys", wall
    try:
        result = strict_json(dict(result))
    except (TypeError, ValueError) as exc:
        return "fatal", f"fn returned a result that is not JSON-ready: {exc}", wall
    return "ok", result, wall


def _ignore_sigint():
    # Pool workers leave Ctrl-C to the main process, which terminates them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# --------------------------------------------------------------------------- executors

class _SerialExecutor(cf.Executor):
    """Runs each call at submission, in this process (exceptions go into the future)."""

    def submit(self, fn, /, *args, **kwargs):
        future = cf.Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - stored in the future like a pool would
            future.set_exception(exc)
        return future


class _Backend:
    """An executor plus what run_sweep may do with it.

    ``window`` is the most runs in flight at once (None: submit everything), and
    ``rebuild`` replaces a broken process pool (None: cannot).
    """

    window = None
    rebuild = None

    def __init__(self, executor):
        self.executor = executor

    def close(self):
        pass

    def abort(self, futures):
        for f in futures:
            f.cancel()


class _SerialBackend(_Backend):
    window = 1

    def __init__(self):
        super().__init__(_SerialExecutor())


class _LocalBackend(_Backend):
    """A process pool started with ``spawn``: fresh interpreters, so no locks or threads
    of numba, BLAS or tqdm inherited from a fork (unlike ``fork``), no server process that
    outlives the sweep with the environment of its first use (unlike ``forkserver``), and
    available everywhere."""

    def __init__(self, workers):
        self.window = workers
        self._workers = workers
        super().__init__(self._new_pool())

    def _new_pool(self):
        return cf.ProcessPoolExecutor(max_workers=self._workers,
                                      mp_context=multiprocessing.get_context("spawn"),
                                      initializer=_ignore_sigint)

    def rebuild(self):
        self._kill(self.executor)
        self.executor = self._new_pool()

    def close(self):
        self.executor.shutdown(wait=True)

    def abort(self, futures):
        super().abort(futures)
        self._kill(self.executor)

    @staticmethod
    def _kill(pool):
        """Shut ``pool`` down without waiting, terminating the workers it started."""
        terminate = getattr(pool, "terminate_workers", None)  # Python >= 3.14
        if terminate is not None:
            terminate()
            return
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            if p.is_alive():
                p.terminate()


class _DaskBackend(_Backend):
    def __init__(self, workers, scheduler):
        try:
            import distributed
        except ImportError:
            raise invalid("executor", "dask", 'needs the optional dependency distributed: '
                          'pip install "flowsim[dask]"') from None
        self._cluster = self._client = None
        try:
            if scheduler is None:
                self._cluster = distributed.LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True,
                    dashboard_address=None)
                self._client = distributed.Client(self._cluster)
            else:
                self._client = distributed.Client(scheduler)
        except BaseException:
            self._close_client()
            raise
        super().__init__(self._client.get_executor(pure=False))

    def _close_client(self):
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()

    def close(self):
        self.executor.shutdown(wait=False)
        self._close_client()

    def abort(self, futures):
        super().abort(futures)
        self.close()


def _make_backend(executor, workers, scheduler):
    if isinstance(executor, cf.Executor):
        return _Backend(executor)
    if executor == "serial":
        return _SerialBackend()
    if executor == "local":
        return _LocalBackend(workers)
    return _DaskBackend(workers, scheduler)


# --------------------------------------------------------------------------- store

def _read_record(path):
    name = os.path.basename(path)
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as exc:
        raise invalid("store", os.path.dirname(path),
                      f"{name} is not a readable run record ({exc})") from None
    if not isinstance(record, dict) or any(k not in record for k in _RECORD_FIELDS):
        raise invalid("store", os.path.dirname(path),
                      f"{name} is not a run record (needs fields {', '.join(_RECORD_FIELDS)})")
    if record["key"] + ".json" != name:
        raise invalid("store", os.path.dirname(path),
                      f"{name} holds key {record['key']!r}, not the one its name says")
    return record


def load_store(store):
    """Read every run record of a store.

    Parameters
    ----------
    store : str or path-like
        Directory written by :func:`run_sweep`.

    Returns
    -------
    dict
        key -> record ``{"format_version", "key", "params", "result",
        "flowsim_version", "wall_seconds", "attempts"}`` (records written before format
        versions existed have no ``format_version``), sorted by key. Temp files (names starting
        with ".") are ignored.
    """
    store = os.fspath(store)
    if not os.path.isdir(store):
        raise invalid("store", store, "must be an existing directory")
    records = {}
    for name in sorted(os.listdir(store)):
        if name.endswith(".json") and not name.startswith("."):
            record = _read_record(os.path.join(store, name))
            records[record["key"]] = record
    return records


def _params_diff(stored, wanted):
    def show(d, k):
        return repr(d[k]) if k in d else "missing"

    keys = [k for k in dict.fromkeys([*stored, *wanted])
            if stored.get(k, ...) != wanted.get(k, ...)]
    return "; ".join(f"{k}: stored {show(stored, k)}, now {show(wanted, k)}" for k in keys[:3])


def _mismatch(record, spec):
    """Why a stored ``record`` is not a result of ``spec`` here and now (None: it is)."""
    stored_format = record.get("format_version")
    if stored_format != RECORD_FORMAT_VERSION:
        return f"format_version: stored {stored_format!r}, now {RECORD_FORMAT_VERSION!r}"
    if record["flowsim_version"] != __version__:
        return f"flowsim_version: stored {record['flowsim_version']!r}, now {__version__!r}"
    if record["params"] != spec.params:
        return _params_diff(record["params"], spec.params)
    return None


def _record_path(store, key):
    return os.path.join(store, key + ".json")


# --------------------------------------------------------------------------- the sweep

def run_sweep(fn, specs, store, *, executor="local", workers=None, scheduler=None,
              resume=True, retries=2, progress=True):
    """Run ``fn(spec.params)`` for every spec, storing each finished run at once.

    Parameters
    ----------
    fn : callable
        ``fn(params: dict) -> dict`` of JSON-ready values (one row of results). For
        process executors it must be picklable: a top-level function of an importable
        module (for ``"dask"`` cloudpickle also accepts others). It gets its own copy of
        the params.
    specs : iterable of RunSpec
        Keys must be distinct, also ignoring case (case-insensitive file systems).
    store : str or path-like
        Directory (created if missing) holding ``<key>.json`` per finished run:
        ``{"format_version", "key", "params", "result", "flowsim_version",
        "wall_seconds", "attempts"}``, strict JSON (NaN and infinities stored as null).
        ``wall_seconds`` is the time of the last call of ``fn``; ``attempts`` counts the
        times the run was started here, including starts lost with a crashed pool (a
        worker death that Dask recovers by itself is not seen, so not counted). A run
        that fails for good has no record: a record left by an earlier sweep is
        deleted (and its message in ``failed`` says so), so the store never shows a
        result for inputs whose latest run failed.
    executor : {"local", "dask", "serial"} or concurrent.futures.Executor
        ``"local"``: a process pool of ``workers`` fresh interpreters (``spawn``: no
        state inherited from a fork, no server process outliving the sweep).
        ``"dask"``: ``dask.distributed`` (optional dependency). ``"serial"``: in this
        process. An Executor instance is used as given and not shut down.
    workers : int, optional
        Processes of the local pool or of the Dask LocalCluster; default: the CPUs this
        process may use.
    scheduler : str, optional
        Address of a running Dask scheduler (only with ``executor="dask"``); without it
        a ``LocalCluster(n_workers=workers, threads_per_worker=1, processes=True)`` is
        started and closed at the end.
    resume : bool
        Reuse a stored run when its params, flowsim version and record format all equal
        this sweep's (``skipped``); a stored run that differs in any is run again and
        listed in ``rerun``. ``False``: run everything and overwrite stored files as
        runs finish.
    retries : int
        Extra attempts of a run that raised or whose worker died. Deterministic
        failures (FlowsimInputError, DivergenceError, a result that is not JSON-ready)
        are not retried. A run failing ``retries + 1`` times goes into ``failed``; the
        other runs go on.
    progress : bool
        Show a tqdm bar over runs on stderr.

    Returns
    -------
    SweepResult

    Notes
    -----
    A dead worker breaks a local pool and every run in flight with it; the pool is
    rebuilt, and if several runs were in flight, they are rerun one at a time (not
    charged an attempt) so that a crash is charged to the run that caused it. Dask
    reschedules tasks lost with a worker itself and reports a task that kills workers
    repeatedly as an error, which counts as a failed attempt.

    On KeyboardInterrupt nothing more is submitted, pending runs are cancelled, a pool
    or cluster started here is shut down without waiting (its workers are terminated)
    and the interrupt is re-raised; every run that finished before is on disk.
    """
    t_start = time.perf_counter()
    specs, workers, retries, store = _check_arguments(fn, specs, store, executor, workers,
                                                      scheduler, retries)
    os.makedirs(store, exist_ok=True)
    done, skipped, rerun, todo = _plan(specs, store, resume)
    failed = {}
    if todo:
        with tqdm(total=len(specs), initial=len(skipped), disable=not progress,
                  file=sys.stderr, unit="run", desc="sweep", dynamic_ncols=True) as bar:
            _Driver(fn, store, _make_backend(executor, workers, scheduler), retries, bar,
                    done, failed).run(todo)
    order = [s.key for s in specs]
    return SweepResult(results={k: done[k] for k in order if k in done},
                       failed={k: failed[k] for k in order if k in failed},
                       skipped=skipped, wall_seconds=time.perf_counter() - t_start,
                       rerun=rerun)


def _check_arguments(fn, specs, store, executor, workers, scheduler, retries):
    """Validate the arguments of :func:`run_sweep`; returns specs, workers, retries, store."""
    if not callable(fn):
        raise invalid("fn", fn, "must be a callable fn(params) -> dict")
    if isinstance(specs, (str, bytes, Mapping)):
        raise invalid("specs", specs, "must be an iterable of RunSpec")
    specs = list(specs)
    for spec in specs:
        if not isinstance(spec, RunSpec):
            raise invalid("specs", spec, "must be an iterable of RunSpec")
    seen = {}
    for spec in specs:
        if spec.key.lower() in seen:
            raise invalid("specs", spec.key, "keys must be distinct, also ignoring case "
                          f"(clashes with {seen[spec.key.lower()]!r})")
        seen[spec.key.lower()] = spec.key
    if not isinstance(executor, cf.Executor) and executor not in _EXECUTORS:
        raise invalid("executor", executor,
                      'must be "local", "dask", "serial" or a concurrent.futures.Executor')
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
    workers = check_int("workers", workers, 1)
    if scheduler is not None and (executor != "dask" or not isinstance(scheduler, str)):
        raise invalid("scheduler", scheduler, 'must be an address string, with executor="dask"')
    retries = check_int("retries", retries, 0)
    if not isinstance(store, (str, os.PathLike)):
        raise invalid("store", store, "must be a directory path")
    store = os.fspath(store)
    if os.path.exists(store) and not os.path.isdir(store):
        raise invalid("store", store, "must be a directory")
    if executor == "local" or isinstance(executor, cf.ProcessPoolExecutor):
        try:
            pickle.dumps(fn)
        except Exception as exc:  # noqa: BLE001 - pickle raises several types
            raise invalid("fn", fn, "must be picklable for a process pool: a top-level "
                          f"function of an importable module ({exc})") from None
    return specs, workers, retries, store


def _plan(specs, store, resume):
    """Split ``specs`` into stored runs to reuse and runs to do (reads every record first).

    Returns
    -------
    done : dict
        key -> stored result of every reused run.
    skipped : list of str
        Keys of the reused runs.
    rerun : dict
        key -> why the stored run is not reused (it is in ``todo``).
    todo : list of RunSpec
    """
    done, skipped, rerun, todo = {}, [], {}, []
    for spec in specs:
        path = _record_path(store, spec.key)
        if resume and os.path.exists(path):
            record = _read_record(path)
            why = _mismatch(record, spec)
            if why is None:
                done[spec.key] = record["result"]
                skipped.append(spec.key)
                continue
            rerun[spec.key] = why
        todo.append(spec)
    return done, skipped, rerun, todo


class _Driver:
    """Submits runs, collects them, retries failures and stores results.

    Fills ``done`` (key -> result) and ``failed`` (key -> message) in place; ``bar``
    counts finished runs.
    """

    def __init__(self, fn, store, backend, retries, bar, done, failed):
        self.fn, self.store, self.backend, self.retries = fn, store, backend, retries
        self.bar, self.done, self.failed = bar, done, failed
        self.index = {}                               # key -> position in spec order
        self.queue = collections.deque()              # runs waiting, in spec order
        self.quarantine = collections.deque()         # runs to rerun alone after a pool crash
        self.quarantined = set()
        self.in_flight = {}                           # future -> spec
        self.starts = collections.Counter()           # submissions per key
        self.charged = collections.Counter()          # failed attempts per key

    def run(self, todo):
        self.index = {spec.key: i for i, spec in enumerate(todo)}
        self.queue.extend(todo)
        try:
            while self.queue or self.quarantine or self.in_flight:
                crashed = []
                if self._fill():
                    finished, _ = cf.wait(self.in_flight, return_when=cf.FIRST_COMPLETED)
                    self._collect_all(finished, crashed)
                    if not crashed:
                        continue
                # A worker died: the pool is broken and every run in flight ends with it.
                self._collect_all(cf.wait(self.in_flight)[0], crashed)
                self._recover(crashed)
        except BaseException:
            self.backend.abort(list(self.in_flight))
            raise
        self.backend.close()

    def _fill(self):
        """Submit what may run now; False if the pool turned out to be broken."""
        if self.quarantine:
            return self._submit(self.quarantine) if not self.in_flight else True
        healthy = True
        while healthy and self.queue and (self.backend.window is None
                                          or len(self.in_flight) < self.backend.window):
            healthy = self._submit(self.queue)
        return healthy

    def _submit(self, source):
        """Submit the next run of ``source``; False if the pool is already broken."""
        spec = source[0]
        try:
            future = self.backend.executor.submit(_run_one, self.fn, spec.params,
                                                  self.starts[spec.key] + 1)
        except cf.BrokenExecutor:
            return False
        source.popleft()
        self.starts[spec.key] += 1
        self.in_flight[future] = spec
        return True

    def _collect_all(self, futures, crashed):
        for future in sorted(futures, key=lambda f: self.index[self.in_flight[f].key]):
            self._collect(future, self.in_flight.pop(future), crashed)

    def _collect(self, future, spec, crashed):
        if future.cancelled():
            return self._fail_attempt(spec, "CancelledError: the executor cancelled the run")
        exc = future.exception()
        if isinstance(exc, KeyboardInterrupt):
            raise KeyboardInterrupt from exc
        if isinstance(exc, cf.BrokenExecutor):
            return crashed.append(spec)
        if exc is not None:      # e.g. Dask's KilledWorker, or fn could not be sent
            return self._fail_attempt(spec, _one_line(exc))
        status, payload, wall = future.result()
        if status != "ok":
            return self._fail_attempt(spec, payload, retry=(status == "error"))
        record = dict(format_version=RECORD_FORMAT_VERSION, key=spec.key, params=spec.params,
                      result=payload, flowsim_version=__version__, wall_seconds=wall,
                      attempts=self.starts[spec.key])
        _io.atomic_write_text(_record_path(self.store, spec.key),
                              json.dumps(record, indent=1, allow_nan=False) + "\n")
        self.done[spec.key] = payload
        self._finish(spec)

    def _recover(self, crashed):
        """After a pool crash: rebuild it and charge the crash to the run that caused it."""
        message = "BrokenProcessPool: the worker process running it died"
        if self.backend.rebuild is None:
            lost = crashed + list(self.quarantine) + list(self.queue)
            self.quarantine.clear()
            self.queue.clear()
            for spec in lost:
                self._finish(spec, message + " and the executor given cannot be rebuilt")
            return
        self.backend.rebuild()
        if len(crashed) == 1:
            self.quarantined.add(crashed[0].key)
            self._fail_attempt(crashed[0], message)
            return
        for spec in sorted(crashed, key=lambda s: self.index[s.key]):
            self.quarantined.add(spec.key)
            self.quarantine.append(spec)

    def _fail_attempt(self, spec, message, retry=True):
        self.charged[spec.key] += 1
        if retry and self.charged[spec.key] <= self.retries:
            (self.quarantine if spec.key in self.quarantined else self.queue).appendleft(spec)
        else:
            n = self.charged[spec.key]
            self._finish(spec, message + (f" (after {n} attempts)" if n > 1 else ""))

    def _finish(self, spec, message=None):
        if message is not None:
            try:      # an unlink is atomic: the record is either whole or gone
                os.remove(_record_path(self.store, spec.key))
                message += "; the record of an earlier sweep was deleted"
            except FileNotFoundError:
                pass
            self.failed[spec.key] = message
            self.bar.set_postfix(failed=len(self.failed), refresh=False)
        self.bar.update(1)


# --------------------------------------------------------------------------- tables

def results_table(specs, results):
    """One flat row per run: ``{"key": key, **params, **result}``, in spec order.

    Parameters
    ----------
    specs : iterable of RunSpec
    results : SweepResult or dict
        key -> result dict. Specs without a result (failed runs) get no row.

    Returns
    -------
    list of dict
        A result field with the same name as a param must have the same value. Write
        it with :func:`flowsim.io.write_csv`.
    """
    if isinstance(results, SweepResult):
        results = results.results
    if not isinstance(results, Mapping):
        raise invalid("results", results, "must be a SweepResult or a dict key -> result")
    rows = []
    for spec in specs:
        if spec.key not in results:
            continue
        row = {"key": spec.key}
        for source in (spec.params, results[spec.key]):
            for name, value in source.items():
                if name in row and row[name] != value:
                    raise invalid("results", spec.key, f"field {name!r} is {value!r} in the "
                                  f"result but {row[name]!r} in the key or params")
                row[name] = value
        rows.append(row)
    return rows
