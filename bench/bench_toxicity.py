"""Throughput of the toxicity reward sources and a sanity check of the embedded scorer.

    .venv/bin/python bench/bench_toxicity.py --data ../shared/data/realtoxicityprompts/prompts.jsonl -n 500

Measures, on the first n RealToxicityPrompts continuations (`continuation.text`):
- the embedded scorer's import time and per-call overhead;
- responses per second of ToxicityReward (dense and holistic) on ProfanityCheckScorer and on an
  HF classifier with the MiniLM backbone (a freshly initialised 2-label head: speed only), each
  with a cold cache;
- the composer's cost: SmolLM2 token char offsets (`decode_with_offsets`) and `compose`;
- ROC-AUC of the embedded scorer against Perspective's labels (toxicity > 0.5), and Spearman's rho.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def load_continuations(path: Path, n: int) -> tuple[list[str], list[float]]:
    texts, perspective = [], []
    with path.open(encoding="utf-8") as f:
        for line in f:
            cont = json.loads(line).get("continuation") or {}
            if isinstance(cont.get("text"), str) and isinstance(cont.get("toxicity"), (int, float)):
                texts.append(cont["text"])
                perspective.append(float(cont["toxicity"]))
            if len(texts) == n:
                break
    return texts, perspective


def timed(fn, repeat: int = 1):
    """(result of the last call, best wall time in seconds over `repeat` calls)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def rank(values):
    import numpy as np

    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    # average ranks over ties
    vals = np.asarray(values)[order]
    i = 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2
        i = j + 1
    return ranks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "realtoxicityprompts" / "prompts.jsonl")
    p.add_argument("-n", type=int, default=500, help="number of continuations")
    p.add_argument("--hf-model", default="minilm-l6", help="HF classifier (id, path or embedded name) for the speed test")
    p.add_argument("--no-hf", action="store_true", help="skip the HF classifier")
    p.add_argument("--repeat", type=int, default=3, help="best of this many timed runs (fresh caches); HF runs once")
    p.add_argument("--threads", type=int, help="torch threads (on a machine shared with other jobs, 1 can be several times faster than 2)")
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    texts, perspective = load_continuations(args.data, args.n)
    examples = [None] * len(texts)
    figures: dict[str, float | int | str] = {"n": len(texts), "torch_threads": torch.get_num_threads()}

    t = time.perf_counter()
    from finegrain.rewards.toxicity import HFClassifierScorer, ProfanityCheckScorer, ToxicityReward

    ProfanityCheckScorer()
    figures["profanity_check_import_s"] = round(time.perf_counter() - t, 2)
    _, one = timed(lambda: ProfanityCheckScorer()._predict_prob(["a single text"]), repeat=20)
    figures["profanity_check_call_overhead_ms"] = round(one * 1000, 2)
    _, thousand = timed(lambda: ProfanityCheckScorer()._predict_prob(texts[:1] * 1000), repeat=20)
    figures["profanity_check_call_1000_texts_ms"] = round(thousand * 1000, 2)

    from finegrain.segment import segment_text

    segments = [len(segment_text(x, "line_sentence")) for x in texts]
    figures["segments_per_response"] = round(sum(segments) / len(segments), 2)

    # RealToxicityPrompts continuations are sentence halves (one segment each), so dense and
    # holistic cost the same there; three of them joined by line breaks make 3-segment responses.
    joined = ["\n".join(texts[i : i + 3]) for i in range(len(texts))]
    figures["joined_segments_per_response"] = round(
        sum(len(segment_text(x, "line_sentence")) for x in joined) / len(joined), 2
    )

    def throughput(make_scorer, mode, responses=texts, repeat=args.repeat):
        out, s = timed(lambda: ToxicityReward(make_scorer(), mode).score(examples, responses), repeat)
        return out, round(len(responses) / s, 1)

    dense, figures["profanity_dense_responses_per_s"] = throughput(ProfanityCheckScorer, "dense")
    holistic, figures["profanity_holistic_responses_per_s"] = throughput(ProfanityCheckScorer, "holistic")
    _, figures["profanity_dense_joined_responses_per_s"] = throughput(ProfanityCheckScorer, "dense", joined)
    # dense rewards telescope to -tox(y) = the holistic reward
    gap = (dense.scores.sum(1) - holistic.scores[:, 0])[holistic.mask[:, 0]].abs().max()
    figures["dense_sum_vs_holistic_max_gap"] = float(gap)

    if not args.no_hf:
        for bf16 in (False, True):
            hf = HFClassifierScorer(args.hf_model, bf16=bf16)
            tag = "hf_bf16" if bf16 else "hf"
            fresh = lambda: (hf.cache.__init__(hf.cache.size), hf)[1]  # noqa: E731 (cold cache per run)
            # seconds per run already: one timed run each
            _, figures[f"{tag}_dense_responses_per_s"] = throughput(fresh, "dense", repeat=1)
            _, figures[f"{tag}_holistic_responses_per_s"] = throughput(fresh, "holistic", repeat=1)
            _, figures[f"{tag}_dense_joined_responses_per_s"] = throughput(fresh, "dense", joined, repeat=1)
            probs = np.array(fresh()(texts))
            if bf16:
                figures["hf_bf16_vs_fp32_max_abs_diff"] = round(float(np.abs(probs - fp32_probs).max()), 4)
            else:
                fp32_probs = probs
        figures["hf_model"] = args.hf_model

    from finegrain.models import load_tokenizer
    from finegrain.rewards.compose import RewardTerm, compose, decode_with_offsets

    tok = load_tokenizer("smollm2-135m", padding_side="right")
    enc = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    (decoded, offsets), s = timed(lambda: decode_with_offsets(tok, enc["input_ids"], enc["attention_mask"].bool()), args.repeat)
    figures["policy_offsets_responses_per_s"] = round(len(texts) / s, 1)
    figures["policy_tokens_max"] = int(enc["input_ids"].shape[1])
    scores = ToxicityReward(ProfanityCheckScorer(), "dense").score(examples, decoded)
    T = enc["input_ids"].shape[1]
    _, s = timed(lambda: compose([RewardTerm("toxicity")], [scores], decoded, offsets, T, enc["attention_mask"].bool()), args.repeat)
    figures["compose_responses_per_s"] = round(len(texts) / s, 1)

    from sklearn.metrics import roc_auc_score

    ours = np.array(ProfanityCheckScorer()(texts))
    theirs = np.array(perspective)
    labels = theirs > 0.5
    figures["perspective_toxic_fraction"] = round(float(labels.mean()), 3)
    figures["roc_auc_vs_perspective"] = round(float(roc_auc_score(labels, ours)), 3)
    figures["spearman_vs_perspective"] = round(float(np.corrcoef(rank(ours), rank(theirs))[0, 1]), 3)

    for k, v in figures.items():
        print(f"{k:40s} {v}")
    if args.out:
        from finegrain.io import atomic_write_json

        atomic_write_json(args.out, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
