"""Loading the causal LMs a recipe trains or keeps frozen, and the one autocast helper.

Shape legend: B sequences, L tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def autocast(device: torch.device | str, precision: str):
    """bf16 autocast for every forward of a step (generation included), or nothing for fp32
    ("auto": bf16 only where the hardware runs it natively, finegrain.precision).
    Done here rather than by accelerate's `mixed_precision`, which is fixed once per process:
    two runs with different precisions can then share a process (a notebook, the demo)."""
    from finegrain.precision import use_bf16

    device_type = device.type if isinstance(device, torch.device) else str(device).split(":")[0]
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=use_bf16(precision, device_type))


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as `generate` uses them: a forward pass must use the same
    or the log-probs of the sampled tokens would not be those they were sampled from.

    Shape: attention_mask (B, L) -> (B, L) long.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def prompt_cache(lm: "PreTrainedModel", input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
    """The KV cache of `lm` over these rows (a prompt's tokens but its last), as the keyword a forward
    or `generate` takes to continue from it (`cache` since transformers 5.x, `past_key_values` before);
    the caller copies it to the rows that repeat a prompt. Empty when the model filled no
    `DynamicCache` (a model without one, or gradient checkpointing in training mode): no sharing then.

    Shape: input_ids (U, L), attention_mask (U, L) -> a cache of U rows and L positions.
    """
    import inspect

    from transformers import DynamicCache

    inner = getattr(lm, "module", lm)  # a DDP-wrapped model's forward takes *args, **kwargs
    name = "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"
    cache = DynamicCache(config=inner.config)
    mask = attention_mask.long()
    lm(input_ids=input_ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=True, logits_to_keep=1, **{name: cache})
    return {name: cache} if cache.get_seq_length() == input_ids.shape[1] else {}


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


def use_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of keeping them
    (transformers' gradient checkpointing, non-reentrant): an update keeps one layer's activations
    at a time rather than every layer's, for one more forward of its rows. `model` is any module
    holding transformers models (an actor-critic included).

    transformers checkpoints a layer only while it is in training mode, and finegrain keeps its
    models in eval mode (no dropout: pi_old and pi must agree exactly). So each checkpointed layer
    is marked as training just before it runs; its children (dropout included) keep the mode
    train()/eval() gave them. Without gradients (generation, no-grad passes) a layer runs as usual.
    """
    from transformers import PreTrainedModel
    from transformers.modeling_layers import GradientCheckpointingLayer

    from finegrain.config import ConfigError

    models = [m for m in model.modules() if isinstance(m, PreTrainedModel)]
    if not models:
        raise ConfigError(f"model.gradient_checkpointing: {type(model).__name__} holds no transformers model")
    for m in models:
        if not m.supports_gradient_checkpointing:
            raise ConfigError(f"model.gradient_checkpointing: {type(m).__name__} does not support it (transformers' supports_gradient_checkpointing); set it to false")
        enable = getattr(m, "activation_checkpointing_enable", None)  # transformers >= 5.x; the older name warns there
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for layer in model.modules():
        if isinstance(layer, GradientCheckpointingLayer):
            layer.register_forward_pre_hook(_mark_training)


def _mark_training(layer: torch.nn.Module, args) -> None:
    layer.training = True  # the layer only: its children keep their mode


def set_pad_token(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase") -> None:
    """The model's config learns the tokenizer's pad token (generate and saved folders need it)."""
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
