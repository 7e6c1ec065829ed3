"""Throughput and latency of the annotation server under N concurrent annotators on loopback, on
SQLite and on PostgreSQL, steady and with the server SIGKILLed and restarted, side by side in one run.

    .venv/bin/python bench/bench_annotate_load.py --annotators 20 --each 50 --kill-after 400 \\
        --backends sqlite postgresql

For each backend: a fresh database (SQLite in a temporary folder, `synchronous=FULL`; PostgreSQL: a
local server started for the run on a temporary data folder with its default durability, fsync on),
`finegrain annotate serve` in a subprocess, the load loop of finegrain.annotate.loadgen (each
annotator: GET the task, POST the submission; every 10th submission sent twice), a check of the
store, and submissions/s and latency percentiles of the acknowledged POSTs; then the same with the
server killed (SIGKILL) after `--kill-after` acknowledgements and restarted.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from finegrain.annotate.loadgen import ServerProcess, free_port, run_load, setup, stored


def one_run(url: str, annotators: int, each: int, kill_after: int | None, tmp: Path) -> dict:
    tokens = setup(url, annotators, each)
    server = ServerProcess(url, free_port(), log=tmp / "server.log")
    server.start()
    try:
        r = run_load(server, tokens, kill_after=kill_after)
    finally:
        server.stop()
    rows = stored(url)
    lost = sum(rows.get(k) != rid for k, rid in r.acknowledged.items())
    return {
        "acknowledged": len(r.acknowledged), "stored": len(rows), "lost": lost, "errors": r.errors, "retries": r.retries,
        "throughput": r.throughput, "wall": r.wall, "p50": 1000 * r.percentile(0.5), "p90": 1000 * r.percentile(0.9),
        "p99": 1000 * r.percentile(0.99), "max": 1000 * max(r.latencies),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotators", type=int, default=20)
    p.add_argument("--each", type=int, default=50)
    p.add_argument("--kill-after", type=int, default=400, help="the killed run: SIGKILL and restart after this many acknowledgements")
    p.add_argument("--backends", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"])
    args = p.parse_args()
    want = args.annotators * args.each
    print(f"{args.annotators} annotators x {args.each} submissions, one server process (uvicorn), clients on the same machine")
    print(f"{'backend':<11}{'run':<8}{'stored':>9}{'lost':>6}{'errors':>8}{'retries':>9}{'subm/s':>9}{'p50 ms':>8}{'p90 ms':>8}{'p99 ms':>8}{'max ms':>8}")
    pg = None
    try:
        for backend in args.backends:
            for kill in (None, args.kill_after):
                with tempfile.TemporaryDirectory() as tmp:
                    if backend == "sqlite":
                        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
                    else:
                        if pg is None:
                            from finegrain.annotate.localpg import PostgresServer

                            pg = PostgresServer(durable=True)
                            why = pg.missing()
                            if why:
                                raise SystemExit(f"postgresql: {why}")
                            pg.start()
                        url = pg.new_database()
                    r = one_run(url, args.annotators, args.each, kill, Path(tmp))
                print(f"{backend:<11}{'killed' if kill else 'steady':<8}{r['stored']:>5}/{want:<3}{r['lost']:>6}{len(r['errors']):>8}"
                      f"{r['retries']:>9}{r['throughput']:>9.1f}{r['p50']:>8.0f}{r['p90']:>8.0f}{r['p99']:>8.0f}{r['max']:>8.0f}", flush=True)
                for e in r["errors"][:3]:
                    print("  error:", e)
    finally:
        if pg is not None:
            pg.stop()


if __name__ == "__main__":
    main()
