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

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
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

    from finegrain.kernel.config import OptimConfig, PromptConfig, RunConfig

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
    """An embedded model's name, a hub id or a local folder -> a path to load (`check_model_name`
    first)."""
    from finegrain.models import check_model_name, resolve_model

    check_model_name(name, field_name)
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
        record_environment(out / ENVIRONMENT_FILE, threads=torch.get_num_threads(), processes=accelerator.num_processes,
                           device=accelerator.device.type, **_resolved_precision(config, accelerator.device.type))
    check_distributed(accelerator)
    if log_with:
        accelerator.init_trackers(project, config=flat_config(to_dict(config)), init_kwargs={"wandb": {"dir": str(out)}})
    return accelerator


ENVIRONMENT_FILE = "environment.jsonl"


@functools.lru_cache(maxsize=1)
def code_environment() -> dict[str, Any]:
    """What code a run ran: finegrain's version and, from a git checkout, its commit and whether
    finegrain/ held uncommitted changes (None outside a checkout); python and the libraries the
    numbers depend on. Read once per process: a process that runs several stages (`finegrain demo`)
    runs the code it loaded at its start, whatever the checkout holds by its later stages."""
    import platform
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    from finegrain import __version__

    root = Path(__file__).resolve().parents[2]
    commit = dirty = None
    if (root / ".git").exists():
        try:
            git = ["git", "-C", str(root)]
            commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True).stdout.strip()
            dirty = bool(subprocess.run([*git, "status", "--porcelain", "--", "finegrain"], capture_output=True, text=True, timeout=10, check=True).stdout.strip())
        except (OSError, subprocess.SubprocessError):
            commit = dirty = None
    libraries = {}
    for name in ("torch", "transformers", "accelerate", "peft", "vllm"):
        try:
            libraries[name] = version(name)
        except PackageNotFoundError:
            pass
    return {"finegrain": __version__, "git_commit": commit, "git_dirty": dirty, "python": platform.python_version(), **libraries}


def _resolved_precision(config: Any, device_type: str) -> dict[str, str]:
    """{"precision": "bf16" | "fp32"}: what a config's `model.precision` ("auto" by default) became on this
    device, so that a run's record says which it computed in; {} for a config without one."""
    from finegrain.precision import resolve_precision

    precision = getattr(getattr(config, "model", None), "precision", None)
    return {} if precision is None else {"precision": resolve_precision(precision, device_type)}


def record_environment(path: Path, **extra: Any) -> None:
    """Append one line per start of a run (a resumed run adds one): the time, `code_environment()`
    and `extra` (threads, processes), so that a run's numbers can be traced to the code that made them."""
    import datetime

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.is_file() else []
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    atomic_write_jsonl(path, [*rows, {"started": started, **code_environment(), **extra}])


def run_config(folder: str | Path) -> dict[str, Any]:
    """The settings a run saved in its folder (`config.yaml`, written by `setup_accelerator`), as a dict;
    {} for a folder without one (an untrained policy's evaluation)."""
    import yaml

    path = Path(folder) / "config.yaml"
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}


def check_distributed(accelerator: "Accelerator") -> None:
    """Refuse what would train wrongly without saying so:
    - several processes launched but each set up alone (accelerate 1.x does this on a machine
      without GPUs given an FSDP or DeepSpeed config and no ACCELERATE_USE_CPU): N independent runs
      writing one folder;
    - FSDP1 (`fsdp_version: 1`): finegrain gathers parameters for generation and saving the FSDP2 way.
    And say when an FSDP config runs as DDP (accelerate runs FSDP on GPUs only; on CPU it falls back)."""
    import os

    from accelerate.utils import DistributedType

    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes == 1:
        raise ConfigError(
            f"accelerate launch started {launched} processes, but accelerate set each up as a single process "
            f"(distributed_type {accelerator.distributed_type.value}): they would train {launched} separate copies. "
            "FSDP and DeepSpeed need GPUs; on CPU launch with ACCELERATE_USE_CPU=true and --multi_gpu (DDP over gloo), docs/scaling.md"
        )
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if accelerator.distributed_type == DistributedType.FSDP and plugin is not None and plugin.fsdp_version != 2:
        raise ConfigError("accelerate config fsdp_config.fsdp_version: finegrain needs FSDP2 (fsdp_version: 2), got 1; see configs/accelerate/fsdp2.yaml")
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and accelerator.distributed_type != DistributedType.FSDP and accelerator.is_main_process:
        print(f"note: the accelerate config asks for FSDP, but accelerate runs {accelerator.distributed_type.value} here "
              "(it shards with FSDP on GPUs only); every process holds the whole model")


def configure_deepspeed(accelerator: "Accelerator", max_grad_norm: float) -> None:
    """Under DeepSpeed, before `prepare`: the settings accelerate would take from a data loader
    (finegrain has none) and the recipe's gradient clipping, which DeepSpeed's engine applies itself.
    The micro-batch size only feeds DeepSpeed's bookkeeping: finegrain cuts its own micro-batches."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    if ds.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        ds["train_micro_batch_size_per_gpu"] = 1
    ds["gradient_clipping"] = float(max_grad_norm)


def prepare_trained(accelerator: "Accelerator", model, optimizer, scheduler, max_grad_norm: float):
    """accelerate's `prepare` of the trained module, its optimiser and schedule. Under DeepSpeed
    (`configure_deepspeed` first) the schedule stays out of DeepSpeed's engine, which would step it
    at every optimiser step where finegrain's schedules count recipe steps; it is registered so
    that checkpoints still save it."""
    if getattr(accelerator.state, "deepspeed_plugin", None) is None:
        return accelerator.prepare(model, optimizer, scheduler)
    configure_deepspeed(accelerator, max_grad_norm)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    return model, optimizer, scheduler


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


def process_mean(accelerator: "Accelerator", value: float) -> float:
    """The mean of `value` over processes. A loss that is a mean over tokens divides its sum by the
    mean *per-process* token count (not its own): DDP averages the processes' gradients, so the
    result is the gradient of the mean over every process's tokens, as one process holding them all
    would compute it."""
    return sum_across_processes(accelerator, [value])[0] / accelerator.num_processes


def sum_across_processes(accelerator: "Accelerator", values: list[float]) -> list[float]:
    """Each of `values` summed over processes (float64): pooled statistics, e.g. `Moments`."""
    if accelerator.num_processes == 1:
        return [float(v) for v in values]
    import torch

    pooled = accelerator.reduce(torch.tensor(values, dtype=torch.float64, device=accelerator.device), reduction="sum")
    return pooled.tolist()


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
    """Save `model` (unwrapped) as out/best when `score` beats the best so far; returns whether it did.
    Every process must call it (a sharded model is gathered by all of them)."""
    best = state.best_eval
    better = best is None or (score > best if higher_is_better else score < best)
    if better:
        state.best_eval, state.best_step = score, state.step
        full = full_state_dict(accelerator, model)
        if accelerator.is_main_process:
            save_policy(model, tokenizer, out / "best", {"step": state.step, score_name: score}, full)
    accelerator.wait_for_everyone()
    return better


def save_final(accelerator: "Accelerator", out: Path, state: RunState, model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase") -> None:
    """out/final; and out/best too when no evaluation ran (the final policy is the best we know).
    Every process must call it (a sharded model is gathered by all of them)."""
    accelerator.wait_for_everyone()
    full = full_state_dict(accelerator, model)
    if accelerator.is_main_process:
        info = {"step": state.step, "best_step": state.best_step, "best_eval": state.best_eval}
        save_policy(model, tokenizer, out / "final", info, full)
        if state.best_step is None:
            save_policy(model, tokenizer, out / "best", {**info, "best_step": state.step}, full)
    accelerator.wait_for_everyone()


def full_state_dict(accelerator: "Accelerator", model: "torch.nn.Module") -> dict[str, "torch.Tensor"] | None:
    """The whole state dict of `model` (unwrapped, or a sub-module of it such as PPO's policy) on
    the main process, gathered from every process's shards under FSDP2 or DeepSpeed ZeRO-3; None
    where nothing is sharded (one process, DDP, ZeRO-1/2: `model`'s own state dict is whole).
    Every process must call it: the gather is collective."""
    from finegrain.kernel.generation import full_tensors, holds_shards

    if accelerator.num_processes == 1 or not holds_shards(model):
        return None
    full = {}
    for name, tensor in full_tensors(model):
        if accelerator.is_main_process:
            full[name] = tensor.to("cpu", copy=True)
    return full if accelerator.is_main_process else None


# --- what every recipe's setup and loop share ---------------------------------------------------


@dataclass
class Trainable:
    """A causal LM being trained, with its tokenizer, its examples' rendered prompts, optimiser and schedule."""

    model: "torch.nn.Module"  # wrapped by accelerate
    tokenizer: "PreTrainedTokenizerBase"
    prompts: dict[str, list[int]]  # example id -> rendered prompt tokens (PromptRenderer.prompt_ids)
    optimizer: "torch.optim.Optimizer"
    scheduler: Any


def prepare_policy(
    accelerator: "Accelerator", policy_path: str, prompt: "PromptConfig", examples: list, optim: "OptimConfig", steps: int, gradient_checkpointing: bool = False
) -> Trainable:
    """Tokenizer, every example's prompt rendered within its budget (what the budget cut is printed
    once), the model (float32 master weights, no dropout, so resumed and uninterrupted runs take the
    same steps; layers recomputed in the backward with `gradient_checkpointing`), AdamW and its
    schedule, all prepared by accelerate."""
    from finegrain.kernel.models import load_causal_lm, set_pad_token, use_gradient_checkpointing
    from finegrain.kernel.optim import build_optimizer, build_scheduler
    from finegrain.kernel.prompts import PromptRenderer
    from finegrain.models import load_tokenizer

    tokenizer = load_tokenizer(policy_path)
    renderer = PromptRenderer(tokenizer, prompt.template, prompt.max_prompt_tokens, prompt.chat_template)
    prompts = renderer.prompt_ids(examples, log=accelerator.is_main_process)
    model = load_causal_lm(policy_path)
    set_pad_token(model, tokenizer)
    model.eval()
    if gradient_checkpointing:
        use_gradient_checkpointing(model)
    optimizer = build_optimizer(model, optim.lr, optim.weight_decay, accelerator.device)
    scheduler = build_scheduler(optimizer, optim.schedule, optim.warmup_steps, steps)
    model, optimizer, scheduler = prepare_trained(accelerator, model, optimizer, scheduler, optim.max_grad_norm)
    return Trainable(model, tokenizer, prompts, optimizer, scheduler)


def evaluate_and_keep_best(accelerator: "Accelerator", out: Path, state: RunState, row: dict[str, float], key: str, higher_is_better: bool, trainable: Trainable) -> None:
    """Log an evaluation row at the state's step and keep the policy as out/best when row[key] is the best so far."""
    log_row(accelerator, out, {"step": state.step, **row})
    keep_best(accelerator, out, state, row[key], higher_is_better, accelerator.unwrap_model(trainable.model), trainable.tokenizer, key)


def finish_step(accelerator: "Accelerator", out: Path, state: RunState, row: dict[str, float], run: "RunConfig", evaluate: Callable[[], None], progress) -> None:
    """After an optimiser step: the row (averaged over processes) to the logs, the evaluation when due,
    the checkpoint when due, the progress bar."""
    log_row(accelerator, out, {"step": state.step, **reduce_across_processes(accelerator, row)})
    if run.eval_every and state.step % run.eval_every == 0:
        evaluate()
    checkpoint_if_due(accelerator, out, state, run.save_every, run.steps, run.keep_checkpoints)
    progress.update(1)
    progress.set_postfix(loss=f"{row['loss']:.3f}")
