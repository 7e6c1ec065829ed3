"""The trained module: a causal LM policy plus a value head, on the policy's backbone or on its own.

One nn.Module holds everything the optimiser updates, so accelerate wraps (DDP/FSDP), checkpoints
and clips it as one. `forward` returns the policy's logits and the values for the response tokens
only: the LM head runs on T positions rather than P + T (its 49k-wide matmul is a fifth of
SmolLM2's forward), which is also all PPO needs.

Shape legend: B sequences, P prompt tokens (left-padded), T response tokens (right-padded),
V vocabulary, H hidden size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from finegrain.kernel.logprobs import response_forward
from finegrain.kernel.models import position_ids

if TYPE_CHECKING:
    from transformers import PreTrainedModel

VALUE_MODELS = ("shared", "separate")


class PolicyOutput(NamedTuple):
    logits: torch.Tensor  # (B, T, V) policy logits predicting response token t
    values: torch.Tensor | None  # (B, T) float32 V(state before token t); None when not asked for


class ActorCritic(nn.Module):
    """`policy` (a causal LM) and a linear value head reading either the policy's last hidden state
    (`critic=None`: one backbone, one forward for both) or a separate backbone's (`critic`: a copy of
    the policy's transformer without its LM head, as in the paper's code)."""

    def __init__(self, policy: "PreTrainedModel", critic: nn.Module | None = None):
        super().__init__()
        self.policy = policy
        self.critic = critic
        # FSDP2 (accelerate's TRANSFORMER_BASED_WRAP) shards one unit per block class named here
        self._no_split_modules = list(getattr(policy, "_no_split_modules", None) or [])
        hidden = policy.config.get_text_config().hidden_size
        self.value_head = nn.Linear(hidden, 1)
        # V = 0 at the start: the first advantages are the (whitened) returns, not head noise
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    @property
    def value_model(self) -> str:
        return "shared" if self.critic is None else "separate"

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_response: int, with_values: bool = True,
        share_prompts: bool = False,
    ) -> PolicyOutput:
        """Logits and values at the positions that predict the last `num_response` tokens.
        `share_prompts`: rows that repeat a prompt run its forward once (kernel.logprobs.response_forward;
        the policy's pass, and with it a shared value head's).

        Shape: input_ids (B, P + T), attention_mask (B, P + T), num_response T -> PolicyOutput.
        """
        T = num_response
        pos = position_ids(attention_mask)
        shared = with_values and self.critic is None
        out = response_forward(self.policy, input_ids, attention_mask, T, share_prompts, output_hidden_states=shared)
        logits = out.logits[:, :-1]  # (B, T, V)
        if not with_values:
            return PolicyOutput(logits, None)
        if shared:
            hidden = out.hidden_states[-1][:, -(T + 1) : -1]  # (B, T, H)
        else:
            hidden = self.critic(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, use_cache=False
            ).last_hidden_state[:, -(T + 1) : -1]  # (B, T, H)
        values = self.value_head(hidden).squeeze(-1).float()  # (B, T)
        return PolicyOutput(logits, values)


def build_actor_critic(policy_path: str, value_model: str, dtype: torch.dtype = torch.float32) -> ActorCritic:
    """Load the policy (and, for `separate`, a second copy of its backbone as the critic)."""
    from transformers import AutoModel, AutoModelForCausalLM

    if value_model not in VALUE_MODELS:
        raise ValueError(f"value_model must be one of {VALUE_MODELS}, got {value_model!r}")
    policy = AutoModelForCausalLM.from_pretrained(policy_path, dtype=dtype)
    critic = AutoModel.from_pretrained(policy_path, dtype=dtype) if value_model == "separate" else None
    return ActorCritic(policy, critic)
