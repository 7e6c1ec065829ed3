"""Shared by the reward-model tests: a tiny BERT backbone with the embedded MiniLM tokenizer, toy
QA examples whose second sentence is irrelevant, and an RM config for tiny models."""

from __future__ import annotations

from pathlib import Path

from finegrain.data.records import Annotation, Example, Passage, Preference, Response, Span
from finegrain.rewards.rm_config import RMTrainConfig

GOOD = "The tower is in Paris, and it opened in 1889."
BAD = "Bananas are yellow and sweet, like the sun."


def make_tiny_bert(folder: Path) -> str:
    """A 2-layer, 32-wide BERT with the embedded MiniLM tokenizer, saved as an HF folder."""
    import torch
    from transformers import BertConfig, BertModel

    from finegrain.models import load_tokenizer

    torch.manual_seed(0)
    tok = load_tokenizer("minilm-l6", padding_side="right")
    cfg = BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def qa_example(i: int, bad_second: bool = True) -> Example:
    """A prompt whose annotated response has two sentences; the second is irrelevant when `bad_second`."""
    text = f"{GOOD} {BAD}" if bad_second else f"{GOOD} {GOOD}"
    spans = (Span(len(GOOD) + 1, len(text), "Irrelevant"),) if bad_second else ()
    alt = GOOD + " It is 330 metres tall."  # covers the corrected response: preferred and more complete
    return Example(
        id=f"q{i}",
        prompt=f"Where is the tower number {i}?",
        responses=(Response(text, Annotation(spans, corrected=alt)), Response(alt), Response("")),
        passages=(Passage("Eiffel Tower", ("The tower is in Paris.", "It opened in 1889.", "It is 330 metres tall.")),),
        preferences=(Preference(0, 1, 2), Preference(0, 2, 1), Preference(1, 2, 0)),
    )


def tiny_cfg(backbone: str, **kw) -> RMTrainConfig:
    base = dict(backbone=backbone, max_length=128, epochs=3.0, batch_size=4, lr=1e-3, bf16=False, warmup_ratio=0.0, threads=1)
    base.update(kw)
    return RMTrainConfig(**base)
