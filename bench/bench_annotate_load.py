"""Throughput and latency of the annotation server under N concurrent annotators on loopback.

    .venv/bin/python bench/bench_annotate_load.py --annotators 20 --each 50 [--kill-after 400]

Starts `finegrain annotate serve` on a fresh SQLite database in a temporary folder, runs the load
loop of finegrain.annotate.loadgen (each annotator: GET the task, POST the submission; every 10th
submission sent twice), checks the store, and prints submissions/s and latency percentiles of the
acknowledged POSTs.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from finegrain.annotate.loadgen import ServerProcess, free_port, run_load, setup, stored


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotators", type=int, default=20)
    p.add_argument("--each", type=int, default=50)
    p.add_argument("--kill-after", type=int, help="SIGKILL and restart the server after this many acknowledgements")
    p.add_argument("--db", help="SQLAlchemy URL of an empty database (default: SQLite in a temporary folder)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.db or f"sqlite:///{Path(tmp) / 'bench.db'}"
        tokens = setup(url, args.annotators, args.each)
        server = ServerProcess(url, free_port(), log=Path(tmp) / "server.log")
        server.start()
        try:
            r = run_load(server, tokens, kill_after=args.kill_after)
        finally:
            server.stop()
        rows = stored(url)
    want = args.annotators * args.each
    lost = sum(rows.get(k) != rid for k, rid in r.acknowledged.items())
    print(f"annotators {args.annotators} x {args.each}: acknowledged {len(r.acknowledged)}/{want}, stored {len(rows)}, "
          f"lost {lost}, errors {len(r.errors)}, retries after kill {r.retries}")
    print(f"throughput {r.throughput:.1f} submissions/s over {r.wall:.1f} s; latency p50 {1000 * r.percentile(0.5):.0f} ms, "
          f"p90 {1000 * r.percentile(0.9):.0f} ms, p99 {1000 * r.percentile(0.99):.0f} ms, max {1000 * max(r.latencies):.0f} ms")
    for e in r.errors[:5]:
        print("error:", e)


if __name__ == "__main__":
    main()
