"""Reading a recipe's data and holding some of it out, the same way for every recipe."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, TypeVar

from finegrain.config import ConfigError, existing_file

if TYPE_CHECKING:
    from finegrain.data.pairs import PreferencePair
    from finegrain.data.records import Example
    from finegrain.kernel.config import PairDataConfig

Item = TypeVar("Item")


def read_feedback(path: str | None, field_name: str) -> list["Example"]:
    """Every example of a feedback file (any format `load_examples` reads); DataError names the
    record and field of any fault, ConfigError a missing file."""
    from finegrain.data.load import load_examples

    if not path:
        raise ConfigError(f"{field_name}: set a feedback file")
    return load_examples(existing_file(path, field_name))


def hold_out(items: list[Item], n_eval: int, seed: int, field_name: str, source: str) -> tuple[list[Item], list[Item]]:
    """(train, held out), both in file order: the items shuffled with `random.Random(seed)`, the last
    `n_eval` held out. The same split as `finegrain rm split --train len-n_eval --seed seed`, so
    reward models, SFT, DPO, SimPO and PPO can share one held-out set."""
    if len(items) <= n_eval:
        raise ConfigError(f"{field_name}: {n_eval} held-out items leave none to train on ({source} has {len(items)})")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    cut = len(items) - n_eval
    train, held = sorted(order[:cut]), sorted(order[cut:])
    return [items[i] for i in train], [items[i] for i in held]


def pair_split(data: "PairDataConfig", seed: int) -> tuple[list["PreferencePair"], list["PreferencePair"]]:
    """(train, held-out) preference pairs; the split is by example, so a held-out prompt is never
    trained on. From a feedback file (human judgements and/or span feedback) or a pairs file."""
    from finegrain.data.pairs import human_pairs, read_pairs, span_pairs

    if data.pairs_file is not None:
        pairs = read_pairs(existing_file(data.pairs_file, "data.pairs_file"))
        ids = sorted({p.example.id for p in pairs})
        _, held_ids = hold_out(ids, data.eval_examples, seed, "data.eval_examples", data.pairs_file)
        held = set(held_ids) if data.eval_examples else set()
        train, evals = [p for p in pairs if p.example.id not in held], [p for p in pairs if p.example.id in held]
        source = data.pairs_file
    else:
        examples = read_feedback(data.feedback, "data.feedback")
        train_ex, eval_ex = hold_out(examples, data.eval_examples, seed, "data.eval_examples", str(data.feedback))
        make = {"human": human_pairs, "span": span_pairs}
        train = [p for origin in data.pairs for p in make[origin](train_ex)]
        evals = [p for origin in data.pairs for p in make[origin](eval_ex)]
        source = f"{data.feedback} ({'+'.join(data.pairs)} pairs)"
    if not train:
        raise ConfigError(f"data: {source} gives no preference pair to train on")
    if data.eval_examples and not evals:
        raise ConfigError(f"data.eval_examples: the held-out examples of {source} give no preference pair")
    return train, evals
