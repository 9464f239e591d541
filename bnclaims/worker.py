"""The process that runs seed jobs. Kept free of heavy imports at module level so that the
parent can pin BLAS to one thread (environment) before numpy loads in the child."""

from __future__ import annotations

import importlib
import os
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


def main(conn, modules: tuple[str, ...], memory_limit: int | None) -> None:
    """Worker loop: receive (job_id, experiment, seed, params), send (job_id, status, payload, seconds)."""
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
    except Exception as e:  # noqa: BLE001 - reported to the parent, which fails the jobs
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = lines[0] if str(e)[:1].strip() else (lines[-1] if lines else "")  # numpy's ImportError: last line
        conn.send(("startup-error", f"{type(e).__name__}: {detail}", None, None))
        return
    conn.send(("ready", None, None, None))
    while True:
        try:
            message = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if message is None:
            return
        job_id, experiment, seed, params = message
        status, payload, seconds = run_job(experiment, seed, params, modules)
        try:
            conn.send((job_id, status, payload, seconds))
        except (BrokenPipeError, EOFError):
            return
