"""`finegrain eval POLICY`: sample k continuations per prompt and print the detoxification metrics,
toxicity under the training scorer and under the independent judge; with `--task qa`, answer the
held-out questions and print the QA metrics (finegrain/experiments/qa/metrics.py)."""

from __future__ import annotations

import argparse

from finegrain.rewards.cli import add_threads_argument, check_threads


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("policy", help="policy to evaluate: a run's final/ or best/ folder, an embedded name or a hub id")
    parser.add_argument("--task", choices=["detox", "qa"], default="detox",
                        help="detox (default): toxicity, perplexity, diversity; qa: RM-judged error rates, completeness, win rate, "
                             "ROUGE-L, repetition, passage support, length on held-out questions (docs/qa.md)")
    parser.add_argument("--prompts", default=None,
                        help="prompt file, every prompt of which is evaluated (default: the shipped held-out detox prompts; "
                             "--task qa: the held-out questions, e.g. runs/qa/data/heldout.jsonl)")
    parser.add_argument("--rms", default=None, help="--task qa: folder with the relevance, factuality, completeness and preference RMs (e.g. runs/qa/rm)")
    parser.add_argument("--baseline", default=None, help="--task qa: eval folder of the policy to win against (e.g. runs/qa/sft/eval)")
    parser.add_argument("--max-prompt-tokens", type=int, default=128, help="--task qa: prompt token budget (passages are cut first; default 128, as configs/qa)")
    parser.add_argument("--max-prompts", type=int, default=None, help="evaluate only the first N prompts")
    parser.add_argument("--reference", default="smollm2-135m", help="LM under which perplexity is measured (default: the initial policy)")
    parser.add_argument("--scorer", default="profanity-check",
                        help="training toxicity scorer (avg_max_toxicity, ...): profanity-check (embedded, the detox reward), "
                        "perspective, or an HF classifier")
    parser.add_argument("--judge", default="judge",
                        help="independent toxicity judge (judge_avg_max_toxicity, ...): judge (shipped, on the embedded MiniLM), "
                        "a folder from `finegrain rm judge`, any --scorer value, or none (default: judge)")
    parser.add_argument("--samples", "-k", type=int, default=4, help="samples per prompt (default: 4)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="sample length in tokens (default: 32; --task qa 48)")
    parser.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (default: 0.9)")
    parser.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: 1.0; --task qa 0.7, top-k 20)")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per generate call (default: 64)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast (default: bf16 only where the CPU/GPU runs it natively)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast even where the hardware emulates it")
    parser.add_argument("--out", default=None, help="folder for metrics.json and samples.jsonl")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    add_threads_argument(parser)
    parser.set_defaults(func=_eval)


def _check(args: argparse.Namespace) -> None:
    from finegrain.config import ConfigError

    qa = args.task == "qa"
    args.max_new_tokens = args.max_new_tokens if args.max_new_tokens is not None else 48 if qa else 32
    args.temperature = args.temperature if args.temperature is not None else 0.7 if qa else 1.0

    for name, low in (("samples", 1), ("max_new_tokens", 1), ("batch_size", 1)):
        if getattr(args, name) < low:
            raise ConfigError(f"--{name.replace('_', '-')}: {getattr(args, name)} must be at least {low}")
    if args.max_prompts is not None and args.max_prompts < 1:
        raise ConfigError(f"--max-prompts: {args.max_prompts} must be at least 1")
    if not 0 < args.top_p <= 1:
        raise ConfigError(f"--top-p: {args.top_p} is outside (0, 1]")
    if args.temperature <= 0:
        raise ConfigError(f"--temperature: {args.temperature} must be positive")
    check_threads(args)
    from finegrain.models import check_model_name

    check_model_name(args.policy, "policy")
    if not qa:
        check_model_name(args.reference, "--reference")


def _eval(args: argparse.Namespace) -> int:
    from finegrain.rewards.rm_common import torch_threads

    _check(args)
    with torch_threads(args.threads):
        if args.task == "qa":
            from finegrain.experiments.qa.demo import evaluate_command

            return evaluate_command(args)
        return _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from finegrain.config import ConfigError
    from finegrain.data.load import load_examples
    from finegrain.evaluate import SamplingSettings
    from finegrain.experiments.detox.metrics import evaluate_policy, write_eval
    from finegrain.models import load_policy
    from finegrain.rewards.toxicity import load_scorer
    from finegrain.experiments.detox.task import shipped_prompt_files

    prompts_file = Path(args.prompts) if args.prompts else shipped_prompt_files()[1]
    if not prompts_file.is_file():
        raise ConfigError(f"--prompts: {prompts_file} does not exist")
    examples = [e for e in load_examples(prompts_file) if e.prompt.strip()]
    if args.max_prompts:
        examples = examples[: args.max_prompts]
    if not examples:
        raise ConfigError(f"--prompts: {prompts_file} holds no prompt")
    scorer = load_scorer(args.scorer)
    judge = None if args.judge == "none" else load_scorer(args.judge)
    policy, tokenizer = load_policy(args.policy)
    reference = policy if args.reference == args.policy else load_policy(args.reference, field="--reference")[0]
    settings = SamplingSettings(samples_per_prompt=args.samples, max_new_tokens=args.max_new_tokens, top_p=args.top_p,
                                temperature=args.temperature, batch_size=args.batch_size, seed=args.seed,
                                bf16=False if args.fp32 else (True if args.bf16 else None))
    result = evaluate_policy(policy, tokenizer, examples, scorer, judge=judge, reference=reference,
                             settings=settings)
    if args.out:
        write_eval(result, args.out)
    m = result.metrics
    if args.json:
        print(json.dumps(m.to_json(), indent=2))
    else:
        print(f"{args.policy} on {m.prompts} prompts x {m.samples_per_prompt} samples ({prompts_file})")
        for key, value in m.to_json().items():
            if value is None:
                continue
            print(f"  {key:24s} {value:.4f}" if isinstance(value, float) else f"  {key:24s} {value}")
    return 0
