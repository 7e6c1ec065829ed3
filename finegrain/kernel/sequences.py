"""A batch of prompts with their responses, and the one rule for where a response ends.

Prompts are left-padded (generation appends to their right end), responses right-padded; the
concatenation (B, P + T) is what every forward pass of every recipe reads.
Shape legend: B sequences, P prompt tokens, T response tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class PromptResponse:
    """What the model reads of a batch of (prompt, response) rows: the left-padded prompt followed by
    the right-padded response. Subclasses are dataclasses with query_ids/query_mask (B, P) and
    response_ids/response_mask (B, T)."""

    query_ids: torch.Tensor
    query_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor

    @property
    def input_ids(self) -> torch.Tensor:
        """Shape: (B, P + T)."""
        return torch.cat([self.query_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """Shape: (B, P + T)."""
        return torch.cat([self.query_mask, self.response_mask], dim=1).long()


@dataclass
class Sequences(PromptResponse):
    """Prompts and responses, side by side."""

    query_ids: torch.Tensor  # (B, P) long: prompt tokens, left-padded
    query_mask: torch.Tensor  # (B, P) bool: True on real prompt tokens
    response_ids: torch.Tensor  # (B, T) long: response tokens, right-padded with the pad token
    response_mask: torch.Tensor  # (B, T) bool: True on response tokens (`response_mask`'s rule)
    # (B, T) float32 log p(y_t) under the model that sampled the responses, from the logits `generate`
    # sampled them from (before temperature, top-k, top-p; 0 on padding); None when not recorded
    # (`GenerationSettings.logprobs`, `HFGenerator`)
    sampled_logprobs: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    def to(self, device: str | torch.device) -> "Sequences":
        return Sequences(*(None if (t := getattr(self, f.name)) is None else t.to(device) for f in fields(self)))

    def select(self, index: torch.Tensor) -> "Sequences":
        """Rows `index`. Shape: index (b,) long -> Sequences of b rows."""
        return Sequences(*(None if (t := getattr(self, f.name)) is None else t[index] for f in fields(self)))



def response_mask(response_ids: torch.Tensor, eos_ids: Sequence[int]) -> torch.Tensor:
    """True up to and including the first end-of-sequence token: stopping is an action the policy
    took, so the EOS token is trained, scored and counted like any other response token; whatever
    `generate` writes after it (padding, or more EOS) is not part of the response.

    Shape: response_ids (B, T) -> (B, T) bool.
    """
    is_eos = torch.isin(response_ids, torch.tensor(list(eos_ids), dtype=response_ids.dtype, device=response_ids.device))
    eos_before = is_eos.long().cumsum(-1) - is_eos.long()  # EOS tokens strictly before t
    return eos_before == 0


def eos_token_ids(model: "PreTrainedModel | None", tokenizer: "PreTrainedTokenizerBase") -> list[int]:
    """Every token that ends a response: the tokenizer's EOS and any the model's generation config adds."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None) if gen is not None else None
    ids.update([extra] if isinstance(extra, int) else (extra or []))
    return sorted(ids)


def encode_responses(
    tokenizer: "PreTrainedTokenizerBase", texts: Sequence[str], max_tokens: int, add_eos: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Target responses (SFT targets, the two sides of a preference pair) as right-padded tokens,
    each ending with EOS so that a model trained on them learns to stop; a response longer than
    `max_tokens` keeps its first tokens (and then has no EOS: it did not end).

    Shape: -> ids (B, T) long, mask (B, T) bool.
    """
    rows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if add_eos and tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        rows.append(ids[:max_tokens] or [tokenizer.eos_token_id])
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = True
    return ids, mask


def pad_left(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> left-padded ids and mask. Shape: -> (B, P) long, (B, P) bool."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
            mask[i, width - len(r) :] = True
    return ids, mask


def prompt_response_batch(
    tokenizer: "PreTrainedTokenizerBase",
    prompt_rows: Sequence[Sequence[int]],
    responses: Sequence[str],
    max_response_tokens: int,
) -> Sequences:
    """Rendered prompts (token lists) with target responses (ending in EOS): an SFT batch.

    Shape: B prompts and B responses -> Sequences of B rows.
    """
    query_ids, query_mask = pad_left(prompt_rows, tokenizer.pad_token_id)
    response_ids, rmask = encode_responses(tokenizer, responses, max_response_tokens)
    return Sequences(query_ids, query_mask, response_ids, rmask)


def pair_batch(
    tokenizer: "PreTrainedTokenizerBase",
    prompt_rows: Sequence[Sequence[int]],
    chosen: Sequence[str],
    rejected: Sequence[str],
    max_response_tokens: int,
) -> Sequences:
    """N preference pairs as one batch of 2N rows, the chosen responses first, so that one forward
    pass serves both sides (TRL's concatenated forward).

    Shape: N pairs -> Sequences of 2N rows (rows n and N + n share prompt n).
    """
    rows = list(prompt_rows) * 2
    return prompt_response_batch(tokenizer, rows, list(chosen) + list(rejected), max_response_tokens)


def pair_batcher(tokenizer: "PreTrainedTokenizerBase", prompts: dict[str, list[int]], max_response_tokens: int):
    """pairs -> `pair_batch`, each pair's prompt looked up by its example's id in `prompts`
    (the rendered prompt tokens: `PromptRenderer.prompt_ids`)."""

    def batch_of(pairs) -> Sequences:
        rows = [prompts[p.example.id] for p in pairs]
        return pair_batch(tokenizer, rows, [p.chosen for p in pairs], [p.rejected for p in pairs], max_response_tokens)

    return batch_of
