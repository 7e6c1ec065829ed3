"""Critic-free advantages (GRPO, RLOO; holistic and dense) and their loss, on hand-computed tensors."""

from __future__ import annotations

import math

import pytest
import torch

from finegrain.rl import critic_free as cf

PAD = 100.0  # garbage on padding: it must never reach a statistic or an advantage


def _mask(lengths, T):
    return torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]


def _on_last(values, lengths, T):
    """Sequence rewards on each response's last real token, PAD on padding. Shape: -> (B, T)."""
    mask = _mask(lengths, T)
    r = torch.where(mask, torch.zeros(len(values), T), torch.full((len(values), T), PAD))
    for b, (v, n) in enumerate(zip(values, lengths)):
        r[b, n - 1] = v
    return r, mask


def _one_segment(values, lengths, T, seed):
    """One segment per response, ending on a random real token (the tokens after it trail, as EOS
    does after the composer's last non-space character), PAD on padding. Shape: -> rewards, ends, mask (B, T)."""
    g = torch.Generator().manual_seed(seed)
    mask = _mask(lengths, T)
    rewards = torch.where(mask, torch.zeros(len(values), T), torch.full((len(values), T), PAD))
    ends = torch.zeros(len(values), T, dtype=torch.bool)
    for b, (v, n) in enumerate(zip(values, lengths)):
        t = int(torch.randint(0, n, (1,), generator=g))
        rewards[b, t], ends[b, t] = v, True
    return rewards, ends, mask


# --- GRPO holistic ---------------------------------------------------------------------------------


def test_grpo_holistic_on_hand_values_with_padding_and_a_flat_group():
    # group 1: rewards 1, 2, 3 -> mean 2, unbiased std 1; group 2: all 5 -> zeros, not NaN
    r, mask = _on_last([1.0, 2.0, 3.0, 5.0, 5.0, 5.0], [3, 1, 2, 3, 2, 1], 3)
    adv = cf.grpo_holistic(r, mask, group_size=3, eps=0.0)
    expected = torch.tensor([[-1.0, -1, -1], [0, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
    assert torch.equal(adv, expected)


def test_grpo_holistic_scale_by_std_off_is_dr_grpo():
    r, mask = _on_last([0.0, 0.0, 3.0], [2, 2, 2], 2)
    # mean 1, centred -1, -1, 2; unbiased var (1 + 1 + 4) / 2 = 3
    assert torch.allclose(cf.grpo_holistic(r, mask, 3, scale_by_std=False), torch.tensor([[-1.0, -1], [-1, -1], [2, 2]]))
    s = math.sqrt(3.0)
    assert torch.allclose(cf.grpo_holistic(r, mask, 3, eps=0.0), torch.tensor([[-1 / s] * 2, [-1 / s] * 2, [2 / s] * 2]))


# --- GRPO dense --------------------------------------------------------------------------------------


def test_grpo_dense_on_hand_values():
    # response 0 (4 tokens): segments end at t1 (reward 3) and t3 (1)
    # response 1 (3 tokens): segments end at t0 (reward 0: still a segment) and t2 (4); t3 is padding
    rewards = torch.tensor([[0.0, 3, 0, 1], [0, 0, 4, PAD]])
    ends = torch.tensor([[False, True, False, True], [True, False, True, True]])  # a stray end on padding is ignored
    mask = _mask([4, 3], 4)
    # group's segments 3, 1, 0, 4: mean 2, deviations 1, -1, -2, 2, unbiased var 10 / 3
    s = math.sqrt(10 / 3)
    expected = torch.tensor([[0.0, 0, -1 / s, -1 / s], [0, 2 / s, 2 / s, 0]])
    assert torch.allclose(cf.grpo_dense(rewards, ends, mask, 2, eps=0.0), expected, atol=1e-6)
    # Dr. GRPO style: centred only
    assert torch.allclose(cf.grpo_dense(rewards, ends, mask, 2, scale_by_std=False), torch.tensor([[0.0, 0, -1, -1], [0, 2, 2, 0]]))


def test_grpo_dense_with_one_segment_per_response_is_holistic():
    g = torch.Generator().manual_seed(0)
    lengths = [5, 1, 3, 4, 2, 5]
    r, ends, mask = _one_segment(torch.randn(6, generator=g).tolist(), lengths, 5, seed=0)
    for scale in (True, False):
        dense = cf.grpo_dense(r, ends, mask, 3, scale_by_std=scale)
        assert torch.allclose(dense, cf.grpo_holistic(r, mask, 3, scale_by_std=scale), atol=1e-6)


def test_grpo_dense_with_the_responses_baseline_on_hand_values():
    # the example above with response 1's last reward 5: totals 4 and 5, mean 4.5, Bessel std sqrt(0.5)
    rewards = torch.tensor([[0.0, 3, 0, 1], [0, 0, 5, PAD]])
    ends = torch.tensor([[False, True, False, True], [True, False, True, False]])
    mask = _mask([4, 3], 4)
    s = math.sqrt(0.5)
    # response 0: reward-to-go 4 in segment 0 (t0, t1), 1 in segment 1; response 1: 5 and 5
    expected = torch.tensor([[(4 - 4.5) / s] * 2 + [(1 - 4.5) / s] * 2, [(5 - 4.5) / s] * 3 + [0.0]])
    assert torch.allclose(cf.grpo_dense(rewards, ends, mask, 2, eps=0.0, baseline="responses"), expected, atol=1e-6)
    assert torch.allclose(cf.grpo_dense(rewards, ends, mask, 2, scale_by_std=False, baseline="responses"), expected * s, atol=1e-6)
    # the first token's advantage is the holistic one whatever the number of segments; equal totals give 0
    first = cf.grpo_dense(rewards, ends, mask, 2, baseline="responses")[:, 0]
    assert torch.allclose(first, cf.grpo_holistic(rewards * mask, mask, 2)[:, 0], atol=1e-6)
    same = torch.tensor([[0.0, 3, 0, 1], [0, 0, 4, PAD]])
    assert (cf.grpo_dense(same, ends, mask, 2, baseline="responses") == 0).all()
    # the segments baseline pays for segments when their mean is negative: one more zero-reward segment, same total
    split = torch.tensor([[-1.0, 0, -1, 0], [-1, 0, 0, -1]])
    ends2 = torch.tensor([[True, True, True, True], [True, False, False, True]])
    full = _mask([4, 4], 4)
    by_segments = cf.grpo_dense(split, ends2, full, 2, baseline="segments")[:, 0]
    assert by_segments[0] > by_segments[1]  # equal totals (-2), but response 0 has 4 segments against 2
    assert (cf.grpo_dense(split, ends2, full, 2, baseline="responses") == 0).all()
    with pytest.raises(ValueError, match="unknown dense GRPO baseline 'tokens'"):
        cf.grpo_dense(rewards, ends, mask, 2, baseline="tokens")


# --- RLOO ------------------------------------------------------------------------------------------


def test_rloo_holistic_on_hand_values():
    r, mask = _on_last([1.0, 2.0, 6.0], [2, 1, 2], 2)
    # 1 - (2 + 6) / 2 = -3; 2 - (1 + 6) / 2 = -1.5; 6 - (1 + 2) / 2 = 4.5
    adv = cf.rloo_holistic(r, mask, 3)
    assert torch.equal(adv, torch.tensor([[-3.0, -3], [-1.5, 0], [4.5, 4.5]]))


def test_rloo_dense_on_hand_values_with_different_segment_counts():
    rewards = torch.tensor(
        [
            [0.0, 1, 0, 2, 0],  # ends t1, t3; t4 trails (in segment 1): reward-to-go by index 3, 2
            [0, 4, 0, PAD, PAD],  # one segment ending t1; t2 trails (in segment 0): 4
            [-1, 0, 0, 5, PAD],  # ends t0, t1 (reward 0), t3: 4, 5, 5
        ]
    )
    ends = torch.tensor(
        [[False, True, False, True, False], [False, True, False, False, False], [True, True, False, True, False]]
    )
    mask = _mask([5, 3, 4], 5)
    # missing indexes count as reward-to-go 0: Q0 = 3, 2, 0; Q1 = 4, 0, 0; Q2 = 4, 5, 5
    # baselines: index 0: 4, 3.5, 3.5; index 1: 2.5, 3.5, 1; index 2: 2.5, 2.5, 0
    expected = torch.tensor(
        [
            [3 - 4.0, 3 - 4, 2 - 2.5, 2 - 2.5, 2 - 2.5],
            [4 - 3.5, 4 - 3.5, 4 - 3.5, 0, 0],
            [4 - 3.5, 5 - 1, 5 - 0, 5 - 0, 0],
        ]
    )
    adv = cf.rloo_dense(rewards, ends, mask, 3)
    assert torch.allclose(adv, expected)
    assert torch.equal(cf.segment_index(ends, mask), torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 0], [0, 1, 2, 2, 0]]))
    assert float(adv[:, 0].sum()) == pytest.approx(0.0, abs=1e-6)  # every response is at index 0 on token 0: the group's advantages sum to 0


def test_rloo_dense_with_one_segment_per_response_is_holistic_and_means_are_zero():
    g = torch.Generator().manual_seed(1)
    lengths = [5, 1, 3, 4, 2, 5, 3, 3]
    r, ends, mask = _one_segment(torch.randn(8, generator=g).tolist(), lengths, 5, seed=1)
    dense = cf.rloo_dense(r, ends, mask, 4)
    holistic = cf.rloo_holistic(r, mask, 4)
    assert torch.allclose(dense, holistic, atol=1e-6)
    first = holistic[:, 0].view(2, 4)  # every response has a token 0
    assert torch.allclose(first.mean(1), torch.zeros(2), atol=1e-6)


@pytest.mark.parametrize("fn", [cf.rloo_holistic, cf.grpo_holistic])
def test_one_sample_per_prompt_is_refused(fn):
    r, mask = _on_last([1.0, 2.0], [1, 1], 1)
    with pytest.raises(ValueError, match="at least 2 samples per prompt"):
        fn(r, mask, 1)
    with pytest.raises(ValueError, match="at least 2 samples per prompt"):
        cf.rloo_dense(r, mask, mask, 1)
    with pytest.raises(ValueError, match="do not split into groups of 3"):
        fn(r, mask, 3)


# --- properties shared by the four estimators --------------------------------------------------------


def _random_case(seed, B=6, T=7):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g).tolist()
    mask = _mask(lengths, T)
    ends = torch.rand(B, T, generator=g) < 0.35  # some responses end without a segment, some have none
    rewards = torch.randn(B, T, generator=g) * ends
    return rewards, ends, mask


ALL = [
    ("grpo", False),
    ("grpo", True),
    ("rloo", False),
    ("rloo", True),
]


@pytest.mark.parametrize("estimator,dense", ALL)
def test_padding_gets_zero_and_never_changes_anything(estimator, dense):
    rewards, ends, mask = _random_case(2)
    adv = cf.one_source(rewards, mask, 3, estimator, dense, ends)
    assert torch.all(adv[~mask] == 0)
    noisy = torch.where(mask, rewards, torch.full_like(rewards, PAD))
    assert torch.equal(cf.one_source(noisy, mask, 3, estimator, dense, ends | ~mask), adv)


@pytest.mark.parametrize("estimator,dense", ALL)
def test_groups_of_equal_rewards_get_exactly_zero(estimator, dense):
    # every segment of a group has the same reward (0.1, 0.3: not exact in binary)
    mask = _mask([4, 4, 4, 2, 2, 2], 4)
    ends = torch.tensor([[False, True, False, True]] * 3 + [[True, True, False, False]] * 3)
    rewards = torch.tensor([[0.0, 0.1, 0, 0.1]] * 3 + [[0.3, 0.3, 0, 0]] * 3)
    adv = cf.one_source(rewards, mask, 3, estimator, dense, ends, eps=0.0)
    assert torch.equal(adv, torch.zeros_like(adv))


# --- several sources -----------------------------------------------------------------------------------


def test_each_source_normalised_before_the_sum_keeps_a_small_source_alive():
    # source A: 0, 1; source B: 100, 0 (a 100x larger scale); G = 2, weights 1, 1
    mask = torch.ones(2, 1, dtype=torch.bool)
    per_source = torch.tensor([[[0.0], [1.0]], [[100.0], [0.0]]])  # (K=2, B=2, T=1)
    w = torch.tensor([1.0, 1.0])
    each = cf.group_advantages(per_source, w, mask, 2, "grpo", dense=False, source_norm="each", eps=0.0)
    summed = cf.group_advantages(per_source, w, mask, 2, "grpo", dense=False, source_norm="sum", eps=0.0)
    a = 1 / math.sqrt(2)  # (x - mean) / unbiased std for two values
    assert torch.allclose(each.source_advantages, torch.tensor([[[-a], [a]], [[a], [-a]]]))
    assert torch.allclose(each.advantages, torch.zeros(2, 1))  # the two sources cancel
    assert torch.allclose(summed.advantages, torch.tensor([[a], [-a]]))  # B decides alone
    assert torch.equal(each.source_rewards, torch.tensor([[0.0, 1.0], [100.0, 0.0]]))
    assert torch.equal(summed.source_rewards, each.source_rewards)


@pytest.mark.parametrize("dense", [False, True])
def test_source_norm_identities(dense):
    r1, e1, mask = _random_case(4)
    r2, e2, _ = _random_case(5)
    per_source, ends = torch.stack([r1 * mask, r2 * mask]), torch.stack([e1, e2])
    w = torch.tensor([0.5, 2.0])
    for est in ("grpo", "rloo"):
        each = cf.group_advantages(per_source, w, mask, 3, est, dense, ends, "each")
        assert torch.allclose(each.advantages, (each.source_advantages * w[:, None, None]).sum(0), atol=1e-6)
        summed = cf.group_advantages(per_source, w, mask, 3, est, dense, ends, "sum")
        alone = cf.one_source(0.5 * per_source[0] + 2.0 * per_source[1], mask, 3, est, dense, ends.any(0))
        assert torch.allclose(summed.advantages, alone, atol=1e-6)
        if est == "rloo" and not dense:  # linear in the reward: normalising first or after is the same
            assert torch.allclose(each.advantages, summed.advantages, atol=1e-5)


def test_group_advantages_rejects_bad_options():
    per_source, mask = torch.zeros(1, 2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="source_norm 'both'"):
        cf.group_advantages(per_source, torch.ones(1), mask, 2, "grpo", False, source_norm="both")
    with pytest.raises(ValueError, match="estimator 'ppo'"):
        cf.group_advantages(per_source, torch.ones(1), mask, 2, "ppo", False)
    with pytest.raises(ValueError, match="segment ends of shape"):
        cf.group_advantages(per_source, torch.ones(1), mask, 2, "rloo", True)


def test_a_reward_off_the_segment_ends_is_refused():
    rewards, mask = torch.tensor([[0.0, 1.0], [0.0, 0.0]]), torch.ones(2, 2, dtype=torch.bool)
    ends = torch.tensor([[True, False], [False, True]])
    with pytest.raises(ValueError, match="response 0 has reward 1.0 on token 1, which ends no segment"):
        cf.one_source(rewards, mask, 2, "grpo", True, ends)


def test_kl_as_source():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, PAD, PAD]])
    mask = _mask([3, 1], 3)
    r, ends = cf.kl_as_source(kl, mask, dense=False)
    assert torch.allclose(r, torch.tensor([[0.0, 0, -0.6], [-0.5, 0, 0]]))
    assert torch.equal(ends, torch.tensor([[False, False, True], [True, False, False]]))
    r, ends = cf.kl_as_source(kl, mask, dense=True)
    assert torch.allclose(r, torch.tensor([[-0.1, -0.2, -0.3], [-0.5, 0, 0]]))
    assert torch.equal(ends, mask)


def test_the_composer_says_where_each_sources_segments_end():
    from finegrain.rewards.base import SegmentScores
    from finegrain.rewards.compose import RewardTerm, compose

    texts = ["ab. cd.", "x"]
    offsets = [[(0, 3), (3, 7)], [(0, 1), (1, 1)]]  # "ab." " cd." | "x" and a padding slot
    response_mask = _mask([2, 1], 2)
    sentences = SegmentScores(torch.zeros(2, 2), torch.tensor([[3, 7], [1, 0]]), torch.tensor([[True, True], [True, False]]))
    whole = SegmentScores(torch.zeros(2, 1), torch.tensor([[7], [1]]), torch.tensor([[True], [True]]))
    composed = compose([RewardTerm("sentences"), RewardTerm("whole")], [sentences, whole], texts, offsets, 2, response_mask)
    assert torch.equal(composed.source_ends, torch.tensor([[[True, True], [True, False]], [[False, True], [True, False]]]))
    assert torch.equal(composed.ends, composed.source_ends.any(0))


# --- the loss ------------------------------------------------------------------------------------------


ADV = torch.tensor([[1.0, 2.0, 3.0], [4.0, PAD, PAD]])
LOSS_MASK = _mask([3, 1], 3)


@pytest.mark.parametrize(
    "aggregation,expected",
    [
        ("token_mean", -(1 + 2 + 3 + 4) / 4),  # every real token weighs the same
        ("sequence_mean", -((1 + 2 + 3) / 3 + 4) / 2),  # every response weighs the same
        ("constant", -(1 + 2 + 3 + 4) / (2 * 4)),  # Dr. GRPO: / (B * max_tokens), max_tokens = 4
    ],
)
def test_loss_aggregations_at_ratio_one(aggregation, expected):
    lp = torch.zeros(2, 3, requires_grad=True)
    out = cf.critic_free_loss(lp, torch.zeros(2, 3), None, ADV, LOSS_MASK, clip=0.2, aggregation=aggregation, max_tokens=4)
    assert out.loss.item() == pytest.approx(expected)
    assert out.kl.item() == 0.0 and out.ratio_mean.item() == pytest.approx(1.0)
    out.loss.backward()
    assert torch.all(lp.grad[~LOSS_MASK] == 0)


def test_kl_loss_term_is_k3_aggregated_like_the_policy_term():
    lp = torch.zeros(2, 3, requires_grad=True)
    ref = torch.zeros(2, 3)
    ref[0, 0] = math.log(2.0)  # k3 = exp(log 2) - 1 - log 2 on that token, 0 elsewhere
    k3 = 1 - math.log(2.0)
    out = cf.critic_free_loss(lp, torch.zeros(2, 3), ref, ADV, LOSS_MASK, clip=0.2, aggregation="sequence_mean", kl_coef=0.5)
    assert out.kl.item() == pytest.approx((k3 / 3 + 0) / 2)
    assert out.loss.item() == pytest.approx(-3.0 + 0.5 * out.kl.item())
    out.loss.backward()
    # d/dlp of 0.5 * k3 / 6 at that token: 0.5 * (1 - exp(log 2)) / 6; the policy term adds -A / (2 * 3)
    assert lp.grad[0, 0].item() == pytest.approx(0.5 * (1 - 2) / 6 - 1.0 / 6)


def test_aggregation_does_not_change_which_tokens_are_clipped():
    lp = torch.tensor([[0.5, -0.5, 0.0], [0.5, 0.0, 0.0]])  # ratio e^0.5 > 1.2 on tokens (0, 0) and (1, 0)
    fracs = {a: cf.critic_free_loss(lp, torch.zeros(2, 3), None, ADV, LOSS_MASK, 0.2, a, max_tokens=3).clip_frac.item() for a in cf.LOSS_AGGREGATIONS}
    # A > 0 everywhere: the clipped branch is taken where ratio > 1.2; at ratio e^-0.5 < 0.8 the unclipped one is larger
    assert list(fracs.values()) == [pytest.approx(2 / 4)] * 3


def test_loss_rejects_bad_options():
    lp = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="needs max_tokens"):
        cf.critic_free_loss(lp, lp, None, ADV, LOSS_MASK, 0.2, "constant")
    with pytest.raises(ValueError, match="unknown loss aggregation 'mean'"):
        cf.critic_free_loss(lp, lp, None, ADV, LOSS_MASK, 0.2, "mean")
    with pytest.raises(ValueError, match="reference's log-probs"):
        cf.critic_free_loss(lp, lp, None, ADV, LOSS_MASK, 0.2, kl_coef=0.1)


# --- parity with plain Python loops ----------------------------------------------------------------


def _grpo_dense_loop(rewards, ends, lengths, G, eps):
    """The paper's recipe, one group and one segment at a time."""
    B, T = len(rewards), len(rewards[0])
    adv = [[0.0] * T for _ in range(B)]
    for n in range(B // G):
        rows = range(n * G, n * G + G)
        segs = [rewards[b][t] for b in rows for t in range(lengths[b]) if ends[b][t]]
        mean = sum(segs) / len(segs)
        std = math.sqrt(sum((x - mean) ** 2 for x in segs) / (len(segs) - 1)) if len(segs) > 1 else 0.0
        for b in rows:
            last_end = max([u for u in range(lengths[b]) if ends[b][u]], default=-1)
            for t in range(lengths[b]):
                start = min(t, last_end) if last_end >= 0 else t  # trailing tokens: with the last segment
                later = [rewards[b][u] for u in range(start, lengths[b]) if ends[b][u]]
                adv[b][t] = sum((x - mean) / (std + eps) for x in later) if std > 0 else 0.0
    return torch.tensor(adv, dtype=torch.float64)


def _rloo_dense_loop(rewards, ends, lengths, G):
    B, T = len(rewards), len(rewards[0])

    def to_go(b):  # reward-to-go from each segment index, then 0
        seg_rewards = [rewards[b][t] for t in range(lengths[b]) if ends[b][t]]
        return [sum(seg_rewards[j:]) for j in range(len(seg_rewards))]

    adv = [[0.0] * T for _ in range(B)]
    for b in range(B):
        n = b // G
        others = [to_go(o) for o in range(n * G, n * G + G) if o != b]
        mine, j = to_go(b), 0
        for t in range(lengths[b]):
            k = min(j, max(len(mine) - 1, 0))  # trailing tokens: with the last segment
            q = mine[k] if k < len(mine) else 0.0
            baseline = sum(o[k] if k < len(o) else 0.0 for o in others) / (G - 1)
            adv[b][t] = q - baseline
            j += int(ends[b][t])
    return torch.tensor(adv, dtype=torch.float64)


@pytest.mark.parametrize("seed", [6, 7, 8])
def test_dense_estimators_match_python_loops(seed):
    rewards, ends, mask = _random_case(seed, B=8, T=9)
    ends = ends & mask
    r64 = rewards.double()
    lengths = mask.sum(-1).tolist()
    args = (r64.tolist(), ends.tolist(), lengths)
    assert torch.allclose(cf.grpo_dense(r64, ends, mask, 4, eps=1e-6), _grpo_dense_loop(*args, 4, 1e-6), atol=1e-9)
    assert torch.allclose(cf.rloo_dense(r64, ends, mask, 4), _rloo_dense_loop(*args, 4), atol=1e-9)
    assert torch.allclose(cf.rloo_dense(r64, ends, mask, 2), _rloo_dense_loop(*args, 2), atol=1e-9)


@pytest.mark.parametrize("aggregation", cf.LOSS_AGGREGATIONS)
def test_micro_batch_shares_add_up_to_the_whole_batch_loss(aggregation):
    g = torch.Generator().manual_seed(9)
    mask = _mask([5, 1, 3, 4, 2, 5], 5)
    adv, lp, old = (torch.randn(6, 5, generator=g) for _ in range(3))
    whole = cf.critic_free_loss(lp, old, None, adv, mask, 0.2, aggregation, max_tokens=6).loss
    parts = [slice(0, 2), slice(2, 3), slice(3, 6)]  # unequal micro-batches
    summed = sum(
        cf.micro_batch_share(mask[p], mask, aggregation) * cf.critic_free_loss(lp[p], old[p], None, adv[p], mask[p], 0.2, aggregation, max_tokens=6).loss
        for p in parts
    )
    assert float(summed) == pytest.approx(float(whole), rel=1e-5)
