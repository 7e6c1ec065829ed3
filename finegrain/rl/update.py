"""The PPO update over one rollout: epochs x minibatches x micro-batches, with gradient accumulation,
clipping, an optional PPO-ptx LM loss, and an early stop when the policy has moved too far.

Shape legend: b responses in a minibatch, T response tokens, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch

from finegrain.kernel.models import autocast
from finegrain.kernel.optim import micro_batch
from finegrain.kernel.run import check_finite, process_mean, stop_together  # noqa: F401  (stop_together: the trainer's too)
from finegrain.kernel.stats import add_stats, divide_stats
from finegrain.rl import maths

if TYPE_CHECKING:
    from accelerate import Accelerator

    from finegrain.rl.config import PPOConfig
    from finegrain.rl.policy import ActorCritic
    from finegrain.rl.rollout import PolicyPass, Rollout


@dataclass
class Losses:
    total: torch.Tensor  # () what is back-propagated
    policy: torch.Tensor  # ()
    value: torch.Tensor  # ()
    entropy: torch.Tensor  # () mean entropy of the current policy (0 when not computed)
    approx_kl: torch.Tensor  # () KL(pi_old || pi) estimate on these tokens
    clip_frac: torch.Tensor  # ()
    value_clip_frac: torch.Tensor  # ()


def ppo_losses(model: "ActorCritic", batch: "Rollout", ppo: "PPOConfig", reuse: "PolicyPass | None" = None,
               share_prompts: bool = False, temperature: float = 1.0) -> Losses:
    """PPO's losses on a minibatch, from a fresh forward of the trained module or from `reuse`,
    the rollout's own forward (same weights, so the same numbers: no need to run it twice).
    `share_prompts`: the minibatch's rows that repeat a prompt run its forward once (ActorCritic.forward).
    `temperature`: the sampling temperature, at which the rollout's log-probs were taken (rollout.forward)."""
    mask = batch.response_mask
    if reuse is None:
        out = model(batch.input_ids, batch.attention_mask, batch.response_ids.shape[1], share_prompts=share_prompts)
        logprobs, values = maths.token_logprobs(out.logits, batch.response_ids, temperature), out.values  # (b, T) each
        entropy = maths.entropy(out.logits, temperature) if ppo.entropy_coef > 0 else None
    else:
        logprobs, values, entropy = reuse.logprobs, reuse.values, reuse.entropy
    pg = maths.policy_loss(logprobs, batch.logprobs, batch.advantages, mask, ppo.clip)
    vf = maths.value_loss(values, batch.values, batch.returns, mask, ppo.value_clip)
    total = pg.loss + ppo.vf_coef * vf.loss
    ent = torch.zeros(())
    if ppo.entropy_coef > 0 and entropy is not None:
        ent = maths.masked_mean(entropy, mask)
        total = total - ppo.entropy_coef * ent
    kl = maths.approx_kl(logprobs.detach(), batch.logprobs, mask)
    return Losses(total, pg.loss.detach(), vf.loss.detach(), ent.detach(), kl, pg.clip_frac, vf.clip_frac)


@dataclass
class PtxBatch:
    input_ids: torch.Tensor  # (b, L) long, right-padded
    attention_mask: torch.Tensor  # (b, L) long


def ptx_loss(model: "ActorCritic", batch: PtxBatch) -> torch.Tensor:
    """The policy's LM loss on pretraining/SFT text (PPO-ptx, InstructGPT)."""
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    return model.policy(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels, use_cache=False).loss


class StepStats(NamedTuple):
    """One optimiser step's losses and diagnostics (a micro-batch's share of them), summed by name."""

    policy_loss: float
    value_loss: float
    ptx_loss: float
    entropy: float
    approx_kl: float
    clip_frac: float
    value_clip_frac: float


@dataclass
class UpdateStats:
    policy_loss: float
    value_loss: float
    ptx_loss: float
    entropy: float
    approx_kl: float  # KL(pi_old || pi) estimate, mean over minibatches (measured before each one's step)
    clip_frac: float
    value_clip_frac: float
    grad_norm: float
    epochs: float  # epochs run, fractional when stopped early
    early_stopped: bool


def reuses_rollout_forward(ppo: "PPOConfig", rollout_size: int) -> bool:
    """Whether the rollout's policy forward can be the first PPO step's: that step must see the
    whole rollout in one piece. Costs the activations of the whole rollout (as the step would anyway)."""
    return ppo.minibatch_size == rollout_size and ppo.grad_accum == 1


def ppo_update(
    accelerator: "Accelerator",
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rollout: "Rollout",
    ppo: "PPOConfig",
    ptx_batches: Iterator[PtxBatch] | None = None,
    precision: str = "fp32",
    first_pass: "PolicyPass | None" = None,
    share_prompts: bool = False,
    temperature: float = 1.0,
) -> UpdateStats:
    """PPO epochs over `rollout`. The minibatch order comes from torch's global RNG, which the
    checkpoints save, so a resumed run draws the same orders. `first_pass` (the rollout's forward,
    graph kept; only when a minibatch is the whole rollout in one micro-batch) serves as the first
    step's forward. `share_prompts`, `temperature`: see `ppo_losses`."""
    if first_pass is not None and not reuses_rollout_forward(ppo, len(rollout)):
        raise ValueError("first_pass needs minibatch_size == the rollout's size and grad_accum == 1")
    B, mb = len(rollout), ppo.minibatch_size
    n_mb = B // mb  # a last partial minibatch is dropped: every optimiser step sees mb responses
    parts: list[StepStats] = []
    count, grad_norm, stopped, done = 0, 0.0, False, 0.0
    unwrapped = accelerator.unwrap_model(model)
    for epoch in range(ppo.epochs):
        perm = torch.randperm(B)
        for i in range(n_mb):
            micro = perm[i * mb : (i + 1) * mb].chunk(ppo.grad_accum)
            # each micro-batch's share of the minibatch's token-mean losses, over every process's
            # tokens (`process_mean`): N processes take the step one process holding them all would
            tokens = [float(rollout.response_mask[idx].sum()) for idx in micro]
            per_process = max(process_mean(accelerator, sum(tokens)), 1.0)
            ptx_value = torch.zeros(())
            if ptx_batches is not None and ppo.ptx_coef > 0:
                with accelerator.no_sync(model), autocast(accelerator.device, precision):
                    ptx_value = ptx_loss(unwrapped, next(ptx_batches))
                    check_finite(accelerator, "PPO-ptx", ptx_value)
                    accelerator.backward(ppo.ptx_coef * ptx_value)
            for j, idx in enumerate(micro):
                last = j == len(micro) - 1
                with micro_batch(accelerator, model, last):
                    reuse = first_pass if epoch == 0 and i == 0 else None
                    with autocast(accelerator.device, precision):
                        losses = ppo_losses(model, rollout if reuse is not None else rollout.select(idx), ppo, reuse, share_prompts, temperature)
                    if j == 0 and ppo.early_stop_kl is not None:
                        kl_now = accelerator.reduce(losses.approx_kl.to(accelerator.device), reduction="mean")
                        if float(kl_now) > ppo.early_stop_kl:
                            stopped = True
                            break
                    check_finite(accelerator, "PPO", losses.total)
                    share = tokens[j] / per_process
                    accelerator.backward(losses.total * share)
                parts.append(StepStats(
                    float(losses.policy) * share, float(losses.value) * share, float(ptx_value.detach()) / len(micro),
                    float(losses.entropy) * share, float(losses.approx_kl) * share, float(losses.clip_frac) * share,
                    float(losses.value_clip_frac) * share,
                ))
            if stopped:
                optimizer.zero_grad(set_to_none=True)
                break
            if ppo.max_grad_norm > 0:
                grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), ppo.max_grad_norm) or 0.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            count += 1
            done = epoch + (i + 1) / n_mb
        if stopped:
            break
    means = divide_stats(add_stats(parts), max(count, 1)) if parts else StepStats(*[0.0] * len(StepStats._fields))
    return UpdateStats(**means._asdict(), grad_norm=grad_norm, epochs=done, early_stopped=stopped)
