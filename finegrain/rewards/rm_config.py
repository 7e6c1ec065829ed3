"""Settings of one reward-model training run (`finegrain rm train`), loaded from YAML + overrides.

Two kinds of RM:
- `span`: a token-classification model that reads the prompt and the response with a marker after
  every segment and says, at each marker, whether that segment has an error of the RM's category;
- `pairwise`: a sequence model with one scalar output, trained with the Bradley-Terry loss on
  pairs of responses to the same prompt (`preference`: the annotators' judgements;
  `completeness`: pairs ranked by how much of the corrected response each response covers).

Nothing here imports torch: the CLI loads this to validate a config before anything heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from finegrain.config import ConfigBase, ConfigError, check_choice, check_range

KINDS = ("span", "pairwise")
PAIRWISE_CATEGORIES = ("preference", "completeness")
SPAN_LEVELS = ("subsentence", "sentence")
COVERAGE_MEASURES = ("rouge1", "rouge2", "rougeL")
FINETUNE_METHODS = ("full", "lora")
EXTRA_PAIRS = ("fewer_errors", "corrected")

# The paper's levels: relevance errors are marked per sub-sentence, factuality errors per sentence.
DEFAULT_LEVEL = {"relevance": "subsentence", "factuality": "sentence"}
# Whether a category needs the source passages to be judged: factuality (is it supported?) does,
# relevance (is it on the question?) does not; completeness and preference compare against them.
DEFAULT_PASSAGES = {"relevance": False, "factuality": True, "preference": True, "completeness": True}


@dataclass
class RMTrainConfig(ConfigBase):
    kind: str = field(default="span", metadata={"help": "span (per-segment error classifier) or pairwise (Bradley-Terry)"})
    category: str = field(
        default="relevance",
        metadata={"help": "span: an RM category of the taxonomy (relevance, factuality); pairwise: preference or completeness"},
    )
    categories: list[str] | None = field(
        default=None,
        metadata={"help": "span: the annotation categories counted as errors (default: all that feed `category`)"},
    )
    level: str | None = field(
        default=None, metadata={"help": "span: segment level, subsentence or sentence (default: relevance subsentence, factuality sentence)"}
    )
    passages: bool | None = field(
        default=None, metadata={"help": "put the source passages in the input (default: yes except for relevance)"}
    )
    backbone: str = field(
        default="minilm-l6",
        metadata={"help": "embedded name (minilm-l6, smollm2-135m), local HF folder or hub id: an encoder or a causal LM; "
                          "or lexical: a logistic model on word-count features, no transformer (finegrain/rewards/lexical.py)"},
    )
    finetune: str = field(
        default="full", metadata={"help": "full (every weight) or lora (low-rank adapters via peft, merged into the weights when saved)"}
    )
    lora_r: int = field(default=8, metadata={"help": "lora: rank of the adapters"})
    lora_alpha: float = field(default=16.0, metadata={"help": "lora: scaling numerator (the update is scaled by alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "lora: dropout on the adapters' input"})
    lora_targets: list[str] | None = field(
        default=None, metadata={"help": "lora: names of the modules to adapt (default: peft's choice for the architecture)"}
    )
    extra_pairs: list[str] | None = field(
        default=None,
        metadata={"help": "pairwise: auxiliary training pairs: fewer_errors (of two annotated responses, the one with fewer "
                          "error spans ranks higher), corrected (the corrected response over the annotated original)"},
    )
    max_length: int = field(
        default=512, metadata={"help": "input length in tokens (capped by the backbone's); passages are cut first"}
    )
    marker: str | None = field(
        default=None, metadata={"help": "span: token placed after every segment (default: the tokenizer's separator token)"}
    )
    epochs: float = field(default=10.0, metadata={"help": "passes over the training data"})
    batch_size: int = field(default=8, metadata={"help": "span: inputs per step; pairwise: prompts per step (all their responses)"})
    lr: float = field(default=5e-5, metadata={"help": "peak learning rate (AdamW, linear decay)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "share of the steps spent warming the learning rate up"})
    error_weight: float = field(
        default=1.0, metadata={"help": "span: loss weight of the error class relative to no-error (>1 favours recall)"}
    )
    threshold: float = field(default=0.5, metadata={"help": "span: P(error) at or above which a segment counts as an error"})
    tune_threshold: bool = field(
        default=False,
        metadata={"help": "span: replace `threshold` by the one that maximises error F1 on the validation split "
                          "(on the training data when validation=0); never chosen on evaluation data"},
    )
    validation: float = field(
        default=0.0,
        metadata={"help": "share of the training prompts held out as a validation split: early stopping on its loss "
                          "(and the tuned threshold); 0: none"},
    )
    patience: int = field(default=2, metadata={"help": "with a validation split: epochs without a lower validation loss before stopping"})
    coverage: str = field(
        default="rouge2", metadata={"help": "completeness: how a response's coverage of the corrected response is measured (recall)"}
    )
    margin: float = field(
        default=0.05, metadata={"help": "completeness: coverage difference below which two responses are not paired"}
    )
    l2: float = field(
        default=1.0, metadata={"help": "backbone lexical: L2 penalty on the standardised features' weights (scikit-learn's 1 / C)"}
    )
    bf16: bool | None = field(default=None, metadata={"help": "bf16 autocast: true, false, or unset for where the hardware runs bf16 natively (finegrain/precision.py)"})
    seed: int = field(default=0, metadata={"help": "random seed (head init, data order)"})
    threads: int | None = field(
        default=None,
        metadata={"help": "torch CPU threads (default: torch's, one per core); 1 is several times faster on a loaded machine"},
    )
    task_error_weight: dict[str, float] | None = field(
        default=None,
        metadata={"help": "span, multi-task: error_weight per head, e.g. {factuality: 3} (the factuality config's); "
                          "a head not named takes error_weight"},
    )
    score_batch_size: int = field(default=16, metadata={"help": "inputs per forward pass when scoring"})
    tasks: list[str] | None = field(
        default=None,
        metadata={"help": "span: train one multi-task RM with a head per RM category on one shared backbone, e.g. "
                          "[relevance, factuality]; `category` must be one of them and keeps the config's level, passages "
                          "and categories, the others take their defaults; the training settings are shared"},
    )
    ensemble: int = field(
        default=1,
        metadata={"help": "train this many members with seeds seed, seed+1, ... and average their P(error) (span) "
                          "or scores (pairwise) when scoring; 1: a single model"},
    )

    def __post_init__(self) -> None:
        check_choice(self, "kind", KINDS)
        if self.kind == "pairwise":
            check_choice(self, "category", PAIRWISE_CATEGORIES)
        elif self.category in PAIRWISE_CATEGORIES:
            raise ConfigError(f"{self._name('category')}: {self.category!r} is a pairwise RM; use kind=pairwise")
        if self.level is not None:
            check_choice(self, "level", SPAN_LEVELS)
        check_choice(self, "coverage", COVERAGE_MEASURES)
        check_choice(self, "finetune", FINETUNE_METHODS)
        check_range(self, "lora_r", 1, None)
        check_range(self, "lora_alpha", 0.0, None, low_open=True)
        check_range(self, "lora_dropout", 0.0, 1.0, high_open=True)
        for extra in self.extra_pairs or ():
            if extra not in EXTRA_PAIRS:
                raise ConfigError(f"{self._name('extra_pairs')}: {extra!r} is not one of {', '.join(EXTRA_PAIRS)}")
        if self.extra_pairs and self.kind != "pairwise":
            raise ConfigError(f"{self._name('extra_pairs')}: auxiliary pairs are for kind=pairwise")
        check_range(self, "max_length", 16, None)
        check_range(self, "epochs", 0.0, None, low_open=True)
        check_range(self, "batch_size", 1, None)
        check_range(self, "score_batch_size", 1, None)
        check_range(self, "lr", 0.0, None, low_open=True)
        check_range(self, "weight_decay", 0.0, None)
        check_range(self, "warmup_ratio", 0.0, 1.0)
        check_range(self, "error_weight", 0.0, None, low_open=True)
        check_range(self, "threshold", 0.0, 1.0)
        check_range(self, "margin", 0.0, 1.0)
        check_range(self, "validation", 0.0, 0.5)
        check_range(self, "patience", 1, None)
        if self.threads is not None:
            check_range(self, "threads", 1, None)
        check_range(self, "ensemble", 1, None)
        check_range(self, "l2", 0.0, None, low_open=True)
        if self.backbone == "lexical":
            self._check_lexical()
        if self.tasks is not None:
            self._check_tasks()
        if self.task_error_weight:
            self._check_task_weights()

    def _check_tasks(self) -> None:
        """A multi-task RM: span heads only, at least two distinct categories, `category` among them.
        Whether each is a category of the taxonomy is checked against the taxonomy in use, when training."""
        tasks, name = list(self.tasks or ()), self._name("tasks")
        if self.kind != "span":
            raise ConfigError(f"{name}: {tasks!r}: multi-task heads are for kind=span")
        for task in tasks:
            if task in PAIRWISE_CATEGORIES:
                raise ConfigError(f"{name}: {task!r} is a pairwise RM category; a multi-task RM has span heads (e.g. [relevance, factuality])")
        if len(set(tasks)) != len(tasks) or len(tasks) < 2:
            raise ConfigError(f"{name}: {tasks!r}: name at least two different categories (or leave it unset)")
        if self.category not in tasks:
            raise ConfigError(f"{name}: {tasks!r} does not include category {self.category!r}, "
                              "the head the config's level, passages and categories describe")

    def _check_lexical(self) -> None:
        """A lexical RM is one convex fit on word-count features: no adapters, heads or seeds to vary."""
        for attr, bad, why in (("finetune", self.finetune != "full", "LoRA adapts a transformer's weights"),
                               ("tasks", self.tasks is not None, "a lexical RM has one category"),
                               ("ensemble", self.ensemble != 1, "its fit does not depend on the seed: every member would be the same")):
            if bad:
                raise ConfigError(f"{self._name(attr)}: {getattr(self, attr)!r} does not apply to backbone lexical ({why})")

    def _check_task_weights(self) -> None:
        weights, name = dict(self.task_error_weight or {}), self._name("task_error_weight")
        for task, w in weights.items():
            if task not in self.head_names:
                raise ConfigError(f"{name}: {task!r} is not a head of this RM; its heads: {', '.join(self.head_names)} (set `tasks`)")
            if not w > 0:
                raise ConfigError(f"{name}.{task}: {w!r}: an error weight must be > 0")

    def head_error_weights(self) -> list[float]:
        """The error class's loss weight of every head, in `head_names` order."""
        return [float((self.task_error_weight or {}).get(h, self.error_weight)) for h in self.head_names]

    def _name(self, attr: str) -> str:
        return f"{self._path}.{attr}" if self._path else attr

    @property
    def span_level(self) -> str:
        """The segment level a span RM works at."""
        return self.level or DEFAULT_LEVEL.get(self.category, "sentence")

    @property
    def with_passages(self) -> bool:
        return self.passages if self.passages is not None else DEFAULT_PASSAGES.get(self.category, True)

    @property
    def head_names(self) -> list[str]:
        """The RM categories this config trains a head for: `tasks`, else `category` alone."""
        return list(self.tasks) if self.tasks else [self.category]
