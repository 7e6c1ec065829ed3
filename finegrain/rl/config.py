"""Settings of one PPO run (`finegrain train --config ... key.sub=value`), validated before anything heavy.

The defaults are the paper's (Wu et al. 2023, DESIGN.md): KL coef 0.3, gamma 1.0, lambda 0.95,
clip 0.2 for policy and value, 4 samples per prompt, top-k 20, temperature 0.7, 4 PPO epochs,
lr 1e-5. A fine-grained and a holistic run differ only in `rewards`.
Nothing here imports torch: the CLI validates a config in a blink.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from finegrain.config import ConfigBase, ConfigError, check_choice, check_range
from finegrain.kernel.config import GRADIENT_CHECKPOINTING_HELP, RunConfig

REWARD_KINDS = ("toxicity", "rm")
TOXICITY_MODES = ("dense", "holistic")
MAPPINGS = ("identity", "affine", "standardize", "binary")
SCHEDULES = ("constant", "linear", "cosine")
KL_ESTIMATORS = ("k1", "k3")
REWARD_NORMS = ("none", "batch", "running", "segment")
VALUE_MODELS = ("shared", "separate")
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class ModelConfig(ConfigBase):
    policy: str = field(default="smollm2-135m", metadata={"help": "embedded name, local HF folder or hub id of the policy"})
    ref: str | None = field(default=None, metadata={"help": "reference policy for the KL penalty (default: the policy's starting point)"})
    value_model: str = field(
        default="shared",
        metadata={"help": "shared: value head on the policy's backbone (one forward, measured fastest); separate: its own copy of the backbone"},
    )
    precision: str = field(default="auto", metadata={"help": "auto (bf16 where the hardware runs it natively, else fp32: finegrain/precision.py), bf16 (autocast; float32 master weights) or fp32"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": GRADIENT_CHECKPOINTING_HELP})

    def __post_init__(self) -> None:
        check_choice(self, "value_model", VALUE_MODELS)
        check_choice(self, "precision", PRECISIONS)


@dataclass
class DataConfig(ConfigBase):
    prompts: str | None = field(
        default=None,
        metadata={"help": "prompt file: RealToxicityPrompts .jsonl, QA-Feedback .json or finegrain .jsonl"},
    )
    prompt_list: list[str] = field(default_factory=list, metadata={"help": "plain prompts, used when `prompts` is not set"})
    eval_prompts: int = field(default=0, metadata={"help": "prompts held out of training for evaluation (0: no evaluation)"})
    max_prompts: int | None = field(default=None, metadata={"help": "use only the first N prompts of the file (after the held-out split)"})
    max_prompt_tokens: int = field(default=128, metadata={"help": "prompt token budget: passages lose sentences from the end first, the question is never cut"})
    template: str = field(default="{prompt}", metadata={"help": "how an example is shown to the policy: {prompt}/{question}, {passages}"})
    chat_template: bool = field(default=False, metadata={"help": "wrap the rendered prompt in the tokenizer's chat template, if it has one"})
    ptx: str | None = field(
        default=None,
        metadata={"help": "PPO-ptx: file of texts for the pretraining/SFT loss (prompt + reference, or its first response)"},
    )

    def __post_init__(self) -> None:
        check_range(self, "eval_prompts", 0)
        check_range(self, "max_prompt_tokens", 1)
        if self.max_prompts is not None:
            check_range(self, "max_prompts", 1)
        from finegrain.kernel.prompts import check_template

        check_template(self.template, f"{self._path + '.' if self._path else ''}template")


@dataclass
class SamplingConfig(ConfigBase):
    temperature: float = field(default=0.7, metadata={"help": "softmax temperature"})
    top_k: int = field(default=20, metadata={"help": "sample from the k most likely tokens (0: all)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass"})
    max_new_tokens: int = field(default=48, metadata={"help": "response length limit in tokens"})
    min_new_tokens: int = field(default=0, metadata={"help": "EOS is forbidden before this many tokens"})
    samples_per_prompt: int = field(default=4, metadata={"help": "responses sampled per prompt"})
    backend: str = field(default="hf", metadata={"help": "generation backend: hf (Hugging Face generate on the trained model) or vllm (a colocated vLLM engine on the GPU, pip install 'finegrain[vllm]'; docs/scaling.md)"})
    vllm_gpu_memory: float = field(default=0.3, metadata={"help": "backend vllm: share of the GPU's memory the engine may take (weights + KV cache)"})

    def __post_init__(self) -> None:
        check_choice(self, "backend", ("hf", "vllm"))
        check_range(self, "vllm_gpu_memory", 0.0, 1.0, low_open=True)
        check_range(self, "temperature", 0.0, None, low_open=True)
        check_range(self, "top_k", 0)
        check_range(self, "top_p", 0.0, 1.0, low_open=True)
        check_range(self, "max_new_tokens", 1)
        check_range(self, "min_new_tokens", 0, self.max_new_tokens)
        check_range(self, "samples_per_prompt", 1)


@dataclass
class PPOConfig(ConfigBase):
    prompts_per_step: int = field(default=8, metadata={"help": "prompts per rollout, per process"})
    epochs: int = field(default=4, metadata={"help": "PPO epochs over each rollout"})
    minibatch_size: int = field(default=8, metadata={"help": "responses per optimiser step"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches a minibatch is cut into (gradient accumulation)"})
    forward_batch_size: int = field(default=32, metadata={"help": "responses per no-grad forward pass in the rollout"})
    lr: float = field(default=1e-5, metadata={"help": "peak learning rate (AdamW)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    schedule: str = field(default="constant", metadata={"help": "learning-rate schedule after warm-up: constant, linear or cosine"})
    warmup_steps: int = field(default=0, metadata={"help": "PPO steps of linear warm-up"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0: no clipping)"})
    clip: float = field(default=0.2, metadata={"help": "policy ratio clip epsilon"})
    value_clip: float = field(default=0.2, metadata={"help": "value clip around the rollout's values"})
    vf_coef: float = field(default=0.5, metadata={"help": "weight of the value loss"})
    entropy_coef: float = field(default=0.0, metadata={"help": "weight of the entropy bonus"})
    gamma: float = field(default=1.0, metadata={"help": "discount"})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda"})
    kl_coef: float = field(default=0.3, metadata={"help": "beta of the per-token KL penalty (initial value when adaptive)"})
    kl_estimator: str = field(default="k1", metadata={"help": "per-token KL estimator: k1 (log ratio, the paper's) or k3"})
    adaptive_kl: bool = field(default=False, metadata={"help": "adapt beta towards kl_target (Ziegler et al. 2019)"})
    kl_target: float = field(default=6.0, metadata={"help": "adaptive KL: target KL per response (nats)"})
    kl_horizon: int = field(default=10000, metadata={"help": "adaptive KL: horizon in responses"})
    early_stop_kl: float | None = field(default=None, metadata={"help": "stop a rollout's epochs when the approximate KL to pi_old exceeds this"})
    whiten_advantages: bool = field(default=True, metadata={"help": "whiten advantages over each rollout"})
    reward_norm: str = field(
        default="batch",
        metadata={"help": "normalise the source rewards before the KL penalty: none; batch (each response's total -> "
                          "(R - mean) / std over the rollout, dense rewards keep their shape); running (the same with the "
                          "mean/std of every total so far); segment (every segment reward -> (s - mean) / std over the "
                          "rollout's segment rewards). Use one choice for every arm of a comparison (docs/ppo.md)"},
    )
    ptx_coef: float = field(default=0.0, metadata={"help": "PPO-ptx gamma: weight of the LM loss on data.ptx texts"})
    ptx_batch_size: int = field(default=4, metadata={"help": "PPO-ptx texts per optimiser step"})

    def __post_init__(self) -> None:
        for name in ("prompts_per_step", "epochs", "minibatch_size", "grad_accum", "forward_batch_size", "kl_horizon", "ptx_batch_size"):
            check_range(self, name, 1)
        check_range(self, "lr", 0.0, None, low_open=True)
        check_range(self, "weight_decay", 0.0)
        check_choice(self, "schedule", SCHEDULES)
        check_range(self, "warmup_steps", 0)
        check_range(self, "max_grad_norm", 0.0)
        check_range(self, "clip", 0.0, None, low_open=True)
        check_range(self, "value_clip", 0.0, None, low_open=True)
        check_range(self, "vf_coef", 0.0)
        check_range(self, "entropy_coef", 0.0)
        check_range(self, "gamma", 0.0, 1.0)
        check_range(self, "lam", 0.0, 1.0)
        check_range(self, "kl_coef", 0.0)
        check_choice(self, "kl_estimator", KL_ESTIMATORS)
        check_choice(self, "reward_norm", REWARD_NORMS)
        check_range(self, "kl_target", 0.0, None, low_open=True)
        if self.early_stop_kl is not None:
            check_range(self, "early_stop_kl", 0.0, None, low_open=True)
        check_range(self, "ptx_coef", 0.0)
        if self.minibatch_size % self.grad_accum:
            raise ConfigError(
                f"{self._path + '.' if self._path else ''}grad_accum: {self.grad_accum} does not divide minibatch_size {self.minibatch_size}"
            )


# Which fields belong to which source kind and which mapping (RewardConfig rejects the others).
KIND_FIELDS = {"mode": {"toxicity"}, "scorer": {"toxicity"}, "path": {"rm"}, "head": {"rm"}}
MAPPING_FIELDS = {
    "scale": {"affine", "standardize"},
    "bias": {"affine", "standardize"},
    "mean": {"standardize"},
    "std": {"standardize"},
    "reward_ok": {"binary"},
    "reward_error": {"binary"},
    "threshold": {"binary"},
}


@dataclass
class RewardConfig(ConfigBase):
    """One reward source. Each kind and each mapping has its own fields; setting a field that does not
    apply to the source's kind or mapping is an error (it would be silently ignored otherwise)."""

    kind: str = field(default="toxicity", metadata={"help": "toxicity (an off-the-shelf scorer) or rm (a trained reward model card)"})
    name: str | None = field(default=None, metadata={"help": "name in logs (default: the kind, or the RM's category)"})
    weight: float = field(default=1.0, metadata={"help": "weight of this source in the total reward"})
    mode: str | None = field(default=None, metadata={"help": "toxicity: dense (per-sentence drop in toxicity; default) or holistic (-toxicity of the whole, on its last token)"})
    scorer: str | None = field(default=None, metadata={"help": "toxicity: the scorer (default profanity-check; embedded)"})
    path: str | None = field(default=None, metadata={"help": "rm: the reward model's folder (its card)"})
    head: str | None = field(default=None, metadata={"help": "rm: the category to score with, for a multi-task RM (one of its card's heads)"})
    mapping: str = field(default="identity", metadata={"help": "score -> reward: identity, affine, standardize or binary"})
    scale: float | None = field(default=None, metadata={"help": "affine/standardize: multiplier (default 1)"})
    bias: float | None = field(default=None, metadata={"help": "affine/standardize: added after scaling (default 0)"})
    mean: float | None = field(default=None, metadata={"help": "standardize: score mean (default: the RM card's)"})
    std: float | None = field(default=None, metadata={"help": "standardize: score std (default: the RM card's)"})
    reward_ok: float | None = field(default=None, metadata={"help": "binary: reward of a segment without error (default 0.3)"})
    reward_error: float | None = field(default=None, metadata={"help": "binary: reward of a segment with an error (default -0.3)"})
    threshold: float | None = field(default=None, metadata={"help": "binary: P(error) above which a segment has an error (default: the RM card's, else 0.5)"})

    def __post_init__(self) -> None:
        check_choice(self, "kind", REWARD_KINDS)
        check_choice(self, "mapping", MAPPINGS)
        self._check_applies("kind", self.kind, KIND_FIELDS)
        self._check_applies("mapping", self.mapping, MAPPING_FIELDS)
        if self.kind == "toxicity":
            self.mode = self.mode or "dense"
            self.scorer = self.scorer or "profanity-check"
            check_choice(self, "mode", TOXICITY_MODES)
        if self.kind == "rm" and not self.path:
            raise ConfigError(f"{self._path + '.' if self._path else ''}path: a reward source of kind 'rm' needs the RM folder")
        if self.mapping in ("affine", "standardize"):
            self.scale = 1.0 if self.scale is None else self.scale
            self.bias = 0.0 if self.bias is None else self.bias
        if self.mapping == "binary":
            self.reward_ok = 0.3 if self.reward_ok is None else self.reward_ok
            self.reward_error = -0.3 if self.reward_error is None else self.reward_error
        if self.threshold is not None:
            check_range(self, "threshold", 0.0, 1.0)
        if self.std is not None:
            check_range(self, "std", 0.0, None, low_open=True)

    def _check_applies(self, what: str, value: str, owners: dict[str, set[str]]) -> None:
        """Every field owned by some kind (or mapping) must be unset unless it is this one's."""
        for attr, allowed in owners.items():
            if getattr(self, attr) is not None and value not in allowed:
                prefix = self._path + "." if self._path else ""
                raise ConfigError(
                    f"{prefix}{attr}: {getattr(self, attr)!r} applies to {what} {' or '.join(sorted(allowed))} only; "
                    f"this source's {what} is {value!r} (remove the field)"
                )

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.kind == "rm" and self.head:
            return self.head
        if self.kind == "rm" and self.path:
            return Path(self.path).name
        return self.kind


def check_prompts_and_rewards(data: DataConfig, rewards: list[RewardConfig], run: RunConfig) -> None:
    """What every RL recipe (PPO, GRPO, RLOO) asks of its prompts and reward sources: a prompt
    source, at least one reward source, unique source names, held-out prompts when evaluating."""
    if data.prompts is None and not data.prompt_list:
        raise ConfigError("data.prompts: set a prompt file (or data.prompt_list)")
    if not rewards:
        raise ConfigError("rewards: configure at least one reward source (a list of {kind, weight, ...})")
    labels = [r.label for r in rewards]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ConfigError(f"rewards: source names must be unique; {dupes[0]!r} appears twice (set `name:`)")
    if data.eval_prompts == 0 and run.eval_every:
        raise ConfigError("run.eval_every: evaluation needs held-out prompts; set data.eval_prompts > 0")


@dataclass
class TrainConfig(ConfigBase):
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "policy, reference, value model"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "prompts"})
    sampling: SamplingConfig = field(default_factory=SamplingConfig, metadata={"help": "how responses are sampled"})
    ppo: PPOConfig = field(default_factory=PPOConfig, metadata={"help": "PPO hyper-parameters"})
    rewards: list[RewardConfig] = field(default_factory=list, metadata={"help": "reward sources, each with kind, weight, mapping"})
    run: RunConfig = field(default_factory=RunConfig, metadata={"help": "output, seed, steps, evaluation, checkpoints, logging"})

    def __post_init__(self) -> None:
        check_prompts_and_rewards(self.data, self.rewards, self.run)
        if self.ppo.ptx_coef > 0 and not self.data.ptx:
            raise ConfigError("ppo.ptx_coef: PPO-ptx needs texts; set data.ptx to a file")
        if self.ppo.minibatch_size > self.ppo.prompts_per_step * self.sampling.samples_per_prompt:
            raise ConfigError(
                f"ppo.minibatch_size: {self.ppo.minibatch_size} is larger than a rollout "
                f"({self.ppo.prompts_per_step} prompts x {self.sampling.samples_per_prompt} samples)"
            )
