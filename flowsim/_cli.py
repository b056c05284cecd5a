"""Shared plumbing of the experiment commands: argument errors, exit codes, summaries."""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import warnings
from pathlib import Path

from .errors import FlowsimInputError, FlowsimWarning, invalid

EXIT_OK, EXIT_DIVERGED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block) and exit status 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def fail(prog, err, code=EXIT_USAGE):
    """Print ``err`` as one line on stderr and exit with ``code``."""
    sys.stderr.write(f"{prog}: error: {str(err).splitlines()[0]}\n")
    raise SystemExit(code)


def run_main(prog, main, argv):
    """Run ``main(argv)``; bad input exits 2 with one line, never a traceback."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", FlowsimWarning)
        warnings.formatwarning = lambda msg, cat, *a, **k: f"{prog}: warning: {msg}\n"
        try:
            return main(argv)
        except FlowsimInputError as err:
            fail(prog, err)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0



def check_out_dir(path, name="--out") -> Path:
    """Create the output folder if needed and check that it can be written, before any
    computation; raises the one-line FlowsimInputError otherwise."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".flowsim-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise invalid(name, str(path), f"must be a folder that can be created and written "
                      f"({err.strerror or err})") from None
    return path


def sweep_command(prog, fn, specs, store, args):
    """Run a command's sweep: one BLAS/numba thread per worker process, progress unless
    ``--quiet``, Ctrl-C reported with where the finished runs are.

    Returns ``(SweepResult, wall seconds)``, or None after Ctrl-C (exit with
    EXIT_INTERRUPTED). ``fn`` must be importable by the workers (not from ``__main__``).
    """
    import time

    from .sweep import run_sweep

    if args.executor != "serial":
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            os.environ.setdefault(var, "1")
    tick = time.perf_counter()
    try:
        sweep = run_sweep(fn, specs, store, executor=args.executor, workers=args.workers,
                          resume=args.resume, retries=args.retries, progress=not args.quiet)
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted; finished runs are in {store}/ "
                         "(the same command again runs only what is missing)\n")
        return None
    return sweep, time.perf_counter() - tick
