"""Direct preference losses (DPO, SimPO) as pure functions on tensors: no model, no config, no I/O.

Shape legend: N preference pairs. Every input is a (N,) tensor of *sequence* log-probabilities of a
response given its prompt: summed over the response tokens for DPO, averaged over them for SimPO
(the kernel's sequence log-prob helper computes both). "Chosen" is the preferred response of a pair.

Each loss returns a `PreferenceLoss`: the per-pair losses (reduce them with `.loss`) and the implicit
rewards of both responses, detached, from which the statistics TRL logs are derived
(`rewards/chosen`, `rewards/rejected`, `rewards/margins`, `rewards/accuracies`).
TRL 1.16 parity: tests/test_preference.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PreferenceLoss:
    losses: torch.Tensor  # (N,) per-pair loss, differentiable
    chosen_rewards: torch.Tensor  # (N,) implicit reward of the chosen response, detached
    rejected_rewards: torch.Tensor  # (N,) implicit reward of the rejected response, detached

    @property
    def loss(self) -> torch.Tensor:
        """The batch loss: the mean over pairs. Shape: ()."""
        return self.losses.mean()

    @property
    def margins(self) -> torch.Tensor:
        """Chosen minus rejected implicit reward. Shape: (N,)."""
        return self.chosen_rewards - self.rejected_rewards

    @property
    def accuracy(self) -> torch.Tensor:
        """Fraction of pairs whose chosen response has the higher implicit reward. Shape: ()."""
        return preference_accuracy(self.chosen_rewards, self.rejected_rewards)

    def metrics(self) -> dict[str, float]:
        """Batch means under the names TRL's DPOTrainer and CPOTrainer log."""
        return {
            "rewards/chosen": self.chosen_rewards.mean().item(),
            "rewards/rejected": self.rejected_rewards.mean().item(),
            "rewards/margins": self.margins.mean().item(),
            "rewards/accuracies": self.accuracy.item(),
        }


def preference_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Fraction of pairs where the chosen reward is strictly higher (a tie counts as wrong, as in TRL).

    Shape: chosen_rewards (N,), rejected_rewards (N,) -> ().
    """
    _check_same_shape(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    return (chosen_rewards > rejected_rewards).float().mean()


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> PreferenceLoss:
    """DPO's sigmoid loss (Rafailov et al. 2023), with conservative DPO's label smoothing (cDPO).

    With h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)) and eps = label_smoothing,
    the probability that a pair's label is flipped:

        loss = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)

    eps = 0 is plain DPO. Implicit rewards: beta * (log pi(y) - log ref(y)).
    Log-probs are summed over the response tokens.

    Shape: every input (N,) -> PreferenceLoss of (N,) tensors.
    """
    _check_same_shape(
        policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps,
    )
    _check_beta(beta)
    _check_label_smoothing(label_smoothing)
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (N,)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (N,)
    losses = _smoothed_sigmoid_loss(beta * (chosen_logratios - rejected_logratios), label_smoothing)
    return PreferenceLoss(losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach())


def simpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    beta: float,
    gamma: float,
    label_smoothing: float = 0.0,
) -> PreferenceLoss:
    """SimPO (Meng et al. 2024): a reference-free sigmoid loss on length-averaged log-probs with a
    target reward margin.

        loss = -(1 - eps) * log sigmoid(beta * (lp_w - lp_l) - gamma)
               - eps * log sigmoid(-(beta * (lp_w - lp_l) - gamma))

    where lp is the log-prob averaged over the response tokens. `gamma` is the *absolute* margin,
    in reward units: the paper's gamma and TRL's `CPOConfig.simpo_gamma`, not the gamma/beta ratio
    the SimPO paper's hyper-parameter tables report (gamma = ratio * beta). Implicit rewards:
    beta * lp (no margin), as TRL logs them. `label_smoothing` as in `dpo_loss` (0: the paper's loss).

    Shape: every input (N,) -> PreferenceLoss of (N,) tensors.
    """
    _check_same_shape(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps)
    _check_beta(beta)
    _check_label_smoothing(label_smoothing)
    logits = beta * (policy_chosen_logps - policy_rejected_logps) - gamma  # (N,)
    losses = _smoothed_sigmoid_loss(logits, label_smoothing)
    return PreferenceLoss(losses, beta * policy_chosen_logps.detach(), beta * policy_rejected_logps.detach())


def _smoothed_sigmoid_loss(logits: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """-(1 - eps) log sigmoid(z) - eps log sigmoid(-z); logsigmoid keeps large |z| finite. Shape: (N,) -> (N,)."""
    losses = -F.logsigmoid(logits)
    if label_smoothing:
        losses = (1 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-logits)
    return losses


def _check_same_shape(**tensors: torch.Tensor) -> None:
    (first_name, first), *rest = tensors.items()
    if first.dim() != 1:
        raise ValueError(f"{first_name} must be a (N,) tensor of sequence log-probs, got shape {tuple(first.shape)}")
    for name, t in rest:
        if t.shape != first.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but {first_name} has {tuple(first.shape)}")


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")


def _check_label_smoothing(label_smoothing: float) -> None:
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing is the probability that a label is flipped: 0 <= it < 0.5, got {label_smoothing}")
