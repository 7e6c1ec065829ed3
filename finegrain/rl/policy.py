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

if TYPE_CHECKING:
    from transformers import PreTrainedModel

VALUE_MODELS = ("shared", "separate")


class PolicyOutput(NamedTuple):
    logits: torch.Tensor  # (B, T, V) policy logits predicting response token t
    values: torch.Tensor | None  # (B, T) float32 V(state before token t); None when not asked for


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as `generate` uses them: a forward pass must use the same
    or the log-probs of the sampled tokens would not be those they were sampled from.

    Shape: attention_mask (B, L) -> (B, L) long.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class ActorCritic(nn.Module):
    """`policy` (a causal LM) and a linear value head reading either the policy's last hidden state
    (`critic=None`: one backbone, one forward for both) or a separate backbone's (`critic`: a copy of
    the policy's transformer without its LM head, as in the paper's code)."""

    def __init__(self, policy: "PreTrainedModel", critic: nn.Module | None = None):
        super().__init__()
        self.policy = policy
        self.critic = critic
        hidden = policy.config.get_text_config().hidden_size
        self.value_head = nn.Linear(hidden, 1)
        # V = 0 at the start: the first advantages are the (whitened) returns, not head noise
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    @property
    def value_model(self) -> str:
        return "shared" if self.critic is None else "separate"

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_response: int, with_values: bool = True
    ) -> PolicyOutput:
        """Logits and values at the positions that predict the last `num_response` tokens.

        Shape: input_ids (B, P + T), attention_mask (B, P + T), num_response T -> PolicyOutput.
        """
        T = num_response
        pos = position_ids(attention_mask)
        shared = with_values and self.critic is None
        out = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=pos,
            logits_to_keep=T + 1,  # positions P-1 .. P+T-1; the last one predicts past the response
            output_hidden_states=shared,
            use_cache=False,
        )
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


def autocast(device: torch.device, precision: str):
    """bf16 autocast for every forward of the step (generation included), or nothing for fp32.
    Done here rather than by accelerate's `mixed_precision`, which is fixed once per process:
    two runs with different precisions can then share a process (a notebook, the demo)."""
    from finegrain.precision import use_bf16

    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16(precision, device.type))


def build_actor_critic(policy_path: str, value_model: str, dtype: torch.dtype = torch.float32) -> ActorCritic:
    """Load the policy (and, for `separate`, a second copy of its backbone as the critic)."""
    from transformers import AutoModel, AutoModelForCausalLM

    if value_model not in VALUE_MODELS:
        raise ValueError(f"value_model must be one of {VALUE_MODELS}, got {value_model!r}")
    policy = AutoModelForCausalLM.from_pretrained(policy_path, dtype=dtype)
    critic = AutoModel.from_pretrained(policy_path, dtype=dtype) if value_model == "separate" else None
    return ActorCritic(policy, critic)


def load_reference(policy_path: str, dtype: torch.dtype = torch.float32) -> "PreTrainedModel":
    """The frozen reference policy. Kept in float32 and run under autocast like the policy: on the
    2-core CPU we measure on, a bf16-stored SmolLM2 forward took 7 s where float32 weights under
    bf16 autocast took 1.7 s (32 x 30 tokens), since autocast keeps norms and softmax in float32."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(policy_path, dtype=dtype)
    ref.requires_grad_(False)
    return ref.eval()


@torch.no_grad()
def reference_logits(ref: "PreTrainedModel", input_ids: torch.Tensor, attention_mask: torch.Tensor, num_response: int) -> torch.Tensor:
    """The reference policy's logits for the response tokens.

    Shape: input_ids (B, P + T), attention_mask (B, P + T) -> (B, T, V).
    """
    out = ref(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        logits_to_keep=num_response + 1,
        use_cache=False,
    )
    return out.logits[:, :-1]
