"""PPO on dense, weighted, multi-source rewards: the training loop.

`train(cfg)` reads as numbered steps; the PPO phases are functions of rollout.py, update.py and
metrics.py, the run machinery (accelerator, checkpoints, metrics, keep-best, final save),
generation and prompt rendering come from the kernel (finegrain/kernel). It is built on accelerate,
so `accelerate launch` runs it on several processes or GPUs unchanged: every process samples its own
prompts, gradients are averaged by DDP, metrics are averaged over processes, and the main process
writes files.

    from finegrain.rl.trainer import run_training
    run_dir = run_training(load_config(TrainConfig, "configs/detox_finegrained.yaml"))
    # run_dir / "metrics.jsonl", run_dir / "final", run_dir / "best"
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finegrain.errors import TrainingError
from finegrain.kernel import run as R
from finegrain.kernel.checkpoint import RunState
from finegrain.rl.config import TrainConfig
from finegrain.rl.prompts import PromptSplit, load_prompts, load_ptx_texts

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from finegrain.data.records import Example
    from finegrain.kernel.generation import Generator
    from finegrain.kernel.prompts import PromptRenderer
    from finegrain.rewards.compose import WeightedSource
    from finegrain.rl.update import PtxBatch


@dataclass
class TrainerState(RunState):
    """A PPO checkpoint's state: the kernel's (step, best evaluation) and the KL coefficient."""

    kl_coef: float = 0.0  # current beta (changes when adaptive)
    reward_moments: list[float] | None = None  # ppo.reward_norm=running: (count, sum, sum of squares) of every total so far


@dataclass
class Inputs:
    """Everything read from disk and checked before a model is loaded."""

    prompts: PromptSplit
    ptx_texts: list[str] | None
    policy_path: str
    ref_path: str
    cards: list  # each reward source's RM card (None for other kinds), read once


@dataclass
class Run:
    """The live objects of a PPO run (what its step functions need)."""

    cfg: TrainConfig
    out: Path
    accelerator: "Accelerator"
    model: "torch.nn.Module"  # ActorCritic, wrapped by accelerate
    ref: "PreTrainedModel"
    tokenizer: "PreTrainedTokenizerBase"
    renderer: "PromptRenderer"
    generator: "Generator"
    sources: list["WeightedSource"]
    optimizer: "torch.optim.Optimizer"
    scheduler: Any
    inputs: Inputs


def run_training(cfg: TrainConfig, resume: bool = False) -> Path:
    """Run (or resume) the configured experiment; returns the run folder."""
    return train(cfg, resume=resume)


def train(cfg: TrainConfig, resume: bool = False) -> Path:
    out = Path(cfg.run.folder("ppo"))
    # 1. Check config, data files, reward sources and the run folder before anything heavy.
    inputs = check_inputs(cfg, out, resume)
    # 2. Accelerator (devices, processes), seeds, run folder.
    accelerator = R.make_accelerator(out, cfg.run.seed, cfg, cfg.run.log_with, cfg.run.threads)
    # 3. Models: the trained policy + value model, the frozen reference, the reward sources.
    run = build_run(cfg, out, accelerator, inputs)
    # 4. Resume: model, optimiser, schedule, RNG states, step, KL coefficient.
    state = R.restore(accelerator, out, resume, TrainerState(kl_coef=cfg.ppo.kl_coef))
    # 5. The loop: rollout -> PPO update -> KL coefficient -> log -> evaluate -> checkpoint.
    progress = R.progress_bar(cfg.run.steps, state.step, "PPO", cfg.run.progress, accelerator)
    while state.step < cfg.run.steps:
        try:
            row = ppo_step(run, state)
        except TrainingError as err:
            raise R.save_stopped(accelerator, out, state, cfg.run.keep_checkpoints, err) from None
        state.step += 1
        R.log_row(accelerator, out, {"step": state.step, **row})
        if cfg.run.eval_every and state.step % cfg.run.eval_every == 0:
            evaluate_and_keep_best(run, state)
        R.checkpoint_if_due(accelerator, out, state, cfg.run.save_every, cfg.run.steps, cfg.run.keep_checkpoints)
        progress.update(1)
        progress.set_postfix(reward=f"{row['reward/total']:.3f}", kl=f"{row['kl']:.3f}")
    progress.close()
    # 6. The final policy in HF format (and, without evaluation, `best` is the final one).
    R.save_final(accelerator, out, state, accelerator.unwrap_model(run.model).policy, run.tokenizer)
    accelerator.end_training()
    return out


# --- 1. inputs -------------------------------------------------------------------------------


def check_inputs(cfg: TrainConfig, out: Path, resume: bool) -> Inputs:
    from finegrain.rl.sources import check_sources

    R.check_run_folder(out, resume)
    R.check_trackers(cfg.run.log_with)
    prompts = load_prompts(cfg.data, cfg.run.seed)
    ptx = load_ptx_texts(cfg.data.ptx) if cfg.ppo.ptx_coef > 0 and cfg.data.ptx else None
    cards = check_sources(cfg.rewards)
    policy = R.local_model(cfg.model.policy, "model.policy")
    ref = R.local_model(cfg.model.ref, "model.ref") if cfg.model.ref else policy
    make_renderer(cfg, policy).render_all(prompts.train + prompts.eval)  # a prompt over its budget fails here
    return Inputs(prompts, ptx, policy, ref, cards)


def make_renderer(cfg: TrainConfig, policy_path: str, tokenizer: "PreTrainedTokenizerBase | None" = None) -> "PromptRenderer":
    from finegrain.kernel.prompts import PromptRenderer
    from finegrain.models import load_tokenizer

    tok = tokenizer if tokenizer is not None else load_tokenizer(policy_path, padding_side="left")
    return PromptRenderer(tok, cfg.data.template, cfg.data.max_prompt_tokens, cfg.data.chat_template)


# --- 2.-4. setup -----------------------------------------------------------------------------


def build_run(cfg: TrainConfig, out: Path, accelerator: "Accelerator", inputs: Inputs) -> Run:
    from finegrain.kernel.generation import make_generator
    from finegrain.kernel.models import load_frozen, set_pad_token, use_gradient_checkpointing
    from finegrain.kernel.optim import build_optimizer, build_scheduler
    from finegrain.models import load_tokenizer
    from finegrain.rl.policy import build_actor_critic
    from finegrain.precision import use_bf16
    from finegrain.rl.sources import build_sources

    bf16 = use_bf16(cfg.model.precision, accelerator.device.type)
    model = build_actor_critic(inputs.policy_path, cfg.model.value_model)
    ref = load_frozen(inputs.ref_path).to(accelerator.device)
    tokenizer = load_tokenizer(inputs.policy_path, padding_side="left")
    for m in (model.policy, ref):
        set_pad_token(m, tokenizer)
    model.eval()  # no dropout: pi_old and pi must agree exactly before the first update
    if cfg.model.gradient_checkpointing:
        use_gradient_checkpointing(model)
    sources = build_sources(cfg.rewards, inputs.cards, device=str(accelerator.device), bf16=bf16)
    optimizer = build_optimizer(model, cfg.ppo.lr, cfg.ppo.weight_decay, accelerator.device)
    scheduler = build_scheduler(optimizer, cfg.ppo.schedule, cfg.ppo.warmup_steps, cfg.run.steps)
    model, optimizer, scheduler = R.prepare_trained(accelerator, model, optimizer, scheduler, cfg.ppo.max_grad_norm)
    s = cfg.sampling
    generator = make_generator(s.backend, model, tokenizer, accelerator, cfg.model.precision, pick=lambda m: m.policy, gpu_memory=s.vllm_gpu_memory)
    renderer = make_renderer(cfg, inputs.policy_path, tokenizer)
    return Run(cfg, out, accelerator, model, ref, tokenizer, renderer, generator, sources, optimizer, scheduler, inputs)


# --- 5. one PPO step ---------------------------------------------------------------------------


def step_examples(run: Run, step: int) -> list["Example"]:
    acc, train = run.accelerator, run.inputs.prompts.train
    idx = R.batch_indices(step, len(train), run.cfg.ppo.prompts_per_step, acc.num_processes, acc.process_index, run.cfg.run.seed)
    return [train[i] for i in idx]


def ppo_step(run: Run, state: TrainerState) -> dict[str, float]:
    """Rollout, checks, update, KL coefficient: one PPO step; returns its metrics (averaged over processes)."""
    import torch

    from finegrain.kernel.logprobs import shares_prompts
    from finegrain.rl import maths
    from finegrain.rl.metrics import rollout_metrics
    from finegrain.rl.rollout import build_rollout
    from finegrain.rl.update import ppo_update, reuses_rollout_forward

    cfg, acc = run.cfg, run.accelerator
    examples = step_examples(run, state.step)
    times: dict[str, float] = {}
    t_start = time.perf_counter()
    keep = reuses_rollout_forward(cfg.ppo, len(examples) * cfg.sampling.samples_per_prompt)
    problem = None
    try:
        samples, scores, fwd = collect(run, examples, cfg.sampling.samples_per_prompt, times, keep_graph=keep)
        task, norm_row = normalise_rewards(run, state, scores, samples.response_mask.to(scores.total.device))
        rollout = build_rollout(samples, scores, fwd, state.kl_coef, cfg.ppo, task, pool=lambda m: maths.Moments(*R.sum_across_processes(acc, list(m))))
        bad = [n for n in ("logprobs", "ref_logprobs", "values", "advantages", "returns") if not torch.isfinite(getattr(rollout, n)).all()]
        problem = f"the rollout's {bad[0]} hold NaN or inf" if bad else None
    except TrainingError as err:  # a non-finite reward (compose names the source and response)
        problem = str(err)
    R.stop_together(acc, problem)
    row = {**rollout_metrics(rollout, scores, state.kl_coef), **norm_row}

    t0 = time.perf_counter()
    run.model.train(False)  # dropout stays off during the update too
    stats = ppo_update(acc, run.model, run.optimizer, rollout, cfg.ppo, ptx_iterator(run, state.step), cfg.model.precision, fwd.policy_pass,
                       share_prompts=shares_prompts(acc, run.model), temperature=cfg.sampling.temperature)
    run.scheduler.step()
    run.generator.sync_weights()
    times["time/update"] = time.perf_counter() - t0
    times["time/step"] = time.perf_counter() - t_start
    row.update(
        {
            "loss/policy": stats.policy_loss,
            "loss/value": stats.value_loss,
            "loss/ptx": stats.ptx_loss,
            "clip_frac": stats.clip_frac,
            "value_clip_frac": stats.value_clip_frac,
            "approx_kl": stats.approx_kl,
            "grad_norm": stats.grad_norm,
            "epochs": stats.epochs,
            "lr": run.scheduler.get_last_lr()[0],
            **times,
        }
    )
    row = R.reduce_across_processes(acc, row)
    if cfg.ppo.adaptive_kl:
        n = len(rollout) * acc.num_processes
        state.kl_coef = maths.adaptive_kl_coef(state.kl_coef, row["kl"], cfg.ppo.kl_target, cfg.ppo.kl_horizon, n)
    return row


def normalise_rewards(run: Run, state: TrainerState, scores, mask: "torch.Tensor") -> tuple["torch.Tensor", dict[str, float]]:
    """The source rewards PPO optimises, normalised per `ppo.reward_norm` with statistics pooled over
    every process (and, for `running`, over every step so far: kept in the trainer state, so a resumed
    run normalises exactly as an uninterrupted one). Returns the (B, T) rewards and what to log."""
    from finegrain.rl import maths

    mode, acc = run.cfg.ppo.reward_norm, run.accelerator
    if mode == "none":
        return scores.total, {}
    ends = scores.ends.to(mask.device) & mask
    values = scores.total[ends] if mode == "segment" else maths.sequence_sums(scores.total, mask)
    moments = maths.Moments(*R.sum_across_processes(acc, list(maths.Moments.of(values))))
    if mode == "running":
        moments = moments + maths.Moments(*state.reward_moments) if state.reward_moments else moments
        state.reward_moments = list(moments)
    if mode == "segment":
        task = maths.normalise_segment_rewards(scores.total, ends, moments.mean, moments.std)
    else:
        task = maths.normalise_sequence_rewards(scores.total, maths.last_reward_token(ends, mask), moments.mean, moments.std)
    return task, {"reward_norm/mean": moments.mean, "reward_norm/std": moments.std,
                  "reward/normalised": maths.sequence_sums(task, mask).mean().item()}


def collect(run: Run, examples: list["Example"], samples_per_prompt: int, times: dict[str, float], keep_graph: bool = False):
    """Generation, scoring and the forward passes, timed. Returns (Samples, Scores, Forward).
    With `keep_graph` the policy's forward keeps its graph for the first PPO step."""
    from finegrain.kernel.generation import GenerationSettings
    from finegrain.kernel.logprobs import shares_prompts
    from finegrain.kernel.models import autocast
    from finegrain.rl.rollout import forward, score

    cfg, acc = run.cfg, run.accelerator
    actor = acc.unwrap_model(run.model)
    t0 = time.perf_counter()
    ids, mask = run.renderer.encode([run.renderer.render(e).text for e in examples])
    s = cfg.sampling
    settings = GenerationSettings(samples_per_prompt, s.max_new_tokens, s.min_new_tokens, s.temperature, s.top_k, s.top_p)
    samples = run.generator.sample(ids, mask, settings)
    t1 = time.perf_counter()
    per_response = [e for e in examples for _ in range(samples_per_prompt)]
    scores = score(run.sources, per_response, run.tokenizer, samples.to("cpu"))
    t2 = time.perf_counter()
    with autocast(acc.device, cfg.model.precision):
        fwd = forward(run.model if keep_graph else actor, run.ref, samples, cfg.ppo.forward_batch_size, keep_graph, cfg.ppo.entropy_coef > 0,
                      share_prompts=shares_prompts(acc, run.model), temperature=s.temperature)
    t3 = time.perf_counter()
    times.update({"time/generate": t1 - t0, "time/score": t2 - t1, "time/forward": t3 - t2})
    device = fwd.logprobs.device
    scores.total, scores.per_source, scores.ends = scores.total.to(device), scores.per_source.to(device), scores.ends.to(device)
    return samples, scores, fwd


def ptx_iterator(run: Run, step: int) -> Iterator["PtxBatch"] | None:
    """PPO-ptx batches for this step, taken in order from a position that depends only on the step."""
    texts = run.inputs.ptx_texts
    if not texts or run.cfg.ppo.ptx_coef <= 0:
        return None
    from finegrain.rl.update import PtxBatch

    ppo, acc = run.cfg.ppo, run.accelerator
    per_step = ppo.epochs * max(1, (ppo.prompts_per_step * run.cfg.sampling.samples_per_prompt) // ppo.minibatch_size)
    position = (step * per_step * acc.num_processes + acc.process_index) * ppo.ptx_batch_size

    def batches() -> Iterator[PtxBatch]:
        nonlocal position
        tok = run.tokenizer
        while True:
            chunk = [texts[(position + i) % len(texts)] for i in range(ppo.ptx_batch_size)]
            position += ppo.ptx_batch_size * acc.num_processes
            tok.padding_side = "right"
            enc = tok(chunk, return_tensors="pt", padding=True, truncation=True, max_length=run.cfg.data.max_prompt_tokens + run.cfg.sampling.max_new_tokens)
            tok.padding_side = "left"
            yield PtxBatch(enc["input_ids"].to(acc.device), enc["attention_mask"].to(acc.device))

    return batches()


# --- evaluation and the policies kept ---------------------------------------------------------


def evaluate(run: Run) -> dict[str, float]:
    """One sample per held-out prompt, scored by the training reward sources. The sampling noise is
    seeded and the training RNG streams are left untouched, so evaluations are comparable across steps
    and a resumed run is unaffected by them."""
    import torch

    from finegrain.rl import maths

    cfg, acc = run.cfg, run.accelerator
    held_out = run.inputs.prompts.eval
    batch = cfg.ppo.prompts_per_step * cfg.sampling.samples_per_prompt
    totals: list[torch.Tensor] = []
    per_source: list[torch.Tensor] = []
    names: tuple[str, ...] = ()
    devices = [acc.device.index or 0] if acc.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.run.seed)
        for i in range(0, len(held_out), batch):
            times: dict[str, float] = {}
            samples, scores, _ = collect(run, held_out[i : i + batch], 1, times)
            mask = samples.response_mask.to(scores.total.device)
            totals.append(maths.sequence_sums(scores.total, mask))
            per_source.append(torch.stack([maths.sequence_sums(s, mask) for s in scores.per_source]))
            names = scores.names
    total = torch.cat(totals)
    sources = torch.cat(per_source, dim=1)
    row = {"eval/reward/total": total.mean().item()}
    row.update({f"eval/reward/{n}": sources[k].mean().item() for k, n in enumerate(names)})
    return row


def evaluate_and_keep_best(run: Run, state: TrainerState) -> None:
    row = evaluate(run)
    R.log_row(run.accelerator, run.out, {"step": state.step, **row})
    policy = run.accelerator.unwrap_model(run.model).policy
    R.keep_best(run.accelerator, run.out, state, row["eval/reward/total"], True, policy, run.tokenizer, "eval_reward")
