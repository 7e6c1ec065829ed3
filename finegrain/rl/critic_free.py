"""Critic-free advantages (GRPO, RLOO), holistic and fine-grained, as pure functions on tensors.

Shape legend: B responses = N prompts x G samples per prompt, the G responses to prompt n being
rows n * G .. n * G + G - 1 (how `rollout.sample` lays them out); T response tokens (right-padded);
K reward sources; S segments. `mask` (B, T) is True on real response tokens. `ends` (K, B, T) or
(B, T) is True on the token where a segment ends: the composer puts each segment's reward there
(`compose.place_segment_rewards`; `TokenRewards.source_ends` is each source's), so a source's (B, T) reward is zero off its ends, and a segment
whose reward is 0 is still a segment (it counts in the group's statistics).

Holistic: each response's reward is the sum of its segment rewards (one number), and every token
of the response gets the same advantage. Fine-grained (dense): token t's advantage is built from
the rewards of the segments that end at or after t (the tokens after a response's last segment
end, such as EOS, belong to that segment: `segment_index`).

A group whose values are all equal (every response scored the same) gets advantage 0, never NaN.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

from finegrain.rl import maths

Estimator = Literal["grpo", "rloo"]
SourceNorm = Literal["each", "sum"]
LossAggregation = Literal["sequence_mean", "token_mean", "constant"]
ESTIMATORS: tuple[str, ...] = ("grpo", "rloo")
SOURCE_NORMS: tuple[str, ...] = ("each", "sum")
DENSE_BASELINES: tuple[str, ...] = ("segments", "responses")  # grpo_dense's normalisation
LOSS_AGGREGATIONS: tuple[str, ...] = ("sequence_mean", "token_mean", "constant")


def _groups(x: torch.Tensor, group_size: int, dim: int = 0) -> torch.Tensor:
    """Split the response axis `dim` of size B into (N, G). Shape: (..., B, ...) -> (..., N, G, ...)."""
    if group_size < 2:
        raise ValueError(
            f"group-relative advantages need at least 2 samples per prompt (samples_per_prompt), got {group_size}: "
            "with one sample every advantage would be 0 (GRPO) or undefined (RLOO's leave-one-out mean of no other sample)"
        )
    B = x.shape[dim]
    if B % group_size:
        raise ValueError(f"{B} responses do not split into groups of {group_size} samples per prompt")
    return x.unflatten(dim, (B // group_size, group_size))


def _all_equal(x: torch.Tensor, valid: torch.Tensor, dim: int) -> torch.Tensor:
    """True where every valid value along `dim` is the same (or there is at most one).

    Shape: x, valid (..., M, ...) -> (..., 1, ...) bool, `dim` kept.
    """
    big = torch.finfo(x.dtype).max
    hi = torch.where(valid, x, torch.full_like(x, -big)).amax(dim, keepdim=True)
    lo = torch.where(valid, x, torch.full_like(x, big)).amin(dim, keepdim=True)
    return (hi <= lo) | (valid.sum(dim, keepdim=True) < 2)


# --- group statistics --------------------------------------------------------------------------


def group_zscore(x: torch.Tensor, valid: torch.Tensor, scale_by_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """(x - mean) / (std + eps) over the valid values of each row (a group); 0 on invalid values and
    on rows whose valid values are all equal. The std is Bessel-corrected (torch.std's default, as in
    TRL). `scale_by_std=False` only subtracts the mean (Dr. GRPO).

    Shape: x (N, M), valid (N, M) bool -> (N, M).
    """
    mean, scale, flat = group_moments(x, valid, scale_by_std, eps)
    return torch.where(valid.bool() & ~flat, x - mean, torch.zeros_like(x)) / scale


def group_moments(x: torch.Tensor, valid: torch.Tensor, scale_by_std: bool = True, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's mean of its valid values, the divisor `group_zscore` uses (std + eps, Bessel-corrected;
    1 without `scale_by_std` and on rows with nothing to scale) and whether its valid values are all equal.

    Shape: x (N, M), valid (N, M) bool -> mean (N, 1), scale (N, 1), flat (N, 1) bool.
    """
    valid = valid.bool()
    v = valid.to(x.dtype)
    n = v.sum(-1, keepdim=True)
    mean = (x * v).sum(-1, keepdim=True) / n.clamp(min=1)
    flat = _all_equal(x, valid, -1)
    if not scale_by_std:
        return mean, torch.ones_like(mean), flat
    centred = torch.where(valid & ~flat, x - mean, torch.zeros_like(x))
    std = ((centred**2).sum(-1, keepdim=True) / (n - 1).clamp(min=1)).sqrt()
    return mean, torch.where(std > 0, std + eps, torch.ones_like(std)), flat  # all-equal rows: 0 / 1, even with eps = 0


def leave_one_out(x: torch.Tensor) -> torch.Tensor:
    """x_i minus the mean of the other G - 1 values of its group: G / (G - 1) * (x_i - mean);
    exactly 0 where the group's values are all equal.

    Shape: x (N, G, ...) -> (N, G, ...).
    """
    G = x.shape[1]
    if G < 2:
        raise ValueError(f"RLOO's leave-one-out baseline needs at least 2 samples per prompt, got {G}")
    same = _all_equal(x, torch.ones_like(x, dtype=torch.bool), 1)
    centred = torch.where(same, torch.zeros_like(x), x - x.mean(1, keepdim=True))
    return centred * (G / (G - 1))


def reverse_cumsum(x: torch.Tensor) -> torch.Tensor:
    """y_t = sum_{t' >= t} x_t'. Shape: (..., T) -> (..., T)."""
    return x.flip(-1).cumsum(-1).flip(-1)


# --- the four estimators, one reward source ----------------------------------------------------


def grpo_holistic(rewards: torch.Tensor, mask: torch.Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """GRPO's outcome advantage: the response's reward minus its group's mean, divided by the
    group's std (not divided with `scale_by_std=False`, Dr. GRPO), on every real token.

        A_it = (R_i - mean_G R) / (std_G R + eps),   R_i = sum_t r_it

    Shape: rewards (B, T), mask (B, T) -> (B, T).
    """
    seq = _groups(maths.sequence_sums(rewards, mask), group_size)  # (N, G)
    adv = group_zscore(seq, torch.ones_like(seq, dtype=torch.bool), scale_by_std, eps).flatten()  # (B,)
    return adv[:, None] * mask.to(adv.dtype)


def segment_index(ends: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The segment each token belongs to: the number of segment ends before it, except that the
    tokens after a response's last end (the trailing whitespace and EOS that the composer's
    last-non-space-character rule leaves after the reward) belong to the last segment. 0 on padding
    and in responses without a segment.

    Shape: ends (B, T) bool, mask (B, T) bool -> (B, T) long.
    """
    m = mask.bool()
    seg = (ends.bool() & m).long()
    before = seg.cumsum(-1) - seg  # (B, T) ends strictly before t
    last = (seg.sum(-1, keepdim=True) - 1).clamp(min=0)  # (B, 1) index of the last segment
    return torch.minimum(before, last).masked_fill(~m, 0)


def _to_go(x: torch.Tensor, index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per response, the sum of x over segments j, j+1, ... for every segment index j; 0 past a
    response's last segment. Shape: x (B, T), index (B, T) long, mask (B, T) -> (B, J), J = max index + 1."""
    B = x.shape[0]
    J = int(index.max()) + 1 if index.numel() else 1
    per_segment = torch.zeros(B, J, dtype=x.dtype, device=x.device).scatter_add_(1, index, x * mask.to(x.dtype))  # (B, J)
    return reverse_cumsum(per_segment)


def grpo_dense(
    rewards: torch.Tensor, ends: torch.Tensor, mask: torch.Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6,
    baseline: str = "segments",
) -> torch.Tensor:
    """Token t gets its response's normalised reward-to-go from the segment it lies in; tokens after
    the last end belong to the last segment (`segment_index`). With one segment per response both
    baselines are `grpo_holistic`.

    `baseline="segments"`, DeepSeekMath's process supervision (arXiv 2402.03300, 4.1.3): every segment
    reward is normalised by the mean and std of all segment rewards in the group (all G responses'
    segments together). Advantages are 0 only where every segment of the group has the same reward.
    Each segment brings its own -mean: where segment rewards have a non-zero mean, a response's
    first-token advantage moves by -S_i * mean / std with its number of segments S_i (more segments
    pay when the mean is negative, as with the toxicity drops, whose sum is -toxicity).

        r~_ij = (r_ij - mean_group r) / (std_group r + eps),   A_it = sum_{j >= j(t)} r~_ij

    `baseline="responses"`: the group's response totals give the mean and std, as in `grpo_holistic`,
    and the mean is subtracted once per response: the first token's advantage is exactly the holistic
    GRPO advantage, whatever the number of segments, and the dense rewards keep their shape after it
    (PPO's `reward_norm: batch` within the group). 0 where the group's totals are all equal.

        A_it = (Q_i,j(t) - mean_G R) / (std_G R + eps),   Q_ij = sum_{j' >= j} r_ij',   R_i = Q_i0

    Shape: rewards (B, T), ends (B, T) bool, mask (B, T) -> (B, T).
    """
    if baseline not in DENSE_BASELINES:
        raise ValueError(f"unknown dense GRPO baseline {baseline!r}; choose one of {', '.join(DENSE_BASELINES)}")
    B, T = rewards.shape
    seg = ends.bool() & mask.bool()
    index = segment_index(seg, mask)
    if baseline == "responses":
        totals = _groups(maths.sequence_sums(rewards, mask), group_size)  # (N, G)
        moments = group_moments(totals, torch.ones_like(totals, dtype=torch.bool), scale_by_std, eps)  # (N, 1) each
        mean, scale, flat = (m.repeat_interleave(group_size, 0) for m in moments)  # (B, 1): each response's group's
        to_go = _to_go(rewards, index, mask).gather(1, index)  # (B, T) Q_i,j(t)
        adv = torch.where(flat, torch.zeros_like(to_go), (to_go - mean) / scale)
        return adv * mask.to(rewards.dtype)
    x = _groups(rewards, group_size).flatten(1)  # (N, G * T)
    normalised = group_zscore(x, _groups(seg, group_size).flatten(1), scale_by_std, eps).reshape(B, T)  # r~ on end tokens
    return _to_go(normalised, index, mask).gather(1, index) * mask.to(rewards.dtype)


def rloo_holistic(rewards: torch.Tensor, mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO (Ahmadian et al., 2024): the response's reward minus the mean reward of the other G - 1
    responses to the same prompt, on every real token. The baseline depends on the other samples
    only, which are drawn independently of this one: an unbiased baseline.

        A_it = R_i - 1 / (G - 1) * sum_{i' != i} R_i'

    Shape: rewards (B, T), mask (B, T) -> (B, T).
    """
    seq = _groups(maths.sequence_sums(rewards, mask), group_size)  # (N, G)
    adv = leave_one_out(seq).flatten()  # (B,)
    return adv[:, None] * mask.to(adv.dtype)


def rloo_dense(rewards: torch.Tensor, ends: torch.Tensor, mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO with reward-to-go: token t of response i lies in segment j(t) (`segment_index`: the
    number of segment ends before t; trailing tokens in the last segment); its advantage is the
    response's reward-to-go from that segment, Q_ij = the sum of the rewards of its segments j,
    j+1, ..., minus the mean of the other G - 1 responses' reward-to-go at the same index.

        A_it = Q_{i,j(t)} - 1 / (G - 1) * sum_{i' != i} Q_{i',j(t)}

    Different numbers of segments: a response with S_i segments has collected all its reward by
    index S_i, so Q_ij = 0 for j >= S_i. Every baseline then averages exactly G - 1 values, the
    advantages Q_ij - b_ij sum to 0 over a group at every index j, index 0 is holistic RLOO, and
    with one segment per response (the sequence level) the whole thing is `rloo_holistic`.

    Bias: token t's baseline b(x, j(t), other responses) uses the other responses, drawn
    independently of response i given the prompt, and the index j(t). It is unbiased
    (E_{y_t ~ pi(.|s_t)}[grad log pi(y_t|s_t) b] = 0 in the on-policy, unclipped gradient) wherever
    j(t) is fixed by the prefix y_<t: every token of a sequence-level source (j = 0 throughout:
    exactly holistic RLOO) and of a source whose segment ends are fixed in advance (token windows),
    and the tokens inside a segment. It is biased where y_t itself moves the index: (1) the first
    token after a segment end that the source could only place by seeing that token (a sentence
    splitter ends a sentence at ". The" but not at "3.5"), and (2) the tokens after a response's
    last end, whose index holds only because no further end follows. There the bias is
    E[grad log pi(y_t|s_t) b_{j(t)}], which vanishes when the baselines of neighbouring indexes are
    equal. The reward-to-go itself is a sample of the return, so it adds no bias.

    Shape: rewards (B, T), ends (B, T) bool, mask (B, T) -> (B, T).
    """
    index = segment_index(ends, mask)
    to_go = _to_go(rewards, index, mask)  # (B, J) Q_ij, 0 beyond a response's last segment
    adv = leave_one_out(_groups(to_go, group_size)).flatten(0, 1)  # (B, J)
    return adv.gather(1, index) * mask.to(adv.dtype)


# --- several sources ---------------------------------------------------------------------------


class GroupAdvantages(NamedTuple):
    advantages: torch.Tensor  # (B, T) what the policy loss uses; 0 on padding
    source_rewards: torch.Tensor  # (K, B) each source's unweighted reward of each response (sum of its segment rewards), for logging
    source_advantages: torch.Tensor  # (K, B, T) the advantage source k alone gives (unweighted), for logging; with
    # source_norm "each", advantages == sum_k weights[k] * source_advantages[k]


def one_source(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    estimator: Estimator,
    dense: bool,
    ends: torch.Tensor | None = None,
    scale_by_std: bool = True,
    eps: float = 1e-6,
    dense_baseline: str = "segments",
) -> torch.Tensor:
    """The chosen estimator on one (B, T) reward. `ends` is needed when `dense`; `scale_by_std`,
    `eps` and `dense_baseline` are GRPO's. Shape: rewards (B, T), mask (B, T), ends (B, T) or None -> (B, T)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown critic-free estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    if dense:
        if ends is None:
            raise ValueError("dense advantages need the segment-end mask `ends`")
        stray = (rewards != 0) & mask.bool() & ~ends.bool()
        if stray.any():
            b, t = stray.nonzero()[0].tolist()
            raise ValueError(f"response {b} has reward {float(rewards[b, t])} on token {t}, which ends no segment: rewards and segment ends are misaligned")
    if estimator == "grpo":
        return grpo_dense(rewards, ends, mask, group_size, scale_by_std, eps, dense_baseline) if dense else grpo_holistic(rewards, mask, group_size, scale_by_std, eps)
    return rloo_dense(rewards, ends, mask, group_size) if dense else rloo_holistic(rewards, mask, group_size)


def group_advantages(
    per_source: torch.Tensor,
    weights: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    estimator: Estimator,
    dense: bool,
    ends: torch.Tensor | None = None,
    source_norm: SourceNorm = "each",
    scale_by_std: bool = True,
    eps: float = 1e-6,
    dense_baseline: str = "segments",
) -> GroupAdvantages:
    """Advantages from K reward sources. `source_norm="each"` runs the estimator on each source
    within the group, then takes the weighted sum (the GDPO idea: a source with a large spread
    cannot drown the others); `"sum"` runs it once on the weighted sum of the sources, whose
    segments (dense) are the union of the sources' segment ends. Holistic RLOO is linear in the
    reward, so both give the same advantages; dense RLOO too when the sources share their segment
    ends (with different ends, "sum" indexes segments by the union); GRPO's differ by each
    source's group std.

    Shape: per_source (K, B, T), weights (K,), mask (B, T), ends (K, B, T) bool or None -> GroupAdvantages.
    """
    if source_norm not in SOURCE_NORMS:
        raise ValueError(f"unknown source_norm {source_norm!r}; choose one of {', '.join(SOURCE_NORMS)}")
    K = per_source.shape[0]
    if weights.shape != (K,):
        raise ValueError(f"{K} reward sources but {tuple(weights.shape)} weights")
    if dense and (ends is None or ends.shape != per_source.shape):
        raise ValueError(f"dense advantages need segment ends of shape {tuple(per_source.shape)}, got {None if ends is None else tuple(ends.shape)}")
    w = weights.to(per_source.dtype)
    each = torch.stack(
        [one_source(per_source[k], mask, group_size, estimator, dense, ends[k] if dense else None, scale_by_std, eps, dense_baseline) for k in range(K)]
    )  # (K, B, T)
    if source_norm == "each":
        total = (each * w[:, None, None]).sum(0)
    else:
        from finegrain.rewards.compose import weighted_total

        summed = weighted_total(per_source, w)
        total = one_source(summed, mask, group_size, estimator, dense, ends.any(0) if dense else None, scale_by_std, eps, dense_baseline)
    return GroupAdvantages(total, maths.sequence_sums(per_source, mask), each)


def kl_as_source(kl: torch.Tensor, mask: torch.Tensor, dense: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The KL penalty in the reward (`kl_in: reward`) as one more reward source, -KL, to stack onto
    the composer's (K, B, T) with weight kl_coef: holistic, its sum over the response on the last
    real token; dense, every token its own segment (-KL_t on token t).

    Shape: kl (B, T), mask (B, T) -> rewards (B, T), ends (B, T) bool.
    """
    m = mask.bool()
    if dense:
        return -kl * m.to(kl.dtype), m
    last = m & ~torch.cat([m[:, 1:], torch.zeros_like(m[:, :1])], dim=1)  # (B, T) the last real token
    return -maths.sequence_sums(kl, m)[:, None] * last.to(kl.dtype), last


# --- the loss ----------------------------------------------------------------------------------


def token_weights(mask: torch.Tensor, aggregation: LossAggregation, max_tokens: int | None = None) -> torch.Tensor:
    """Per-token weights c such that `masked_mean(c * x, mask)` (a mean over all real tokens) is the
    chosen aggregation of the per-token values x:
      "sequence_mean": mean over responses of each response's token mean (GRPO's paper);
      "token_mean": mean over all real tokens of the batch (DAPO; long responses weigh more);
      "constant": sum over all real tokens / (B * max_tokens) (Dr. GRPO: no length bias).

    Shape: mask (B, T) -> (B, T), 0 on padding.
    """
    m = mask.to(torch.float32)
    B, n = m.shape[0], m.sum().clamp(min=1)
    if aggregation == "token_mean":
        return m
    if aggregation == "sequence_mean":
        return m * n / (B * m.sum(-1, keepdim=True).clamp(min=1))
    if aggregation == "constant":
        if max_tokens is None or max_tokens < 1:
            raise ValueError(f"the 'constant' loss aggregation needs max_tokens >= 1 (the response length limit), got {max_tokens}")
        return m * n / (B * max_tokens)
    raise ValueError(f"unknown loss aggregation {aggregation!r}; choose one of {', '.join(LOSS_AGGREGATIONS)}")


def micro_batch_share(micro_mask: torch.Tensor, batch_mask: torch.Tensor, aggregation: LossAggregation) -> float:
    """The factor that turns a micro-batch's aggregated loss into its share of the whole batch's, so
    that gradient accumulation over micro-batches gives the batch's aggregate exactly: its share of
    the batch's real tokens for "token_mean", of the batch's responses otherwise.

    Shape: micro_mask (b, T), batch_mask (B, T') -> float.
    """
    if aggregation == "token_mean":
        return float(micro_mask.sum()) / max(float(batch_mask.sum()), 1.0)
    return micro_mask.shape[0] / batch_mask.shape[0]


class CriticFreeLoss(NamedTuple):
    loss: torch.Tensor  # () policy + kl_coef * kl, to minimise
    policy: torch.Tensor  # () the clipped surrogate, aggregated
    kl: torch.Tensor  # () the k3 KL(pi || pi_ref) term, aggregated the same way (0 when kl_coef is 0)
    clip_frac: torch.Tensor  # () share of real tokens where the clipped branch was taken
    ratio_mean: torch.Tensor  # () mean of pi / pi_old over real tokens


def critic_free_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float,
    aggregation: LossAggregation = "sequence_mean",
    kl_coef: float = 0.0,
    max_tokens: int | None = None,
) -> CriticFreeLoss:
    """The clipped policy objective with the chosen length aggregation, plus kl_coef times the k3
    KL to the reference as a loss term (GRPO's; leave kl_coef at 0 when the KL is in the reward).
    `maths.policy_loss` takes the token mean; the surrogate max(-A r, -A clip(r)) scales with a
    positive factor on A, so each aggregation is that loss on advantages times `token_weights`.

    Shape: logprobs, old_logprobs, ref_logprobs, advantages, mask (B, T) -> CriticFreeLoss of scalars.
    """
    c = token_weights(mask, aggregation, max_tokens).to(advantages.dtype)
    pg = maths.policy_loss(logprobs, old_logprobs, advantages * c, mask, clip)
    kl = torch.zeros((), dtype=pg.loss.dtype, device=pg.loss.device)
    if kl_coef:
        if ref_logprobs is None:
            raise ValueError("a KL loss term (kl_coef > 0) needs the reference's log-probs")
        kl = maths.masked_mean(maths.kl_penalty(logprobs, ref_logprobs, "k3") * c, mask)
    return CriticFreeLoss(pg.loss + kl_coef * kl, pg.loss.detach(), kl.detach(), pg.clip_frac, pg.ratio_mean)
