"""Run seed jobs on a Dask cluster: the same jobs, results and cache as the local pool.

``DaskExecutor`` sends each (experiment, seed) job as one task that calls ``worker.run_job``
and hands each result to the runner exactly once; the runner (on the client) writes the
cache, so workers need no shared filesystem. Worker loss is the scheduler's business: a
task whose worker dies is run again elsewhere (``distributed.scheduler.allowed-failures``
times, then it is reported as an error). Time limits are kept on the client: at most one
job per worker thread is in flight, so a job's clock starts when it is sent; a job past its
limit is cancelled, reported as an error, and its worker restarted (if it has a nanny). Since the
scheduler never holds a queue, jobs start in the order given, as on the local pool (the runner
gives them longest first).

``distributed`` is an optional extra (``pip install 'bnclaims[dask]'``), imported only here.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import threading
import time
import uuid
from collections import deque
from typing import Callable

from bnclaims import worker
from bnclaims.errors import UserError
from bnclaims.executor import Job, Outcome

MISSING_EXTRA = "--executor dask needs Dask distributed: install bnclaims[dask] (pip install 'bnclaims[dask]')"
SLOTS_REFRESH = 1.0  # seconds between asking the scheduler how many worker threads there are
WORKERS_WAIT = 60.0  # seconds to wait for a first worker on a remote scheduler


def _distributed():
    try:
        import distributed
    except ImportError:
        raise UserError(MISSING_EXTRA) from None
    return distributed


# --------------------------------------------------------------------------- on the worker

_memory_limited = False


def fingerprint(experiment: str, modules: tuple[str, ...]) -> dict:
    """Code and versions a seed run's cache key depends on (besides params and seed)."""
    from bnclaims import experiments
    from bnclaims.cache import code_hashes, versions

    for module in modules:
        importlib.import_module(module)
    return {"code": code_hashes(experiments.get(experiment).module), "versions": versions()}


def run_on_worker(experiment: str, seed: int, params: dict, modules: tuple[str, ...], expected: dict,
                  memory_limit: int | None) -> tuple[str, object, float]:
    """The task a Dask worker runs: check it has the client's code and versions, then ``run_job``."""
    global _memory_limited
    if memory_limit and not _memory_limited:  # once per worker process, as the local pool does at start
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:  # never above a limit the worker was started under
            memory_limit = min(memory_limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, hard))
        _memory_limited = True
    try:
        found = fingerprint(experiment, modules)
    except Exception as e:  # noqa: BLE001 - reported as this seed's error
        return "error", f"seed {seed}: Dask worker cannot load experiment {experiment!r}: {type(e).__name__}: {e}", 0.0
    if found != expected:
        # a result computed by other code would be cached under this code's key
        differs = sorted(f for f in set(found["code"]) | set(expected["code"])
                         if found["code"].get(f) != expected["code"].get(f))
        differs += [f"{k} {found['versions'].get(k)} (client {v})" for k, v in expected["versions"].items()
                    if found["versions"].get(k) != v]
        return "error", (f"seed {seed}: Dask worker runs other code or versions than the client "
                         f"({', '.join(differs)}); install the same bnclaims and packages on the workers"), 0.0
    return worker.run_job(experiment, seed, params, modules)


# --------------------------------------------------------------------------- on the client

class DaskExecutor:
    """Seed jobs on a Dask cluster: the scheduler at ``address``, or a new ``LocalCluster``."""

    def __init__(self, address: str | None = None, n_workers: int = 1, modules: tuple[str, ...] = (),
                 memory_limit: int | None = None):
        _distributed()  # fail now, with one line, if the extra is missing
        self.address = address
        self.n_workers = max(1, n_workers)
        self.modules = tuple(modules)
        self.memory_limit = memory_limit  # applied only to workers this executor starts

    @contextlib.contextmanager
    def client(self, n_jobs: int):
        """A Client of the scheduler at ``address``, or of a LocalCluster started (and closed) here."""
        distributed = _distributed()
        if self.address:
            try:
                client = distributed.Client(self.address, timeout=30)
            except (OSError, TimeoutError) as e:
                raise UserError(f"cannot connect to the Dask scheduler at {self.address} ({e})") from None
            with client:
                try:
                    client.wait_for_workers(1, timeout=WORKERS_WAIT)
                except TimeoutError:
                    raise UserError(f"no Dask worker joined the scheduler at {self.address} "
                                    f"within {WORKERS_WAIT:g} s") from None
                yield client
            return
        import dask

        # set in the environment before each worker process starts, so numpy's BLAS sees it
        blas = {"distributed.nanny.pre-spawn-environ": {name: "1" for name in worker.BLAS_ENV}}
        saved = {name: os.environ.get(name) for name in (*worker.BLAS_ENV, "PYTHONHASHSEED", "MALLOC_TRIM_THRESHOLD_")}
        try:
            with dask.config.set(blas):
                cluster = distributed.LocalCluster(n_workers=min(self.n_workers, n_jobs), threads_per_worker=1,
                                                   processes=True, dashboard_address=None,
                                                   silence_logs=logging.CRITICAL)  # outcomes say what failed
            with cluster, distributed.Client(cluster) as client:
                yield client
        finally:  # the nannies set them in this process too, before each spawn
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def run(self, jobs: list[Job], on_done: Callable[[Job, Outcome], None]) -> None:
        if not jobs:
            return
        distributed = _distributed()
        memory_limit = None if self.address else self.memory_limit  # never touch a shared cluster's limits
        expected: dict[str, dict] = {}  # experiment -> the client's fingerprint, which workers must match
        pending = deque(jobs)
        running: dict = {}  # future -> (job, time it was sent)
        with self.client(len(jobs)) as client:
            slots, slots_checked = 1, float("-inf")
            try:
                while pending or running:
                    if time.perf_counter() - slots_checked > SLOTS_REFRESH:  # workers may come and go
                        slots, slots_checked = max(1, sum(client.nthreads().values())), time.perf_counter()
                    while pending and len(running) < slots:  # one job per worker thread: its clock starts now
                        job = pending.popleft()
                        if job.experiment not in expected:
                            expected[job.experiment] = fingerprint(job.experiment, self.modules)
                        future = client.submit(run_on_worker, job.experiment, job.seed, job.params, self.modules,
                                               expected[job.experiment], memory_limit, pure=False,
                                               key=f"bnclaims-{job.experiment}-{uuid.uuid4().hex}")
                        running[future] = (job, time.perf_counter())
                    next_deadline = min(sent + job.timeout for job, sent in running.values())
                    try:
                        done, _ = distributed.wait(list(running), return_when="FIRST_COMPLETED",
                                                   timeout=min(max(0.0, next_deadline - time.perf_counter()),
                                                               SLOTS_REFRESH))
                    except TimeoutError:
                        done = set()
                    finished = [f for f in done if f.status == "finished"]
                    for future, (status, payload, seconds) in zip(finished, client.gather(finished)):
                        job, _ = running.pop(future)  # popped: each job is delivered once
                        on_done(job, Outcome(status, payload, seconds))
                    for future in done & running.keys():  # erred: its workers kept dying, or it was lost
                        job, sent = running.pop(future)
                        on_done(job, Outcome("error", f"seed {job.seed}: {_describe(future)}",
                                             time.perf_counter() - sent))
                    for future, (job, sent) in list(running.items()):
                        if time.perf_counter() - sent >= job.timeout:
                            del running[future]
                            _abandon(client, future)
                            on_done(job, Outcome("error", f"seed {job.seed}: timed out after {job.timeout:g} s "
                                                          "(raise 'timeout:' in the claim or --timeout)", job.timeout))
            finally:
                if running:  # interrupted: leave nothing running on a shared cluster
                    client.cancel(list(running), force=True)


def _describe(future) -> str:
    if future.status == "cancelled":
        return "Dask task was cancelled (scheduler or worker lost)"
    error = future.exception()
    if type(error).__name__ == "KilledWorker":
        return "Dask workers died each time they ran this seed (killed, crashed or out of memory)"
    message = str(error).splitlines()[0] if str(error) else ""
    return f"Dask task failed: {type(error).__name__}: {message}"


def _abandon(client, future) -> None:
    """Cancel a job past its time limit and restart the worker it is stuck on (if it has a nanny)."""
    on = [address for address, keys in client.processing().items() if future.key in keys]
    client.cancel([future], force=True)

    def restart() -> None:
        try:
            client.restart_workers(on, raise_for_error=False)
        except Exception:  # noqa: BLE001 - best effort: a worker without a nanny stays busy until the job ends
            pass

    if on:  # in the background: a restart takes seconds, and the other workers have jobs to get
        threading.Thread(target=restart, daemon=True).start()
