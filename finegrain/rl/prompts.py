"""Prompts for PPO: read them and hold some out for evaluation (kernel.data.hold_out); which ones
step s uses is kernel.run.batch_indices; how the policy sees them is kernel.prompts.PromptRenderer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from finegrain.config import ConfigError, existing_file

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
        if not path.is_file() and path.parts[:2] == ("finegrain", "assets"):  # a shipped file, run from another folder
            from finegrain.experiments.detox.task import asset

            shipped = asset(str(Path(*path.parts[2:])))
            path = shipped if shipped.is_file() else path
        path = existing_file(path, "data.prompts")
        examples = load_examples(path)
        source = str(path)
    else:
        examples = [Example(id=f"prompt-{i}", prompt=p) for i, p in enumerate(data.prompt_list)]
        source = "data.prompt_list"
    empty = [i for i, e in enumerate(examples) if not e.prompt.strip()]
    if empty:
        raise ConfigError(f"{source}: record {empty[0]} has an empty prompt ({len(empty)} empty in all)")
    from finegrain.kernel.data import hold_out

    train, held_out = hold_out(examples, data.eval_prompts, seed, "data.eval_prompts", source)
    if data.max_prompts is not None:
        train = train[: data.max_prompts]
    return PromptSplit(train=train, eval=held_out)


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
