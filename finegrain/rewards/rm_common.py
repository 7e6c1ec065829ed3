"""What span and pairwise RMs share: devices, autocast, input length, the HF Trainer's settings, and
the trained RM as a scorer (`TrainedRM`: its model(s) on a device, batched and averaged over members)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedTokenizerBase, TrainingArguments

    from finegrain.rewards.rm_config import RMTrainConfig

T = TypeVar("T")


def pick_device(device: str | None = None) -> "torch.device":
    import torch

    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: "torch.device", bf16: bool | None) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU or GPU when asked (None: where the hardware runs bf16 natively)."""
    import torch

    from finegrain.precision import use_bf16

    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(bf16, device.type))


def backbone_kind(config: "PretrainedConfig") -> str:
    """"decoder" for a causal LM (its saved architecture is a *ForCausalLM), else "encoder"."""
    archs = getattr(config, "architectures", None) or []
    return "decoder" if any(a.endswith("ForCausalLM") for a in archs) or getattr(config, "is_decoder", False) else "encoder"


def prepare_rm_tokenizer(tok: "PreTrainedTokenizerBase") -> "PreTrainedTokenizerBase":
    """Give a tokenizer without a sentence-pair template (a causal LM's: it glues the two texts
    together) the template `prompt <eos> response <eos>`, so the response starts after a separator
    and the input ends on a fixed token. Encoders' own templates ([CLS] a [SEP] b [SEP]) are kept.
    The template lives in the tokenizer's backend, so it is saved and loaded with the RM."""
    if tok.num_special_tokens_to_add(pair=True) > 0:
        return tok
    from tokenizers.processors import TemplateProcessing

    sep = tok.eos_token or tok.sep_token
    if sep is None:
        from finegrain.config import ConfigError

        raise ConfigError(f"backbone: the tokenizer {type(tok).__name__} has neither an end-of-sequence nor a separator token")
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="$A", pair=f"$A:0 {sep}:0 $B:1 {sep}:1", special_tokens=[(sep, tok.convert_tokens_to_ids(sep))]
    )
    return tok


def load_backbone(cfg: "RMTrainConfig", head: str, **head_kwargs: Any) -> tuple[Any, "PreTrainedTokenizerBase", str]:
    """The backbone with a fresh head (`head`: "token", a per-token classifier read at segment ends;
    "sequence", one score read at the input's last token), its RM tokenizer, and whether it is an
    "encoder" or a "decoder" (causal LM). With `cfg.finetune == "lora"` the body is frozen and
    wrapped with peft's LoRA adapters; the head is trained in full."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification

    from finegrain.models import load_tokenizer, resolve_model

    path = resolve_model(cfg.backbone)
    kind = backbone_kind(AutoConfig.from_pretrained(path))
    tok = prepare_rm_tokenizer(load_tokenizer(cfg.backbone, padding_side="right"))
    auto = AutoModelForTokenClassification if head == "token" else AutoModelForSequenceClassification
    model = auto.from_pretrained(path, **head_kwargs)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    return model, tok, kind


def add_lora(model: Any, cfg: "RMTrainConfig", head: str) -> Any:
    """Wrap `model` with LoRA adapters (peft); its classification head stays fully trainable."""
    from finegrain.errors import MissingPackageError

    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError:
        raise MissingPackageError("finetune=lora needs peft: pip install 'peft>=0.17,<1'") from None
    config = LoraConfig(
        task_type=TaskType.TOKEN_CLS if head == "token" else TaskType.SEQ_CLS,
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=cfg.lora_targets,
    )
    return get_peft_model(model, config)


def finetune_section(cfg: "RMTrainConfig", model: Any) -> dict[str, Any]:
    """The card's record of how the backbone was fine-tuned: method and trainable parameters."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    out: dict[str, Any] = {"method": cfg.finetune, "trainable_parameters": trainable, "parameters": total}
    if cfg.finetune == "lora":
        out.update(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                   targets=sorted(model.peft_config["default"].target_modules or []),
                   saved="adapters merged into the weights (a plain HF model)")
    return out


def merged(model: Any) -> Any:
    """A peft-wrapped model with its adapters merged into the weights; any other model unchanged."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def backbone_max_length(requested: int, tok: "PreTrainedTokenizerBase", config: "PretrainedConfig") -> int:
    """The longest input the backbone can read: the request, capped by its position embeddings
    (RoBERTa-style models reserve two of them for padding) and the tokenizer's own limit."""
    limit = requested
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        offset = 2 if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "longformer", "camembert") else 0
        limit = min(limit, positions - offset)
    if tok.model_max_length and tok.model_max_length < 1_000_000:
        limit = min(limit, tok.model_max_length)
    return limit


def training_arguments(cfg: "RMTrainConfig", scratch: str, device: "torch.device", *, validate: bool = False) -> "TrainingArguments":
    """The HF Trainer's settings; `validate`: evaluate the validation split's loss every epoch, keep
    the best epoch's weights and stop after `cfg.patience` epochs without improvement."""
    from transformers import TrainingArguments

    from finegrain.precision import use_bf16

    stopping: dict[str, Any] = {}
    if validate:
        stopping = dict(eval_strategy="epoch", save_strategy="epoch", save_total_limit=1, save_only_model=True,
                        load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False,
                        per_device_eval_batch_size=cfg.score_batch_size, prediction_loss_only=True)
    return TrainingArguments(
        output_dir=scratch,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,  # < 1: a share of the steps
        lr_scheduler_type="linear",
        bf16=use_bf16(cfg.bf16, device.type),
        use_cpu=device.type == "cpu",
        seed=cfg.seed,
        report_to="none",
        logging_strategy="epoch",
        disable_tqdm=True,
        dataloader_pin_memory=False,
        remove_unused_columns=False,
        **(stopping or {"save_strategy": "no"}),  # the caller saves the final model with its card
    )


def early_stopping(cfg: "RMTrainConfig", validate: bool) -> list[Any]:
    """The Trainer callbacks: transformers' own early stopping when there is a validation split."""
    if not validate:
        return []
    from transformers import EarlyStoppingCallback

    return [EarlyStoppingCallback(early_stopping_patience=cfg.patience)]


def validation_examples(examples: Sequence[T], share: float, seed: int) -> tuple[list[T], list[T]]:
    """(fitting examples, validation examples): `share` of the prompts, drawn by `seed`, held out
    whole (a prompt's responses never straddle the two); at least one of each when share > 0."""
    if share <= 0 or len(examples) < 2:
        return list(examples), []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = min(len(examples) - 1, max(1, round(share * len(examples))))
    held = set(order[:n_val])
    return [e for i, e in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)]


@dataclass
class TrainResult:
    seconds: float  # wall clock
    cpu_seconds: float  # CPU time of this process, all threads: what the run cost on a shared machine
    steps: int
    final_loss: float | None
    losses: list[float]  # mean training loss per logged epoch
    epochs_run: float  # fewer than asked when early stopping ended the run
    val_losses: list[float]  # validation loss per epoch (empty without a validation split)
    best_epoch: int | None  # the epoch whose weights were kept (None: the last)


def epoch_progress(log: Callable[[str], None], epochs: int) -> Any:
    """A Trainer callback that reports each finished epoch through `log` (its training loss, and the
    validation loss when there is one, with the minutes so far): a backbone like SmolLM2 trains for an
    hour or more on a CPU, and the Trainer's own bar is off."""
    from transformers import TrainerCallback

    start = time.perf_counter()

    class EpochProgress(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            logs = logs or {}
            what = [f"{name} {logs[key]:.3f}" for key, name in (("loss", "loss"), ("eval_loss", "validation loss")) if key in logs]
            if what:
                log(f"epoch {round(state.epoch or 0)}/{round(epochs)}: {', '.join(what)} ({(time.perf_counter() - start) / 60:.1f} min)")

    return EpochProgress()


def run_trainer(trainer: Any) -> TrainResult:
    """Train, timing only the training loop; returns the per-epoch losses the Trainer logged."""
    start, cpu = time.perf_counter(), time.process_time()
    out = trainer.train()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    history = trainer.state.log_history
    losses = [float(h["loss"]) for h in history if "loss" in h]
    val = [float(h["eval_loss"]) for h in history if "eval_loss" in h]
    best = 1 + min(range(len(val)), key=val.__getitem__) if val else None
    return TrainResult(seconds, cpu, int(out.global_step), losses[-1] if losses else None, losses,
                       round(float(trainer.state.epoch or 0.0), 3), val, best)


def fit(model: Any, tok: "PreTrainedTokenizerBase", cfg: "RMTrainConfig", device: "torch.device", feats: list[Any],
        val_feats: list[Any], collator: Callable[..., Any], loss_func: Callable[..., Any] | None,
        log: Callable[[str], None]) -> TrainResult:
    """Train `model` on `feats` with the HF Trainer (with `val_feats`: early stopping on their loss) and
    log the run; a non-finite training loss is a TrainingError."""
    import math

    from transformers import PrinterCallback, Trainer

    from finegrain.errors import TrainingError

    with scratch_dir() as scratch:
        trainer = Trainer(
            model=model,
            args=training_arguments(cfg, scratch, device, validate=bool(val_feats)),
            train_dataset=feats,
            eval_dataset=val_feats or None,
            data_collator=collator,
            processing_class=tok,
            compute_loss_func=loss_func,
            callbacks=[*early_stopping(cfg, bool(val_feats)), epoch_progress(log, cfg.epochs)],
        )
        trainer.remove_callback(PrinterCallback)  # its raw dict per log line; epoch_progress says it in words
        result = run_trainer(trainer)
    if result.final_loss is not None and not math.isfinite(result.final_loss):
        raise TrainingError(f"training loss became {result.final_loss}; try a lower lr")
    log(f"trained in {result.seconds:.1f} s wall, {result.cpu_seconds:.1f} s CPU ({result.steps} steps), loss per epoch: "
        + ", ".join(f"{x:.3f}" for x in result.losses)
        + (f"; validation loss per epoch: {', '.join(f'{x:.3f}' for x in result.val_losses)} (kept epoch {result.best_epoch})"
           if result.val_losses else ""))
    return result


# --- ensembles: several members trained alike with consecutive seeds, their scores averaged ------------


def member_configs(cfg: "RMTrainConfig") -> list["RMTrainConfig"]:
    """The settings of each ensemble member: the same, with seeds seed, seed+1, ... (one for ensemble=1).
    The seed sets the head's initialisation and the data order; the validation split stays cfg.seed's."""
    return [dataclasses.replace(cfg, seed=cfg.seed + m, ensemble=1) for m in range(cfg.ensemble)]


def save_models(models: Sequence[Any], tok: "PreTrainedTokenizerBase", out_dir: str | Path) -> list[str]:
    """Save the tokenizer and the trained model in `out_dir`, or an ensemble's members each in its own
    subfolder; returns the card's `members` (the subfolders; [] for one model)."""
    out_dir = Path(out_dir)
    tok.save_pretrained(out_dir)
    if len(models) == 1:
        models[0].save_pretrained(out_dir)
        return []
    names = [f"member-{m}" for m in range(len(models))]
    for name, model in zip(names, models):
        model.save_pretrained(out_dir / name)
    return names


def load_models(path: str | Path, members: Sequence[str], auto: Any) -> list[Any]:
    """The saved model(s) of an RM folder: its ensemble members, else the folder's own model."""
    return [auto.from_pretrained(str(Path(path) / m)) for m in members] or [auto.from_pretrained(str(path))]


def pad_batch(inputs: Sequence[Any], pad_id: int, device: "torch.device | None" = None) -> dict[str, "torch.Tensor"]:
    """Encoded rows (`input_ids`, optional `token_type_ids`) right-padded into `input_ids`,
    `attention_mask` (and `token_type_ids` when the rows have them), on `device` when given."""
    import torch

    n, length = len(inputs), max(len(x.input_ids) for x in inputs)
    ids = torch.full((n, length), pad_id, dtype=torch.long)
    mask = torch.zeros((n, length), dtype=torch.long)
    types = torch.zeros((n, length), dtype=torch.long)
    for r, x in enumerate(inputs):
        ids[r, : len(x.input_ids)] = torch.tensor(x.input_ids)
        mask[r, : len(x.input_ids)] = 1
        if x.token_type_ids is not None:
            types[r, : len(x.token_type_ids)] = torch.tensor(x.token_type_ids)
    batch = {"input_ids": ids, "attention_mask": mask}
    if inputs[0].token_type_ids is not None:
        batch["token_type_ids"] = types
    return batch if device is None else {k: v.to(device) for k, v in batch.items()}


class TrainedRM:
    """What the span and the pairwise reward sources share: the card, the tokenizer, the model(s) (an
    ensemble's members) in eval mode on one device, and scoring in batches averaged over the members."""

    auto_class = ""  # the transformers Auto class that loads the folder's model(s)

    def __init__(self, model: "Any | Sequence[Any]", tokenizer: "PreTrainedTokenizerBase", card: Any, *,
                 device: str | None = None, batch_size: int = 16, bf16: bool | None = None):
        self.card = card
        self.name = card.name
        self.tokenizer = tokenizer
        self.device = pick_device(device)
        self.models = [m.to(self.device).eval() for m in (model if isinstance(model, Sequence) else [model])]  # ensemble members
        self.batch_size = batch_size
        self.bf16 = bf16

    @classmethod
    def from_pretrained(cls, path: str | Path, card: Any = None, **kwargs: Any) -> Any:
        import transformers

        from finegrain.rewards.card import RMCard

        card = card or RMCard.load(path)
        tok = prepare_rm_tokenizer(transformers.AutoTokenizer.from_pretrained(str(path)))
        return cls(load_models(path, card.members, getattr(transformers, cls.auto_class)), tok, card, **kwargs)

    def batched(self, inputs: Sequence[Any], read: Callable[["torch.Tensor"], "torch.Tensor"]) -> Iterator[tuple[list[int], "torch.Tensor"]]:
        """The encoded inputs in batches of similar length (little padding per batch), each as (the
        inputs' indices, `read(logits)` averaged over the members, on the CPU): an ensemble's mean prediction."""
        import torch

        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i].input_ids))
        pad = self.tokenizer.pad_token_id or 0
        for k in range(0, len(order), self.batch_size):
            idx = order[k : k + self.batch_size]
            batch = pad_batch([inputs[i] for i in idx], pad, self.device)
            with torch.no_grad(), autocast(self.device, self.bf16):
                out = torch.stack([read(m(**batch).logits) for m in self.models]).mean(0).cpu()  # (M, N, ...) -> (N, ...)
            yield idx, out


def training_record(results: Sequence[TrainResult], seeds: Sequence[int]) -> dict[str, Any]:
    """The card's record of the training run(s): one model's times and losses; for an ensemble the total
    time and steps, the mean loss per epoch over the members (over the epochs all of them ran), and each
    member's own record under `members`."""
    def one(r: TrainResult) -> dict[str, Any]:
        return {"seconds": round(r.seconds, 1), "cpu_seconds": round(r.cpu_seconds, 1), "steps": r.steps,
                "epoch_losses": r.losses, "epochs_run": r.epochs_run, "validation_losses": r.val_losses,
                "best_epoch": r.best_epoch}

    if len(results) == 1:
        return one(results[0])
    return {
        "seconds": round(sum(r.seconds for r in results), 1), "cpu_seconds": round(sum(r.cpu_seconds for r in results), 1),
        "steps": sum(r.steps for r in results),
        "epoch_losses": [sum(xs) / len(xs) for xs in zip(*(r.losses for r in results))],
        "epochs_run": max(r.epochs_run for r in results),
        "validation_losses": [sum(xs) / len(xs) for xs in zip(*(r.val_losses for r in results))],
        "best_epoch": None,  # each member's is under members
        "members": [{"seed": s, **one(r)} for s, r in zip(seeds, results)],
    }


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with `n` torch CPU threads (None: leave them), then restore the caller's setting."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def with_cfg_threads(train: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a `train(cfg, ...)` function so it runs with `cfg.threads` torch threads and restores
    the caller's setting after."""

    @functools.wraps(train)
    def wrapper(cfg: "RMTrainConfig", *args: Any, **kwargs: Any) -> Any:
        with torch_threads(cfg.threads):
            return train(cfg, *args, **kwargs)

    return wrapper


@contextlib.contextmanager
def scratch_dir() -> Iterator[str]:
    """The Trainer wants an output folder even when it saves nothing there."""
    with tempfile.TemporaryDirectory(prefix="finegrain-rm-") as tmp:
        yield tmp


def data_section(train_file: str | Path | None, eval_file: str | Path | None, **counts: Any) -> dict[str, Any]:
    from finegrain.rewards.rm_data import file_sha256

    section: dict[str, Any] = {}
    for key, path in (("train", train_file), ("eval", eval_file)):
        if path is not None:
            section[f"{key}_file"] = str(path)
            section[f"{key}_sha256"] = file_sha256(path)
    section.update(counts)
    return section
