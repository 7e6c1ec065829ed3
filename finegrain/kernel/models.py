"""Loading the causal LMs a recipe trains or keeps frozen, and the one autocast helper.

Shape legend: B sequences, L tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PRECISIONS = ("bf16", "fp32")


def autocast(device: torch.device | str, precision: str):
    """bf16 autocast for every forward of a step (generation included), or nothing for fp32.
    Done here rather than by accelerate's `mixed_precision`, which is fixed once per process:
    two runs with different precisions can then share a process (a notebook, the demo)."""
    device_type = device.type if isinstance(device, torch.device) else str(device).split(":")[0]
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=precision == "bf16")


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as `generate` uses them: a forward pass must use the same
    or the log-probs of the sampled tokens would not be those they were sampled from.

    Shape: attention_mask (B, L) -> (B, L) long.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def load_causal_lm(path: str, dtype: torch.dtype = torch.float32) -> "PreTrainedModel":
    """A causal LM to train, in float32 master weights (bf16 comes from autocast)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)


def load_frozen(path: str, dtype: torch.dtype = torch.float32) -> "PreTrainedModel":
    """A frozen model (a reference policy). Kept in float32 and run under autocast like the policy: on
    the 2-core CPU we measure on, a bf16-stored SmolLM2 forward took 7 s where float32 weights under
    bf16 autocast took 1.7 s (32 x 30 tokens), since autocast keeps norms and softmax in float32."""
    model = load_causal_lm(path, dtype)
    model.requires_grad_(False)
    return model.eval()


def set_pad_token(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase") -> None:
    """The model's config learns the tokenizer's pad token (generate and saved folders need it)."""
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
