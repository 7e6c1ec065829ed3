"""A demo's independent stages side by side: each in a fresh process, started once its inputs exist.

A demo lists its pending work as `Job`s, each naming the jobs whose outputs it reads; `run_jobs` keeps
at most `workers` of them running (spawned processes: torch's threads and memory start clean, and a
job's output goes to its own log), prints a line when one starts and one when it ends, and hands each
finished job's wall-clock and CPU seconds to the demo, which keeps its timings in one process. A failed
job stops new starts; the running ones finish; then one `StageFailed` names the job and its log (the
traceback is there). Every demo stage resumes, so the same command goes on from there.

Measured on a 2-core machine (README): one thread made a detox phase 1.7x slower than two, so side by
side pays where many stages are independent (the QA demo: 24 stages in 70.8 min, their times summing
to 138.8) and little where a few chains wait on each other (the detox demo: 9.5 against 9.8 min).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable


@dataclass(frozen=True)
class Job:
    key: Hashable  # what other jobs name in `needs`
    label: str  # in the progress lines and the timings
    log: Path  # the job's stdout and stderr
    func: Callable[..., Any]  # a module-level function (it is pickled into the worker)
    args: tuple = ()
    needs: tuple = ()  # keys of jobs that must finish first; a key that is not one of the jobs counts as done
    threads: int | None = None  # torch threads in the worker


WORKER_MEMORY = 8 * 2**30  # what a QA stage's worker may hold (a PPO run: policy, reference, critic, RMs: about 5 GiB)


def default_workers(most: int = 2) -> int:
    """Workers for a demo whose stages mostly run side by side (the QA demo) when the command line
    names none: on a CPU-only machine two where it has two cores and the memory for two workers, else
    one; with a GPU one (every stage on that GPU, in turn)."""
    import torch

    if torch.cuda.is_available():
        return 1
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): one worker, as before
        return 1
    return max(1, min(most, os.cpu_count() or 1, memory // WORKER_MEMORY))


def worker_settings(workers: int | None, threads: int | None) -> dict[str, int]:
    """A demo config's `workers` and `threads` from the command line: with workers and no --threads, the
    machine's cores shared among them (at least one thread each)."""
    if workers is None:
        return {}
    return {"workers": workers, "threads": threads if threads is not None else max(1, (os.cpu_count() or 1) // max(workers, 1))}


def start_order(jobs: list[Job]) -> list[Job]:
    """`jobs` in the order to start them when several are ready: the ones more jobs wait on (directly or
    through others) first, list order among equals, so that a stage everything downstream needs (the QA
    demo's SFT evaluation, the win-rate baseline of every other evaluation) does not wait behind
    training runs that nothing waits on."""
    keys = {j.key for j in jobs}
    needed_by: dict[Hashable, set] = {j.key: set() for j in jobs}
    for j in jobs:
        for k in j.needs:
            if k in keys:
                needed_by[k].add(j.key)

    def waiting(key: Hashable, seen: set) -> set:
        for k in needed_by[key] - seen:
            seen.add(k)
            waiting(k, seen)
        return seen

    count = {j.key: len(waiting(j.key, set())) for j in jobs}
    return sorted(jobs, key=lambda j: -count[j.key])  # sorted is stable: list order among equals


def run_jobs(jobs: list[Job], workers: int, say: Callable[[str], None], record: Callable[[Job, float, float], None]) -> None:
    """Run `jobs` with at most `workers` at once, each once the jobs it needs are done (`start_order`
    among those ready)."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from finegrain.errors import StageFailed

    keys = {j.key for j in jobs}
    pending, finished = start_order(jobs), set()
    running: dict[Any, Job] = {}
    failures: list[tuple[Job, BaseException]] = []
    total = len(jobs)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1) as pool:
        while pending or running:
            for job in [j for j in pending if not failures]:
                if len(running) >= workers:
                    break
                if all(k in finished or k not in keys for k in job.needs):
                    pending.remove(job)
                    job.log.parent.mkdir(parents=True, exist_ok=True)
                    running[pool.submit(_in_worker, job.func, job.args, str(job.log), job.threads)] = job
                    say(f"{job.label}: started ({len(running)} running, output in {job.log})")
            if not running:
                break  # only jobs whose inputs failed (or never ran) are left
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                try:
                    wall, cpu = future.result()
                except BaseException as err:  # noqa: BLE001 -- reported below, with the job and its log
                    failures.append((job, err))
                    say(f"{job.label}: FAILED ({type(err).__name__}: {err})")
                    continue
                finished.add(job.key)
                record(job, wall, cpu)
                n = len(finished)
                say(f"[{'#' * (n * 20 // total)}{'.' * (20 - n * 20 // total)}] {n}/{total} {job.label}: done in {wall / 60:.1f} min")
    if failures:
        job, err = failures[0]
        raise StageFailed(f"stage {job.label} failed: {type(err).__name__}: {err} (its output: {job.log}); "
                          "run the same command again to go on from there") from err


def _in_worker(func: Callable[..., Any], args: tuple, log: str, threads: int | None) -> tuple[float, float]:
    """In the worker process: run `func(*args)` with stdout and stderr in `log`; returns (wall, CPU) seconds."""
    import traceback

    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)  # the process runs this one job and exits: its output is the log from here on
    try:
        import torch

        if threads:
            torch.set_num_threads(threads)
        t0, c0 = time.perf_counter(), time.process_time()
        func(*args)
        return time.perf_counter() - t0, time.process_time() - c0
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
