"""Prompts for PPO: read them, hold some out for evaluation, and say which ones step s uses.

Which prompts a step uses is a pure function of (seed, step, process): a resumed run needs no
saved data-loader state beyond the step number, and every process takes its own slice.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from finegrain.config import ConfigError

if TYPE_CHECKING:
    from finegrain.data.records import Example
    from finegrain.rl.config import DataConfig


@dataclass(frozen=True)
class PromptSplit:
    train: list["Example"]
    eval: list["Example"]


def load_prompts(data: "DataConfig", seed: int) -> PromptSplit:
    """Read the prompt file (any format `load_examples` reads) or the plain prompt list, then hold out
    `eval_prompts` of them, chosen with `seed`. Raises DataError / ConfigError before training starts."""
    from finegrain.data.load import load_examples
    from finegrain.data.records import Example

    if data.prompts is not None:
        path = Path(data.prompts)
        if not path.is_file():
            raise ConfigError(f"data.prompts: {data.prompts} does not exist")
        examples = load_examples(path)
        source = str(path)
    else:
        examples = [Example(id=f"prompt-{i}", prompt=p) for i, p in enumerate(data.prompt_list)]
        source = "data.prompt_list"
    empty = [i for i, e in enumerate(examples) if not e.prompt.strip()]
    if empty:
        raise ConfigError(f"{source}: record {empty[0]} has an empty prompt ({len(empty)} empty in all)")
    if len(examples) <= data.eval_prompts:
        raise ConfigError(
            f"data.eval_prompts: {data.eval_prompts} held-out prompts leave none to train on ({source} has {len(examples)})"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held_out = sorted(order[: data.eval_prompts])
    train = [examples[i] for i in sorted(order[data.eval_prompts :])]
    if data.max_prompts is not None:
        train = train[: data.max_prompts]
    return PromptSplit(train=train, eval=[examples[i] for i in held_out])


def format_prompt(template: str, example: "Example") -> str:
    return template.replace("{prompt}", example.prompt)


def prompt_indices(step: int, n_prompts: int, per_process: int, n_processes: int, rank: int, seed: int) -> list[int]:
    """Indices of the training prompts that process `rank` uses at `step` (0-based).

    The prompts are walked in a fresh seeded permutation per pass over the data; step s of the
    whole run takes the global slice [s * G, (s + 1) * G) with G = per_process * n_processes, and
    process r takes its r-th part of it.
    """
    import torch

    per_step = per_process * n_processes
    start = step * per_step + rank * per_process
    out: list[int] = []
    cached_pass, perm = -1, None
    for position in range(start, start + per_process):
        data_pass, offset = divmod(position, n_prompts)
        if data_pass != cached_pass:
            g = torch.Generator().manual_seed(seed * 1_000_003 + data_pass)
            perm = torch.randperm(n_prompts, generator=g).tolist()
            cached_pass = data_pass
        out.append(perm[offset])  # type: ignore[index]
    return out


def load_ptx_texts(path: str) -> list[str]:
    """PPO-ptx texts: each record's prompt followed by its reference, or else its first response."""
    from finegrain.data.load import load_examples

    texts = []
    for e in load_examples(path):
        answer = e.reference or (e.responses[0].text if e.responses else "")
        text = f"{e.prompt} {answer}".strip() if answer else e.prompt
        if text.strip():
            texts.append(text)
    if not texts:
        raise ConfigError(f"data.ptx: {path} holds no text to train the LM loss on")
    return texts
