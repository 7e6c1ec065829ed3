"""`finegrain data check|stats|convert`."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    p = sub.add_parser("check", help="report every problem in a feedback file (exit 0 only when clean)")
    p.add_argument("file", help="QA-Feedback .json, RealToxicityPrompts .jsonl or finegrain .jsonl")
    _format_args(p)
    p.set_defaults(func=_check)
    p = sub.add_parser("stats", help="count examples, spans per category, missing info, preferences")
    p.add_argument("file")
    _format_args(p)
    p.set_defaults(func=_stats)
    p = sub.add_parser("convert", help="convert a feedback file to finegrain JSONL (or QA-Feedback JSON)")
    p.add_argument("file")
    p.add_argument("out", help="output path; .jsonl writes finegrain JSONL, .json writes QA-Feedback JSON")
    _format_args(p)
    p.set_defaults(func=_convert)


def _format_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=["qa-feedback", "rtp", "finegrain"], help="input format (default: from the file)")
    p.add_argument(
        "--categories",
        help="YAML/JSON file mapping annotation categories to RM categories (default: the paper's)",
    )


def _taxonomy(args: argparse.Namespace):
    from finegrain.data.categories import DEFAULT_TAXONOMY
    from finegrain.data.taxonomy_file import load_taxonomy

    return load_taxonomy(args.categories) if args.categories else DEFAULT_TAXONOMY


def _check(args: argparse.Namespace) -> int:
    from finegrain.data.load import read_examples

    examples, problems = read_examples(args.file, _taxonomy(args), args.format)
    for p in problems:
        print(p)
    if problems:
        print(f"{args.file}: {len(problems)} problem(s); {len(examples)} clean record(s)")
        return 1
    print(f"{args.file}: clean ({len(examples)} records)")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from finegrain.data.load import load_examples
    from finegrain.data.stats import compute_stats

    stats = compute_stats(load_examples(args.file, _taxonomy(args), args.format))
    print("\n".join(stats.lines()))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from finegrain.data.jsonl import write_jsonl
    from finegrain.data.load import load_examples
    from finegrain.data.qa_feedback import write_qa_feedback

    examples = load_examples(args.file, _taxonomy(args), args.format)
    (write_qa_feedback if args.out.endswith(".json") else write_jsonl)(args.out, examples)
    print(f"wrote {len(examples)} examples to {args.out}")
    return 0
