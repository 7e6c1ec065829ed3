"""DPO and SimPO losses: hand-computed values, gradients, input checks, and parity with TRL 1.16."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from finegrain.preference import PreferenceLoss, dpo_loss, preference_accuracy, simpo_loss


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


def t(*values: float, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


# Two pairs. Pair 0: the policy moved +1 towards chosen and -1 away from rejected (h = 2).
# Pair 1: the policy moved +1 towards the rejected response (h = -1).
POLICY_CHOSEN, POLICY_REJECTED = (-10.0, -5.0), (-12.0, -4.0)
REF_CHOSEN, REF_REJECTED = (-11.0, -5.0), (-11.0, -5.0)


def test_dpo_loss_by_hand():
    out = dpo_loss(t(*POLICY_CHOSEN), t(*POLICY_REJECTED), t(*REF_CHOSEN), t(*REF_REJECTED), beta=0.1)
    # -log sigmoid(beta * h) = log(1 + exp(-beta * h)), h = 2 and h = -1
    assert out.losses.tolist() == pytest.approx([softplus(-0.2), softplus(0.1)])
    assert out.loss.item() == pytest.approx((softplus(-0.2) + softplus(0.1)) / 2)
    assert out.chosen_rewards.tolist() == pytest.approx([0.1, 0.0])  # beta * (policy - ref)
    assert out.rejected_rewards.tolist() == pytest.approx([-0.1, 0.1])
    assert out.margins.tolist() == pytest.approx([0.2, -0.1])
    assert out.accuracy.item() == 0.5
    assert out.metrics() == pytest.approx(
        {"rewards/chosen": 0.05, "rewards/rejected": 0.0, "rewards/margins": 0.05, "rewards/accuracies": 0.5}
    )


def test_dpo_label_smoothing_by_hand():
    out = dpo_loss(t(*POLICY_CHOSEN), t(*POLICY_REJECTED), t(*REF_CHOSEN), t(*REF_REJECTED), beta=0.1, label_smoothing=0.2)
    # cDPO: -(1 - eps) log sigmoid(z) - eps log sigmoid(-z), z = beta * h = 0.2 and -0.1
    assert out.losses.tolist() == pytest.approx(
        [0.8 * softplus(-0.2) + 0.2 * softplus(0.2), 0.8 * softplus(0.1) + 0.2 * softplus(-0.1)]
    )
    # smoothing changes the loss, never the implicit rewards
    assert out.chosen_rewards.tolist() == pytest.approx([0.1, 0.0])


def test_dpo_gradient_flows_to_the_policy_only():
    pc, pr = t(*POLICY_CHOSEN, grad=True), t(*POLICY_REJECTED, grad=True)
    out = dpo_loss(pc, pr, t(*REF_CHOSEN), t(*REF_REJECTED), beta=0.1)
    out.losses.sum().backward()
    # d/dpc of -log sigmoid(beta * h) = -beta * sigmoid(-beta * h); sigmoid(-z) = 1 / (1 + e^z)
    expected = [-0.1 / (1 + math.exp(0.2)), -0.1 / (1 + math.exp(-0.1))]
    assert pc.grad.tolist() == pytest.approx(expected)
    assert pr.grad.tolist() == pytest.approx([-g for g in expected])
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad


def test_dpo_is_finite_far_from_zero():
    out = dpo_loss(t(0.0, 0.0), t(-4000.0, 4000.0), t(0.0, 0.0), t(0.0, 0.0), beta=0.5, label_smoothing=0.1)
    # z = +2000: loss ~ 0.1 * 2000; z = -2000: loss ~ 0.9 * 2000
    assert out.losses.tolist() == pytest.approx([200.0, 1800.0])


def test_simpo_loss_by_hand():
    # length-averaged log-probs; beta 2, gamma 0.5
    out = simpo_loss(t(-1.0, -2.0), t(-1.5, -1.75), beta=2.0, gamma=0.5)
    # z = beta * (chosen - rejected) - gamma: 2 * 0.5 - 0.5 = 0.5 and 2 * (-0.25) - 0.5 = -1
    assert out.losses.tolist() == pytest.approx([softplus(-0.5), softplus(1.0)])
    assert out.chosen_rewards.tolist() == pytest.approx([-2.0, -4.0])  # beta * avg log-prob, no margin
    assert out.rejected_rewards.tolist() == pytest.approx([-3.0, -3.5])
    assert out.accuracy.item() == 0.5


def test_simpo_gamma_is_the_absolute_margin():
    chosen, rejected = t(-1.0), t(-1.25)  # beta * difference = 2 * 0.25 = 0.5
    assert simpo_loss(chosen, rejected, beta=2.0, gamma=0.5).losses.item() == pytest.approx(math.log(2))  # z = 0
    assert simpo_loss(chosen, rejected, beta=2.0, gamma=0.0).losses.item() == pytest.approx(softplus(-0.5))
    # a larger margin asks for more: the same pair costs more
    assert simpo_loss(chosen, rejected, beta=2.0, gamma=1.5).losses.item() == pytest.approx(softplus(1.0))


def test_simpo_label_smoothing_by_hand():
    out = simpo_loss(t(-1.0), t(-1.5), beta=2.0, gamma=0.5, label_smoothing=0.25)
    assert out.losses.item() == pytest.approx(0.75 * softplus(-0.5) + 0.25 * softplus(0.5))


def test_preference_accuracy_counts_ties_as_wrong():
    assert preference_accuracy(t(1.0, 2.0, 3.0, 0.0), t(0.0, 2.0, 4.0, -1.0)).item() == 0.5


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: dpo_loss(t(1.0), t(1.0, 2.0), t(1.0), t(1.0), beta=0.1), "policy_rejected_logps has shape"),
        (lambda: dpo_loss(t(1.0), t(1.0), t(1.0), t(1.0), beta=0.0), "beta must be > 0"),
        (lambda: dpo_loss(t(1.0), t(1.0), t(1.0), t(1.0), beta=0.1, label_smoothing=0.5), "label_smoothing"),
        (lambda: simpo_loss(torch.zeros(2, 3), torch.zeros(2, 3), beta=2.0, gamma=0.5), "must be a (N,) tensor"),
    ],
)
def test_bad_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


# --- parity with TRL 1.16 -----------------------------------------------------------------------
# TRL's losses live inside trainer methods. Building real trainers needs a tokenizer, a model and a
# data set per call, so each test calls the unbound method on a minimal stand-in `self` carrying only
# the attributes that method reads, their values taken from TRL's own config dataclass.

# TRL's config dataclasses pass a transformers argument that transformers 5 deprecates
quiet_trl = pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning")


def _trl():
    return pytest.importorskip("trl", reason="TRL is not installed (`pip install -e .[dev]`): parity tests skipped")


N = 6
_gen = torch.Generator().manual_seed(0)
LOGPS = {name: -30 * torch.rand(N, generator=_gen, dtype=torch.float64) for name in ("pc", "pr", "rc", "rr")}


class _FixedLogProbs:
    """Stands in for the model DPOTrainer calls: its forward returns the completion log-probs we give it.
    DPOTrainer patches models with a fused LM head whose output carries per-token `log_probs` (0 off the
    completion); one completion token per sequence makes each sum the given sequence log-prob."""

    training = True

    def __init__(self, logps: torch.Tensor):
        self.logps = logps  # (2N,): the chosen rows, then the rejected rows, as DPOTrainer batches them

    def __call__(self, input_ids, **_):
        rows = input_ids.shape[0]
        zeros = torch.zeros(rows, 1)
        return SimpleNamespace(
            log_probs=self.logps[:, None], entropy=zeros, mean_logits=zeros, is_top1=zeros.bool(),
        )


def _trl_dpo_losses(beta: float) -> tuple[list[float], dict[str, list[float]]]:
    """Per-pair sigmoid losses from `DPOTrainer._compute_loss`, one pair per call (it returns the mean),
    and the metrics it logs for the whole batch."""
    _trl()
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir="unused", beta=beta, loss_type=["sigmoid"], bf16=False, use_cpu=True, report_to=[])
    accelerator = SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x)

    def stand_in(model):
        # the attributes DPOTrainer.__init__ sets from `args` and `_compute_loss` reads
        return SimpleNamespace(
            model=model, accelerator=accelerator, args=args, beta=args.beta, label_smoothing=args.label_smoothing,
            loss_types=args.loss_type, loss_weights=[1.0], f_divergence_type=args.f_divergence_type,
            ld_alpha=args.ld_alpha, use_weighting=args.use_weighting, precompute_ref_logps=True,
            aux_loss_enabled=False, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
            _total_train_tokens=0, _tp_size=1,
        )

    def inputs(rows: slice) -> dict[str, torch.Tensor]:
        n = len(LOGPS["pc"][rows])
        ids = torch.zeros(2 * n, 2, dtype=torch.long)  # one prompt token, one completion token
        return {
            "input_ids": ids, "attention_mask": torch.ones_like(ids),
            "completion_mask": torch.tensor([[0, 1]] * (2 * n)),
            "ref_chosen_logps": LOGPS["rc"][rows], "ref_rejected_logps": LOGPS["rr"][rows],
        }

    losses = []
    for i in range(N):
        model = _FixedLogProbs(torch.cat([LOGPS["pc"][i : i + 1], LOGPS["pr"][i : i + 1]]))
        losses.append(DPOTrainer._compute_loss(stand_in(model), model, inputs(slice(i, i + 1)), False).item())
    model = _FixedLogProbs(torch.cat([LOGPS["pc"], LOGPS["pr"]]))
    whole = stand_in(model)
    DPOTrainer._compute_loss(whole, model, inputs(slice(0, N)), False)
    return losses, whole._metrics["train"]


@quiet_trl
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_matches_trl_dpo_trainer_sigmoid(beta):
    trl_losses, trl_metrics = _trl_dpo_losses(beta)
    ours = dpo_loss(LOGPS["pc"], LOGPS["pr"], LOGPS["rc"], LOGPS["rr"], beta=beta)
    assert ours.losses.tolist() == pytest.approx(trl_losses, rel=1e-6)
    for name, value in ours.metrics().items():
        assert trl_metrics[name] == pytest.approx([value], rel=1e-6, abs=1e-9), name


def _trl_cpo_loss(loss_type: str, beta: float, label_smoothing: float, simpo_gamma: float, chosen, rejected):
    _trl()
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    args = CPOConfig(
        output_dir="unused", loss_type=loss_type, beta=beta, label_smoothing=label_smoothing,
        simpo_gamma=simpo_gamma, bf16=False, use_cpu=True, report_to=[],
    )
    # the attributes CPOTrainer.__init__ sets from `args` and `cpo_loss` reads
    stand_in = SimpleNamespace(
        beta=args.beta, label_smoothing=args.label_smoothing, loss_type=args.loss_type, alpha=args.alpha,
        simpo_gamma=args.simpo_gamma, accelerator=SimpleNamespace(device=torch.device("cpu")),
    )
    return CPOTrainer.cpo_loss(stand_in, chosen, rejected)


@quiet_trl
@pytest.mark.parametrize("beta, gamma, label_smoothing", [(2.0, 0.5, 0.0), (2.5, 1.4, 0.0), (2.0, 0.5, 0.1)])
def test_simpo_matches_trl_cpo_trainer_simpo(beta, gamma, label_smoothing):
    chosen, rejected = LOGPS["pc"] / 30, LOGPS["pr"] / 30  # length-averaged log-probs are small
    trl_losses, trl_chosen, trl_rejected = _trl_cpo_loss("simpo", beta, label_smoothing, gamma, chosen, rejected)
    ours = simpo_loss(chosen, rejected, beta=beta, gamma=gamma, label_smoothing=label_smoothing)
    assert ours.losses.tolist() == pytest.approx(trl_losses.tolist(), rel=1e-6)
    assert ours.chosen_rewards.tolist() == pytest.approx(trl_chosen.tolist())
    assert ours.rejected_rewards.tolist() == pytest.approx(trl_rejected.tolist())


@quiet_trl
@pytest.mark.parametrize("label_smoothing", [0.1, 0.3])
def test_dpo_label_smoothing_matches_trl_conservative_loss(label_smoothing):
    """TRL 1.16's DPOTrainer applies `label_smoothing` only to its robust, EXO and AOT losses, not to
    "sigmoid"; the conservative (cDPO) form lives in CPOTrainer's "sigmoid" loss, on the difference of
    its two inputs. Given the policy/reference log-ratios it is cDPO."""
    chosen_logratios, rejected_logratios = LOGPS["pc"] - LOGPS["rc"], LOGPS["pr"] - LOGPS["rr"]
    trl_losses, _, _ = _trl_cpo_loss("sigmoid", 0.1, label_smoothing, 0.0, chosen_logratios, rejected_logratios)
    ours = dpo_loss(LOGPS["pc"], LOGPS["pr"], LOGPS["rc"], LOGPS["rr"], beta=0.1, label_smoothing=label_smoothing)
    assert ours.losses.tolist() == pytest.approx(trl_losses.tolist(), rel=1e-6)


def test_preference_loss_is_a_plain_container():
    out = PreferenceLoss(t(1.0, 3.0), t(0.5, 0.0), t(0.0, 0.5))
    assert out.loss.item() == 2.0 and out.margins.tolist() == [0.5, -0.5]
