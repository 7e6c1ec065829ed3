"""The one prompt renderer: an example -> the text a policy is conditioned on.

    renderer = PromptRenderer(tokenizer, "question: {question} context: {passages}", max_tokens=512, chat_template=True)
    r = renderer.render(example)        # r.text, r.tokens, r.cut_sentences, r.cut_passages

Placeholders: `{prompt}` and `{question}` (both the example's prompt: a question in QA data, the
text to continue in RealToxicityPrompts), `{passages}` (the sources, in the paper's layout
`wikipage: <title> text: <sentences>`). With `chat_template` and a tokenizer that has one, the
rendered text is the user turn of a chat, followed by the assistant's generation prompt.
Over the token budget, the passages lose sentences from their end (last passage first, a passage
whose sentences are all gone loses its title too); the question is never cut: when it alone is over
the budget, rendering fails naming the example.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from finegrain.config import ConfigError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from finegrain.data.records import Example, Passage

PLACEHOLDERS = ("{prompt}", "{question}", "{passages}")
QA_TEMPLATE = "question: {question} context: {passages}"


def check_template(template: str, field_name: str) -> None:
    """ConfigError unless the template shows the prompt (`{prompt}` or `{question}`)."""
    if "{prompt}" not in template and "{question}" not in template:
        raise ConfigError(f"{field_name}: {template!r} must contain {{prompt}} or {{question}}")


def passages_text(passages: Sequence["Passage"], keep_sentences: int | None = None) -> str:
    """The passages in the paper's layout, keeping only the first `keep_sentences` sentences overall
    (None: all); a passage none of whose sentences is kept is left out."""
    parts, left = [], keep_sentences
    for p in passages:
        sentences = list(p.sentences) if left is None else list(p.sentences[: max(left, 0)])
        if left is not None:
            left -= len(sentences)
            if not sentences:
                break
        parts.append(f"wikipage: {p.title} text: {' '.join(sentences)}")
    return " ".join(parts)


def fill_template(template: str, example: "Example", keep_sentences: int | None = None) -> str:
    """The template with its placeholders filled (no chat template, no budget); a QA layout whose
    `{passages}` come out empty loses its trailing space."""
    body = (
        template.replace("{prompt}", example.prompt)
        .replace("{question}", example.prompt)
        .replace("{passages}", passages_text(example.passages, keep_sentences))
    )
    return body.rstrip() if "{passages}" in template else body


@dataclass(frozen=True)
class Rendered:
    text: str  # what the policy is conditioned on
    tokens: int  # its length in the policy's tokens
    cut_sentences: int  # passage sentences left out for the budget
    cut_passages: int  # passages left out entirely


class PromptRenderer:
    def __init__(
        self,
        tokenizer: "PreTrainedTokenizerBase",
        template: str = "{prompt}",
        max_tokens: int | None = None,
        chat_template: bool = False,
    ):
        check_template(template, "template")
        self.tokenizer, self.template, self.max_tokens = tokenizer, template, max_tokens
        self.chat = bool(chat_template and getattr(tokenizer, "chat_template", None))

    def _text(self, example: "Example", keep: int | None) -> str:
        body = fill_template(self.template, example, keep)
        if self.chat:
            messages = [{"role": "user", "content": body.strip()}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return body

    def ids(self, text: str) -> list[int]:
        """A rendered text's tokens (special tokens added unless the chat template already holds them)."""
        return self.tokenizer(text, add_special_tokens=not self.chat)["input_ids"]

    def count(self, text: str) -> int:
        return len(self.ids(text))

    def render(self, example: "Example") -> Rendered:
        total = sum(len(p.sentences) for p in example.passages) if "{passages}" in self.template else 0
        text = self._text(example, None)
        n = self.count(text)
        if self.max_tokens is None or n <= self.max_tokens:
            return Rendered(text, n, 0, 0)
        lo, hi = 0, total  # binary search: the most sentences that fit (tokens grow with sentences)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.count(self._text(example, mid)) <= self.max_tokens:
                lo = mid
            else:
                hi = mid - 1
        text = self._text(example, lo)
        n = self.count(text)
        if n > self.max_tokens:
            raise ConfigError(
                f"example {example.id!r}: the prompt alone takes {n} tokens, over the budget of {self.max_tokens} "
                "(the question is never cut: raise the prompt token budget)"
            )
        kept_passages = len(passages_text(example.passages, lo).split("wikipage: ")) - 1 if lo else 0
        return Rendered(text, n, total - lo, len(example.passages) - kept_passages)

    def render_all(self, examples: Sequence["Example"]) -> list[Rendered]:
        return [self.render(e) for e in examples]

    def encode(self, texts: Sequence[str]) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Rendered texts -> left-padded prompt tokens. Shape: -> ids (B, P) long, mask (B, P) bool."""
        from finegrain.kernel.sequences import pad_left

        return pad_left([self.ids(t) for t in texts], self.tokenizer.pad_token_id)

    def prompt_ids(self, examples: Sequence["Example"], log: bool = True) -> dict[str, list[int]]:
        """Each example's rendered prompt as tokens, by example id; with `log`, one line on stderr
        saying what the budget cut."""
        import sys

        rendered = {e.id: self.render(e) for e in examples}
        if log:
            print(f"finegrain: prompts: {cut_summary(list(rendered.values()))}", file=sys.stderr)
        return {k: self.ids(r.text) for k, r in rendered.items()}


def cut_summary(rendered: Sequence[Rendered]) -> str:
    """One line for logs: how much the budget cut."""
    cut = [r for r in rendered if r.cut_sentences]
    if not cut:
        return f"{len(rendered)} prompts, none over the token budget"
    return (
        f"{len(rendered)} prompts; {len(cut)} over the token budget lost {sum(r.cut_sentences for r in cut)} passage "
        f"sentences ({sum(r.cut_passages for r in cut)} whole passages)"
    )
