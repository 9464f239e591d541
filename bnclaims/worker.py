"""The process that runs seed jobs. Kept free of heavy imports at module level so that the
parent can pin BLAS to one thread (environment) before numpy loads in the child."""

from __future__ import annotations

import importlib
import os
import signal
import sys
import time
import traceback

BLAS_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
            "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def run_job(experiment: str, seed: int, params: dict, modules: tuple[str, ...]) -> tuple[str, object, float]:
    """Run one seed of one experiment; return ("ok", payload, seconds) or ("error", message, seconds)."""
    from bnclaims import experiments

    start = time.perf_counter()
    cpu_start = time.process_time()
    try:
        for module in modules:
            importlib.import_module(module)
        exp = experiments.get(experiment)
        payload = experiments.run_experiment(exp, seed, params)
        payload["cpu_seconds"] = time.process_time() - cpu_start  # unlike wall time, not inflated by load
        from bnclaims.cache import blas

        payload["blas"] = blas()  # late digits depend on the BLAS kernel: say which one computed this
        return "ok", payload, time.perf_counter() - start
    except experiments.ExperimentError as e:
        return "error", f"seed {seed}: {e}", time.perf_counter() - start
    except MemoryError:
        return "error", f"seed {seed}: out of memory (MemoryError)", time.perf_counter() - start
    except Exception as e:  # noqa: BLE001 - any failure of an experiment is a result, not a crash
        where = ""
        tb = traceback.extract_tb(e.__traceback__)
        if tb:
            frame = tb[-1]
            where = f" at {os.path.basename(frame.filename)}:{frame.lineno}"
        message = str(e).splitlines()[0] if str(e) else ""
        return "error", f"seed {seed}: {type(e).__name__}: {message}{where}", time.perf_counter() - start


MAX_OUTPUT_BYTES = 64 << 20  # what one job may print; past it, writes fail (the seed then errors)
SHOWN_OUTPUT_BYTES = 64 << 10  # the tail of it sent back to the parent


def _isolate(parent_pid: int | None) -> None:
    """Own process group (so Ctrl-C and ``kill -PGID`` reach the parent, which ends the run, and strays
    can be found); die with the parent even on SIGKILL; adopt orphaned grandchildren to reap them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
            libc.prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: a double-forked grandchild becomes ours to kill
        except (OSError, AttributeError):
            pass
    if parent_pid is not None and os.getppid() != parent_pid:  # the parent died before the line above
        os._exit(1)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.extend(int(x) for x in f.read().split())
    except (OSError, ValueError):
        pass
    return found


def kill_strays() -> int:
    """SIGKILL every process a job left behind (its descendants, orphans adopted by this worker); reap them.
    Returns how many there were."""
    me = os.getpid()
    victims: set[int] = set()

    def kill_descendants() -> None:
        todo = [me]
        while todo:
            for child in _children(todo.pop()):
                if child not in victims:
                    victims.add(child)
                    todo.append(child)
                try:
                    os.kill(child, signal.SIGKILL)
                except OSError:
                    pass

    kill_descendants()
    deadline = time.monotonic() + 5
    while True:  # reap; what a killed child had forked is adopted by this worker (subreaper): kill it too
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except (ChildProcessError, OSError):
            break
        if pid == 0:
            if time.monotonic() > deadline:
                break
            kill_descendants()
            time.sleep(0.001)
    return len(victims)


class Capture:
    """What jobs print, at the file-descriptor level (C code and child processes too), kept out of the
    user's terminal: read back (its tail) after each job."""

    def __init__(self):
        import tempfile

        for stream in (sys.stdout, sys.stderr):
            _flush(stream)
        try:
            self.file = tempfile.TemporaryFile(prefix="bnclaims-output-")  # unlinked at once: nothing is left
        except OSError:
            self.file = open(os.devnull, "w+b")
        self.fd = self.file.fileno()
        os.dup2(self.fd, 1)
        os.dup2(self.fd, 2)
        try:
            import resource

            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails instead of killing
            soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            limit = min(x for x in (MAX_OUTPUT_BYTES, soft, hard) if x != resource.RLIM_INFINITY)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))  # never above what it started with
        except (ImportError, OSError, ValueError):
            pass

    def take(self) -> str:
        """Everything printed since the last call (its last 64 KiB), and start afresh."""
        for stream in (sys.stdout, sys.stderr):
            _flush(stream)
        try:
            size = os.fstat(self.fd).st_size
            if not size:
                return ""
            keep = min(size, SHOWN_OUTPUT_BYTES)
            data = os.pread(self.fd, keep, size - keep)
            os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_SET)
        except OSError:
            return ""
        text = data.decode("utf-8", errors="replace")
        return (f"[... {size - keep} bytes not shown]\n" if size > keep else "") + text


def _flush(stream) -> None:
    try:
        if stream is not None:
            stream.flush()
    except (OSError, ValueError):
        pass


class _State:
    """Global state an experiment could change (it should not), restored before every job so that a
    worker reused for the next job behaves as a fresh one: numpy's error handling and print options,
    the legacy global random state, Python's ``random``, warning filters and the working directory."""

    def __init__(self):
        import numpy as np

        self.np = np
        self.errors = np.geterr()
        self.printoptions = np.get_printoptions()
        self.cwd = os.getcwd()

    def reset(self, seed: int) -> None:
        import random

        np = self.np
        np.seterr(**self.errors)
        np.set_printoptions(**self.printoptions)
        np.random.seed(seed % (1 << 32))  # legacy np.random.*: the same for a seed whichever worker runs it
        random.seed(seed)
        try:
            os.chdir(self.cwd)
        except OSError:
            pass


def main(conn, modules: tuple[str, ...], memory_limit: int | None, parent_pid: int | None = None) -> None:
    """Worker loop: receive (job_id, experiment, seed, params), send (job_id, status, payload, seconds, output)."""
    _isolate(parent_pid)
    capture = Capture()
    try:
        if memory_limit:
            import resource

            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            if hard != resource.RLIM_INFINITY:  # never above a limit this process was started under
                memory_limit = min(memory_limit, hard)
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
        from bnclaims import experiments

        experiments.load_all()
        for module in modules:
            importlib.import_module(module)
        state = _State()
    except Exception as e:  # noqa: BLE001 - reported to the parent, which fails the jobs
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = lines[0] if str(e)[:1].strip() else (lines[-1] if lines else "")  # numpy's ImportError: last line
        conn.send(("startup-error", f"{type(e).__name__}: {detail}", None, None, capture.take()))
        return
    capture.take()  # what importing the modules printed
    conn.send(("ready", None, None, None, ""))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if message is None:
            return
        job_id, experiment, seed, params = message
        state.reset(seed)
        import warnings

        with warnings.catch_warnings():  # filters an experiment sets end with it
            status, payload, seconds = run_job(experiment, seed, params, modules)
        kill_strays()
        try:
            conn.send((job_id, status, payload, seconds, capture.take()))
        except (BrokenPipeError, EOFError, OSError):
            return
