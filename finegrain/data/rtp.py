"""RealToxicityPrompts JSONL: `{"prompt": {"text": ..., "toxicity": ...}, "continuation": {...}, "challenging": bool}`."""

from __future__ import annotations

from pathlib import Path

from finegrain.data.problems import Collector, Problem, jsonl_records
from finegrain.data.records import Example


def read_rtp(path: str | Path) -> tuple[list[Example], list[Problem]]:
    """Prompts as examples without responses; Perspective scores and `challenging` go to `meta`."""
    path = Path(path)
    c = Collector(str(path))
    examples = []
    for raw in jsonl_records(path, c):
        if not isinstance(raw, dict):
            c.add("", raw, "expected an object")
            continue
        prompt = c.expect_type(raw, "prompt", dict, "")
        if prompt is None:
            continue
        text = c.expect_type(prompt, "text", str, "prompt")
        tox = prompt.get("toxicity")
        if tox is not None and (not isinstance(tox, (int, float)) or not 0 <= tox <= 1):
            c.add("prompt.toxicity", tox, "toxicity must be a number in [0, 1] or null")
        if text is None:
            continue
        cont = raw.get("continuation") if isinstance(raw.get("continuation"), dict) else {}
        meta = {
            "prompt_toxicity": tox,
            "continuation": cont.get("text"),
            "continuation_toxicity": cont.get("toxicity"),
            "challenging": bool(raw.get("challenging", False)),
        }
        examples.append(Example(id=str(raw.get("id", f"rtp-{c.record}")), prompt=text, meta=meta))
    return examples, c.problems
