"""Config sections every recipe shares: the run (folder, seed, steps, evaluation, checkpoints,
logging) and the optimiser. Nothing here imports torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from finegrain.config import ConfigBase, ConfigError, check_choice, check_range

TRACKERS = ("tensorboard", "wandb")
SCHEDULES = ("constant", "linear", "cosine")
PRECISIONS = ("auto", "bf16", "fp32")
GRADIENT_CHECKPOINTING_HELP = (  # every recipe's model section has the field
    "recompute each layer's activations in the backward pass instead of keeping them: less memory in the update, one more forward of its rows"
)


@dataclass
class RunConfig(ConfigBase):
    out: str | None = field(default=None, metadata={"help": "run folder: metrics, checkpoints, final/ and best/ policies (default: runs/<recipe>)"})
    seed: int = field(default=0, metadata={"help": "seed of every random number generator"})
    steps: int = field(default=100, metadata={"help": "training steps (optimiser steps; for PPO one rollout and its update each)"})
    eval_every: int = field(default=0, metadata={"help": "evaluate on the held-out examples every N steps (0: never)"})
    save_every: int = field(default=10, metadata={"help": "checkpoint every N steps (0: only at the end)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "checkpoints kept (oldest deleted first)"})
    log_with: list[str] = field(default_factory=list, metadata={"help": "extra trackers: tensorboard, wandb"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar with ETA"})
    threads: int = field(
        default=0,
        metadata={"help": "CPU threads for torch in this process (0: torch's default); 1 is much faster on a busy shared CPU"},
    )

    def __post_init__(self) -> None:
        check_range(self, "steps", 1)
        check_range(self, "eval_every", 0)
        check_range(self, "save_every", 0)
        check_range(self, "keep_checkpoints", 1)
        check_range(self, "threads", 0)
        for i, tracker in enumerate(self.log_with):
            if tracker not in TRACKERS:
                raise ConfigError(f"{self._path + '.' if self._path else ''}log_with[{i}]: {tracker!r} is not allowed; choose from {', '.join(TRACKERS)}")

    def folder(self, recipe: str) -> str:
        return self.out or f"runs/{recipe}"


@dataclass
class OptimConfig(ConfigBase):
    lr: float = field(default=1e-5, metadata={"help": "peak learning rate (AdamW)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    schedule: str = field(default="constant", metadata={"help": "learning-rate schedule after warm-up: constant, linear or cosine"})
    warmup_steps: int = field(default=0, metadata={"help": "steps of linear warm-up"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0: no clipping)"})
    batch_size: int = field(default=8, metadata={"help": "examples (or pairs) per optimiser step, per process"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches a batch is cut into (gradient accumulation)"})

    def __post_init__(self) -> None:
        check_range(self, "lr", 0.0, None, low_open=True)
        check_range(self, "weight_decay", 0.0)
        check_choice(self, "schedule", SCHEDULES)
        check_range(self, "warmup_steps", 0)
        check_range(self, "max_grad_norm", 0.0)
        check_range(self, "batch_size", 1)
        check_range(self, "grad_accum", 1)
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"{self._path + '.' if self._path else ''}grad_accum: {self.grad_accum} does not divide batch_size {self.batch_size}")


@dataclass
class PolicyConfig(ConfigBase):
    policy: str = field(default="smollm2-135m", metadata={"help": "embedded name, local HF folder or hub id of the model to train"})
    precision: str = field(default="auto", metadata={"help": "auto (bf16 where the hardware runs it natively), bf16 (autocast; float32 master weights) or fp32"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": GRADIENT_CHECKPOINTING_HELP})

    def __post_init__(self) -> None:
        check_choice(self, "precision", PRECISIONS)


@dataclass
class PromptConfig(ConfigBase):
    template: str = field(default="question: {question} context: {passages}", metadata={"help": "the policy's input: {prompt}/{question}, {passages}"})
    chat_template: bool = field(default=True, metadata={"help": "wrap the rendered prompt in the tokenizer's chat template, if it has one"})
    max_prompt_tokens: int = field(default=512, metadata={"help": "prompt token budget: passages lose sentences from the end first, the question is never cut"})
    max_response_tokens: int = field(default=128, metadata={"help": "longer target responses keep their first tokens"})

    def __post_init__(self) -> None:
        from finegrain.kernel.prompts import check_template

        check_template(self.template, f"{self._path + '.' if self._path else ''}template")
        check_range(self, "max_prompt_tokens", 1)
        check_range(self, "max_response_tokens", 1)


PAIR_ORIGINS = ("human", "span")


@dataclass
class PairDataConfig(ConfigBase):
    feedback: str | None = field(default=None, metadata={"help": "feedback file (QA-Feedback .json or finegrain .jsonl) to make pairs from"})
    pairs: list[str] = field(default_factory=lambda: ["human"], metadata={"help": "pairs to make: human (pairwise judgements, ties dropped), span (from span feedback)"})
    pairs_file: str | None = field(default=None, metadata={"help": "or: a pairs file written by `finegrain data pairs` (instead of feedback)"})
    eval_examples: int = field(default=0, metadata={"help": "examples held out for evaluation (all their pairs)"})

    def __post_init__(self) -> None:
        check_range(self, "eval_examples", 0)
        where = f"{self._path + '.' if self._path else ''}"
        if (self.feedback is None) == (self.pairs_file is None):
            raise ConfigError(f"{where}feedback: set exactly one of feedback and pairs_file")
        for i, origin in enumerate(self.pairs):
            if origin not in PAIR_ORIGINS:
                raise ConfigError(f"{where}pairs[{i}]: {origin!r} is not allowed; choose from {', '.join(PAIR_ORIGINS)}")
        if not self.pairs:
            raise ConfigError(f"{where}pairs: name at least one of {', '.join(PAIR_ORIGINS)}")


def check_pair_recipe(data: PairDataConfig, run: RunConfig) -> None:
    """The checks a preference recipe (DPO, SimPO) makes across its `data` and `run` sections."""
    if not data.feedback and not data.pairs_file:
        raise ConfigError("data.feedback: set a feedback file (or data.pairs_file)")
    if run.eval_every and not data.eval_examples:
        raise ConfigError("run.eval_every: evaluation needs held-out examples; set data.eval_examples > 0")
