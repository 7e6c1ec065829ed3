"""Supervised fine-tuning: the policy learns (prompt, target) pairs from any feedback file, with the
loss on response tokens only; held-out loss and perplexity say how well it fits unseen targets. Its
`final/` folder is the initial policy of every later run (DPO, SimPO, PPO).

    finegrain train sft --config configs/sft_qa.yaml [optim.lr=2e-5 run.steps=200 ...]

Targets (`data.targets`, any of): `gold` (the example's reference answer), `corrected` (an
annotator's corrected response), `preferred` (the chosen response of each human preference pair).
Shape legend: B targets in a batch, P prompt tokens, T target tokens.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from finegrain.config import ConfigBase, ConfigError, check_range
from finegrain.errors import TrainingError
from finegrain.kernel.config import OptimConfig, PolicyConfig, PromptConfig, RunConfig

if TYPE_CHECKING:
    from finegrain.data.records import Example

TARGETS = ("gold", "corrected", "preferred")


@dataclass
class SFTDataConfig(ConfigBase):
    feedback: str | None = field(default=None, metadata={"help": "feedback file: QA-Feedback .json or finegrain .jsonl"})
    targets: list[str] = field(default_factory=lambda: ["gold"], metadata={"help": "targets to learn: gold, corrected, preferred"})
    eval_examples: int = field(default=0, metadata={"help": "examples held out for evaluation (all their targets)"})

    def __post_init__(self) -> None:
        check_range(self, "eval_examples", 0)
        if not self.targets:
            raise ConfigError(f"{self._path + '.' if self._path else ''}targets: name at least one of {', '.join(TARGETS)}")
        for i, t in enumerate(self.targets):
            if t not in TARGETS:
                raise ConfigError(f"{self._path + '.' if self._path else ''}targets[{i}]: {t!r} is not allowed; choose from {', '.join(TARGETS)}")


@dataclass
class SFTConfig(ConfigBase):
    model: PolicyConfig = field(default_factory=PolicyConfig, metadata={"help": "the model to fine-tune"})
    data: SFTDataConfig = field(default_factory=SFTDataConfig, metadata={"help": "feedback file, targets, held-out split"})
    prompt: PromptConfig = field(default_factory=PromptConfig, metadata={"help": "how an example is shown to the policy"})
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-5), metadata={"help": "AdamW, schedule, batch"})
    run: RunConfig = field(default_factory=RunConfig, metadata={"help": "output, seed, steps, evaluation, checkpoints, logging"})

    def __post_init__(self) -> None:
        if self.data.feedback is None:
            raise ConfigError("data.feedback: set a feedback file")
        if self.run.eval_every and not self.data.eval_examples:
            raise ConfigError("run.eval_every: evaluation needs held-out examples; set data.eval_examples > 0")


@dataclass(frozen=True)
class Target:
    example: "Example"
    text: str
    origin: str  # gold, corrected or preferred


class SFTStats(NamedTuple):
    loss_sum: float  # summed negative log-likelihood of the target tokens
    tokens: float  # target tokens


def sft_targets(examples: list["Example"], kinds: list[str]) -> list[Target]:
    """Every (example, target) of the asked kinds, in file order."""
    out: list[Target] = []
    for e in examples:
        if "gold" in kinds and e.reference and e.reference.strip():
            out.append(Target(e, e.reference.strip(), "gold"))
        if "corrected" in kinds:
            out.extend(Target(e, r.annotation.corrected.strip(), "corrected") for _, r in e.annotated if r.annotation.corrected and r.annotation.corrected.strip())
    if "preferred" in kinds:
        from finegrain.data.pairs import human_pairs

        out.extend(Target(p.example, p.chosen, "preferred") for p in human_pairs(examples))
    return out


@dataclass
class Inputs:
    train: list[Target]
    eval: list[Target]
    policy_path: str


def check_inputs(cfg: SFTConfig, out: Path, resume: bool) -> Inputs:
    """Run folder, trackers, data and model path, checked before anything heavy."""
    from finegrain.kernel.data import hold_out, read_feedback
    from finegrain.kernel.run import check_run_folder, check_trackers, local_model

    check_run_folder(out, resume)
    check_trackers(cfg.run.log_with)
    examples = read_feedback(cfg.data.feedback, "data.feedback")
    train_ex, eval_ex = hold_out(examples, cfg.data.eval_examples, cfg.run.seed, "data.eval_examples", str(cfg.data.feedback))
    train, held = sft_targets(train_ex, cfg.data.targets), sft_targets(eval_ex, cfg.data.targets)
    if not train:
        raise ConfigError(f"data.targets: {cfg.data.feedback} has no {'/'.join(cfg.data.targets)} target in its training examples")
    if cfg.data.eval_examples and not held:
        raise ConfigError(f"data.eval_examples: the held-out examples of {cfg.data.feedback} have no {'/'.join(cfg.data.targets)} target")
    return Inputs(train, held, local_model(cfg.model.policy, "model.policy"))


def train(cfg: SFTConfig, resume: bool = False) -> Path:
    """Run (or resume) SFT; returns the run folder (metrics.jsonl, final/, best/)."""
    from finegrain.kernel import run as R
    from finegrain.kernel.checkpoint import RunState
    from finegrain.kernel.optim import micro_batches

    out = Path(cfg.run.folder("sft"))
    # 1. Check config, data, model path and run folder before anything heavy.
    inputs = check_inputs(cfg, out, resume)
    # 2. Accelerator (devices, processes), seeds, run folder, trackers.
    acc = R.make_accelerator(out, cfg.run.seed, cfg, cfg.run.log_with, cfg.run.threads)
    # 3. Tokenizer, prompts rendered within their budget, model, optimiser, schedule.
    policy = R.prepare_policy(acc, inputs.policy_path, cfg.prompt, [t.example for t in inputs.train + inputs.eval], cfg.optim, cfg.run.steps, cfg.model.gradient_checkpointing)
    batch_of = _batcher(policy.tokenizer, policy.prompts, cfg.prompt.max_response_tokens)

    def evaluate_now() -> None:
        row = evaluate(acc, policy.model, inputs.eval, batch_of, cfg.optim.batch_size, cfg.model.precision)
        R.evaluate_and_keep_best(acc, out, state, row, "eval/loss", False, policy)

    # 4. Resume: model, optimiser, schedule, RNG states, step; the evaluation before training.
    state = R.restore(acc, out, resume, RunState())
    if cfg.run.eval_every and state.step == 0:
        evaluate_now()
    # 5. The loop: batch -> loss on response tokens -> optimiser step -> log -> evaluate -> checkpoint.
    progress = R.progress_bar(cfg.run.steps, state.step, "SFT", cfg.run.progress, acc)
    while state.step < cfg.run.steps:
        t0 = time.perf_counter()
        idx = R.batch_indices(state.step, len(inputs.train), cfg.optim.batch_size, acc.num_processes, acc.process_index, cfg.run.seed)
        batches = [batch_of([inputs.train[i] for i in part]).to(acc.device) for part in micro_batches(idx, cfg.optim.grad_accum)]
        try:
            stats, grad_norm = sft_step(acc, policy.model, policy.optimizer, batches, cfg)
        except TrainingError as err:
            raise R.save_stopped(acc, out, state, cfg.run.keep_checkpoints, err) from None
        policy.scheduler.step()
        state.step += 1
        row = {"loss": stats.loss_sum / max(stats.tokens, 1), "tokens": stats.tokens, "grad_norm": grad_norm,
               "lr": policy.scheduler.get_last_lr()[0], "time/step": time.perf_counter() - t0}
        R.finish_step(acc, out, state, row, cfg.run, evaluate_now, progress)
    progress.close()
    # 6. The final policy in HF format (and `best`, when no evaluation ran).
    R.save_final(acc, out, state, acc.unwrap_model(policy.model), policy.tokenizer)
    acc.end_training()
    return out


def sft_step(acc, model, optimizer, batches, cfg: SFTConfig) -> tuple[SFTStats, float]:
    """One optimiser step: the token-mean NLL of the whole batch's targets (over its micro-batches),
    over every process's targets (`process_mean`: N processes step as one holding them all would).
    The returned `tokens` is that per-process mean, so loss_sum / tokens averages to the global loss."""
    from finegrain.kernel.logprobs import response_logprobs
    from finegrain.kernel.optim import accumulated_step
    from finegrain.kernel.run import process_mean
    from finegrain.kernel.stats import add_stats

    tokens = max(process_mean(acc, sum(float(b.response_mask.sum()) for b in batches)), 1.0)

    def loss_of(batch):
        nll = -response_logprobs(model, batch).sum()
        return nll / tokens, SFTStats(float(nll.detach()), 0.0)

    parts, grad_norm = accumulated_step(acc, model, optimizer, batches, loss_of, cfg.optim.max_grad_norm, cfg.model.precision, "SFT")
    return add_stats(parts)._replace(tokens=tokens), grad_norm


def _batcher(tokenizer, prompts: dict[str, list[int]], max_response_tokens: int):
    from finegrain.kernel.sequences import prompt_response_batch

    def batch_of(targets: list[Target]):
        return prompt_response_batch(tokenizer, [prompts[t.example.id] for t in targets], [t.text for t in targets], max_response_tokens)

    return batch_of


def evaluate(acc, model, held_out: list[Target], batch_of, batch_size: int, precision: str) -> dict[str, float]:
    """Held-out loss (token-mean NLL of the targets) and perplexity (its exp), on every process alike."""
    import torch

    from finegrain.kernel.logprobs import response_logprobs
    from finegrain.kernel.models import autocast

    unwrapped = acc.unwrap_model(model)
    nll, tokens = 0.0, 0.0
    with torch.no_grad(), autocast(acc.device, precision):
        for i in range(0, len(held_out), batch_size):
            batch = batch_of(held_out[i : i + batch_size]).to(acc.device)
            nll -= float(response_logprobs(unwrapped, batch).sum())
            tokens += float(batch.response_mask.sum())
    loss = nll / max(tokens, 1)
    return {"eval/loss": loss, "eval/perplexity": math.exp(loss), "eval/tokens": tokens}
