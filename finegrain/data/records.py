"""Typed feedback records: a prompt with its passages, K responses, their annotations, preferences.

Offsets are Python string indices (Unicode code points) into the response text, end exclusive.
Passage and sentence numbers follow QA-Feedback: passages are numbered from 1; inside a passage,
sentence 0 is its title and sentences 1..n its sentences.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Preference outcomes for a pair (a, b), as in QA-Feedback.
TIE, FIRST_BETTER, SECOND_BETTER = 0, 1, 2
PREFERENCE_OUTCOMES = (TIE, FIRST_BETTER, SECOND_BETTER)


@dataclass(frozen=True)
class Passage:
    title: str
    sentences: tuple[str, ...]

    def sentence(self, number: int) -> str:
        """Sentence `number` (0 = the title, 1..n = sentences)."""
        return self.title if number == 0 else self.sentences[number - 1]

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


@dataclass(frozen=True)
class Span:
    """An error span in a response: text[start:end] has an error of `category`."""

    start: int
    end: int
    category: str
    explanation: str = ""


@dataclass(frozen=True)
class MissingInfo:
    """Information the response should have had, pointed at in the passages."""

    kind: str  # Missing-Answer, Missing-Major-Auxiliary, Missing-Minor-Auxiliary
    passage: int  # 1-based
    sentences: tuple[int, ...]  # 0 = title, 1..n = sentences
    note: str = ""


@dataclass(frozen=True)
class Annotation:
    """One annotator's fine-grained feedback on one response. No spans means "no error"."""

    spans: tuple[Span, ...] = ()
    missing: tuple[MissingInfo, ...] = ()
    corrected: str | None = None
    annotator: str | None = None


@dataclass(frozen=True)
class Response:
    text: str
    annotation: Annotation | None = None  # None: not annotated


@dataclass(frozen=True)
class Preference:
    """A pairwise judgement between responses a and b (0-based): TIE, FIRST_BETTER or SECOND_BETTER."""

    a: int
    b: int
    outcome: int
    annotator: str | None = None


@dataclass(frozen=True)
class Example:
    """A prompt with its source passages, its K responses and the feedback on them."""

    id: str
    prompt: str
    responses: tuple[Response, ...] = ()
    passages: tuple[Passage, ...] = ()
    preferences: tuple[Preference, ...] = ()
    reference: str | None = None  # a gold answer, when the data has one
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def annotated(self) -> list[tuple[int, Response]]:
        """(index, response) for every response that carries an annotation."""
        return [(i, r) for i, r in enumerate(self.responses) if r.annotation is not None]
