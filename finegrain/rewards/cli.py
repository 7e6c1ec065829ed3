"""`finegrain rm train|eval|cv|judge|split`: train, evaluate and cross-validate reward models, build
the toxicity judge, split data."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from finegrain.rewards.card import RMCard


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="rm_command", metavar="SUBCOMMAND")

    p = sub.add_parser(
        "train",
        help="train a span-classifier or pairwise (Bradley-Terry) reward model",
        description="Train a reward model and save it (HF files + finegrain_rm.json) in --out. "
        "Settings come from the defaults, then --config, then --kind/--category, then key=value overrides "
        "(e.g. epochs=3 backbone=/path/to/model).",
    )
    p.add_argument("--train-file", required=True, help="QA-Feedback .json or finegrain .jsonl with span annotations / preferences")
    p.add_argument("--eval-file", help="held-out file: its metrics go into the card")
    p.add_argument("--out", required=True, help="folder to save the model and its card in")
    p.add_argument("--force", action="store_true", help="replace --out when it already holds a reward model (default: refuse)")
    add_config_arguments(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="score a held-out file with a trained RM and print its metrics")
    p.add_argument("model", help="folder of a trained RM (has finegrain_rm.json)")
    p.add_argument("file", help="QA-Feedback .json or finegrain .jsonl")
    p.add_argument("--threshold", type=float, help="span RMs: P(error) threshold (default: the card's)")
    p.add_argument("--batch-size", type=int, default=16, help="inputs per forward pass")
    p.add_argument("--device", help="torch device")
    add_threads_argument(p)
    p.add_argument("--json", help="also write the metrics to this JSON file (a multi-task RM: {category: metrics})")
    p.add_argument("--update-card", action="store_true", help="store the metrics in the model's card")
    p.add_argument("--reliability", metavar="PNG",
                   help="span RMs: write the reliability diagram of P(error) to this PNG (a multi-task RM: PNG-<category>.png per head)")
    p.add_argument("--categories-file", help="YAML/JSON taxonomy")
    p.set_defaults(func=_eval)

    p = sub.add_parser(
        "cv",
        help="k-fold cross-validation of an RM configuration over a feedback file, with trivial baselines",
        description="Deal the file's examples into --folds folds (shuffled by --seed); train on all but one fold with the "
        "configured settings and evaluate on the one left out, once per fold. Reports each fold and the mean and "
        "spread (sample std) over folds of the RM's metric and of the trivial baselines on the same held-out data "
        "(span: flag every segment, flag none; pairwise: longer wins, majority), training CPU time and scoring "
        "throughput. Thresholds and the majority side are chosen on the training folds only. Writes OUT/cv.json "
        "and, for span RMs, OUT/reliability.png. Settings as for `rm train`.",
    )
    p.add_argument("--file", required=True, help="QA-Feedback .json or finegrain .jsonl")
    p.add_argument("--out", required=True, help="folder for cv.json (and reliability.png, fold models with --keep-models)")
    p.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle that deals the examples into folds (default 0)")
    p.add_argument("--train-examples", type=int, metavar="N",
                   help="train each fold on only N of the other folds' examples (a learning curve: same held-out folds)")
    p.add_argument("--only-folds", metavar="F[,F...]",
                   help="compute only these folds (0-based, comma-separated), e.g. one per process; folds saved in OUT by a run with the "
                        "same settings are always reused, so a last run without this option reports them all")
    p.add_argument("--keep-models", action="store_true", help="keep each fold's model in OUT/fold-N")
    p.add_argument("--baselines-only", action="store_true", help="train nothing: the trivial baselines on the same folds")
    add_config_arguments(p)
    p.set_defaults(func=_cv)

    p = sub.add_parser(
        "judge",
        help="build the independent toxicity judge (MiniLM embeddings + a head distilled from Perspective)",
        description="Embed every prompt and continuation of a RealToxicityPrompts file with a frozen encoder, fit a "
        "small head to their Perspective toxicity scores, and write head.safetensors and judge.json to --out. "
        "The HELDOUT prompts with the smallest SHA-1 (the PPO runs' split rule) are never trained on; the metrics "
        "on them are printed and kept in the card. The shipped judge: "
        "finegrain rm judge --data ../shared/data/realtoxicityprompts/prompts.jsonl --out finegrain/assets/toxicity_judge --force",
    )
    p.add_argument("--data", required=True, help="RealToxicityPrompts JSONL with Perspective scores (e.g. ../shared/data/realtoxicityprompts/prompts.jsonl)")
    p.add_argument("--out", required=True, help="folder to write the judge to")
    p.add_argument("--backbone", default="minilm-l6", help="frozen encoder: embedded name, local path or hub id (default: minilm-l6)")
    p.add_argument("--heldout", type=int, default=800, help="prompts held out by the hash rule, never trained on (default: 800)")
    p.add_argument("--validation", type=int, default=400, help="of the rest, prompts that choose the head (default: 400)")
    p.add_argument("--batch-size", type=int, default=64, help="texts per encoder forward pass (default: 64)")
    p.add_argument("--fp32", action="store_true", help="embed without bf16 autocast (default: bf16 where the device has fast bf16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    add_threads_argument(p)
    p.set_defaults(func=_judge)

    p = sub.add_parser(
        "split",
        help="split a feedback file into train and held-out files (fixed by --seed)",
        description="Shuffle the records with random.Random(SEED) and write the first N to TRAIN_OUT, "
        "the rest to EVAL_OUT, unchanged and in the input's format.",
    )
    p.add_argument("file")
    p.add_argument("--train", type=int, required=True, help="records in the training part")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-out", required=True)
    p.add_argument("--eval-out", required=True)
    p.set_defaults(func=_split)


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """What `rm train` and `rm cv` share: the RMTrainConfig sources (read by `_config`), taxonomy, device."""
    p.add_argument("--config", help="YAML file of RMTrainConfig settings (e.g. configs/rm_relevance.yaml)")
    p.add_argument("--kind", choices=["span", "pairwise"], help="span or pairwise (overrides the config)")
    p.add_argument("--category", help="relevance, factuality (span) or preference, completeness (pairwise)")
    p.add_argument("--categories-file", help="YAML/JSON taxonomy mapping annotation categories to RM categories")
    p.add_argument("--device", help="torch device (default: cuda when there is one, else cpu)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """`--threads N`, applied by `with torch_threads(args.threads)` (finegrain.rewards.rm_common)."""
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's, one per core; 1 is faster on a crowded machine)")


def check_threads(args: argparse.Namespace) -> None:
    from finegrain.config import ConfigError

    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads: {args.threads} must be at least 1")


def _taxonomy(path: str | None):
    from finegrain.data.categories import DEFAULT_TAXONOMY
    from finegrain.data.taxonomy_file import load_taxonomy

    return load_taxonomy(path) if path else DEFAULT_TAXONOMY


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()  # the "newly initialised head" load report is expected here


def _config(args: argparse.Namespace):
    from finegrain.config import load_config
    from finegrain.rewards.rm_config import RMTrainConfig

    overrides = list(args.overrides)
    if args.kind:
        overrides.append(f"kind={args.kind}")
    if args.category:
        overrides.append(f"category={args.category}")
    return load_config(RMTrainConfig, args.config, overrides)


def _cv(args: argparse.Namespace) -> int:
    from finegrain.config import ConfigError
    from finegrain.data.load import load_examples
    from finegrain.rewards.rm_cv import cross_validate, format_summary

    cfg = _config(args)
    taxonomy = _taxonomy(args.categories_file)
    examples = load_examples(args.file, taxonomy)
    if not 2 <= args.folds <= len(examples):
        raise ConfigError(f"--folds: {args.folds} must be between 2 and {len(examples)} (the examples in {args.file})")
    only = None
    if args.only_folds is not None:
        parts = [x.strip() for x in args.only_folds.split(",")]
        bad = [x for x in parts if not x.isdigit() or not 0 <= int(x) < args.folds]
        if bad:
            raise ConfigError(f"--only-folds: {bad[0]!r} is not a fold of 0..{args.folds - 1}")
        only = [int(x) for x in parts]
    if args.train_examples is not None and args.train_examples < 1:
        raise ConfigError(f"--train-examples: {args.train_examples} must be at least 1")
    _quiet_transformers()
    report = cross_validate(cfg, examples, args.out, folds=args.folds, seed=args.seed, data_file=args.file, taxonomy=taxonomy,
                            device=args.device, keep_models=args.keep_models, baselines_only=args.baselines_only,
                            train_examples=args.train_examples, only_folds=only,
                            log=lambda line: print(line, flush=True))
    if not report["per_fold"]:
        print("no fold computed")
        return 0
    print(format_summary(report))
    print(f"wrote {args.out}/cv.json" + (" and reliability.png" if "ece_pooled" in report else ""))
    return 0


def _train(args: argparse.Namespace) -> int:
    from finegrain.data.load import load_examples

    from finegrain.config import ConfigError
    from finegrain.rewards.card import CARD_FILE

    cfg = _config(args)
    out = Path(args.out)
    if (out / CARD_FILE).is_file() and not args.force:
        raise ConfigError(f"--out: {args.out} already holds a reward model ({CARD_FILE}); choose another folder or add --force to replace it")
    taxonomy = _taxonomy(args.categories_file)
    train = load_examples(args.train_file, taxonomy)
    held = load_examples(args.eval_file, taxonomy) if args.eval_file else None
    if out.is_dir() and args.force:
        import shutil

        shutil.rmtree(out)  # no weights of the replaced model left beside the new one
    _quiet_transformers()
    common = dict(eval_examples=held, train_file=args.train_file, eval_file=args.eval_file, device=args.device)
    if cfg.kind == "span":
        from finegrain.rewards.span_rm import train_span_rm

        card = train_span_rm(cfg, train, args.out, taxonomy=taxonomy, **common)
    else:
        from finegrain.rewards.pairwise_rm import train_pairwise_rm

        card = train_pairwise_rm(cfg, train, args.out, **common)
    what = f"multi-task span RM with heads {', '.join(card.head_names)}" if card.heads else f"{card.kind} RM {card.name!r}"
    members = f", an ensemble of {len(card.members)}" if card.members else ""
    print(f"saved {what}{members} to {args.out} (training {card.training['seconds']} s)")
    for name, metrics in [(h["name"], h["metrics"]) for h in card.heads] or [(card.name, card.metrics)]:
        if metrics and card.heads:
            print(f"{name}:")
        if metrics:
            print(_format_metrics(metrics))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from finegrain.rewards.card import RMCard
    from finegrain.rewards.rm_common import torch_threads

    check_threads(args)
    card = RMCard.load(args.model)
    with torch_threads(args.threads):
        return _eval_rm(args, card)


def _eval_rm(args: argparse.Namespace, card: "RMCard") -> int:
    from finegrain.data.load import load_examples
    from finegrain.io import atomic_write_json
    from finegrain.rewards.card import load_heads, load_reward_model

    examples = load_examples(args.file, _taxonomy(args.categories_file))
    _quiet_transformers()
    if not card.heads:
        result = _eval_one(args, card, load_reward_model(args.model, device=args.device, batch_size=args.batch_size, card=card),
                           examples, args.reliability)
        if args.json:
            atomic_write_json(args.json, result)
        if args.update_card:
            card.metrics = result
            card.data["eval_file"] = str(args.file)
            card.save(args.model)
        return 0
    # a multi-task RM: every head on its own segments, with its own baselines, from one loaded model
    results, rms = {}, load_heads(args.model, card=card, device=args.device, batch_size=args.batch_size)
    for i, name in enumerate(card.head_names):
        view, rm = card.for_head(name), rms[name]
        png = None
        if args.reliability:
            base = Path(args.reliability)
            png = str(base.with_name(f"{base.stem}-{name}{base.suffix or '.png'}"))
        results[name] = _eval_one(args, view, rm, examples, png)
        card.heads[i]["metrics"] = results[name]
    if args.json:
        atomic_write_json(args.json, results)
    if args.update_card:
        card.data["eval_file"] = str(args.file)
        card.save(args.model)
    return 0


def _eval_one(args: argparse.Namespace, card: "RMCard", rm: Any, examples: list, reliability: str | None) -> dict:
    """One category's metrics beside the trivial rules, printed; returned as the card stores them."""
    from finegrain.errors import TrainingError
    from finegrain.rewards.rm_eval import to_record

    if card.kind == "span":
        from finegrain.rewards.rm_data import build_span_data
        from finegrain.rewards.span_rm import span_metrics, span_probabilities

        span_data = build_span_data(examples, card.categories, card.level)
        if not span_data.items:
            raise TrainingError(f"{args.file} has no annotated, non-empty responses to evaluate the {card.name} RM on")
        probs, seconds = span_probabilities(rm, span_data)
        threshold = card.training.get("threshold", 0.5) if args.threshold is None else args.threshold
        metrics = span_metrics(probs, span_data, card.categories, threshold, seconds)
        if reliability:
            from finegrain.rewards.rm_eval import plot_reliability, reliability_table

            flat_p = [p for ps in probs for p in ps]
            flat_y = [y for it in span_data.items for y in it.labels]
            plot_reliability(reliability, reliability_table(flat_p, flat_y),
                             f"{card.name} RM on {args.file} (ECE {metrics.ece:.3f})")
    else:
        from finegrain.rewards.pairwise_rm import evaluate_pairwise, pair_data
        from finegrain.rewards.rm_config import RMTrainConfig

        # the held-out pairs are built as the training pairs were (coverage measure and margin from the card)
        cfg = RMTrainConfig(
            kind="pairwise", category=card.name, coverage=card.training.get("coverage", "rouge2"),
            margin=card.training.get("margin", 0.05),
        )
        pairs = pair_data(cfg, examples)
        if not pairs.groups:
            raise TrainingError(f"{args.file} has no pairs for the {card.name} RM")
        side = card.data.get("first_listed_wins")  # the majority rule's side, from the training pairs
        metrics = evaluate_pairwise(rm, pairs, None if side is None else side >= 0.5)
    result = to_record(metrics)
    print(f"{card.kind} RM {card.name!r} on {args.file}:")
    print(_headline(card.kind, result))
    print(_format_metrics(result))
    return result


def _headline(kind: str, m: dict) -> str:
    """The metric beside the trivial rules on the same data, with 95% bootstrap intervals."""
    def ci(pair) -> str:
        return f"[{pair[0]:.3f}, {pair[1]:.3f}]"

    b = m["baselines"]
    if kind == "span":
        return (f"  error F1 {m['f1']:.3f} {ci(m['f1_ci'])} | flag all {b['flag_all']['f1']:.3f} {ci(b['flag_all']['f1_ci'])}, "
                f"flag none 0.000\n  accuracy {m['accuracy']:.3f} {ci(m['accuracy_ci'])} | flag all {b['flag_all']['accuracy']:.3f}, "
                f"flag none {b['flag_none']['accuracy']:.3f} {ci(b['flag_none']['accuracy_ci'])}\n"
                f"  (threshold {m['threshold']:.3f}, ECE {m['ece']:.3f}; 95% bootstrap intervals over responses)")
    return (f"  pairwise accuracy {m['accuracy']:.3f} {ci(m['accuracy_ci'])} | longer wins {b['longer_wins']['accuracy']:.3f} "
            f"{ci(b['longer_wins']['accuracy_ci'])}, majority {b['majority']['accuracy']:.3f} {ci(b['majority']['accuracy_ci'])}\n"
            "  (95% bootstrap intervals over prompts)")


def _format_metrics(metrics: dict, indent: str = "  ") -> str:
    lines = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            if not value:
                lines.append(f"{indent}{key}: none")
            elif all(isinstance(v, float) for v in value.values()):
                lines.append(f"{indent}{key}: " + ", ".join(f"{k} {v:.3f}" for k, v in value.items()))
            else:
                lines.append(f"{indent}{key}:")
                lines.append(_format_metrics(value, indent + "  "))
            continue
        if isinstance(value, float):
            value = f"{value:.4f}"
        elif isinstance(value, (tuple, list)) and all(isinstance(v, float) for v in value):
            value = "[" + ", ".join(f"{v:.4f}" for v in value) + "]"
        lines.append(f"{indent}{key}: {value}")
    return "\n".join(lines)


def _judge(args: argparse.Namespace) -> int:
    import shlex

    from finegrain.config import ConfigError
    from finegrain.rewards.judge import build_judge
    from finegrain.rewards.rm_common import torch_threads

    check_threads(args)
    for name in ("heldout", "validation", "batch_size"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: {getattr(args, name)} must be at least 1")
    _quiet_transformers()
    command = shlex.join(["finegrain", "rm", "judge", "--data", str(args.data), "--out", str(args.out), "--backbone", args.backbone,
                          "--heldout", str(args.heldout), "--validation", str(args.validation), "--seed", str(args.seed),
                          *(["--fp32"] if args.fp32 else [])])
    with torch_threads(args.threads):
        card = build_judge(args.data, args.out, backbone=args.backbone, heldout=args.heldout, validation=args.validation,
                           batch_size=args.batch_size, bf16=False if args.fp32 else None, seed=args.seed, force=args.force, command=command,
                           say=lambda line: print(line, flush=True))
    head = card["head"]
    print(f"saved the judge ({head['kind']} head{', ' + str(head['hidden']) + ' hidden' if head['hidden'] else ''}, "
          f"weight decay {head['weight_decay']}, on {card['backbone']}) to {args.out} in {card['seconds']['total']} s")
    print(f"texts: {card['data']['texts']}; prompts: {card['data']['prompts']}")
    print("held-out agreement with Perspective (toxic: > 0.5):")
    for scorer, parts in card["metrics"]["heldout"].items():
        for part, m in parts.items():
            print(f"  {scorer:16s} {part:13s} ROC-AUC {m['roc_auc']:.3f}  Spearman {m['spearman']:.3f}  "
                  f"({m['texts']} texts, {m['toxic']} toxic)")
    return 0


def _split(args: argparse.Namespace) -> int:
    from finegrain.rewards.rm_data import split_file

    n_train, n_eval = split_file(args.file, args.train, args.seed, args.train_out, args.eval_out)
    print(f"wrote {n_train} records to {args.train_out} and {n_eval} to {args.eval_out} (seed {args.seed})")
    return 0
