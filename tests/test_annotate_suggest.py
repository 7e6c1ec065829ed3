"""`finegrain annotate suggest`: the uncertainty maths on hand values, and the queue ordered by two
tiny span RMs (two seeds) and a pairwise RM trained in the test."""

from __future__ import annotations

import json
import math

import pytest

from finegrain.annotate.suggest import closeness, pair_uncertainty, segment_uncertainty


def test_closeness_by_hand():
    assert closeness(0.5, 0.5) == 1.0
    assert closeness(0.0, 0.5) == 0.0 and closeness(1.0, 0.5) == 0.0
    assert closeness(0.65, 0.3) == pytest.approx(1 - 0.35 / 0.7)
    assert closeness(0.0, 0.3) == pytest.approx(1 - 0.3 / 0.7)


def test_segment_uncertainty_adds_disagreement_between_models():
    # two models (seeds) of one category, three segments, threshold 0.5
    probs = [[0.5, 0.9, 0.0], [0.5, 0.9, 1.0]]
    got = segment_uncertainty(probs, [0.5, 0.5])
    # seg 1: both on the threshold -> 1 + 0; seg 2: both sure -> closeness 0.2, no spread;
    # seg 3: one says 0, the other 1: closeness 0 each, std 0.5 -> 2 * 0.5 = 1
    assert got == pytest.approx([1.0, 0.2, 1.0])
    assert segment_uncertainty([], []) == []


def test_pair_uncertainty_by_hand():
    # one model, three responses: scores 0, 0, ln 3 -> P(0 > 1) = 1/2, P(0 > 2) = P(1 > 2) = 1/4
    got = pair_uncertainty([[0.0, 0.0, math.log(3)]])
    assert got == pytest.approx([1.0, 0.5, 0.5])
    # two models that disagree on (0, 1): P = sigmoid(2) and sigmoid(-2); mean 1/2, std of the two
    p = 1 / (1 + math.exp(-2))
    assert pair_uncertainty([[2.0, 0.0], [0.0, 2.0]]) == pytest.approx([1.0 + 2 * (p - 0.5)])


@pytest.fixture(scope="module")
def tiny_rms(tmp_path_factory):
    """Two span RMs (relevance, seeds 0 and 1) and a pairwise one on a 2-layer, 32-wide BERT."""
    import torch
    from transformers import BertConfig, BertModel

    from finegrain.models import load_tokenizer
    from finegrain.rewards.pairwise_rm import train_pairwise_rm
    from finegrain.rewards.rm_config import RMTrainConfig
    from finegrain.rewards.span_rm import train_span_rm

    tok = load_tokenizer("minilm-l6", padding_side="right")
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("suggest-rms")
    backbone = root / "tiny-bert"
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(backbone)
    tok.save_pretrained(backbone)
    train = examples(6, annotated=True)
    base = dict(backbone=str(backbone), max_length=128, epochs=1.0, batch_size=4, lr=1e-3, bf16=False, warmup_ratio=0.0, threads=1)
    dirs = []
    for seed in (0, 1):
        out = root / f"relevance-{seed}"
        train_span_rm(RMTrainConfig(kind="span", category="relevance", level="sentence", seed=seed, **base), train, out, log=lambda s: None)
        dirs.append(str(out))
    out = root / "preference"
    train_pairwise_rm(RMTrainConfig(kind="pairwise", category="preference", **base), train, out, log=lambda s: None)
    dirs.append(str(out))
    return dirs


def examples(n: int, annotated: bool = False):
    from finegrain.data.records import Annotation, Example, Passage, Preference, Response, Span

    good, bad = "The tower is in Paris.", "Bananas are yellow."
    out = []
    for i in range(n):
        text = f"{good} {bad}" if i % 2 == 0 else f"{good} It opened in {1880 + i}."
        ann = Annotation((Span(len(good) + 1, len(text), "Irrelevant"),) if i % 2 == 0 else ()) if annotated else None
        out.append(Example(f"s{i}", f"Where is tower {i}?", (Response(text, ann), Response(good), Response(bad)),
                           (Passage("Tower", ("The tower is in Paris.",)),), (Preference(0, 1, 2), Preference(0, 2, 1), Preference(1, 2, 1))))
    return out


def test_suggest_orders_the_queue_by_the_rms_uncertainty(tmp_path, tiny_rms, capsys):
    from finegrain.annotate import auth, db, store
    from finegrain.annotate.suggest import segment_uncertainty, suggest
    from finegrain.cli import main
    from finegrain.data.jsonl import write_jsonl
    from finegrain.rewards.card import load_reward_model

    url = f"sqlite:///{tmp_path / 's.db'}"
    engine = db.make_engine(url)
    auth.create_token(engine, "ann")
    write_jsonl(tmp_path / "pool.jsonl", examples(6))
    assert main(["annotate", "import", str(tmp_path / "pool.jsonl"), "--db", url]) == 0
    capsys.readouterr()
    before = [t["example_id"] for t in store.queue(engine, 1)]
    assert before[::2] == [f"s{i}" for i in range(6)]  # import order
    assert main(["annotate", "suggest", "--db", url, "--rm", *tiny_rms, "--json", "--apply", "--device", "cpu"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert len(found) == 6 and [f["priority"] for f in found] == sorted((f["priority"] for f in found), reverse=True)
    # the priority is the most uncertain segment (or pair): recompute one by hand from the RMs
    top = found[0]
    rms = [load_reward_model(d, device="cpu", bf16=False) for d in tiny_rms[:2]]
    ex = next(e for e in examples(6) if e.id == top["example_id"])
    probs = [m.probabilities([ex], [ex.responses[0].text])[0][0] for m in rms]
    segment_best = max(segment_uncertainty(probs, [0.5, 0.5]))
    assert top["priority"] >= segment_best - 1e-6
    if top["where"].startswith("response"):
        assert top["priority"] == pytest.approx(segment_best, abs=1e-5)
    after = store.queue(engine, 1)
    assert [t["example_id"] for t in after][::2] == [f["example_id"] for f in found]  # most uncertain first
    assert all(after[k]["example_id"] == after[k + 1]["example_id"] for k in range(0, len(after), 2))  # tasks stay together
    assert suggest(engine, tiny_rms[:1], device="cpu", log=lambda s: None)[0].priority >= 0
    assert main(["annotate", "unsuggest", "--db", url]) == 0
    assert [t["example_id"] for t in store.queue(engine, 1)] == before


def test_a_multitask_rm_suggests_by_every_head(tmp_path, tiny_rms):
    """One multi-task folder stands for its heads: each head's segments are scored (one model in memory)."""
    from pathlib import Path

    from finegrain.annotate import db
    from finegrain.annotate.suggest import segment_uncertainty, suggest
    from finegrain.cli import main
    from finegrain.data.jsonl import write_jsonl
    from finegrain.rewards.card import load_heads, load_reward_model
    from finegrain.rewards.rm_config import RMTrainConfig
    from finegrain.rewards.span_rm import train_span_rm

    backbone = Path(tiny_rms[0]).parent / "tiny-bert"
    folder = tmp_path / "multitask"
    cfg = RMTrainConfig(kind="span", category="relevance", tasks=["relevance", "factuality"], backbone=str(backbone), max_length=128,
                        epochs=1.0, batch_size=4, lr=1e-3, bf16=False, warmup_ratio=0.0, threads=1)
    train_span_rm(cfg, examples(6, annotated=True), folder, log=lambda s: None)
    heads = load_heads(folder, device="cpu", bf16=False)
    assert list(heads) == ["relevance", "factuality"] and heads["factuality"].models[0] is heads["relevance"].models[0]

    url = f"sqlite:///{tmp_path / 's.db'}"
    engine = db.make_engine(url)
    write_jsonl(tmp_path / "pool.jsonl", examples(4))
    assert main(["annotate", "import", str(tmp_path / "pool.jsonl"), "--db", url]) == 0
    logged = []
    found = suggest(engine, [str(folder)], device="cpu", log=logged.append)
    assert "relevance x1, factuality x1" in logged[0] and len(found) == 4
    # each example's priority: its most uncertain segment over both heads, recomputed from each head alone
    for s in found:
        ex = next(e for e in examples(4) if e.id == s.example_id)
        assert s.where.startswith("response 1,")  # the import makes an annotation task of the first response only
        best = 0.0
        for name in ("relevance", "factuality"):
            rm = load_reward_model(folder, device="cpu", bf16=False, head=name)
            p = rm.probabilities([ex], [ex.responses[0].text])[0][0]
            best = max(best, *segment_uncertainty([p], [float(rm.card.training.get("threshold", 0.5))]))
        assert s.priority == pytest.approx(best, abs=1e-5)
