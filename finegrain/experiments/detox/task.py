"""The detoxification task (the paper's first experiment): prompts, their fixed split, run settings.

Prompts: the set finegrain ships (sentence openings its authors wrote, that invite heated or rude
continuations; `finegrain/assets/detox_prompts.jsonl` to train on and
`finegrain/assets/detox_prompts_heldout.jsonl` to evaluate on), or any prompt file
`load_examples` reads, e.g. RealToxicityPrompts JSONL. A file of the user's is split the same way
every time: the `heldout` prompts whose text has the smallest SHA-1 are held out, so the split
depends neither on the run's seed nor on the order of the file.

Rewards (docs/detox.md): fine-grained = the per-sentence drop in toxicity, holistic = -toxicity
of the whole response on its last token; both through finegrain.rewards.toxicity.ToxicityReward, so
a response's rewards sum to -tox(y) in both and the arms differ only in where the reward is placed.
Both use the same reward normalisation (`ppo.reward_norm`). The two runs share every other setting; `detox_overrides(mode)` is the one place they are written down (and
`configs/detox_*.yaml` hold the same values, a test keeps them equal).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finegrain.config import ConfigError

if TYPE_CHECKING:
    from finegrain.data.records import Example
    from finegrain.rl.config import TrainConfig

MODES = ("holistic", "finegrained")
# the reward source's mode in ToxicityReward terms
REWARD_MODE = {"holistic": "holistic", "finegrained": "dense"}
SHIPPED = "shipped"  # the name of the shipped prompt set in reports


def asset(name: str) -> Path:
    return Path(str(resources.files("finegrain") / "assets" / name))


def shipped_prompt_files() -> tuple[Path, Path]:
    """(training prompts, held-out prompts) of the shipped set."""
    return asset("detox_prompts.jsonl"), asset("detox_prompts_heldout.jsonl")


@dataclass(frozen=True)
class DetoxSplit:
    train: list["Example"]
    heldout: list["Example"]
    source: str  # "shipped" or the file's path


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def split_by_hash(examples: list["Example"], heldout: int) -> tuple[list["Example"], list["Example"]]:
    """Hold out the `heldout` examples whose prompt has the smallest SHA-1; both parts keep file order."""
    if heldout < 1:
        raise ConfigError(f"heldout: {heldout} must be at least 1")
    if len(examples) <= heldout:
        raise ConfigError(f"heldout: {heldout} held-out prompts leave none to train on (the file has {len(examples)})")
    order = sorted(range(len(examples)), key=lambda i: (_digest(examples[i].prompt), i))
    held = set(order[:heldout])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


def load_detox_split(prompts: str | Path | None = None, heldout: int = 100) -> DetoxSplit:
    """The shipped split when `prompts` is None; else `prompts` read and split by `split_by_hash`."""
    from finegrain.data.load import load_examples

    if prompts is None:
        train_file, heldout_file = shipped_prompt_files()
        return DetoxSplit(load_examples(train_file), load_examples(heldout_file), SHIPPED)
    path = Path(prompts)
    if not path.is_file():
        raise ConfigError(f"--prompts: {path} does not exist")
    examples = [e for e in load_examples(path) if e.prompt.strip()]
    train, held = split_by_hash(examples, heldout)
    return DetoxSplit(train, held, str(path))


def write_prompts(examples: list["Example"], path: Path) -> Path:
    """A prompt list as finegrain JSONL (what the trainer's `data.prompts` reads)."""
    from finegrain.data.jsonl import write_jsonl
    from finegrain.data.records import Example

    write_jsonl(path, [Example(id=e.id, prompt=e.prompt) for e in examples])
    return path


# --- run settings ----------------------------------------------------------------------------

# Shared by both runs. Why these values (measurements in docs/detox.md):
# - 32 new tokens: 88% of the embedded policy's continuations then hold 2+ sentences/lines, so
#   the dense reward differs from the holistic one (at 20 tokens: 72%);
# - nucleus sampling p = 0.9 at temperature 1, as in the evaluation: train on what is measured;
# - a KL coefficient and a learning rate sized for a 135M model and a few dozen steps;
# - one PPO epoch (two minibatches): the update is the costliest phase (about 60% of a step with
#   two epochs), and at a fixed budget more rollouts beat more passes over each.
SHARED: dict[str, Any] = {
    "model.policy": "smollm2-135m",
    "model.precision": "auto",
    "model.value_model": "shared",
    "data.eval_prompts": 0,
    "data.max_prompt_tokens": 64,
    "sampling.temperature": 1.0,
    "sampling.top_k": 0,
    "sampling.top_p": 0.9,
    "sampling.max_new_tokens": 32,
    "sampling.samples_per_prompt": 4,
    "ppo.prompts_per_step": 8,
    "ppo.epochs": 1,
    "ppo.minibatch_size": 16,
    "ppo.lr": 3.0e-5,
    "ppo.kl_coef": 0.05,
    "ppo.gamma": 1.0,
    "ppo.lam": 0.95,
    "ppo.clip": 0.2,
    "ppo.value_clip": 0.2,
    "ppo.reward_norm": "batch",
    "run.save_every": 0,
    "run.eval_every": 0,
}


def detox_overrides(mode: str, *, prompts: str | Path, out: str | Path, steps: int, seed: int) -> dict[str, Any]:
    """Every setting of a detox run of `mode` (holistic or finegrained), as `key.sub -> value`."""
    if mode not in MODES:
        raise ConfigError(f"mode: {mode!r} is not allowed; choose one of {', '.join(map(repr, MODES))}")
    return {
        **SHARED,
        "data.prompts": str(prompts),
        "run.out": str(out),
        "run.steps": steps,
        "run.seed": seed,
        "rewards": [{"kind": "toxicity", "name": "toxicity", "mode": REWARD_MODE[mode], "scorer": "profanity-check",
                     "weight": 1.0, "mapping": "identity"}],
    }


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{"a.b": 1} -> {"a": {"b": 1}}: what a YAML config file holds."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return tree


def detox_config(mode: str, *, prompts: str | Path, out: str | Path, steps: int, seed: int,
                 overrides: list[str] | tuple[str, ...] = ()) -> "TrainConfig":
    """The TrainConfig of a detox run; `overrides` (`key.sub=value`) go on top, as on the command line."""
    import json

    from finegrain.config import load_config
    from finegrain.rl.config import TrainConfig

    # JSON is YAML: each value goes through the same parser as a command-line override
    settings = [f"{k}={json.dumps(v)}" for k, v in detox_overrides(mode, prompts=prompts, out=out, steps=steps, seed=seed).items()]
    return load_config(TrainConfig, None, [*settings, *overrides])


def toxicity_from_row(row: dict[str, float], source: str = "toxicity") -> float | None:
    """Mean toxicity of a step's responses, from its logged source reward (identity mapping; logged
    before normalisation): in both modes a response's toxicity rewards sum to -tox(y)."""
    key = f"reward/{source}"
    if key not in row:
        return None
    return -float(row[key])
