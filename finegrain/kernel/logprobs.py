"""Log-probabilities of response tokens: per token, and per sequence (summed or length-averaged).

One forward pass over (prompt + response) whose LM head runs on the response positions only
(its vocabulary-wide matmul is a fifth of SmolLM2's forward). Used by PPO (per token), DPO (summed),
SimPO (averaged), SFT (the loss) and the perplexity metric.
Shape legend: B sequences, P prompt tokens (left-padded), T response tokens (right-padded), V vocabulary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from finegrain.kernel.models import position_ids

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import PreTrainedModel

    from finegrain.kernel.sequences import Sequences


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature)[token], computed in float32 whatever the logits' dtype. The
    normaliser is taken one row at a time (the same numbers): its float32 temporaries are (T, V), not
    (B, T, V), which is most of a log-prob pass's peak memory with a 49k vocabulary.

    `temperature`: the RL recipes score tokens under the distribution they were sampled from
    (softmax(logits / T)), so that log pi - log pi_ref on those samples estimates a KL that is >= 0
    and the importance ratios compare like with like (`sampling.temperature`; 1 elsewhere).

    Shape: logits (B, T, V), tokens (B, T) -> (B, T).
    """
    picked = torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1).float()
    if temperature == 1.0:
        return picked - torch.stack([torch.logsumexp(row.float(), dim=-1) for row in logits])
    return picked / temperature - torch.stack([torch.logsumexp(row.float() / temperature, dim=-1) for row in logits])


def sequence_logprobs(logprobs: torch.Tensor, mask: torch.Tensor, average: bool = False) -> torch.Tensor:
    """log p(response | prompt): the sum of its token log-probs (DPO), or with `average` their mean
    over the response's tokens (SimPO's length-normalised score). A response with no token gives 0.

    Shape: logprobs (B, T), mask (B, T) bool -> (B,).
    """
    m = mask.to(logprobs.dtype)
    total = (logprobs * m).sum(-1)
    return total / m.sum(-1).clamp(min=1) if average else total


def prompt_groups(input_ids: torch.Tensor, attention_mask: torch.Tensor, num_response: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Rows that repeat a prompt (the G samples of each prompt in a rollout, wherever they sit):
    one row holding each distinct prompt, and each row's index among those. None when no prompt
    repeats, or a prompt is a single position (nothing to share).

    Shape: input_ids (B, P + T), attention_mask (B, P + T), num_response T -> (U,) rows, (B,) indices.
    """
    B, P = input_ids.shape[0], input_ids.shape[1] - num_response
    if P < 2 or B < 2:
        return None
    key = torch.cat([input_ids[:, :P], attention_mask[:, :P].to(input_ids.dtype)], dim=1)
    distinct, inverse = torch.unique(key, dim=0, return_inverse=True)
    if distinct.shape[0] == B:
        return None
    first = torch.full((distinct.shape[0],), B, dtype=torch.long, device=key.device)
    first.scatter_reduce_(0, inverse, torch.arange(B, device=key.device), reduce="amin")
    return first, inverse


def response_forward(model: "PreTrainedModel", input_ids: torch.Tensor, attention_mask: torch.Tensor, num_response: int,
                     share_prompts: bool = False, **kwargs):
    """`model`'s output whose logits are those of positions P-1 .. P+T-1 (they predict the last
    `num_response` tokens, and one past them); with `output_hidden_states=True` in `kwargs`, the
    last T + 1 positions of each hidden state are those positions.

    `share_prompts`: rows that repeat a prompt (a rollout's G samples of it) run that prompt's
    forward once. The KV cache of each distinct prompt but its last token is computed and copied to
    its rows; the last prompt token and the response run on it. The same numbers as one pass, to
    float rounding, with G times fewer prompt tokens through the model: most of a pass when prompts
    are long (QA's passages). One pass when no prompt repeats or the model fills no cache.

    Shape: input_ids (B, P + T), attention_mask (B, P + T), num_response T -> logits (B, T + 1, V).
    """
    T = num_response
    pos = position_ids(attention_mask)
    groups = prompt_groups(input_ids, attention_mask, T) if share_prompts else None
    if groups is not None:
        from finegrain.kernel.models import prompt_cache

        first, inverse = groups
        P = input_ids.shape[1] - T
        shared = prompt_cache(model, input_ids[first, : P - 1], attention_mask[first, : P - 1])
        for cache in shared.values():
            cache.reorder_cache(inverse)
        if shared:
            return model(input_ids=input_ids[:, P - 1 :], attention_mask=attention_mask, position_ids=pos[:, P - 1 :],
                         use_cache=True, logits_to_keep=T + 1, **shared, **kwargs)
    # logits_to_keep: positions P-1 .. P+T-1; the last one predicts past the response
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, logits_to_keep=T + 1, use_cache=False, **kwargs)


def shares_prompts(accelerator: "Accelerator | None", model: torch.nn.Module | None = None) -> bool:
    """Whether a recipe's passes may run a repeated prompt's forward once (`response_forward`): always
    on one process. On several, a DDP-wrapped model called twice for one backward would prepare two
    backwards, and a sharded one (FSDP2, ZeRO-3) would gather its weights once more per pass; so only
    with `model`, a module that makes both calls inside one forward of its own (PPO's actor-critic) or
    that is run without autograd, and only while it is whole."""
    if accelerator is None or accelerator.num_processes == 1:
        return True
    if model is None:
        return False
    from finegrain.kernel.generation import is_sharded

    return not is_sharded(model, accelerator)


def response_logits(model: "PreTrainedModel", input_ids: torch.Tensor, attention_mask: torch.Tensor, num_response: int,
                    share_prompts: bool = False) -> torch.Tensor:
    """The logits that predict the last `num_response` tokens of each row (`share_prompts`: see
    `response_forward`).

    Shape: input_ids (B, P + T), attention_mask (B, P + T), num_response T -> (B, T, V).
    """
    return response_forward(model, input_ids, attention_mask, num_response, share_prompts).logits[:, :-1]


def response_logprobs(model: "PreTrainedModel", batch: "Sequences", share_prompts: bool = False, temperature: float = 1.0) -> torch.Tensor:
    """log p(y_t | x, y_<t) of every response token (0 on padding), with autograd when enabled;
    `temperature`: under softmax(logits / temperature) (`token_logprobs`).

    Shape: batch of B rows -> (B, T).
    """
    logits = response_logits(model, batch.input_ids, batch.attention_mask, batch.response_ids.shape[1], share_prompts)
    return token_logprobs(logits, batch.response_ids, temperature) * batch.response_mask


def pair_logprobs(model: "PreTrainedModel", batch: "Sequences", average: bool, share_prompts: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence log-probs of both sides of N pairs laid out as `sequences.pair_batch` does
    (`share_prompts`: the two sides of a pair run their prompt's forward once, `response_forward`).

    Shape: batch of 2N rows -> chosen (N,), rejected (N,).
    """
    seq = sequence_logprobs(response_logprobs(model, batch, share_prompts), batch.response_mask, average)  # (2N,)
    n = seq.shape[0] // 2
    return seq[:n], seq[n:]


@torch.no_grad()
def pairs_logprobs(model: "PreTrainedModel", batches, average: bool, device: torch.device, precision: str,
                   share_prompts: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence log-probs of every pair in `batches` (an iterable of `pair_batch` outputs), without
    grad: held-out evaluation, and a reference model's log-probs computed once.

    Shape: -> chosen (N,), rejected (N,) float32 on the CPU, N = the pairs of all batches.
    """
    from finegrain.kernel.models import autocast

    chosen, rejected = [], []
    with autocast(device, precision):
        for batch in batches:
            c, r = pair_logprobs(model, batch.to(device), average, share_prompts)
            chosen.append(c.float().cpu())
            rejected.append(r.float().cpu())
    return torch.cat(chosen), torch.cat(rejected)
