"""The run machinery every recipe shares, as functions with explicit arguments:

    check_run_folder(out, resume)              before anything heavy: a fresh folder, or one to resume
    accelerator = make_accelerator(out, seed, config, log_with, threads)   devices, seeds, config snapshot, trackers
    state = restore(accelerator, out, resume, RunState())                  checkpoint -> model, optimiser, RNGs, state
    idx = batch_indices(step, n, per_process, accelerator.num_processes, accelerator.process_index, seed)
    log_row(accelerator, out, {"step": s, ...})                            metrics.jsonl + TensorBoard / W&B
    keep_best(accelerator, out, state, score, higher_is_better, model, tokenizer)
    save_final(accelerator, out, state, model, tokenizer)

Which examples a step uses is a pure function of (seed, step, process): a resumed run needs no saved
data-loader state beyond the step number, and every process takes its own slice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finegrain.config import ConfigError, save_config, to_dict
from finegrain.errors import MissingPackageError, TrainingError
from finegrain.io import atomic_write_jsonl
from finegrain.kernel.checkpoint import RunState, State, latest_checkpoint, load_checkpoint, save_checkpoint, save_policy

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

METRICS_FILE = "metrics.jsonl"
TIMING_PREFIX = "time/"
TRACKERS = ("tensorboard", "wandb")


# --- before anything heavy ---------------------------------------------------------------------


def check_run_folder(out: Path, resume: bool) -> None:
    """A new run needs a folder without a run in it; `--resume` needs a checkpoint."""
    if resume and latest_checkpoint(out) is None:
        raise ConfigError(f"--resume: {out} holds no checkpoint to resume from")
    if not resume and latest_checkpoint(out) is not None:
        raise ConfigError(f"run.out: {out} already holds a run; pass --resume to continue it, or choose another run.out")


def check_trackers(log_with: list[str]) -> None:
    for tracker in log_with:
        try:
            __import__(tracker)
        except ImportError:
            raise MissingPackageError(f"run.log_with: {tracker} is not installed; pip install 'finegrain[tracking]'") from None


def local_model(name: str, field_name: str) -> str:
    """An embedded model's name, a hub id or a local folder -> a path to load; a local path that
    does not exist fails here, naming the config field."""
    from finegrain.models import EMBEDDED, resolve_model

    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).suffix
    if name not in EMBEDDED and looks_local and not Path(name).expanduser().exists():
        raise ConfigError(f"{field_name}: {name} does not exist")
    return resolve_model(name)


# --- setup -------------------------------------------------------------------------------------


def make_accelerator(out: Path, seed: int, config: Any, log_with: list[str] = (), threads: int = 0, project: str = "finegrain") -> "Accelerator":
    """Accelerator (devices, processes), seeds (different on every process, so each samples its
    own responses), the run folder with `config.yaml`, and the trackers (TensorBoard event files
    under out/<project>, W&B's files under out/wandb; W&B honours WANDB_MODE=offline)."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if threads:
        torch.set_num_threads(threads)
    accelerator = Accelerator(
        log_with=list(log_with) or None,
        project_dir=str(out),
        step_scheduler_with_optimizer=False,  # the schedule counts recipe steps
    )
    set_seed(seed, device_specific=True)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")
    if log_with:
        accelerator.init_trackers(project, config=flat_config(to_dict(config)), init_kwargs={"wandb": {"dir": str(out)}})
    return accelerator


def flat_config(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}, values as trackers accept them."""
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            flat.update(flat_config(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return flat


def restore(accelerator: "Accelerator", out: Path, resume: bool, fresh: State) -> State:
    """A new run starts from `fresh` (and an empty metrics file); a resumed one from its latest
    checkpoint, with the metrics of steps after it dropped (they will be run again)."""
    if not resume:
        if accelerator.is_main_process:
            (out / METRICS_FILE).unlink(missing_ok=True)
        return fresh
    folder = latest_checkpoint(out)
    if folder is None:
        raise ConfigError(f"--resume: {out} holds no checkpoint to resume from")
    state = load_checkpoint(accelerator, folder, type(fresh))
    if accelerator.is_main_process:
        MetricsLog(out / METRICS_FILE).truncate_after(state.step)
    return state


def batch_indices(step: int, n_items: int, per_process: int, n_processes: int, rank: int, seed: int) -> list[int]:
    """Indices of the training items that process `rank` uses at `step` (0-based).

    The items are walked in a fresh seeded permutation per pass over the data; step s of the
    whole run takes the global slice [s * G, (s + 1) * G) with G = per_process * n_processes, and
    process r takes its r-th part of it.
    """
    import torch

    per_step = per_process * n_processes
    start = step * per_step + rank * per_process
    out: list[int] = []
    cached_pass, perm = -1, None
    for position in range(start, start + per_process):
        data_pass, offset = divmod(position, n_items)
        if data_pass != cached_pass:
            g = torch.Generator().manual_seed(seed * 1_000_003 + data_pass)
            perm = torch.randperm(n_items, generator=g).tolist()
            cached_pass = data_pass
        out.append(perm[offset])  # type: ignore[index]
    return out


# --- during the run ----------------------------------------------------------------------------


class MetricsLog:
    """`metrics.jsonl`, appended a row at a time (by the main process)."""

    def __init__(self, path: Path):
        self.path = path

    def append(self, row: dict[str, float | int]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()

    def truncate_after(self, step: int) -> None:
        """On resume: drop rows of steps after the checkpoint (they will be run again)."""
        if not self.path.is_file():
            return
        rows = [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
        atomic_write_jsonl(self.path, [r for r in rows if r.get("step", 0) <= step])


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def without_timings(row: dict[str, float]) -> dict[str, float]:
    """A row minus wall-clock measurements: what two identical runs must agree on."""
    return {k: v for k, v in row.items() if not k.startswith(TIMING_PREFIX) and k != "elapsed"}


def log_row(accelerator: "Accelerator", out: Path, row: dict[str, float]) -> None:
    """One row to metrics.jsonl (main process) and to the trackers, at its `step`."""
    if accelerator.is_main_process:
        MetricsLog(out / METRICS_FILE).append(row)
    if accelerator.trackers:
        accelerator.log({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))


def reduce_across_processes(accelerator: "Accelerator", row: dict[str, float]) -> dict[str, float]:
    """Average every metric over processes (each process measured its own examples)."""
    if accelerator.num_processes == 1:
        return row
    import torch

    keys = sorted(row)
    values = torch.tensor([row[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    values = accelerator.reduce(values, reduction="mean")
    return dict(zip(keys, values.tolist()))


def stop_together(accelerator: "Accelerator", problem: str | None) -> None:
    """Raise TrainingError on every process when any process found a problem: a process that
    stopped alone would leave the others waiting at their next collective operation."""
    if accelerator.num_processes > 1:
        import torch

        flag = torch.tensor([1.0 if problem else 0.0], device=accelerator.device)
        if float(accelerator.reduce(flag, reduction="sum")) > 0 and problem is None:
            problem = "another process met a NaN or inf value"
    if problem:
        raise TrainingError(problem)


def check_finite(accelerator: "Accelerator", name: str, value: "torch.Tensor") -> None:
    import torch

    bad = not torch.isfinite(value).all()
    stop_together(accelerator, f"the {name} loss is {float(value)}: stopping (look for NaN/inf rewards or a too-high learning rate)" if bad else None)


def progress_bar(total: int, initial: int, desc: str, enabled: bool, accelerator: "Accelerator"):
    """tqdm with ETA, on the local main process only."""
    from tqdm.auto import tqdm

    disable = not (enabled and accelerator.is_local_main_process)
    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=disable, dynamic_ncols=True)


def checkpoint_if_due(accelerator: "Accelerator", out: Path, state: RunState, save_every: int, total: int, keep: int) -> None:
    if (save_every and state.step % save_every == 0) or state.step == total:
        save_checkpoint(accelerator, out, state, keep)


def save_stopped(accelerator: "Accelerator", out: Path, state: RunState, keep: int, err: Exception) -> TrainingError:
    """The state at a stop (NaN, inf) saved aside; the error to raise, naming where it is."""
    saved = save_checkpoint(accelerator, out, state, keep, name=f"stopped-step-{state.step + 1:06d}")
    return TrainingError(f"step {state.step + 1}: {err}; the state at the stop is saved in {saved}")


# --- the policies kept -------------------------------------------------------------------------


def keep_best(
    accelerator: "Accelerator",
    out: Path,
    state: RunState,
    score: float,
    higher_is_better: bool,
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    score_name: str = "eval",
) -> bool:
    """Save `model` (unwrapped) as out/best when `score` beats the best so far; returns whether it did."""
    best = state.best_eval
    better = best is None or (score > best if higher_is_better else score < best)
    if better:
        state.best_eval, state.best_step = score, state.step
        if accelerator.is_main_process:
            save_policy(model, tokenizer, out / "best", {"step": state.step, score_name: score})
    accelerator.wait_for_everyone()
    return better


def save_final(accelerator: "Accelerator", out: Path, state: RunState, model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase") -> None:
    """out/final; and out/best too when no evaluation ran (the final policy is the best we know)."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        info = {"step": state.step, "best_step": state.best_step, "best_eval": state.best_eval}
        save_policy(model, tokenizer, out / "final", info)
        if state.best_step is None:
            save_policy(model, tokenizer, out / "best", {**info, "best_step": state.step})
    accelerator.wait_for_everyone()
