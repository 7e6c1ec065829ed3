"""AdamW and the learning-rate schedule, the same for every recipe."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

SCHEDULES = ("constant", "linear", "cosine")


def build_optimizer(model: "torch.nn.Module", lr: float, weight_decay: float, device: "torch.device") -> "torch.optim.Optimizer":
    """AdamW over the trainable parameters; fused (one kernel over all parameters) where torch has
    it: 7x faster than foreach on our CPU (0.11 s vs 0.74 s a step for SmolLM2)."""
    import torch

    fused = device.type in ("cpu", "cuda")
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)


def build_scheduler(optimizer: "torch.optim.Optimizer", schedule: str, warmup_steps: int, total_steps: int) -> Any:
    """Linear warm-up, then constant, linear or cosine decay over the run's steps."""
    from transformers import get_scheduler

    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    name = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)


@contextlib.contextmanager
def micro_batch(accelerator, model, last: bool) -> Iterator[None]:
    """The backward of one micro-batch of an optimiser step: DDP/FSDP sync gradients on the last only;
    DeepSpeed (whose engine clips, steps and zeroes inside `backward`) is told that only the last
    is a gradient-accumulation boundary."""
    if last:
        yield
        return
    deepspeed = getattr(accelerator.state, "deepspeed_plugin", None) is not None
    if deepspeed:
        accelerator.gradient_state._set_sync_gradients(False)
    try:
        with accelerator.no_sync(model):
            yield
    finally:
        if deepspeed:
            accelerator.gradient_state._set_sync_gradients(True)


def accumulated_step(accelerator, model, optimizer, micro_batches, loss_of, max_grad_norm: float, precision: str, name: str):
    """One optimiser step over micro-batches (gradient accumulation; DDP syncs on the last only).
    `loss_of(batch)` returns (the micro-batch's share of the batch loss, its statistics).
    Returns (the statistics of every micro-batch, the gradient norm before clipping)."""
    from finegrain.kernel.models import autocast
    from finegrain.kernel.run import check_finite

    stats = []
    for j, batch in enumerate(micro_batches):
        last = j == len(micro_batches) - 1
        with micro_batch(accelerator, model, last), autocast(accelerator.device, precision):
            loss, s = loss_of(batch)
            check_finite(accelerator, name, loss)
            accelerator.backward(loss)
        stats.append(s)
    grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), max_grad_norm) or 0.0) if max_grad_norm > 0 else 0.0
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return stats, grad_norm


def micro_batches(indices: list[int], n: int) -> list[list[int]]:
    """A batch's indices cut into n near-equal micro-batches."""
    size = -(-len(indices) // n)
    return [indices[i : i + size] for i in range(0, len(indices), size)]
