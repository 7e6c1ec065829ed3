"""PPO's maths as pure functions on tensors: no model, no config, no I/O.

Shape legend (used in every docstring): B responses, T response tokens (right-padded),
V vocabulary size. `mask` is a (B, T) bool tensor, True on real response tokens; a response's
real tokens are contiguous from position 0 (everything after the first padding is padding).

Conventions: `values[b, t]` estimates the return from the state *before* response token t is
emitted; `rewards[b, t]` is the reward for emitting token t. Losses are token-level means over
every real token of the batch (long and short responses weigh by their token count).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

from finegrain.kernel.logprobs import token_logprobs  # noqa: F401  (log pi(y_t), one home for every recipe)

KLEstimator = Literal["k1", "k3"]


# --- masked statistics --------------------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over positions where `mask` is True (0 where there are none).

    Shape: x (B, T), mask (B, T) -> () when dim is None, else x reduced along `dim`.
    """
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum().clamp(min=1)
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `x` over the masked positions (Bessel-corrected when `unbiased`).

    Shape: x (B, T), mask (B, T) -> ().
    """
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def whiten(x: torch.Tensor, mask: torch.Tensor, keep_mean: bool = False, eps: float = 1e-8, moments: "Moments | None" = None) -> torch.Tensor:
    """(x - mean) / std over the masked positions; masked-out positions come back as 0.

    Divides by the standard deviation, so the output has std 1 (the paper's code divided by
    sqrt(std), which leaves the scale data-dependent). `keep_mean=True` adds the mean back
    (used for rewards, whose sign carries meaning). `moments`: the mean and std to use instead of
    x's own (e.g. pooled over every process's rollout).

    Shape: x (B, T), mask (B, T) -> (B, T).
    """
    if moments is None:
        mean, var = masked_mean(x, mask), masked_var(x, mask)
    else:
        mean, var = x.new_tensor(moments.mean), x.new_tensor(moments.std**2)
    out = (x - mean) * torch.rsqrt(var + eps)
    if keep_mean:
        out = out + mean
    return out * mask.to(out.dtype)


# --- advantages ------------------------------------------------------------------------------


class Advantages(NamedTuple):
    advantages: torch.Tensor  # (B, T) GAE advantage of token t; 0 on padding
    returns: torch.Tensor  # (B, T) advantages + values: the value model's regression target; 0 on padding


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> Advantages:
    """Generalised advantage estimation over each response, the state after the last real token
    being terminal (value 0).

        delta_t = r_t + gamma * V_{t+1} - V_t;   A_t = delta_t + gamma * lam * A_{t+1}

    Shape: rewards (B, T), values (B, T), mask (B, T) -> Advantages of (B, T) each.
    """
    m = mask.to(values.dtype)
    B, T = rewards.shape
    advantages = torch.zeros_like(values)
    next_adv = torch.zeros(B, dtype=values.dtype, device=values.device)
    next_value = torch.zeros(B, dtype=values.dtype, device=values.device)
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * m[:, t]  # padding: 0, so the last real token sees 0
        advantages[:, t] = next_adv
        next_value = values[:, t] * m[:, t]
    return Advantages(advantages, (advantages + values) * m)


# --- losses ----------------------------------------------------------------------------------


class PolicyLoss(NamedTuple):
    loss: torch.Tensor  # () clipped surrogate loss, to minimise
    clip_frac: torch.Tensor  # () share of tokens where the clipped branch was taken
    ratio_mean: torch.Tensor  # () mean of pi/pi_old over real tokens (1 on the first minibatch)


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float
) -> PolicyLoss:
    """PPO's clipped surrogate: mean over tokens of max(-A * r, -A * clip(r, 1 - c, 1 + c)), r = pi / pi_old.

    Shape: logprobs, old_logprobs, advantages, mask (B, T) -> PolicyLoss of scalars.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_frac = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
    return PolicyLoss(loss, clip_frac.detach(), masked_mean(ratio, mask).detach())


class ValueLoss(NamedTuple):
    loss: torch.Tensor  # () clipped value loss, to minimise
    clip_frac: torch.Tensor  # () share of tokens where the clipped prediction had the larger error


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float
) -> ValueLoss:
    """0.5 * mean over tokens of max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2).

    Shape: values, old_values, returns, mask (B, T) -> ValueLoss of scalars.
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    err = (values - returns) ** 2
    err_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    return ValueLoss(loss, masked_mean((err_clipped > err).to(values.dtype), mask).detach())


# --- per-token quantities --------------------------------------------------------------------


def entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) at each position, in nats: logsumexp(l) - sum p * l.

    Shape: logits (B, T, V) -> (B, T).
    """
    logits = logits.float() / temperature if temperature != 1.0 else logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from the sampled token's log-probs.

    k1 = log pi - log pi_ref (unbiased, can be negative; the paper's choice);
    k3 = exp(log pi_ref - log pi) - 1 - (log pi_ref - log pi) (unbiased, never negative, lower variance).

    Shape: logprobs (B, T), ref_logprobs (B, T) -> (B, T).
    """
    if estimator == "k1":
        return logprobs - ref_logprobs
    if estimator == "k3":
        log_ratio = ref_logprobs - logprobs
        return torch.exp(log_ratio) - 1.0 - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; choose 'k1' or 'k3'")


def penalised_rewards(scores: torch.Tensor, kl: torch.Tensor, kl_coef: float, mask: torch.Tensor) -> torch.Tensor:
    """r_t = score_t - beta * KL_t on real tokens, 0 on padding.

    Shape: scores (B, T), kl (B, T), mask (B, T) -> (B, T).
    """
    return (scores - kl_coef * kl) * mask.to(scores.dtype)


def approx_kl(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """How far the policy moved during this rollout's updates: the k3 estimate of KL(pi_old || pi),
    mean over tokens of (r - 1) - log r with r = pi / pi_old. Always >= 0; used to stop the epochs early.

    Shape: logprobs, old_logprobs, mask (B, T) -> ().
    """
    log_ratio = logprobs - old_logprobs
    return masked_mean(torch.exp(log_ratio) - 1.0 - log_ratio, mask)


def sequence_sums(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over each response's real tokens.

    Shape: x (B, T), mask (B, T) -> (B,).
    """
    return (x * mask.to(x.dtype)).sum(-1)


# --- KL coefficient ----------------------------------------------------------------------------


def adaptive_kl_coef(coef: float, observed_kl: float, target: float, horizon: int, n_steps: int) -> float:
    """Ziegler et al. (2019)'s proportional controller: raise beta when the observed KL (per response,
    summed over tokens) is above `target`, lower it when below, by at most 20% per `horizon` samples.
    `n_steps` is the number of responses in the rollout."""
    error = min(max(observed_kl / target - 1.0, -0.2), 0.2)
    return coef * (1.0 + error * n_steps / horizon)


# --- reward normalisation ----------------------------------------------------------------------
#
# One choice for every arm of a comparison (`ppo.reward_norm`), applied to the weighted source
# rewards (B, T) before the KL penalty:
#   none     the rewards as the sources give them;
#   batch    each response's total R_b becomes (R_b - mean) / std, mean and std over the batch's totals;
#   running  the same with the mean and std of every total seen so far (RunningMoments);
#   segment  every segment reward becomes (s - mean) / std, mean and std over all segment rewards of
#            the batch (a holistic reward has one segment per response: then it equals `batch`).
# `batch` and `running` keep the *shape* of a dense reward (every segment reward is divided by the same
# std) and put the shift `-mean / std` on the response's last reward-bearing token, so a dense response's
# total is exactly what the holistic arm gets for the same response: the arms differ only in placement.
# `segment` subtracts the mean from every segment: a response's total becomes (R_b - S_b * mean) / std,
# which depends on its number of segments S_b (docs/detox.md discusses what that does).


class Moments(NamedTuple):
    """Sufficient statistics of a set of numbers; add two to pool them (across processes or steps)."""

    count: float
    total: float  # sum of the values
    total_sq: float  # sum of their squares

    @staticmethod
    def of(values: torch.Tensor) -> "Moments":
        """Shape: values (N,) -> Moments."""
        v = values.double()
        return Moments(float(v.numel()), float(v.sum()), float((v * v).sum()))

    def __add__(self, other: "Moments") -> "Moments":  # type: ignore[override]
        return Moments(self.count + other.count, self.total + other.total, self.total_sq + other.total_sq)

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    @property
    def std(self) -> float:
        """Bessel-corrected standard deviation (0 for fewer than two values)."""
        if self.count < 2:
            return 0.0
        var = (self.total_sq - self.count * self.mean**2) / (self.count - 1)
        return max(var, 0.0) ** 0.5


def last_reward_token(ends: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One-hot of each response's last segment-end token; a response without segments gets its last
    real token (and one without tokens gets nothing).

    Shape: ends (B, T) bool, mask (B, T) bool -> (B, T) bool.
    """
    where = torch.where(ends.any(-1, keepdim=True), ends & mask, mask)
    T = where.shape[-1]
    position = torch.arange(T, device=where.device).expand_as(where)
    last = torch.where(where, position, torch.full_like(position, -1)).max(-1, keepdim=True).values  # (B, 1)
    return (position == last) & where


def normalise_sequence_rewards(scores: torch.Tensor, anchor: torch.Tensor, mean: float, std: float, eps: float = 1e-8) -> torch.Tensor:
    """`batch` / `running`: divide every reward by `std` and put `-mean / std` on the anchor token,
    so that each response's total R_b becomes (R_b - mean) / std and a dense reward keeps its shape.

    Shape: scores (B, T), anchor (B, T) bool (one token per response, see `last_reward_token`) -> (B, T).
    """
    scale = 1.0 / (std + eps)
    return (scores - mean * anchor.to(scores.dtype)) * scale


def normalise_segment_rewards(scores: torch.Tensor, ends: torch.Tensor, mean: float, std: float, eps: float = 1e-8) -> torch.Tensor:
    """`segment`: every segment reward s (on its end token) becomes (s - mean) / std; tokens that end
    no segment stay 0.

    Shape: scores (B, T), ends (B, T) bool -> (B, T).
    """
    return (scores - mean * ends.to(scores.dtype)) / (std + eps) * ends.to(scores.dtype)
