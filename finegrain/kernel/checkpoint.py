"""Checkpoints that survive a kill at any moment, and the HF-format policy folders of a run.

A checkpoint is accelerate's `save_state` (the trained model, optimiser, scheduler, the RNG states
of every process) plus `trainer_state.json`, the recipe's state dataclass (step = data position,
best evaluation, and what else the recipe carries, e.g. PPO's KL coefficient). It is written into a hidden temporary folder, fsynced, renamed into place, and only
then named in `checkpoints/latest`: a kill during a save leaves the previous checkpoint as the
latest and a `.tmp-*` folder that the next save removes.

Layout of a run folder:
    config.yaml          the resolved config
    metrics.jsonl        one row per step (and per evaluation); tensorboard/, wandb/ when asked for
    environment.jsonl    one row per start of the run: the code (git commit) and library versions
    checkpoints/step-000010/   checkpoints/latest
    best/  final/        the policy in HF format (+ tokenizer), loadable with from_pretrained
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from finegrain.io import atomic_write_json, atomic_write_text, fsync_dir

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

STATE_FILE = "trainer_state.json"
LATEST = "latest"


@dataclass
class RunState:
    """What a checkpoint holds besides accelerate's state; recipes extend it with their own fields."""

    step: int = 0  # optimiser steps completed; also the data position (see run.batch_indices)
    best_eval: float | None = None  # best held-out score so far (what keep-best compares)
    best_step: int | None = None


State = TypeVar("State", bound=RunState)


def checkpoint_root(out: Path) -> Path:
    return out / "checkpoints"


def latest_checkpoint(out: Path) -> Path | None:
    """The folder named in `checkpoints/latest`, if it is there."""
    pointer = checkpoint_root(out) / LATEST
    if not pointer.is_file():
        return None
    folder = checkpoint_root(out) / pointer.read_text(encoding="utf-8").strip()
    return folder if (folder / STATE_FILE).is_file() else None


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(folder)


@contextlib.contextmanager
def written_or_explained(tmp: Path, what: str) -> Iterator[None]:
    """Turn a failed write into one clear `TrainingError`: which folder, the library's own message, and
    the free space on its disk (a full disk surfaces from torch as "unexpected pos ..." or "file write
    failed"). The half-written `tmp` folder is removed, so the space it took is given back; what was
    saved before (the previous checkpoint, the policy folder) is untouched."""
    from finegrain.errors import TrainingError

    try:
        yield
    except (OSError, RuntimeError) as err:
        if isinstance(err, TrainingError):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        existing = next(p for p in (tmp, *tmp.parents) if p.exists())
        free = shutil.disk_usage(existing).free / 2**30
        raise TrainingError(
            f"could not write {what} to {tmp.parent}: {type(err).__name__}: {err} ({free:.1f} GiB free on that disk; "
            f"a full disk is the usual cause; the previous save is intact, and `--resume` continues from it once there is room)"
        ) from err


def save_checkpoint(accelerator: "Accelerator", out: Path, state: RunState, keep: int, name: str | None = None) -> Path:
    """Write a checkpoint atomically; every process must call it. `name` (default `step-NNNNNN`)
    other than the default is not made `latest` (used for the state saved when a run stops on NaN)."""
    root = checkpoint_root(out)
    final_name = name or f"step-{state.step:06d}"
    final, tmp = root / final_name, root / f".tmp-{final_name}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    # pickle rather than safetensors: tied embeddings (SmolLM2) survive a round trip unchanged
    with written_or_explained(tmp, f"checkpoint {final_name}"):
        accelerator.save_state(str(tmp), safe_serialization=False)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with written_or_explained(tmp, f"checkpoint {final_name}"):
            atomic_write_json(tmp / STATE_FILE, asdict(state))
            _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
        if name is None:
            atomic_write_text(root / LATEST, final_name + "\n")
            _prune(root, keep)
    accelerator.wait_for_everyone()
    return final


def _prune(root: Path, keep: int) -> None:
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def load_checkpoint(accelerator: "Accelerator", folder: Path, state_type: type[State] = RunState) -> State:  # type: ignore[assignment]
    """Restore model, optimiser, scheduler and RNG states; return the recipe's state."""
    accelerator.load_state(str(folder))
    raw: dict[str, Any] = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    return state_type(**raw)


def save_policy(
    policy: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    folder: Path,
    info: dict[str, Any] | None = None,
    state_dict: dict[str, Any] | None = None,
) -> Path:
    """The policy in HF format (what `from_pretrained` and the evaluation read), replaced atomically.
    `state_dict`: the whole weights when `policy` holds only a shard of them (`run.full_state_dict`).
    A `.tmp-*` or `.old-*` folder left by a kill is removed by the next save."""
    tmp = folder.parent / f".tmp-{folder.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    with written_or_explained(tmp, f"the policy {folder.name}/"):
        policy.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        if info is not None:
            atomic_write_json(tmp / "finegrain_policy.json", info)
        _fsync_tree(tmp)
    old = folder.parent / f".old-{folder.name}"
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    fsync_dir(folder.parent)
    if old.exists():
        shutil.rmtree(old)
    return folder
