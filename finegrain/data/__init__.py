"""Feedback data: typed records, readers and writers for QA-Feedback, RealToxicityPrompts and finegrain JSONL."""

from finegrain.data.categories import DEFAULT_TAXONOMY, Taxonomy
from finegrain.data.load import detect_format, load_examples, read_examples
from finegrain.data.problems import DataError, Problem
from finegrain.data.records import (
    FIRST_BETTER,
    SECOND_BETTER,
    TIE,
    Annotation,
    Example,
    MissingInfo,
    Passage,
    Preference,
    Response,
    Span,
)

__all__ = [
    "DEFAULT_TAXONOMY", "Taxonomy", "detect_format", "load_examples", "read_examples", "DataError", "Problem",
    "FIRST_BETTER", "SECOND_BETTER", "TIE", "Annotation", "Example", "MissingInfo", "Passage", "Preference",
    "Response", "Span",
]
