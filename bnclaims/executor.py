"""Executors run seed jobs; the runner does not care where.

``LocalExecutor`` keeps one process per core (``spawn``, one BLAS thread each). Each job
has its own time limit; a job that runs past it, or whose worker dies (killed, out of
memory), is reported as an error and the worker is replaced, so every other job still
completes.

Every executor starts jobs in the order it is given them, each on the first worker that is free
(list scheduling); the runner gives them longest first (``bnclaims.schedule``), and
``schedule.simulate`` predicts the wall time of that order.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Callable, Protocol

from bnclaims import worker


@dataclass(frozen=True)
class Job:
    id: int
    experiment: str
    seed: int
    params: dict
    timeout: float


@dataclass(frozen=True)
class Outcome:
    status: str  # "ok" | "error"
    payload: object  # {"metrics", "series"} when ok, the message when error
    seconds: float
    output: str = ""  # what the job printed (its tail), captured instead of reaching the terminal


class Executor(Protocol):
    """Runs ``jobs``, starting them in the order given, and calls ``on_done`` once per job."""

    def run(self, jobs: list[Job], on_done: Callable[[Job, Outcome], None]) -> None: ...


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "worker process stopped responding"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"worker process was killed by {name}"
    return f"worker process exited with code {code}"


MAX_STARTUP_DEATHS = 3


class _Worker:
    def __init__(self, ctx, modules: tuple[str, ...], memory_limit: int | None):
        self.conn, child = ctx.Pipe()
        saved = {k: os.environ.get(k) for k in worker.BLAS_ENV}
        os.environ.update({k: "1" for k in worker.BLAS_ENV})  # inherited by the child at spawn
        # SIGINT blocked while the child starts (the mask is inherited): a Ctrl-C then cannot print a
        # traceback from a half-started worker, and the parent receives it once it unblocks
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self.process = ctx.Process(target=worker.main, args=(child, modules, memory_limit, os.getpid()),
                                       daemon=True)
            self.process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        child.close()
        # readable when the process exits, even if a process it forked still holds its pipes (the
        # multiprocessing sentinel is such a pipe); polled instead where there are no pidfds
        try:
            self.exit_fd: int | None = os.pidfd_open(self.process.pid)
        except (AttributeError, OSError):
            self.exit_fd = None
        self.ready = False
        self.job: Job | None = None
        self.deadline = float("inf")
        self.started = 0.0

    def assign(self, job: Job) -> None:
        self.job = job
        self.started = time.perf_counter()
        self.deadline = self.started + job.timeout
        self.conn.send((job.id, job.experiment, job.seed, job.params))

    def kill(self) -> None:
        """End the worker and everything in its process group (what its jobs started)."""
        if self.process.is_alive():
            self.process.kill()
        kill_group(self.process.pid)  # first: a stray holding the exit pipe would make join() wait
        self.process.join(5)
        self.conn.close()
        if self.exit_fd is not None:
            os.close(self.exit_fd)
            self.exit_fd = None

    def wait_exit(self, seconds: float) -> None:
        """Wait (up to ``seconds``) for a worker that closed its pipe to finish exiting, for its exit code."""
        if self.exit_fd is not None:
            wait([self.exit_fd], timeout=seconds)
        else:
            self.process.join(seconds)

    def exited(self, ready: list) -> bool:
        if self.exit_fd is not None:
            return self.exit_fd in ready
        return not self.process.is_alive()


def kill_group(pgid: int | None) -> None:
    if pgid:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:  # no such group left: nothing to do
            pass


class LocalExecutor:
    """A pool of worker processes on this machine."""

    def __init__(self, n_workers: int, modules: tuple[str, ...] = (), memory_limit: int | None = None):
        self.n_workers = max(1, n_workers)
        self.modules = modules
        self.memory_limit = memory_limit

    def run(self, jobs: list[Job], on_done: Callable[[Job, Outcome], None]) -> None:
        if not jobs:
            return
        ctx = multiprocessing.get_context("spawn")
        pending = deque(jobs)
        workers = [_Worker(ctx, self.modules, self.memory_limit) for _ in range(min(self.n_workers, len(jobs)))]
        remaining = len(jobs)
        startup_deaths = 0  # workers in a row that died before they were ready
        try:
            while remaining:
                for w in workers:
                    if w.ready and w.job is None and pending:
                        w.assign(pending.popleft())
                now = time.perf_counter()
                deadline = min((w.deadline for w in workers if w.job), default=float("inf"))
                timeout = None if deadline == float("inf") else max(0.0, deadline - now)
                if any(w.exit_fd is None for w in workers):
                    timeout = 0.5 if timeout is None else min(timeout, 0.5)
                # a worker's exit is seen even while a process it forked keeps the pipe open
                ready = wait([w.conn for w in workers] + [w.exit_fd for w in workers if w.exit_fd is not None],
                             timeout=timeout)
                for i, w in enumerate(workers):
                    if w is None or (w.conn not in ready and not w.exited(ready)):
                        continue
                    try:
                        if w.conn not in ready and not w.conn.poll():
                            raise EOFError  # exited without a word
                        job_id, status, payload, seconds, output = w.conn.recv()
                    except (EOFError, OSError):
                        w.wait_exit(5)
                        job = w.job
                        w.kill()
                        if job is not None:
                            remaining -= 1
                            on_done(job, Outcome("error", f"seed {job.seed}: {_describe_exit(w.process.exitcode)}",
                                                 time.perf_counter() - w.started))
                        elif not w.ready:
                            startup_deaths += 1
                            if startup_deaths >= MAX_STARTUP_DEATHS:  # a new worker would die the same way
                                reason = (f"worker could not start: {_describe_exit(w.process.exitcode)} before it "
                                          f"was ready ({startup_deaths} times in a row)")
                                while pending:
                                    remaining -= 1
                                    on_done(pending.popleft(), Outcome("error", reason, 0.0))
                        workers[i] = _Worker(ctx, self.modules, self.memory_limit) if pending else None
                        continue
                    if job_id == "ready":
                        w.ready = True
                        startup_deaths = 0
                        continue
                    if job_id == "startup-error":
                        # every worker would fail the same way: fail the jobs instead of respawning forever
                        while pending:
                            job = pending.popleft()
                            remaining -= 1
                            on_done(job, Outcome("error", f"worker could not start: {status}", 0.0))
                        w.kill()
                        workers[i] = None
                        continue
                    job, w.job, w.deadline = w.job, None, float("inf")
                    remaining -= 1
                    on_done(job, Outcome(status, payload, seconds, output))
                workers = [w for w in workers if w is not None]
                now = time.perf_counter()
                for i, w in enumerate(workers):
                    if w.job is not None and now >= w.deadline:
                        job = w.job
                        w.kill()
                        remaining -= 1
                        on_done(job, Outcome("error", f"seed {job.seed}: timed out after {job.timeout:g} s "
                                                      "(raise 'timeout:' in the claim or --timeout)", job.timeout))
                        workers[i] = _Worker(ctx, self.modules, self.memory_limit) if pending else None
                workers = [w for w in workers if w is not None]
        except BaseException:  # interrupted (Ctrl-C, SIGTERM) or a bug: no worker outlives the run
            for w in workers:
                w.kill()
            raise
        finally:
            for w in workers:
                try:
                    w.conn.send(None)
                except (OSError, ValueError):
                    pass
            for w in workers:
                w.process.join(2)
                w.kill()
