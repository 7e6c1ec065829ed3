"""SimPO (Meng et al. 2024): preference optimisation without a reference model, on length-averaged
log-probs, with beta and a target reward margin gamma.

    finegrain train simpo --config configs/simpo_qa.yaml [simpo.beta=2.0 simpo.gamma=1.0 ...]

Pairs as in DPO (human judgements and/or span feedback, or a pairs file). Held-out evaluation: the
SimPO loss and the preference accuracy (the share of held-out pairs whose chosen response has the
higher implicit reward beta * mean log pi).
Shape legend: N pairs in a batch, P prompt tokens, T response tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from finegrain.config import ConfigBase, check_range
from finegrain.errors import TrainingError
from finegrain.kernel.config import OptimConfig, PairDataConfig, PolicyConfig, PromptConfig, RunConfig, check_pair_recipe

if TYPE_CHECKING:
    from finegrain.data.pairs import PreferencePair
    from finegrain.kernel.stats import PreferenceStats


@dataclass
class SimPOLossConfig(ConfigBase):
    beta: float = field(default=2.0, metadata={"help": "scale of the implicit reward beta * mean log pi (TRL's CPOConfig default for SimPO: 2.0)"})
    gamma: float = field(default=1.0, metadata={"help": "target reward margin, in reward units (TRL's simpo_gamma)"})
    label_smoothing: float = field(default=0.0, metadata={"help": "probability that a pair's label is flipped; 0: the paper's loss"})

    def __post_init__(self) -> None:
        check_range(self, "beta", 0.0, None, low_open=True)
        check_range(self, "gamma", 0.0)
        check_range(self, "label_smoothing", 0.0, 0.5, high_open=True)


@dataclass
class SimPOConfig(ConfigBase):
    model: PolicyConfig = field(default_factory=PolicyConfig, metadata={"help": "the policy"})
    data: PairDataConfig = field(default_factory=lambda: PairDataConfig(feedback=""), metadata={"help": "preference pairs and the held-out split"})
    prompt: PromptConfig = field(default_factory=PromptConfig, metadata={"help": "how an example is shown to the policy"})
    simpo: SimPOLossConfig = field(default_factory=SimPOLossConfig, metadata={"help": "the SimPO loss"})
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-7), metadata={"help": "AdamW, schedule, batch of pairs"})
    run: RunConfig = field(default_factory=RunConfig, metadata={"help": "output, seed, steps, evaluation, checkpoints, logging"})

    def __post_init__(self) -> None:
        check_pair_recipe(self.data, self.run)


@dataclass
class Inputs:
    train: list["PreferencePair"]
    eval: list["PreferencePair"]
    policy_path: str


def check_inputs(cfg: SimPOConfig, out: Path, resume: bool) -> Inputs:
    from finegrain.kernel.data import pair_split
    from finegrain.kernel.run import check_run_folder, check_trackers, local_model

    check_run_folder(out, resume)
    check_trackers(cfg.run.log_with)
    train, held = pair_split(cfg.data, cfg.run.seed)
    return Inputs(train, held, local_model(cfg.model.policy, "model.policy"))


def train(cfg: SimPOConfig, resume: bool = False) -> Path:
    """Run (or resume) SimPO; returns the run folder (metrics.jsonl, final/, best/)."""
    from finegrain.kernel import run as R
    from finegrain.kernel.checkpoint import RunState
    from finegrain.kernel.optim import micro_batches
    from finegrain.kernel.sequences import pair_batcher
    from finegrain.kernel.stats import preference_row

    out = Path(cfg.run.folder("simpo"))
    # 1. Check config, pairs, model path and run folder before anything heavy.
    inputs = check_inputs(cfg, out, resume)
    # 2. Accelerator (devices, processes), seeds, run folder, trackers.
    acc = R.make_accelerator(out, cfg.run.seed, cfg, cfg.run.log_with, cfg.run.threads)
    # 3. Tokenizer, prompts within their budget, policy, optimiser, schedule (no reference model).
    policy = R.prepare_policy(acc, inputs.policy_path, cfg.prompt, [p.example for p in inputs.train + inputs.eval], cfg.optim, cfg.run.steps, cfg.model.gradient_checkpointing)
    batch_of = pair_batcher(policy.tokenizer, policy.prompts, cfg.prompt.max_response_tokens)

    def evaluate_now() -> None:
        R.evaluate_and_keep_best(acc, out, state, evaluate(acc, policy.model, inputs.eval, batch_of, cfg), "eval/loss", False, policy)

    # 4. Resume: model, optimiser, schedule, RNG states, step; the evaluation before training.
    state = R.restore(acc, out, resume, RunState())
    if cfg.run.eval_every and state.step == 0:
        evaluate_now()
    # 5. The loop: pairs -> SimPO loss -> optimiser step -> log -> evaluate -> checkpoint.
    progress = R.progress_bar(cfg.run.steps, state.step, "SimPO", cfg.run.progress, acc)
    while state.step < cfg.run.steps:
        t0 = time.perf_counter()
        idx = R.batch_indices(state.step, len(inputs.train), cfg.optim.batch_size, acc.num_processes, acc.process_index, cfg.run.seed)
        try:
            stats, grad_norm = simpo_step(acc, policy, micro_batches(idx, cfg.optim.grad_accum), inputs.train, batch_of, cfg)
        except TrainingError as err:
            raise R.save_stopped(acc, out, state, cfg.run.keep_checkpoints, err) from None
        policy.scheduler.step()
        state.step += 1
        row = {**preference_row(stats), "grad_norm": grad_norm, "lr": policy.scheduler.get_last_lr()[0], "time/step": time.perf_counter() - t0}
        R.finish_step(acc, out, state, row, cfg.run, evaluate_now, progress)
    progress.close()
    # 6. The final policy in HF format (and `best`, when no evaluation ran).
    R.save_final(acc, out, state, acc.unwrap_model(policy.model), policy.tokenizer)
    acc.end_training()
    return out


def simpo_step(acc, policy, micro, pairs, batch_of, cfg: SimPOConfig) -> tuple["PreferenceStats", float]:
    """One optimiser step: the mean SimPO loss over the batch's pairs (over its micro-batches)."""
    from finegrain.kernel.logprobs import pair_logprobs, shares_prompts
    from finegrain.kernel.optim import accumulated_step
    from finegrain.kernel.stats import add_stats, preference_stats
    from finegrain.preference import simpo_loss

    n = sum(len(m) for m in micro)

    def loss_of(indices):
        batch = batch_of([pairs[i] for i in indices]).to(acc.device)
        chosen, rejected = pair_logprobs(policy.model, batch, average=True, share_prompts=shares_prompts(acc))
        out = simpo_loss(chosen, rejected, cfg.simpo.beta, cfg.simpo.gamma, cfg.simpo.label_smoothing)
        return out.losses.sum() / n, preference_stats(out)

    parts, grad_norm = accumulated_step(acc, policy.model, policy.optimizer, micro, loss_of, cfg.optim.max_grad_norm, cfg.model.precision, "SimPO")
    return add_stats(parts), grad_norm


def evaluate(acc, model, held_out: list["PreferencePair"], batch_of, cfg: SimPOConfig) -> dict[str, float]:
    """Held-out SimPO loss and preference accuracy (every process computes the same)."""
    from finegrain.kernel.logprobs import pairs_logprobs, shares_prompts
    from finegrain.kernel.stats import preference_row, preference_stats
    from finegrain.preference import simpo_loss

    size = cfg.optim.batch_size
    batches = (batch_of(held_out[i : i + size]) for i in range(0, len(held_out), size))
    chosen, rejected = pairs_logprobs(acc.unwrap_model(model), batches, True, acc.device, cfg.model.precision, shares_prompts(acc))
    out = simpo_loss(chosen, rejected, cfg.simpo.beta, cfg.simpo.gamma, cfg.simpo.label_smoothing)
    return preference_row(preference_stats(out), "eval/")
