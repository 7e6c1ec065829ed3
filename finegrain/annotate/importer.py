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
    keep_feedback: bool = True,
    taxonomy: Taxonomy = DEFAULT_TAXONOMY,
) -> store.ImportReport:
    """Import every example of `path` (refused as a whole, with every problem listed, if any record is
    bad). The file's own annotations and preferences are kept as submissions of read-only source
    accounts unless `keep_feedback` is off; the report says what was added, kept and skipped."""
    examples = load_examples(path, taxonomy)
    report = store.import_examples(engine, examples, annotate=annotate, compare=compare, keep_feedback=keep_feedback)
    report.assignments = store.assign(engine) if assign_all else 0
    return report
