"""Rollout: responses sampled through the kernel's generator are scored by the reward sources, one
forward pass per model (policy + values, frozen reference) gives their log-probs and values, and the
rewards become advantages.

Each phase is one function; `Rollout` is the typed container the PPO update reads.
Shape legend: B responses (prompts x samples per prompt), P prompt tokens (left-padded),
T response tokens (right-padded), V vocabulary, K reward sources, S segments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch

from finegrain.kernel.logprobs import response_logits
from finegrain.kernel.sequences import PromptResponse
from finegrain.kernel.sequences import Sequences as Samples  # what generation produced
from finegrain.rl import maths

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from finegrain.data.records import Example
    from finegrain.rewards.base import SegmentScores
    from finegrain.rewards.compose import WeightedSource
    from finegrain.rl.config import PPOConfig


@dataclass
class Scores:
    """What the reward sources said, before and after placing it on the policy's tokens."""

    texts: list[str]  # (B,) decoded responses, as the sources scored them
    names: tuple[str, ...]  # (K,) source names
    raw: list["SegmentScores"]  # (K,) raw segment scores of each source: scores (B, S_k)
    per_source: torch.Tensor  # (K, B, T) float32: mapped, unweighted reward of source k on token t
    total: torch.Tensor  # (B, T) float32: weighted sum over sources (before the KL penalty)
    ends: torch.Tensor  # (B, T) bool: True where a segment of some source ends (its reward lands there)
    source_ends: torch.Tensor  # (K, B, T) bool: True where a segment of source k ends; `ends` is their union


@dataclass
class Rollout(PromptResponse):
    """One batch of experience, everything PPO's epochs need, computed once."""

    query_ids: torch.Tensor  # (B, P) long: prompt tokens, left-padded
    query_mask: torch.Tensor  # (B, P) bool
    response_ids: torch.Tensor  # (B, T) long: sampled tokens, right-padded
    response_mask: torch.Tensor  # (B, T) bool: real response tokens (EOS included)
    logprobs: torch.Tensor  # (B, T) float32: log pi_old(y_t | x, y_<t), the sampling policy
    ref_logprobs: torch.Tensor  # (B, T) float32: log pi_ref(y_t | x, y_<t), the frozen reference
    values: torch.Tensor  # (B, T) float32: V_old(x, y_<t), the value before token t
    entropy: torch.Tensor  # (B, T) float32: entropy of pi_old at token t (for logging)
    scores: torch.Tensor  # (B, T) float32: the task reward PPO optimised on token t: the weighted source total, normalised per ppo.reward_norm (no KL)
    kl: torch.Tensor  # (B, T) float32: per-token KL(pi_old || pi_ref) estimate
    rewards: torch.Tensor  # (B, T) float32: scores - kl_coef * kl, 0 on padding
    advantages: torch.Tensor  # (B, T) float32: GAE advantages (whitened when configured)
    returns: torch.Tensor  # (B, T) float32: value targets, advantages (before whitening) + values

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    def select(self, index: torch.Tensor) -> "Rollout":
        """The responses at `index`, trimmed to their longest response (fewer tokens to forward).

        Shape: index (b,) long -> Rollout of b responses.
        """
        width = int(self.response_mask[index].sum(-1).max().clamp(min=1))
        out = {}
        for f in fields(self):
            x = getattr(self, f.name)[index]
            out[f.name] = x if f.name.startswith("query") else x[:, :width]
        return Rollout(**out)


# --- 1. generation: kernel.generation (HFGenerator.generate -> Sequences) ----------------------


# --- 2. scoring ---------------------------------------------------------------------------------


def score(
    sources: Sequence["WeightedSource"],
    examples: Sequence["Example"],
    tokenizer: "PreTrainedTokenizerBase",
    samples: Samples,
) -> Scores:
    """Decode the responses, ask every source for its segment scores, place them on the tokens.
    `examples[b]` is the prompt response b answers.

    Shape: -> Scores with per_source (K, B, T), total (B, T).
    """
    from finegrain.rewards.compose import compose, decode_with_offsets

    texts, offsets = decode_with_offsets(tokenizer, samples.response_ids, samples.response_mask)
    raw = [ws.source.score(examples, texts) for ws in sources]
    T = samples.response_ids.shape[1]
    composed = compose([ws.term for ws in sources], raw, texts, offsets, T, samples.response_mask)
    return Scores(texts, composed.names, raw, composed.per_source.float(), composed.total.float(), composed.ends, composed.source_ends)


# --- 3. one forward pass per model ------------------------------------------------------------


@dataclass
class PolicyPass:
    """The rollout's policy forward, kept with its autograd graph: PPO's first optimiser step is
    taken at pi = pi_old, so its forward is this one and is not run again."""

    logprobs: torch.Tensor  # (B, T) float32 log pi(y_t), with grad
    values: torch.Tensor  # (B, T) float32 V(x, y_<t), with grad
    entropy: torch.Tensor | None  # (B, T) float32 with grad when an entropy bonus is used, else None


@dataclass
class Forward:
    logprobs: torch.Tensor  # (B, T) float32 log pi_old(y_t)
    ref_logprobs: torch.Tensor  # (B, T) float32 log pi_ref(y_t)
    values: torch.Tensor  # (B, T) float32 V_old
    entropy: torch.Tensor  # (B, T) float32
    policy_pass: PolicyPass | None  # the same forward with its graph, when kept


def forward(
    model: torch.nn.Module,
    ref: "PreTrainedModel",
    samples: Samples,
    batch_size: int,
    keep_graph: bool = False,
    entropy_grad: bool = False,
    share_prompts: bool = False,
    temperature: float = 1.0,
) -> Forward:
    """The sampling policy's log-probs, values and entropy, and the reference's log-probs, of the
    sampled tokens: one forward per model per rollout. The reference runs in chunks of `batch_size`
    (bounding the logits' memory); with `keep_graph` the policy runs once over the whole batch with
    autograd on, and the graph is handed to the first PPO step (`model` is then the wrapped, trained module).
    `share_prompts`: the samples of one prompt (in one chunk) run its forward once
    (kernel.logprobs.response_forward). `temperature`: the one the samples were drawn at; both
    models' log-probs and the entropy are those of softmax(logits / temperature), the distribution
    sampled from, so that the KL penalty's estimate on these samples is of KL(pi_T || pi_ref_T)
    (at temperature 1 on samples drawn at 0.7 its k1 estimate has no floor at 0 and can pay the
    policy for drifting). Top-k and top-p are not undone (as TRL and OpenRLHF do).

    Shape: -> Forward of (B, T) tensors.
    """
    ids, attn, tokens, T = samples.input_ids, samples.attention_mask, samples.response_ids, samples.response_ids.shape[1]
    chunks = [slice(i, i + batch_size) for i in range(0, ids.shape[0], batch_size)]
    with torch.no_grad():
        ref_logprobs = torch.cat([maths.token_logprobs(response_logits(ref, ids[c], attn[c], T, share_prompts), tokens[c], temperature) for c in chunks])
    if keep_graph:
        out = model(ids, attn, T, share_prompts=share_prompts)
        logprobs = maths.token_logprobs(out.logits, tokens, temperature)
        ent = maths.entropy(out.logits, temperature) if entropy_grad else None
        with torch.no_grad():  # a few rows at a time: the float32 softmax of (B, T, V) would add to the step's peak memory
            ent_now = ent.detach() if ent is not None else torch.cat([maths.entropy(x, temperature) for x in out.logits.detach().split(8)])
        return Forward(logprobs.detach(), ref_logprobs, out.values.detach(), ent_now, PolicyPass(logprobs, out.values, ent))
    parts = []
    with torch.no_grad():
        for c in chunks:
            out = model(ids[c], attn[c], T, share_prompts=share_prompts)
            parts.append((maths.token_logprobs(out.logits, tokens[c], temperature), out.values, maths.entropy(out.logits, temperature)))
    logprobs, values, ent = (torch.cat(p) for p in zip(*parts))
    return Forward(logprobs, ref_logprobs, values, ent, None)


# --- 4. advantages ------------------------------------------------------------------------------


def build_rollout(samples: Samples, scores: Scores, fwd: Forward, kl_coef: float, ppo: "PPOConfig",
                  task_rewards: torch.Tensor | None = None, pool: Callable[[maths.Moments], maths.Moments] | None = None) -> Rollout:
    """Per-token rewards with the KL penalty, then GAE, then (optionally) whitened advantages.
    `task_rewards` are the source rewards after normalisation (default: `scores.total` as it is);
    `pool` turns this rollout's advantage moments into those to whiten with (the trainer pools them
    over processes, so that N processes whiten as one process holding every rollout would).

    Shape: everything (B, T) -> Rollout.
    """
    mask = samples.response_mask
    task = scores.total if task_rewards is None else task_rewards
    kl = maths.kl_penalty(fwd.logprobs, fwd.ref_logprobs, ppo.kl_estimator) * mask
    rewards = maths.penalised_rewards(task, kl, kl_coef, mask)
    values = fwd.values * mask
    adv = maths.gae(rewards, values, mask, ppo.gamma, ppo.lam)
    moments = pool(maths.Moments.of(adv.advantages[mask])) if pool is not None else None
    advantages = maths.whiten(adv.advantages, mask, moments=moments) if ppo.whiten_advantages else adv.advantages
    return Rollout(
        query_ids=samples.query_ids,
        query_mask=samples.query_mask,
        response_ids=samples.response_ids,
        response_mask=mask,
        logprobs=fwd.logprobs,
        ref_logprobs=fwd.ref_logprobs,
        values=values,
        entropy=fwd.entropy,
        scores=task,
        kl=kl,
        rewards=rewards,
        advantages=advantages,
        returns=adv.returns,
    )
