"""GRPO and RLOO: critic-free policy optimisation on holistic or fine-grained, multi-source rewards.

    finegrain train grpo --config configs/detox_finegrained.yaml [critic_free.dense=false ...]
    finegrain train rloo --config configs/detox_finegrained.yaml

G responses per prompt (`sampling.samples_per_prompt`) are scored by the same reward sources as
PPO (the `rewards` list, each source at its own segment level); their advantages come from the
group, not from a value model (finegrain/rl/critic_free.py has the maths):
  grpo  holistic: (R_i - mean_G R) / std_G R;  dense (DeepSeekMath process supervision): every
        segment reward normalised over the group's segments, token t gets the sum over the
        segments ending at or after it
  rloo  holistic: R_i - mean of the other G - 1;  dense: reward-to-go from t's segment minus the
        other samples' mean reward-to-go at the same segment index
then the clipped objective, with the KL to the reference as a k3 loss term or in the reward.
The config's sections are PPO's (model, data, sampling, rewards, run) plus `critic_free` and `optim`.
Shape legend: N prompts, G samples per prompt, B = N * G responses, T response tokens, K sources.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, NamedTuple

from finegrain.config import ConfigBase, ConfigError, check_choice, check_range
from finegrain.errors import TrainingError
from finegrain.kernel.config import OptimConfig, PolicyConfig, RunConfig
from finegrain.rl.config import KL_ESTIMATORS, DataConfig, RewardConfig, SamplingConfig, check_prompts_and_rewards

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

    from finegrain.data.records import Example
    from finegrain.kernel.generation import Generator
    from finegrain.kernel.run import Trainable
    from finegrain.kernel.sequences import Sequences
    from finegrain.rewards.card import RMCard
    from finegrain.rewards.compose import WeightedSource
    from finegrain.rl.prompts import PromptSplit
    from finegrain.rl.rollout import Scores

ALGORITHMS = ("grpo", "rloo")
KL_IN = ("loss", "reward")
OLD_LOGPROBS = ("sampling", "forward")


@dataclass
class CriticFreeSettings(ConfigBase):
    algorithm: str | None = field(
        default=None, metadata={"help": "grpo (group mean and std) or rloo (leave-one-out mean of the other samples); default: the recipe's name"}
    )
    dense: bool = field(
        default=True,
        metadata={"help": "true: each token gets the rewards of the segments ending at or after it; false: one reward per response (the sum of its segments)"},
    )
    source_norm: str = field(
        default="each",
        metadata={"help": "each: normalise every reward source within the group, then the weighted sum (GDPO); sum: the weighted sum first"},
    )
    scale_by_std: bool = field(default=True, metadata={"help": "grpo: divide by the group's std (false: Dr. GRPO, centring only)"})
    dense_baseline: str = field(default="segments", metadata={"help": "grpo, dense: segments (DeepSeekMath: mean and std of the group's segment "
                                                               "rewards, one -mean per segment) | responses (of the group's response totals, "
                                                               "one -mean per response: the first token gets the holistic advantage)"})
    loss_aggregation: str = field(
        default="sequence_mean",
        metadata={"help": "sequence_mean (GRPO), token_mean (DAPO) or constant (Dr. GRPO: / (responses x sampling.max_new_tokens))"},
    )
    kl_in: str = field(
        default="loss",
        metadata={"help": "loss: kl_coef x the k3 KL to the reference in the loss (GRPO); reward: -KL as one more reward source of weight kl_coef"},
    )
    kl_coef: float = field(default=0.04, metadata={"help": "beta of the KL to the reference (0: none; the reference is then not loaded)"})
    kl_estimator: str = field(default="k1", metadata={"help": "kl_in=reward: per-token KL estimator, k1 or k3"})
    clip: float = field(default=0.2, metadata={"help": "policy ratio clip epsilon"})
    epochs: int = field(default=1, metadata={"help": "passes over each step's responses (GRPO's mu)"})
    prompts_per_step: int = field(default=8, metadata={"help": "prompts per step, per process (each sampled samples_per_prompt times)"})
    forward_batch_size: int = field(default=16, metadata={"help": "responses per no-grad forward pass (old and reference log-probs)"})
    old_logprobs: str = field(
        default="sampling",
        metadata={"help": "pi_old: sampling (the log-probs of the logits each token was sampled from, recorded by the hf "
                          "backend: no forward pass of their own) | forward (a no-grad forward over the responses; what "
                          "sampling falls back to when the backend cannot record them)"},
    )

    def __post_init__(self) -> None:
        from finegrain.rl.critic_free import DENSE_BASELINES, LOSS_AGGREGATIONS, SOURCE_NORMS

        if self.algorithm is not None:
            check_choice(self, "algorithm", ALGORITHMS)
        check_choice(self, "source_norm", SOURCE_NORMS)
        check_choice(self, "loss_aggregation", LOSS_AGGREGATIONS)
        check_choice(self, "kl_in", KL_IN)
        check_range(self, "kl_coef", 0.0)
        check_choice(self, "kl_estimator", KL_ESTIMATORS)
        check_choice(self, "dense_baseline", DENSE_BASELINES)
        check_choice(self, "old_logprobs", OLD_LOGPROBS)
        check_range(self, "clip", 0.0, None, low_open=True)
        for name in ("epochs", "prompts_per_step", "forward_batch_size"):
            check_range(self, name, 1)


@dataclass
class ModelConfig(PolicyConfig):
    ref: str | None = field(default=None, metadata={"help": "reference policy for the KL (default: the policy's starting point)"})


@dataclass
class CriticFreeConfig(ConfigBase):
    default_algorithm: ClassVar[str] = "grpo"  # what critic_free.algorithm is when the config leaves it out
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "policy, reference, precision"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "prompts"})
    sampling: SamplingConfig = field(default_factory=SamplingConfig, metadata={"help": "how responses are sampled; samples_per_prompt is the group size G"})
    critic_free: CriticFreeSettings = field(default_factory=CriticFreeSettings, metadata={"help": "estimator, advantages, loss, KL"})
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5), metadata={"help": "AdamW, schedule; batch_size: responses per optimiser step"})
    rewards: list[RewardConfig] = field(default_factory=list, metadata={"help": "reward sources, each with kind, weight, mapping"})
    run: RunConfig = field(default_factory=RunConfig, metadata={"help": "output, seed, steps, evaluation, checkpoints, logging"})

    def __post_init__(self) -> None:
        if self.critic_free.algorithm is None:
            self.critic_free.algorithm = self.default_algorithm
        check_prompts_and_rewards(self.data, self.rewards, self.run)
        if self.data.ptx:
            raise ConfigError(f"data.ptx: the LM loss on texts is PPO's (ppo.ptx_coef); {self.critic_free.algorithm} does not use it")
        if self.sampling.samples_per_prompt < 2:
            raise ConfigError(f"sampling.samples_per_prompt: {self.critic_free.algorithm} compares the samples of a prompt; it needs at least 2, got {self.sampling.samples_per_prompt}")
        rollout = self.critic_free.prompts_per_step * self.sampling.samples_per_prompt
        if self.optim.batch_size > rollout:
            raise ConfigError(
                f"optim.batch_size: {self.optim.batch_size} responses per optimiser step is more than a step samples "
                f"({self.critic_free.prompts_per_step} prompts x {self.sampling.samples_per_prompt} samples)"
            )


@dataclass
class RLOOConfig(CriticFreeConfig):
    default_algorithm: ClassVar[str] = "rloo"


GRPOConfig = CriticFreeConfig


# --- the step's data -------------------------------------------------------------------------------


@dataclass
class GroupRollout:
    """One step's experience: B = N * G responses, the G responses to a prompt in consecutive rows."""

    sequences: "Sequences"  # prompts (B, P) and responses (B, T) with their masks
    logprobs: "torch.Tensor"  # (B, T) float32 log pi_old(y_t), 0 on padding
    ref_logprobs: "torch.Tensor"  # (B, T) float32 log pi_ref(y_t) (= logprobs when kl_coef is 0)
    kl: "torch.Tensor | None"  # (B, T) float32 per-token KL(pi_old || pi_ref) estimate, 0 on padding; None while rows are pending
    advantages: "torch.Tensor"  # (B, T) float32 group-relative advantages, 0 on padding
    source_rewards: "torch.Tensor"  # (K', B) each source's reward of each response (K' = K, plus "kl" with kl_in=reward)
    pending: "torch.Tensor | None" = None  # (B,) bool: rows whose pi_old the update's first forward gives (see `old_logprobs_pending`)

    def __len__(self) -> int:
        return self.logprobs.shape[0]


class LossStats(NamedTuple):
    """A micro-batch's share of an optimiser step's losses (summed by name over micro-batches)."""

    loss: float  # what is minimised: policy + the KL term (when kl_in is loss)
    policy: float
    kl: float
    clip_frac: float
    ratio: float


@dataclass
class Inputs:
    prompts: "PromptSplit"
    cards: list["RMCard | None"]  # each reward source's RM card (None for a non-RM source), read once
    policy_path: str
    ref_path: str


@dataclass
class Run:
    cfg: CriticFreeConfig
    out: Path
    accelerator: "Accelerator"
    policy: "Trainable"  # the causal LM (wrapped by accelerate), tokenizer, rendered prompts, optimiser, schedule
    ref: "torch.nn.Module | None"  # frozen reference (None when kl_coef is 0)
    generator: "Generator"
    sources: list["WeightedSource"]
    inputs: Inputs


# --- the recipe ------------------------------------------------------------------------------------


def train(cfg: CriticFreeConfig, resume: bool = False) -> Path:
    """Run (or resume) GRPO or RLOO; returns the run folder (metrics.jsonl, final/, best/)."""
    from finegrain.kernel import run as R
    from finegrain.kernel.checkpoint import RunState

    name = cfg.critic_free.algorithm
    out = Path(cfg.run.folder(name))
    # 1. Check config, prompts, reward sources, model paths and the run folder before anything heavy.
    inputs = check_inputs(cfg, out, resume)
    # 2. Accelerator (devices, processes), seeds, run folder, trackers.
    acc = R.make_accelerator(out, cfg.run.seed, cfg, cfg.run.log_with, cfg.run.threads)
    # 3. Policy (prompts rendered within their budget, optimiser, schedule), reference, reward sources, generator.
    run = build_run(cfg, out, acc, inputs)

    def evaluate_now() -> None:
        R.evaluate_and_keep_best(acc, out, state, evaluate(run), "eval/reward/total", True, run.policy)

    # 4. Resume: model, optimiser, schedule, RNG states, step.
    state = R.restore(acc, out, resume, RunState())
    # 5. The loop: G samples per prompt -> rewards -> group advantages -> clipped update -> log -> evaluate -> checkpoint.
    progress = R.progress_bar(cfg.run.steps, state.step, name.upper(), cfg.run.progress, acc)
    while state.step < cfg.run.steps:
        try:
            row = critic_free_step(run, state.step)
        except TrainingError as err:
            raise R.save_stopped(acc, out, state, cfg.run.keep_checkpoints, err) from None
        state.step += 1
        R.finish_step(acc, out, state, row, cfg.run, evaluate_now, progress)
    progress.close()
    # 6. The final policy in HF format (and `best`, when no evaluation ran).
    R.save_final(acc, out, state, acc.unwrap_model(run.policy.model), run.policy.tokenizer)
    acc.end_training()
    return out


def check_inputs(cfg: CriticFreeConfig, out: Path, resume: bool) -> Inputs:
    from finegrain.kernel import run as R
    from finegrain.rl.prompts import load_prompts
    from finegrain.rl.sources import check_sources

    R.check_run_folder(out, resume)
    R.check_trackers(cfg.run.log_with)
    prompts = load_prompts(cfg.data, cfg.run.seed)
    cards = check_sources(cfg.rewards)
    policy = R.local_model(cfg.model.policy, "model.policy")
    ref = R.local_model(cfg.model.ref, "model.ref") if cfg.model.ref else policy
    return Inputs(prompts, cards, policy, ref)


def build_run(cfg: CriticFreeConfig, out: Path, acc: "Accelerator", inputs: Inputs) -> Run:
    from finegrain.kernel import run as R
    from finegrain.kernel.config import PromptConfig
    from finegrain.kernel.generation import make_generator
    from finegrain.kernel.models import load_frozen, set_pad_token
    from finegrain.precision import use_bf16
    from finegrain.rl.sources import build_sources

    d = cfg.data
    prompt = PromptConfig(template=d.template, chat_template=d.chat_template, max_prompt_tokens=d.max_prompt_tokens)
    policy = R.prepare_policy(acc, inputs.policy_path, prompt, inputs.prompts.train + inputs.prompts.eval, cfg.optim, cfg.run.steps, cfg.model.gradient_checkpointing)
    ref = load_frozen(inputs.ref_path).to(acc.device) if cfg.critic_free.kl_coef > 0 else None
    if ref is not None:
        set_pad_token(ref, policy.tokenizer)
    sources = build_sources(cfg.rewards, inputs.cards, device=str(acc.device), bf16=use_bf16(cfg.model.precision, acc.device.type))
    s = cfg.sampling
    generator = make_generator(s.backend, policy.model, policy.tokenizer, acc, cfg.model.precision, gpu_memory=s.vllm_gpu_memory)
    return Run(cfg, out, acc, policy, ref, generator, sources, inputs)


# --- one step --------------------------------------------------------------------------------------


def critic_free_step(run: Run, step: int) -> dict[str, float]:
    """Sample, score, advantages, update: one step; returns this process's metrics."""
    import torch

    from finegrain.kernel import run as R

    cfg, acc = run.cfg, run.accelerator
    idx = R.batch_indices(step, len(run.inputs.prompts.train), cfg.critic_free.prompts_per_step, acc.num_processes, acc.process_index, cfg.run.seed)
    examples = [run.inputs.prompts.train[i] for i in idx]
    times: dict[str, float] = {}
    t_start = time.perf_counter()
    problem = None
    try:
        sequences, scored = sample_and_score(run, examples, cfg.sampling.samples_per_prompt, times)
        orders = [torch.randperm(len(sequences)).tolist() for _ in range(cfg.critic_free.epochs)]  # the update's minibatches
        pending = [] if sequences.sampled_logprobs is not None else old_logprobs_pending(cfg, orders)
        rollout = build_rollout(run, sequences, scored, times, pending)
        problem = None if torch.isfinite(rollout.advantages).all() else "the advantages hold NaN or inf"
    except TrainingError as err:  # a non-finite reward (compose names the source and response)
        problem = str(err)
    R.stop_together(acc, problem)
    t0 = time.perf_counter()
    stats, grad_norm = update(run, rollout, orders)
    run.policy.scheduler.step()
    run.generator.sync_weights()
    times["time/update"] = time.perf_counter() - t0
    times["time/step"] = time.perf_counter() - t_start
    row = rollout_metrics(rollout, scored, cfg)
    row.update({"loss": stats.loss, "loss/policy": stats.policy, "loss/kl": stats.kl, "clip_frac": stats.clip_frac, "ratio": stats.ratio,
                "grad_norm": grad_norm, "lr": run.policy.scheduler.get_last_lr()[0], **times})
    return row


def sample_and_score(run: Run, examples: list["Example"], g: int, times: dict[str, float]) -> tuple["Sequences", "Scores"]:
    """G responses to each prompt through the kernel's generator, scored by PPO's own `rollout.score`
    (every source's segment rewards on the policy's tokens, and where each source's segments end)."""
    from finegrain.kernel.generation import GenerationSettings
    from finegrain.kernel.sequences import pad_left
    from finegrain.rl.rollout import score

    t0 = time.perf_counter()
    ids, mask = pad_left([run.policy.prompts[e.id] for e in examples], run.policy.tokenizer.pad_token_id)
    s = run.cfg.sampling
    settings = GenerationSettings(g, s.max_new_tokens, s.min_new_tokens, s.temperature, s.top_k, s.top_p,
                                  logprobs=run.cfg.critic_free.old_logprobs == "sampling")
    sequences = run.generator.sample(ids, mask, settings)
    t1 = time.perf_counter()
    scored = score(run.sources, [e for e in examples for _ in range(g)], run.policy.tokenizer, sequences.to("cpu"))
    times.update({"time/generate": t1 - t0, "time/score": time.perf_counter() - t1})
    return sequences, scored


def response_logprobs_no_grad(model, sequences: "Sequences", batch_size: int, precision: str, share_prompts: bool = False,
                              temperature: float = 1.0) -> "torch.Tensor":
    """log p(y_t) of every response token under softmax(logits / temperature), in chunks of
    `batch_size` rows (`share_prompts`: a group's samples in one chunk run their prompt's forward
    once). Shape: -> (B, T)."""
    import torch

    from finegrain.kernel.logprobs import response_logprobs
    from finegrain.kernel.models import autocast

    rows = torch.arange(len(sequences), device=sequences.response_ids.device)
    with torch.no_grad(), autocast(sequences.response_ids.device, precision):
        return torch.cat([response_logprobs(model, sequences.select(c), share_prompts, temperature) for c in rows.split(batch_size)])


def old_logprobs_pending(cfg: CriticFreeConfig, orders: list[list[int]]) -> list[int]:
    """The rows whose old log-probs need no pass of their own: the update's first minibatch, where
    pi_old is the policy as it is (nothing has changed it yet), so its own forward gives them. Not when
    the KL enters the reward (the advantages need every row's pi_old first), nor when no minibatch is full."""
    c, mb = cfg.critic_free, cfg.optim.batch_size
    if (c.kl_in == "reward" and c.kl_coef > 0) or not orders or len(orders[0]) < mb:
        return []
    return orders[0][:mb]


def build_rollout(run: Run, sequences: "Sequences", scored: "Scores", times: dict[str, float], pending: list[int] = ()) -> GroupRollout:
    """Old log-probs (those recorded while sampling; else one no-grad forward, except for the `pending`
    rows: the update fills them) and reference log-probs (one no-grad forward), the KL (once no row is
    pending), and the group advantages."""
    import torch

    from finegrain.kernel.logprobs import shares_prompts
    from finegrain.rl import maths
    from finegrain.rl.critic_free import group_advantages, kl_as_source

    cfg, c = run.cfg, run.cfg.critic_free
    temp = cfg.sampling.temperature  # every log-prob of the recipe is under the distribution sampled from (rl.rollout.forward)
    t0 = time.perf_counter()
    mask = sequences.response_mask
    policy = run.accelerator.unwrap_model(run.policy.model)
    waiting = torch.zeros(len(sequences), dtype=torch.bool, device=mask.device)
    waiting[list(pending)] = True
    rows = (~waiting).nonzero().squeeze(1)
    logprobs = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    share = shares_prompts(run.accelerator, run.policy.model)  # no-grad passes: DDP may call twice
    if sequences.sampled_logprobs is not None:  # pi_old as it sampled them: no pass of its own
        logprobs = sequences.sampled_logprobs.to(mask.device).float() * mask
    elif len(rows):
        logprobs[rows] = response_logprobs_no_grad(policy, sequences.select(rows), c.forward_batch_size, cfg.model.precision, share, temp)
    ref_logprobs = response_logprobs_no_grad(run.ref, sequences, c.forward_batch_size, cfg.model.precision, share, temp) if run.ref is not None else logprobs
    times["time/forward"] = time.perf_counter() - t0
    kl = None if pending else maths.kl_penalty(logprobs, ref_logprobs, c.kl_estimator) * mask
    device = logprobs.device
    per_source, ends = scored.per_source.to(device), scored.source_ends.to(device)  # (K, B, T)
    weights = torch.tensor([ws.term.weight for ws in run.sources], dtype=per_source.dtype, device=device)  # (K,)
    if c.kl_in == "reward" and c.kl_coef > 0:
        kl_reward, kl_ends = kl_as_source(kl, mask, c.dense)
        per_source, ends = torch.cat([per_source, kl_reward[None]]), torch.cat([ends, kl_ends[None]])
        weights = torch.cat([weights, torch.tensor([c.kl_coef], dtype=weights.dtype, device=device)])
    adv = group_advantages(
        per_source, weights, mask, cfg.sampling.samples_per_prompt, c.algorithm, c.dense, ends if c.dense else None, c.source_norm, c.scale_by_std,
        dense_baseline=c.dense_baseline,
    )
    return GroupRollout(sequences, logprobs, ref_logprobs, kl, adv.advantages, adv.source_rewards, waiting if pending else None)


def update(run: Run, rollout: GroupRollout, orders: list[list[int]]) -> tuple[LossStats, float]:
    """`epochs` passes over the step's responses (`orders`: one permutation of the rows per pass) in
    minibatches of optim.batch_size (a last partial one is dropped), each an optimiser step over
    optim.grad_accum micro-batches whose losses add up to the minibatch's aggregate exactly
    (`micro_batch_share`). The pending rows' pi_old is the first minibatch's own log-probs; the KL
    follows once every row has one."""
    import torch

    from finegrain.kernel import run as R
    from finegrain.kernel.logprobs import response_logprobs, shares_prompts
    from finegrain.kernel.optim import accumulated_step, micro_batches
    from finegrain.kernel.stats import add_stats, divide_stats
    from finegrain.rl.critic_free import critic_free_loss, micro_batch_share

    cfg, c, acc = run.cfg, run.cfg.critic_free, run.accelerator
    B, mb = len(rollout), cfg.optim.batch_size
    kl_loss_coef = c.kl_coef if c.kl_in == "loss" else 0.0
    parts: list[LossStats] = []
    steps, grad_norm = 0, 0.0
    mask = rollout.sequences.response_mask
    for perm in orders:
        for i in range(B // mb):
            batch_mask = mask[perm[i * mb : (i + 1) * mb]]
            # token_mean: the share of every process's tokens (N processes step as one holding them all)
            global_tokens = R.process_mean(acc, float(batch_mask.sum())) / max(float(batch_mask.sum()), 1.0) if c.loss_aggregation == "token_mean" else 1.0

            def loss_of(part: list[int]):
                idx = torch.tensor(part, device=mask.device)
                logprobs = response_logprobs(run.policy.model, rollout.sequences.select(idx), shares_prompts(acc), cfg.sampling.temperature)
                if rollout.pending is not None and bool(rollout.pending[idx].any()):  # nothing has changed the policy yet
                    rollout.logprobs[idx] = torch.where(rollout.pending[idx, None], logprobs.detach().float() * mask[idx], rollout.logprobs[idx])
                    rollout.pending[idx] = False  # filled: later passes over these rows use it as pi_old
                out = critic_free_loss(
                    logprobs, rollout.logprobs[idx], rollout.ref_logprobs[idx], rollout.advantages[idx], mask[idx],
                    c.clip, c.loss_aggregation, kl_loss_coef, cfg.sampling.max_new_tokens,
                )
                share = micro_batch_share(mask[idx], batch_mask, c.loss_aggregation) / global_tokens
                return out.loss * share, LossStats(float(out.loss.detach()) * share, float(out.policy) * share, float(out.kl) * share, float(out.clip_frac) * share, float(out.ratio_mean) * share)

            micro = micro_batches(perm[i * mb : (i + 1) * mb], cfg.optim.grad_accum)
            step_parts, grad_norm = accumulated_step(acc, run.policy.model, run.policy.optimizer, micro, loss_of, cfg.optim.max_grad_norm, cfg.model.precision, c.algorithm.upper())
            parts.append(add_stats(step_parts))
            steps += 1
    if rollout.kl is None:
        from finegrain.rl import maths

        rollout.kl = maths.kl_penalty(rollout.logprobs, rollout.ref_logprobs, c.kl_estimator) * mask
        rollout.pending = None
    return divide_stats(add_stats(parts), max(steps, 1)), grad_norm


def rollout_metrics(rollout: GroupRollout, scored: "Scores", cfg: CriticFreeConfig) -> dict[str, float]:
    """Rewards per source (mean and within-group std, TRL's rewards/<name>/mean and /std), the
    total, the KL, the share of groups with nothing to learn (all totals equal), lengths."""
    from finegrain.rl import maths

    g = cfg.sampling.samples_per_prompt
    mask = rollout.sequences.response_mask
    total = maths.sequence_sums(scored.total.to(mask.device), mask)  # (B,)
    groups = total.view(-1, g)  # (N, G)
    row = {
        "reward/total": float(total.mean()),
        "reward/total_std": float(groups.std(1).mean()),
        "groups/flat": float((groups.amax(1) == groups.amin(1)).float().mean()),
        "kl": float(maths.sequence_sums(rollout.kl, mask).mean()),
        "advantage/abs_mean": float(maths.masked_mean(rollout.advantages.abs(), mask)),
        "response_length": float(mask.sum(-1).float().mean()),
    }
    for k, name in enumerate(scored.names):
        per = rollout.source_rewards[k]  # (B,)
        row[f"reward/{name}"] = float(per.mean())
        row[f"reward/{name}_std"] = float(per.view(-1, g).std(1).mean())
        row[f"segments/{name}"] = float(scored.source_ends[k].sum(-1).float().mean())
    return row


# --- evaluation --------------------------------------------------------------------------------------


def evaluate(run: Run) -> dict[str, float]:
    """One sample per held-out prompt, scored by the training sources. The sampling noise is seeded
    and the training RNG streams are left untouched: evaluations compare across steps, and a
    resumed run is unaffected by them."""
    import torch

    from finegrain.rl import maths

    cfg, acc = run.cfg, run.accelerator
    held_out = run.inputs.prompts.eval
    size = cfg.critic_free.prompts_per_step * cfg.sampling.samples_per_prompt
    totals, per_source, names = [], [], ()
    devices = [acc.device.index or 0] if acc.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.run.seed)
        for i in range(0, len(held_out), size):
            sequences, scored = sample_and_score(run, held_out[i : i + size], 1, {})
            mask = sequences.response_mask.cpu()
            totals.append(maths.sequence_sums(scored.total, mask))
            per_source.append(maths.sequence_sums(scored.per_source, mask))  # (K, b)
            names = scored.names
    total, sources = torch.cat(totals), torch.cat(per_source, dim=1)
    row = {"eval/reward/total": float(total.mean())}
    row.update({f"eval/reward/{n}": float(sources[k].mean()) for k, n in enumerate(names)})
    return row
