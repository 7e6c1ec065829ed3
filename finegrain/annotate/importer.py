"""`finegrain annotate import`: read a feedback file (finegrain JSONL, QA-Feedback JSON) into tasks."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from finegrain.annotate import store
from finegrain.data.categories import DEFAULT_TAXONOMY, Taxonomy
from finegrain.data.load import load_examples


def import_file(
    engine: Engine,
    path: str | Path,
    *,
    annotate: str = "first",
    compare: bool = True,
    assign_all: bool = True,
    taxonomy: Taxonomy = DEFAULT_TAXONOMY,
) -> tuple[int, int, int]:
    """Import every example of `path` (refused as a whole, with every problem listed, if any record is
    bad). Existing annotations in the file are not imported: the app collects new ones. Returns
    (examples added, tasks added, assignments made)."""
    examples = load_examples(path, taxonomy)
    added, n_tasks = store.import_examples(engine, examples, annotate=annotate, compare=compare)
    made = store.assign(engine) if assign_all else 0
    return added, n_tasks, made
