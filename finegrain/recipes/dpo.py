"""Direct Preference Optimisation (Rafailov et al. 2023): the policy learns preference pairs against a
frozen reference, with the sigmoid loss on summed log-probs, beta, and optional label smoothing (cDPO).

    finegrain train dpo --config configs/dpo_qa.yaml [dpo.beta=0.1 dpo.reference=model ...]

Pairs come from a feedback file's pairwise judgements (`human`, ties dropped) and/or its span
feedback (`span`: `finegrain data pairs`), or from a pairs file. The reference is the policy's
starting point (or `model.ref`); its log-probs are computed once before training
(`dpo.reference: precompute`, the default: no second model in memory during training) or by the
frozen model at every step (`dpo.reference: model`). Held-out evaluation: the DPO loss and the
preference accuracy (the share of held-out pairs whose chosen response gets the higher implicit
reward beta * (log pi - log ref)).
Shape legend: N pairs in a batch, P prompt tokens, T response tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from finegrain.config import ConfigBase, check_choice, check_range
from finegrain.errors import TrainingError
from finegrain.kernel.config import OptimConfig, PairDataConfig, PolicyConfig, PromptConfig, RunConfig, check_pair_recipe

if TYPE_CHECKING:
    from finegrain.data.pairs import PreferencePair
    from finegrain.kernel.stats import PreferenceStats

REFERENCES = ("precompute", "model")


@dataclass
class DPOModelConfig(PolicyConfig):
    ref: str | None = field(default=None, metadata={"help": "reference policy (default: the policy's starting point)"})


@dataclass
class DPOLossConfig(ConfigBase):
    beta: float = field(default=0.1, metadata={"help": "strength of the KL constraint (TRL's default 0.1)"})
    label_smoothing: float = field(default=0.0, metadata={"help": "probability that a pair's label is flipped (cDPO); 0: plain DPO"})
    reference: str = field(default="precompute", metadata={"help": "precompute: reference log-probs computed once; model: a frozen reference forward every step"})

    def __post_init__(self) -> None:
        check_range(self, "beta", 0.0, None, low_open=True)
        check_range(self, "label_smoothing", 0.0, 0.5, high_open=True)
        check_choice(self, "reference", REFERENCES)


@dataclass
class DPOConfig(ConfigBase):
    model: DPOModelConfig = field(default_factory=DPOModelConfig, metadata={"help": "policy and reference"})
    data: PairDataConfig = field(default_factory=lambda: PairDataConfig(feedback=""), metadata={"help": "preference pairs and the held-out split"})
    prompt: PromptConfig = field(default_factory=PromptConfig, metadata={"help": "how an example is shown to the policy"})
    dpo: DPOLossConfig = field(default_factory=DPOLossConfig, metadata={"help": "the DPO loss"})
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-7), metadata={"help": "AdamW, schedule, batch of pairs"})
    run: RunConfig = field(default_factory=RunConfig, metadata={"help": "output, seed, steps, evaluation, checkpoints, logging"})

    def __post_init__(self) -> None:
        check_pair_recipe(self.data, self.run)


@dataclass
class Inputs:
    train: list["PreferencePair"]
    eval: list["PreferencePair"]
    policy_path: str
    ref_path: str


def check_inputs(cfg: DPOConfig, out: Path, resume: bool) -> Inputs:
    from finegrain.kernel.data import pair_split
    from finegrain.kernel.run import check_run_folder, check_trackers, local_model

    check_run_folder(out, resume)
    check_trackers(cfg.run.log_with)
    train, held = pair_split(cfg.data, cfg.run.seed)
    policy = local_model(cfg.model.policy, "model.policy")
    return Inputs(train, held, policy, local_model(cfg.model.ref, "model.ref") if cfg.model.ref else policy)


def train(cfg: DPOConfig, resume: bool = False) -> Path:
    """Run (or resume) DPO; returns the run folder (metrics.jsonl, final/, best/)."""
    from finegrain.kernel import run as R
    from finegrain.kernel.checkpoint import RunState
    from finegrain.kernel.models import load_frozen
    from finegrain.kernel.optim import micro_batches
    from finegrain.kernel.sequences import pair_batcher
    from finegrain.kernel.stats import preference_row

    out = Path(cfg.run.folder("dpo"))
    # 1. Check config, pairs, model paths and run folder before anything heavy.
    inputs = check_inputs(cfg, out, resume)
    # 2. Accelerator (devices, processes), seeds, run folder, trackers.
    acc = R.make_accelerator(out, cfg.run.seed, cfg, cfg.run.log_with, cfg.run.threads)
    # 3. Tokenizer, prompts within their budget, policy, optimiser, schedule; the reference.
    policy = R.prepare_policy(acc, inputs.policy_path, cfg.prompt, [p.example for p in inputs.train + inputs.eval], cfg.optim, cfg.run.steps, cfg.model.gradient_checkpointing)
    batch_of = pair_batcher(policy.tokenizer, policy.prompts, cfg.prompt.max_response_tokens)
    reference = Reference(load_frozen(inputs.ref_path).to(acc.device), cfg, acc, batch_of, inputs)  # `precompute` drops the model

    def evaluate_now() -> None:
        R.evaluate_and_keep_best(acc, out, state, evaluate(acc, policy.model, inputs.eval, batch_of, reference, cfg), "eval/loss", False, policy)

    # 4. Resume: model, optimiser, schedule, RNG states, step; the evaluation before training.
    state = R.restore(acc, out, resume, RunState())
    if cfg.run.eval_every and state.step == 0:
        evaluate_now()
    # 5. The loop: pairs -> DPO loss -> optimiser step -> log -> evaluate -> checkpoint.
    progress = R.progress_bar(cfg.run.steps, state.step, "DPO", cfg.run.progress, acc)
    while state.step < cfg.run.steps:
        t0 = time.perf_counter()
        idx = R.batch_indices(state.step, len(inputs.train), cfg.optim.batch_size, acc.num_processes, acc.process_index, cfg.run.seed)
        try:
            stats, grad_norm = dpo_step(acc, policy, micro_batches(idx, cfg.optim.grad_accum), inputs.train, batch_of, reference, cfg)
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


def pairs_used(cfg: DPOConfig, n_train: int, n_processes: int, rank: int) -> list[int]:
    """The training pairs process `rank` uses over the whole run (every step's batch is a pure
    function of seed, step and process), in order of first use: what a precomputed reference needs."""
    from finegrain.kernel.run import batch_indices

    seen: dict[int, None] = {}
    for step in range(cfg.run.steps):
        seen.update(dict.fromkeys(batch_indices(step, n_train, cfg.optim.batch_size, n_processes, rank, cfg.run.seed)))
    return list(seen)


class Reference:
    """The reference's summed log-probs of a pair's two sides: looked up (computed once, before
    training, for the training pairs this process will use and the held-out pairs when the run
    evaluates) or computed by the frozen model on demand."""

    def __init__(self, ref, cfg: DPOConfig, acc, batch_of, inputs: Inputs):
        from finegrain.kernel.logprobs import pairs_logprobs, shares_prompts

        self.cfg, self.acc, self.model = cfg, acc, ref
        self.table: dict[int, tuple[float, float]] = {}
        if cfg.dpo.reference == "precompute":
            used = pairs_used(cfg, len(inputs.train), acc.num_processes, acc.process_index)
            pairs = [inputs.train[i] for i in used] + (inputs.eval if cfg.run.eval_every else [])
            size = cfg.optim.batch_size
            batches = (batch_of(pairs[i : i + size]) for i in range(0, len(pairs), size))
            chosen, rejected = pairs_logprobs(ref, batches, False, acc.device, cfg.model.precision, shares_prompts(acc))
            self.table = {id(p): (float(c), float(r)) for p, c, r in zip(pairs, chosen, rejected)}
            self.model = None

    def __call__(self, pairs: list["PreferencePair"], batch):
        """Shape: N pairs -> chosen (N,), rejected (N,) on the accelerator's device."""
        import torch

        from finegrain.kernel.logprobs import pair_logprobs, shares_prompts
        from finegrain.kernel.models import autocast

        if self.model is None:
            values = torch.tensor([self.table[id(p)] for p in pairs], dtype=torch.float32, device=self.acc.device)  # (N, 2)
            return values[:, 0], values[:, 1]
        with torch.no_grad(), autocast(self.acc.device, self.cfg.model.precision):
            c, r = pair_logprobs(self.model, batch, average=False, share_prompts=shares_prompts(self.acc))
        return c.float(), r.float()


def dpo_step(acc, policy, micro, pairs, batch_of, reference: Reference, cfg: DPOConfig) -> tuple["PreferenceStats", float]:
    """One optimiser step: the mean DPO loss over the batch's pairs (over its micro-batches)."""
    from finegrain.kernel.logprobs import pair_logprobs, shares_prompts
    from finegrain.kernel.optim import accumulated_step
    from finegrain.kernel.stats import add_stats, preference_stats
    from finegrain.preference import dpo_loss

    n = sum(len(m) for m in micro)

    def loss_of(indices):
        chunk = [pairs[i] for i in indices]
        batch = batch_of(chunk).to(acc.device)
        chosen, rejected = pair_logprobs(policy.model, batch, average=False, share_prompts=shares_prompts(acc))
        ref_chosen, ref_rejected = reference(chunk, batch)
        out = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, cfg.dpo.beta, cfg.dpo.label_smoothing)
        return out.losses.sum() / n, preference_stats(out)

    parts, grad_norm = accumulated_step(acc, policy.model, policy.optimizer, micro, loss_of, cfg.optim.max_grad_norm, cfg.model.precision, "DPO")
    return add_stats(parts), grad_norm


def evaluate(acc, model, held_out: list["PreferencePair"], batch_of, reference: Reference, cfg: DPOConfig) -> dict[str, float]:
    """Held-out DPO loss and preference accuracy (every process computes the same)."""
    import torch

    from finegrain.kernel.logprobs import pairs_logprobs, shares_prompts
    from finegrain.kernel.stats import preference_row, preference_stats
    from finegrain.preference import dpo_loss

    size = cfg.optim.batch_size
    chunks = [held_out[i : i + size] for i in range(0, len(held_out), size)]
    chosen, rejected = pairs_logprobs(acc.unwrap_model(model), (batch_of(c) for c in chunks), False, acc.device, cfg.model.precision,
                                      shares_prompts(acc))
    refs = [reference(c, batch_of(c).to(acc.device)) for c in chunks]
    ref_chosen, ref_rejected = torch.cat([r[0].cpu() for r in refs]), torch.cat([r[1].cpu() for r in refs])
    out = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, cfg.dpo.beta, cfg.dpo.label_smoothing)
    return preference_row(preference_stats(out), "eval/")
