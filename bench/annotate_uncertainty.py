"""Does `finegrain annotate suggest` pick better examples to annotate than chance? Uncertainty
sampling against random sampling on QA-Feedback's 300 examples, for the relevance span RM.

    nice -n 15 .venv/bin/python bench/annotate_uncertainty.py --seeds 0 1 2 --out runs/uncertainty

The 300 examples are split once (seed 0) into 60 held out and a pool of 240. For each seed: 60
random pool examples train a first RM (configs/rm_relevance.yaml, that seed); the other 180 are
imported into a fresh annotation database and `annotate suggest` (finegrain.annotate.suggest)
ranks them by that RM's uncertainty; one RM is then trained on the 60 + the 60 most uncertain,
another on the 60 + 60 drawn at random from the same 180 (the same seed), and both are evaluated on
the 60 held out (segment error F1 at the config's threshold). The file's own annotations stand in
for the annotators' answers.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "qa_feedback" / "feedback.json"


def train(cfg, examples, held, out: Path):
    from finegrain.rewards.span_rm import train_span_rm

    card = train_span_rm(cfg, examples, out, eval_examples=held, log=lambda s: None)
    return card.metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DATA), help="QA-Feedback JSON (default: ../shared/data/qa_feedback/feedback.json)")
    p.add_argument("--config", default=str(ROOT / "configs" / "rm_relevance.yaml"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--initial", type=int, default=60)
    p.add_argument("--added", type=int, default=60)
    p.add_argument("--held", type=int, default=60)
    p.add_argument("--out", default="runs/uncertainty")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    from finegrain.annotate import db, store
    from finegrain.annotate.suggest import suggest
    from finegrain.config import load_config
    from finegrain.data.load import load_examples
    from finegrain.rewards.rm_config import RMTrainConfig

    examples = load_examples(args.data)
    order = list(range(len(examples)))
    random.Random(0).shuffle(order)
    held = [examples[i] for i in order[: args.held]]
    pool = [examples[i] for i in order[args.held :]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        t0 = time.monotonic()
        cfg = load_config(RMTrainConfig, args.config, [f"seed={seed}", f"threads={args.threads}"])
        rng = random.Random(seed)
        initial = rng.sample(pool, args.initial)
        chosen = {e.id for e in initial}
        rest = [e for e in pool if e.id not in chosen]
        first = train(cfg, initial, held, out / f"s{seed}-initial")
        with tempfile.TemporaryDirectory() as tmp:
            engine = db.make_engine(f"sqlite:///{Path(tmp) / 'pool.db'}")
            store.import_examples(engine, rest, compare=False, keep_feedback=False)
            ranked = suggest(engine, [str(out / f"s{seed}-initial")], device="cpu", log=lambda s: None)
            engine.dispose()
        by_id = {e.id: e for e in rest}
        uncertain = [by_id[s.example_id] for s in ranked[: args.added]]
        randomly = rng.sample(rest, args.added)
        unc = train(cfg, initial + uncertain, held, out / f"s{seed}-uncertainty")
        rnd = train(cfg, initial + randomly, held, out / f"s{seed}-random")
        row = {"seed": seed, "initial_f1": first["f1"], "uncertainty_f1": unc["f1"], "random_f1": rnd["f1"],
               "uncertainty_errors_share": sum(bool(e.responses[0].annotation and e.responses[0].annotation.spans) for e in uncertain) / args.added,
               "top_priority": ranked[0].priority, "seconds": round(time.monotonic() - t0)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2))

    def stat(key):
        xs = [r[key] for r in rows]
        return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.3f}"

    print(f"held-out error F1 over seeds {args.seeds} (mean ± std): first {args.initial}: {stat('initial_f1')}; "
          f"+{args.added} by uncertainty: {stat('uncertainty_f1')}; +{args.added} at random: {stat('random_f1')}", file=sys.stderr)
    print(f"uncertainty minus random, per seed: {[round(r['uncertainty_f1'] - r['random_f1'], 3) for r in rows]}", file=sys.stderr)


if __name__ == "__main__":
    main()
