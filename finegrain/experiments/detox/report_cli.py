"""`finegrain report RUN_DIR... --out DIR`: one table and one plot for several runs."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run folders (metrics.jsonl from training, eval/metrics.json from `finegrain eval --out RUN_DIR/eval`)")
    parser.add_argument("--out", required=True, help="folder for report.md and curves.png")
    parser.add_argument("--label", action="append", default=[], metavar="NAME",
                        help="name of each run in the table, in order (default: the folder's name)")
    parser.add_argument("--title", default=None, help="the report's title")
    parser.add_argument("--task", choices=["detox", "qa"], default="detox",
                        help="detox (default): toxicity table and curves.png; qa: the QA table (eval --task qa), rewards.png and presets.png")
    parser.add_argument("--rms", default=None, help="--task qa: RM folder whose heldout.json (the RMs' held-out metrics) goes in the report")
    parser.add_argument("--paired", nargs=2, metavar=("A", "B"), default=None,
                        help="two labels: A minus B per figure over the seeds both have (each run's run.seed), with its 95%% t "
                             "interval; runs given the same --label are seeds of one policy")
    parser.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from finegrain.config import ConfigError
    from finegrain.experiments.detox.report import summarize_run, write_report

    if args.label and len(args.label) != len(args.runs):
        raise ConfigError(f"--label: {len(args.label)} labels for {len(args.runs)} runs")
    names = [label or Path(folder).name for folder, label in zip(args.runs, args.label or [None] * len(args.runs))]
    for name in args.paired or ():
        if name not in names:
            raise ConfigError(f"--paired: {name!r} is none of the runs' labels ({', '.join(sorted(set(names)))})")
    paired = {"paired": tuple(args.paired)} if args.paired else {}
    if args.task == "qa":
        from finegrain.experiments.qa.report import summarize, write_qa_report

        summaries = [summarize(folder, name) for folder, name in zip(args.runs, names)]
    else:
        summaries = [summarize_run(folder, name) for folder, name in zip(args.runs, names)]
    if not any(r.metrics is not None or r.steps for r in summaries):
        raise ConfigError("none of the folders holds eval/metrics.json or metrics.jsonl: nothing to report")
    if args.task == "qa":
        groups: dict = {}
        for folder, name in zip(args.runs, names):  # runs with the same label are seeds of one policy
            groups.setdefault(name, []).append(folder)
        command = "finegrain report --task qa " + " ".join(args.runs) + f" --out {args.out}"
        print(write_qa_report(groups, args.out, rm_dir=args.rms, command=command, **({"title": args.title} if args.title else {}), **paired))
        return 0
    by_label: dict = {}
    for run in summaries:
        by_label.setdefault(run.label, []).append(run)
    path = write_report(summaries, args.out, title=args.title or "finegrain report", commands=["finegrain report " + " ".join(args.runs) + f" --out {args.out}"],
                        groups=by_label if args.paired else None, **paired)
    print(path)
    return 0
