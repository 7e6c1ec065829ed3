"""Counts over a feedback file: examples, responses, spans per category, missing info, preferences."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from finegrain.data.records import FIRST_BETTER, SECOND_BETTER, TIE, Example


@dataclass
class Stats:
    examples: int = 0
    responses: int = 0
    annotated_responses: int = 0
    no_error_responses: int = 0
    corrected: int = 0
    spans: Counter = field(default_factory=Counter)
    missing: Counter = field(default_factory=Counter)
    preferences: Counter = field(default_factory=Counter)

    def lines(self) -> list[str]:
        out = [
            f"examples             {self.examples}",
            f"responses            {self.responses}",
            f"annotated responses  {self.annotated_responses}  (no error marked: {self.no_error_responses}, corrected: {self.corrected})",
            f"spans                {sum(self.spans.values())}",
        ]
        out += [f"  {cat:<25}{n}" for cat, n in sorted(self.spans.items())]
        out.append(f"missing information  {sum(self.missing.values())}")
        out += [f"  {kind:<25}{n}" for kind, n in sorted(self.missing.items())]
        out.append(f"preferences          {sum(self.preferences.values())}")
        for name in ("first better", "second better", "tie"):
            out.append(f"  {name:<25}{self.preferences.get(name, 0)}")
        return out


_OUTCOME_NAMES = {FIRST_BETTER: "first better", SECOND_BETTER: "second better", TIE: "tie"}


def compute_stats(examples: list[Example]) -> Stats:
    s = Stats(examples=len(examples))
    for ex in examples:
        s.responses += len(ex.responses)
        for r in ex.responses:
            a = r.annotation
            if a is None:
                continue
            s.annotated_responses += 1
            s.no_error_responses += not a.spans
            s.corrected += a.corrected is not None and a.corrected != ""
            s.spans.update(span.category for span in a.spans)
            s.missing.update(m.kind for m in a.missing)
        s.preferences.update(_OUTCOME_NAMES[p.outcome] for p in ex.preferences)
    return s
