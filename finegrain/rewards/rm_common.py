"""What span and pairwise RM training share: devices, autocast, input length, the HF Trainer's settings."""

from __future__ import annotations

import contextlib
import functools
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedTokenizerBase, TrainingArguments

    from finegrain.rewards.rm_config import RMTrainConfig


def pick_device(device: str | None = None) -> "torch.device":
    import torch

    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: "torch.device", bf16: bool | None) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU or GPU when asked (None: where the hardware runs bf16 natively)."""
    import torch

    from finegrain.precision import use_bf16

    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(bf16, device.type))


def backbone_max_length(requested: int, tok: "PreTrainedTokenizerBase", config: "PretrainedConfig") -> int:
    """The longest input the backbone can read: the request, capped by its position embeddings
    (RoBERTa-style models reserve two of them for padding) and the tokenizer's own limit."""
    limit = requested
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        offset = 2 if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "longformer", "camembert") else 0
        limit = min(limit, positions - offset)
    if tok.model_max_length and tok.model_max_length < 1_000_000:
        limit = min(limit, tok.model_max_length)
    return limit


def training_arguments(cfg: "RMTrainConfig", scratch: str, device: "torch.device") -> "TrainingArguments":
    from transformers import TrainingArguments

    from finegrain.precision import use_bf16

    return TrainingArguments(
        output_dir=scratch,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,  # < 1: a share of the steps
        lr_scheduler_type="linear",
        bf16=use_bf16(cfg.bf16, device.type),
        use_cpu=device.type == "cpu",
        seed=cfg.seed,
        save_strategy="no",  # the caller saves the final model with its card
        report_to="none",
        logging_strategy="epoch",
        disable_tqdm=True,
        dataloader_pin_memory=False,
        remove_unused_columns=False,
    )


@dataclass
class TrainResult:
    seconds: float  # wall clock
    cpu_seconds: float  # CPU time of this process, all threads: what the run cost on a shared machine
    steps: int
    final_loss: float | None
    losses: list[float]  # mean training loss per logged epoch


def run_trainer(trainer: Any) -> TrainResult:
    """Train, timing only the training loop; returns the per-epoch losses the Trainer logged."""
    start, cpu = time.perf_counter(), time.process_time()
    out = trainer.train()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    losses = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]
    return TrainResult(seconds, cpu, int(out.global_step), losses[-1] if losses else None, losses)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with `n` torch CPU threads (None: leave them), then restore the caller's setting."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def with_cfg_threads(train: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a `train(cfg, ...)` function so it runs with `cfg.threads` torch threads and restores
    the caller's setting after."""

    @functools.wraps(train)
    def wrapper(cfg: "RMTrainConfig", *args: Any, **kwargs: Any) -> Any:
        with torch_threads(cfg.threads):
            return train(cfg, *args, **kwargs)

    return wrapper


@contextlib.contextmanager
def scratch_dir() -> Iterator[str]:
    """The Trainer wants an output folder even when it saves nothing there."""
    with tempfile.TemporaryDirectory(prefix="finegrain-rm-") as tmp:
        yield tmp


def data_section(train_file: str | Path | None, eval_file: str | Path | None, **counts: Any) -> dict[str, Any]:
    from finegrain.rewards.rm_data import file_sha256

    section: dict[str, Any] = {}
    for key, path in (("train", train_file), ("eval", eval_file)):
        if path is not None:
            section[f"{key}_file"] = str(path)
            section[f"{key}_sha256"] = file_sha256(path)
    section.update(counts)
    return section
