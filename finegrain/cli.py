"""The `finegrain` command. Each subcommand lives in its own module, imported only to build its parser;
those modules import torch and friends inside their handlers, so `finegrain --help` stays instant."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module with `add_arguments(parser)`, one-line help). Handlers are set with set_defaults(func=...).
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("finegrain.data.cli", "check, count and convert feedback files"),
    "models": ("finegrain.models_cli", "load, cache and try the embedded models"),
    "annotate": ("finegrain.annotate.cli", "the feedback-collection web app: serve, tokens, import, export, agreement"),
    "sample": ("finegrain.annotate.sample", "sample K responses per prompt from a policy, as finegrain JSONL to annotate"),
    "train": ("finegrain.recipes.cli", "train a policy: sft, dpo, simpo, ppo, grpo or rloo (fine-grained or holistic rewards)"),
    "rm": ("finegrain.rewards.cli", "train and evaluate reward models (span classifiers, pairwise Bradley-Terry)"),
    "demo": ("finegrain.experiments.detox.demo_cli", "the demos on the embedded models: detox (holistic vs fine-grained PPO), qa (the long-form QA experiment)"),
    "eval": ("finegrain.eval_cli", "evaluate a policy: toxicity, perplexity, diversity; --task qa: QA error rates, ROUGE-L, win rate"),
    "report": ("finegrain.experiments.detox.report_cli", "compare runs: report.md table and curves.png"),
}


def build_parser() -> argparse.ArgumentParser:
    from finegrain import __version__

    parser = argparse.ArgumentParser(
        prog="finegrain",
        description="Fine-Grained RLHF: dense, multi-category rewards from span-level feedback.",
    )
    parser.add_argument("--version", action="version", version=f"finegrain {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # `finegrain train sft --config F key=value`: overrides may follow options (argparse alone
    # takes positionals only up to the first option)
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not getattr(args, "trailing_overrides", False) or any(x.startswith("-") for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    func = getattr(args, "func", None)
    if func is None:
        # a command group without its subcommand: show that group's help
        parser.parse_args([*(argv if argv is not None else sys.argv[1:]), "--help"])
        return 2
    from finegrain.errors import UserError

    try:
        return int(func(args) or 0)
    except UserError as err:
        print(f"finegrain: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("finegrain: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
