"""Annotation categories and the map from them to reward-model categories.

The paper's taxonomy (QA-Feedback): span errors Irrelevant, Redundant, Incoherent (relevance RM,
sub-sentence level), Unverifiable, Wrong-Grounding (factuality RM, sentence level); missing
information is judged at sequence level (completeness RM). A user can pass another taxonomy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_SPAN_CATEGORIES: dict[str, str] = {
    "Irrelevant": "relevance",
    "Redundant": "relevance",
    "Incoherent": "relevance",
    "Unverifiable": "factuality",
    "Wrong-Grounding": "factuality",
}

DEFAULT_MISSING_KINDS: tuple[str, ...] = (
    "Missing-Answer",
    "Missing-Major-Auxiliary",
    "Missing-Minor-Auxiliary",
)


@dataclass(frozen=True)
class Taxonomy:
    """Which span categories and missing-info kinds exist, and which RM category each feeds."""

    span_to_rm: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_SPAN_CATEGORIES))
    missing_kinds: tuple[str, ...] = DEFAULT_MISSING_KINDS

    @property
    def span_categories(self) -> tuple[str, ...]:
        return tuple(self.span_to_rm)

    @property
    def rm_categories(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.span_to_rm.values()))

    def categories_for(self, rm_category: str) -> tuple[str, ...]:
        """The annotation categories that feed one RM category (e.g. relevance)."""
        cats = tuple(c for c, rm in self.span_to_rm.items() if rm == rm_category)
        if not cats:
            raise ValueError(
                f"unknown reward-model category {rm_category!r}; known: {', '.join(self.rm_categories)}"
            )
        return cats

    @classmethod
    def from_mapping(cls, mapping: dict[str, str], missing_kinds: tuple[str, ...] | None = None) -> "Taxonomy":
        return cls(dict(mapping), tuple(missing_kinds) if missing_kinds else DEFAULT_MISSING_KINDS)


DEFAULT_TAXONOMY = Taxonomy()
