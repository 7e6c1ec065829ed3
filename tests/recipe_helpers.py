"""Shared by the recipe tests: a small feedback file written in-test (QA examples with passages, gold
answers, annotated and corrected responses, pairwise judgements) and a config for each recipe on the
tiny policy of rl_helpers."""

from __future__ import annotations

from pathlib import Path

from rl_helpers import make_tiny_policy, write_config  # noqa: F401  (re-used by the recipe tests)

RECIPES = ("sft", "dpo", "simpo")


def write_feedback(path: Path, n: int = 8) -> Path:
    from finegrain.data.jsonl import write_jsonl
    from finegrain.data.records import Annotation, Example, Passage, Preference, Response, Span

    examples = []
    for i in range(n):
        good = f"The answer is {i} apples."
        bad = f"Well, the answer is {i + 1} apples. Also the sky is blue."
        span_start = bad.index("Also")
        annotated = Response(bad, Annotation(spans=(Span(span_start, len(bad), "Irrelevant"),), corrected=good))
        examples.append(
            Example(
                id=f"q{i}",
                prompt=f"How many apples are in basket {i}?",
                responses=(annotated, Response(good), Response(f"I do not know about basket {i}.")),
                passages=(Passage(f"Basket {i}", (f"Basket {i} holds {i} apples.", "Apples are fruit.")),),
                preferences=(Preference(0, 1, 2), Preference(1, 2, 1), Preference(0, 2, 0)),  # one tie
                reference=good,
            )
        )
    write_jsonl(path, examples)
    return path


def recipe_config(recipe: str, policy: Path, feedback: Path, out: Path, **sections: dict) -> dict:
    """A config of `recipe` as YAML-able data; `sections` update its sections (e.g. run={...})."""
    cfg: dict = {
        "model": {"policy": str(policy), "precision": "fp32"},
        "data": {"feedback": str(feedback), "eval_examples": 2},
        "prompt": {"max_prompt_tokens": 64, "max_response_tokens": 16},
        "optim": {"lr": 1e-3, "batch_size": 4},
        "run": {"out": str(out), "steps": 3, "save_every": 1, "eval_every": 3, "progress": False, "threads": 1},
    }
    if recipe == "sft":
        cfg["data"]["targets"] = ["gold", "corrected"]
    else:
        cfg["data"]["pairs"] = ["human", "span"]
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    return cfg
