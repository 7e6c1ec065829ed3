"""PPO maths on hand-computed tensors, and GAE against a plain Python loop."""

from __future__ import annotations

import math

import pytest
import torch

from finegrain.rl import maths

MASK = torch.tensor([[True, True, True], [True, False, False]])


def test_masked_mean_and_var_ignore_padding():
    x = torch.tensor([[1.0, 2.0, 3.0], [5.0, 100.0, -100.0]])
    assert maths.masked_mean(x, MASK).item() == pytest.approx(11.0 / 4)
    assert torch.allclose(maths.masked_mean(x, MASK, dim=1), torch.tensor([2.0, 5.0]))
    # values 1, 2, 3, 5: mean 2.75, squared deviations 3.0625 + 0.5625 + 0.0625 + 5.0625 = 8.75
    assert maths.masked_var(x, MASK, unbiased=False).item() == pytest.approx(8.75 / 4)
    assert maths.masked_var(x, MASK).item() == pytest.approx(8.75 / 3)
    empty = torch.zeros(2, 3, dtype=torch.bool)
    assert maths.masked_mean(x, empty).item() == 0.0


def test_whiten_divides_by_std_not_its_square_root():
    torch.manual_seed(0)
    x = torch.randn(4, 50) * 7.0 + 3.0  # std 7: dividing by sqrt(std) would leave std ~ 2.6
    mask = torch.ones(4, 50, dtype=torch.bool)
    mask[1, 30:] = False
    x[~mask] = 1e6  # padding must not leak into the statistics
    w = maths.whiten(x, mask)
    assert maths.masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-5)
    assert maths.masked_var(w, mask).sqrt().item() == pytest.approx(1.0, abs=1e-4)
    assert torch.all(w[~mask] == 0)
    kept = maths.whiten(x, mask, keep_mean=True)
    assert maths.masked_mean(kept, mask).item() == pytest.approx(maths.masked_mean(x, mask).item(), rel=1e-5)
    assert maths.masked_var(kept, mask).sqrt().item() == pytest.approx(1.0, abs=1e-4)


def test_whiten_on_hand_values():
    x = torch.tensor([[1.0, 3.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    # mean 2, unbiased var 2 -> (x - 2) / sqrt(2)
    expected = torch.tensor([[-1 / math.sqrt(2), 1 / math.sqrt(2), 0.0]])
    assert torch.allclose(maths.whiten(x, mask), expected, atol=1e-6)


def _gae_loop(rewards, values, lengths, gamma, lam):
    """The textbook recursion, one response and one token at a time."""
    B, T = len(rewards), len(rewards[0])
    adv = [[0.0] * T for _ in range(B)]
    for b in range(B):
        last = 0.0
        for t in reversed(range(lengths[b])):
            next_v = values[b][t + 1] if t + 1 < lengths[b] else 0.0
            delta = rewards[b][t] + gamma * next_v - values[b][t]
            last = delta + gamma * lam * last
            adv[b][t] = last
    ret = [[adv[b][t] + values[b][t] if t < lengths[b] else 0.0 for t in range(T)] for b in range(B)]
    return torch.tensor(adv), torch.tensor(ret)


def test_gae_on_hand_values():
    rewards = torch.tensor([[0.0, 1.0]])
    values = torch.tensor([[0.5, 0.25]])
    mask = torch.tensor([[True, True]])
    out = maths.gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # t=1: delta = 1 - 0.25 = 0.75; t=0: delta = 0 + 0.9 * 0.25 - 0.5 = -0.275; A0 = -0.275 + 0.45 * 0.75
    assert torch.allclose(out.advantages, torch.tensor([[0.0625, 0.75]]))
    assert torch.allclose(out.returns, torch.tensor([[0.5625, 1.0]]))


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_a_python_loop_with_padding(gamma, lam):
    g = torch.Generator().manual_seed(1)
    B, T = 5, 9
    lengths = [9, 1, 4, 7, 0]
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    # garbage on padding must not matter
    rewards[~mask] = 123.0
    values[~mask] = -77.0
    out = maths.gae(rewards, values, mask, gamma, lam)
    adv, ret = _gae_loop(rewards.tolist(), values.tolist(), lengths, gamma, lam)
    assert torch.allclose(out.advantages, adv.double(), atol=1e-10)
    assert torch.allclose(out.returns, ret.double(), atol=1e-10)


def test_policy_loss_clips_on_hand_values():
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1, 9.0]]))
    adv = torch.tensor([[1.0, -1.0, 2.0, 5.0]])
    mask = torch.tensor([[True, True, True, False]])
    out = maths.policy_loss(new, old, adv, mask, clip=0.2)
    # token 0: ratio 1.5, A>0 -> clipped at 1.2 -> -1.2; token 1: ratio 0.5, A<0 -> max(0.5, 0.8) = 0.8;
    # token 2: ratio 1.1, unclipped -> -2.2; token 3 is padding
    assert out.loss.item() == pytest.approx((-1.2 + 0.8 - 2.2) / 3)
    assert out.clip_frac.item() == pytest.approx(2 / 3)
    assert out.ratio_mean.item() == pytest.approx((1.5 + 0.5 + 1.1) / 3)


def test_policy_loss_gradient_is_minus_advantage_at_ratio_one():
    lp = torch.zeros(1, 2, requires_grad=True)
    adv = torch.tensor([[2.0, -1.0]])
    maths.policy_loss(lp, torch.zeros(1, 2), adv, torch.ones(1, 2, dtype=torch.bool), 0.2).loss.backward()
    assert torch.allclose(lp.grad, -adv / 2)


def test_value_loss_clips_on_hand_values():
    old = torch.tensor([[0.0, 0.0, 0.0]])
    new = torch.tensor([[1.0, 0.1, -0.5]])
    ret = torch.tensor([[1.0, 1.0, 0.0]])
    mask = torch.tensor([[True, True, True]])
    out = maths.value_loss(new, old, ret, mask, clip=0.2)
    # token 0: unclipped err 0, clipped 0.2 -> err (0.2-1)^2 = 0.64; token 1: both within clip: 0.81;
    # token 2: err 0.25, clipped -0.2 -> 0.04; max -> 0.25
    assert out.loss.item() == pytest.approx(0.5 * (0.64 + 0.81 + 0.25) / 3)
    assert out.clip_frac.item() == pytest.approx(1 / 3)


def test_token_logprobs_and_entropy():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [1.0, 1e-30, 1e-30]]]))
    tokens = torch.tensor([[1, 0]])
    assert torch.allclose(maths.token_logprobs(logits, tokens), torch.tensor([[math.log(0.25), 0.0]]), atol=1e-6)
    ent = maths.entropy(logits)
    assert ent[0, 0].item() == pytest.approx(-(0.5 * math.log(0.5) + 0.5 * math.log(0.25)), rel=1e-5)
    assert ent[0, 1].item() == pytest.approx(0.0, abs=1e-5)
    # bf16 logits are computed in float32
    assert maths.token_logprobs(logits.bfloat16(), tokens).dtype == torch.float32


def test_kl_estimators_on_hand_values():
    lp = torch.tensor([[math.log(0.5), math.log(0.2)]])
    ref = torch.tensor([[math.log(0.25), math.log(0.4)]])
    assert torch.allclose(maths.kl_penalty(lp, ref, "k1"), torch.tensor([[math.log(2), math.log(0.5)]]))
    # k3 = r - 1 - log r with r = ref/pi: r = 0.5 -> 0.5 - 1 + log 2; r = 2 -> 1 - log 2
    k3 = maths.kl_penalty(lp, ref, "k3")
    assert torch.allclose(k3, torch.tensor([[-0.5 + math.log(2), 1 - math.log(2)]]))
    assert torch.all(k3 >= 0)
    with pytest.raises(ValueError, match="k2"):
        maths.kl_penalty(lp, ref, "k2")  # type: ignore[arg-type]


def test_k1_and_k3_estimate_the_true_kl():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.3, 0.3, 0.4])
    true_kl = float((p * (p / q).log()).sum())
    samples = torch.multinomial(p, 200_000, replacement=True, generator=g)
    lp, ref = p.log()[samples][None], q.log()[samples][None]
    for est in ("k1", "k3"):
        assert maths.kl_penalty(lp, ref, est).mean().item() == pytest.approx(true_kl, abs=0.01)


def test_tempered_logprobs_estimate_the_kl_of_the_distribution_sampled_from():
    """Samples drawn at temperature T: the k1 estimate with both log-probs at T is KL(pi_T || ref_T) >= 0;
    with both at temperature 1 it estimates no KL and here falls below 0 (a penalty that pays for drifting)."""
    g = torch.Generator().manual_seed(0)
    policy, ref, T = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([3.0, 0.0, 0.0]), 0.3  # the policy is flatter than the reference
    assert torch.allclose(maths.token_logprobs(policy[None, None], torch.tensor([[2]]), T), torch.log_softmax(policy / T, -1)[2:3][None])
    sampled = torch.softmax(policy / T, -1)
    true_kl = float((sampled * (sampled.log() - torch.log_softmax(ref / T, -1))).sum())
    tokens = torch.multinomial(sampled, 100_000, replacement=True, generator=g)[None]  # (1, N)
    logits_p, logits_r = policy.expand(1, tokens.shape[1], 3), ref.expand(1, tokens.shape[1], 3)
    at_t = maths.kl_penalty(maths.token_logprobs(logits_p, tokens, T), maths.token_logprobs(logits_r, tokens, T), "k1").mean().item()
    at_one = maths.kl_penalty(maths.token_logprobs(logits_p, tokens), maths.token_logprobs(logits_r, tokens), "k1").mean().item()
    assert at_t == pytest.approx(true_kl, abs=0.01) and true_kl > 0
    assert at_one < -0.25
    # the entropy at T is that of softmax(logits / T)
    assert maths.entropy(policy[None, None], T).item() == pytest.approx(float(-(sampled * sampled.log()).sum()), rel=1e-5)


def test_penalised_rewards_and_sums():
    scores = torch.tensor([[0.0, 1.0, 5.0]])
    kl = torch.tensor([[0.5, -0.5, 9.0]])
    mask = torch.tensor([[True, True, False]])
    r = maths.penalised_rewards(scores, kl, 0.2, mask)
    assert torch.allclose(r, torch.tensor([[-0.1, 1.1, 0.0]]))
    assert torch.allclose(maths.sequence_sums(r, mask), torch.tensor([1.0]))


def test_approx_kl_is_zero_at_equality_and_positive_otherwise():
    old = torch.tensor([[-1.0, -2.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    assert maths.approx_kl(old, old, mask).item() == 0.0
    new = old + torch.tensor([[0.1, -0.3]])
    # (e^0.1 - 1 - 0.1 + e^-0.3 - 1 + 0.3) / 2
    expected = (math.exp(0.1) - 1.1 + math.exp(-0.3) - 0.7) / 2
    assert maths.approx_kl(new, old, mask).item() == pytest.approx(expected, rel=1e-5)


def test_adaptive_kl_coef_moves_towards_target_and_is_capped():
    assert maths.adaptive_kl_coef(0.1, observed_kl=6.0, target=6.0, horizon=100, n_steps=10) == pytest.approx(0.1)
    assert maths.adaptive_kl_coef(0.1, 12.0, 6.0, 100, 10) == pytest.approx(0.1 * 1.02)  # error capped at +0.2
    assert maths.adaptive_kl_coef(0.1, 5.4, 6.0, 100, 10) == pytest.approx(0.1 * (1 - 0.1 * 0.1))


# --- reward normalisation ----------------------------------------------------------------------

# Two responses: a dense one with segments ending at tokens 0 and 2, and one with a single segment
# at token 1 and a padding token. Totals R = (-0.2, -0.6): mean -0.4, std sqrt(0.08) (Bessel).
NORM_SCORES = torch.tensor([[0.1, 0.0, -0.3], [0.0, -0.6, 0.0]])
NORM_ENDS = torch.tensor([[True, False, True], [False, True, False]])
NORM_MASK = torch.tensor([[True, True, True], [True, True, False]])


def test_moments_pool_and_match_hand_values():
    m = maths.Moments.of(torch.tensor([1.0, 2.0, 3.0]))
    assert (m.count, m.mean, m.std) == (3.0, 2.0, 1.0)
    pooled = maths.Moments.of(torch.tensor([1.0, 2.0])) + maths.Moments.of(torch.tensor([3.0]))
    assert pooled == m
    assert maths.Moments.of(torch.tensor([5.0])).std == 0.0 and maths.Moments(0.0, 0.0, 0.0).mean == 0.0


def test_last_reward_token():
    anchor = maths.last_reward_token(NORM_ENDS, NORM_MASK)
    assert anchor.tolist() == [[False, False, True], [False, True, False]]
    no_segments = maths.last_reward_token(torch.zeros(2, 3, dtype=torch.bool), NORM_MASK)
    assert no_segments.tolist() == [[False, False, True], [False, True, False]]  # the last real token
    empty = maths.last_reward_token(torch.zeros(1, 3, dtype=torch.bool), torch.zeros(1, 3, dtype=torch.bool))
    assert not empty.any()


def test_batch_normalisation_makes_every_total_its_z_score_and_keeps_the_dense_shape():
    m = maths.Moments.of(maths.sequence_sums(NORM_SCORES, NORM_MASK))
    assert m.mean == pytest.approx(-0.4) and m.std == pytest.approx(math.sqrt(0.08))
    out = maths.normalise_sequence_rewards(NORM_SCORES, maths.last_reward_token(NORM_ENDS, NORM_MASK), m.mean, m.std)
    s = math.sqrt(0.08)
    expected = torch.tensor([[0.1 / s, 0.0, (-0.3 + 0.4) / s], [0.0, (-0.6 + 0.4) / s, 0.0]])
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(maths.sequence_sums(out, NORM_MASK), torch.tensor([0.2 / s, -0.2 / s]), atol=1e-6)
    # a holistic reward with the same totals, on the same anchor, gets the same normalised totals
    holistic = torch.tensor([[0.0, 0.0, -0.2], [0.0, -0.6, 0.0]])
    ends = torch.tensor([[False, False, True], [False, True, False]])
    out_h = maths.normalise_sequence_rewards(holistic, maths.last_reward_token(ends, NORM_MASK), m.mean, m.std)
    assert torch.allclose(maths.sequence_sums(out_h, NORM_MASK), maths.sequence_sums(out, NORM_MASK), atol=1e-6)


def test_segment_normalisation_by_hand():
    seg = maths.Moments.of(NORM_SCORES[NORM_ENDS & NORM_MASK])  # 0.1, -0.3, -0.6
    mean = -0.8 / 3
    std = math.sqrt(((0.1 - mean) ** 2 + (-0.3 - mean) ** 2 + (-0.6 - mean) ** 2) / 2)
    assert seg.mean == pytest.approx(mean) and seg.std == pytest.approx(std)
    out = maths.normalise_segment_rewards(NORM_SCORES, NORM_ENDS, seg.mean, seg.std)
    expected = torch.tensor([[(0.1 - mean) / std, 0.0, (-0.3 - mean) / std], [0.0, (-0.6 - mean) / std, 0.0]])
    assert torch.allclose(out, expected, atol=1e-6)
    assert out[~NORM_ENDS].abs().max() == 0  # tokens that end no segment carry nothing


def test_normalisation_of_a_constant_batch_is_finite():
    scores = torch.tensor([[0.0, -0.5], [0.0, -0.5]])
    mask = torch.ones(2, 2, dtype=torch.bool)
    m = maths.Moments.of(maths.sequence_sums(scores, mask))
    out = maths.normalise_sequence_rewards(scores, maths.last_reward_token(scores != 0, mask), m.mean, m.std)
    assert torch.isfinite(out).all() and out.abs().max() < 1e-6
