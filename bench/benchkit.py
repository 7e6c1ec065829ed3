"""What the bench scripts that put finegrain beside another trainer share: every arm runs in a fresh
Python process (no warm caches, its own peak memory), prints one `RESULT {json}` line, and is
summarised by the median time per step after a warm-up.

    from benchkit import run_arm, median_after_warmup        # in a bench/ script (bench/ is on sys.path)
    from benchkit import emit                                 # in an arm's child code (run_arm puts bench/ on its path)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
PREFIX = "RESULT "


def emit(result: dict) -> None:
    """Child side: print the arm's result with the process's peak RSS (ru_maxrss, model loading
    included) in GiB."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(PREFIX + json.dumps({**result, "peak_rss_gib": peak}), flush=True)


def run_arm(code: str, args: Sequence[str], threads: int | None = None, label: str = "arm") -> dict:
    """Run `code` (python -c) with `args` in a fresh process from the repository root, with this
    checkout and bench/ on its path; `threads`: OMP/MKL thread count for the child (None: inherit).
    Returns the child's last RESULT line; a failing child stops the bench with its stderr."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(BENCH)])}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith(PREFIX)]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{label} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len(PREFIX) :])


def median_after_warmup(times: Sequence[float]) -> float:
    """The median of the step times after the first (a warm-up: allocator, oneDNN kernels); the
    only time when there is one."""
    return statistics.median(times[1:]) if len(times) > 1 else times[0]
