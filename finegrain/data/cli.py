"""`finegrain data check|stats|convert|pairs`."""

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
    p = sub.add_parser(
        "pairs",
        help="make preference pairs (chosen over rejected) for DPO/SimPO from a feedback file",
        description="Make preference pairs for DPO and SimPO. human: every non-tie pairwise judgement; "
        "span: the corrected response over the original, and for each annotated error span the response "
        "without it over the response with it (spans removed one at a time, in text order). "
        "Writes finegrain pair JSONL (docs/data-format.md).",
    )
    p.add_argument("file", help="QA-Feedback .json, finegrain .jsonl, or a pair file to filter by origin")
    p.add_argument("--out", required=True, help="output pair file (.jsonl)")
    p.add_argument("--from", dest="source", choices=["human", "span", "all"], default="all",
                   help="which pairs: human judgements, span feedback, or both (default: all)")
    p.add_argument("--force", action="store_true", help="replace --out when it exists")
    _format_args(p)
    p.set_defaults(func=_pairs)


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


def _pairs(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from finegrain.data.pairs import SKIP_REASONS, SOURCES, load_pairs_counted, write_pairs

    if Path(args.out).exists() and not args.force:  # before the work of making the pairs
        print(f"finegrain: error: --out {args.out}: already exists; pass --force to replace it", file=sys.stderr)
        return 2
    pairs, skipped = load_pairs_counted(args.file, args.source, _taxonomy(args), args.format)
    if not pairs:  # an empty pairs file would only fail later, in a trainer
        what = {"human": "pairwise judgements", "span": "corrected responses or marked spans", "all": "pairwise judgements, corrected responses or marked spans"}
        print(f"finegrain: error: {args.file}: no pairs to write (--from {args.source}: the file has no {what[args.source]} "
              "that make a pair); nothing written", file=sys.stderr)
        return 2
    try:
        write_pairs(args.out, pairs, force=args.force)
    except FileExistsError as err:  # created since the check above
        print(f"finegrain: error: {err}", file=sys.stderr)
        return 2
    by_origin = ", ".join(f"{sum(p.origin == o for p in pairs)} {o}" for o in SOURCES[args.source])
    print(f"wrote {len(pairs)} pairs to {args.out}: {by_origin}")
    reasons = {"human": ("tie", "same-text"), "span": ("same-text", "empty"), "all": tuple(SKIP_REASONS)}[args.source]
    print("skipped: " + ", ".join(f"{skipped[k]} {SKIP_REASONS[k]}" for k in reasons))
    return 0
