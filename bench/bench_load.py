"""Load time of the embedded policy: cold (GGUF de-quantisation into an empty cache) and cached.

    .venv/bin/python bench/bench_load.py --runs 5

Each load runs in a fresh process (imports included in nothing but the `load` figure, which is
the time of `load_policy()` itself; `total` adds `import transformers` and interpreter start).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

CHILD = """
import json, sys, time
t0 = time.perf_counter()
import torch, transformers
from finegrain.models import load_policy
t1 = time.perf_counter()
model, tok = load_policy("smollm2-135m", cache=__import__("pathlib").Path(sys.argv[1]))
t2 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load": t2 - t1}))
"""


def one(cache: str) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, cache], capture_output=True, text=True, check=True).stdout
    row = json.loads(out.strip().splitlines()[-1])
    row["total"] = time.perf_counter() - t0
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        cold = one(cache)
        warm = [one(cache) for _ in range(args.runs)]
    print(f"cold (de-quantise GGUF + write cache): load {cold['load']:.1f} s, total {cold['total']:.1f} s")
    for key in ("import", "load", "total"):
        values = [w[key] for w in warm]
        print(f"cached, median of {args.runs}: {key} {statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f})")


if __name__ == "__main__":
    main()
