"""One entry point for every feedback file: detect its format, read it, refuse it with every problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from finegrain.data.categories import DEFAULT_TAXONOMY, Taxonomy
from finegrain.data.problems import DataError, Problem
from finegrain.data.records import Example

Format = Literal["qa-feedback", "rtp", "finegrain"]
FORMATS: tuple[str, ...] = ("qa-feedback", "rtp", "finegrain")


def detect_format(path: str | Path) -> Format:
    """`.json` is QA-Feedback; a `.jsonl` whose first record has `prompt.text` is RealToxicityPrompts;
    any other `.jsonl` is finegrain's own schema."""
    path = Path(path)
    if path.suffix == ".json":
        return "qa-feedback"
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    first = json.loads(line)
                except json.JSONDecodeError:
                    return "finegrain"
                if isinstance(first, dict) and isinstance(first.get("prompt"), dict):
                    return "rtp"
                return "finegrain"
    return "finegrain"


def read_examples(
    path: str | Path, taxonomy: Taxonomy = DEFAULT_TAXONOMY, fmt: Format | None = None
) -> tuple[list[Example], list[Problem]]:
    """Read any supported file; returns the clean examples and every problem found."""
    from finegrain.data.jsonl import read_jsonl
    from finegrain.data.qa_feedback import read_qa_feedback
    from finegrain.data.rtp import read_rtp

    path = Path(path)
    if not path.is_file():
        return [], [Problem(str(path), None, "", None, "file does not exist")]
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; choose one of {', '.join(FORMATS)}")
    try:
        if fmt == "qa-feedback":
            return read_qa_feedback(path, taxonomy)
        if fmt == "rtp":
            return read_rtp(path)
        return read_jsonl(path, taxonomy)
    except UnicodeDecodeError as err:
        return [], [Problem(str(path), None, "", None, f"not UTF-8 text: {err}")]


def load_examples(path: str | Path, taxonomy: Taxonomy = DEFAULT_TAXONOMY, fmt: Format | None = None) -> list[Example]:
    """Read a file for training: raises DataError listing every problem when there is any."""
    examples, problems = read_examples(path, taxonomy, fmt)
    if problems:
        raise DataError(problems)
    return examples
