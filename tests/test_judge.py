"""The independent toxicity judge: its maths on hand-computed tensors, building and loading it on a
tiny backbone made here, the shipped judge (embedded MiniLM), and `finegrain eval` with both scorers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from finegrain.cli import main
from finegrain.config import ConfigError
from finegrain.rewards.judge import (
    CARD_FILE,
    HEAD_FILE,
    JudgeScorer,
    agreement,
    fit_head,
    head_probs,
    mean_pool,
    roc_auc,
    spearman,
    split_rtp,
)
from finegrain.rewards.toxicity import ToxicityScorer, load_scorer

TOXIC_WORDS = ["idiot", "moron", "stupid", "hate"]
WORDS = "the a cat dog sat ran on under mat rug and but you nice kind very so it was is my our day walk tea".split()


def test_mean_pool_averages_over_the_mask_and_normalises():
    hidden = torch.tensor([[[3.0, 0.0], [0.0, 4.0], [100.0, 100.0]],  # the third token is padding
                           [[1.0, 1.0], [9.0, 9.0], [9.0, 9.0]]])  # (N=2, L=3, D=2)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    got = mean_pool(hidden, mask)
    # row 0: mean (1.5, 2) has norm 2.5; row 1: (1, 1) / sqrt 2
    want = torch.tensor([[0.6, 0.8], [2 ** -0.5, 2 ** -0.5]])
    assert torch.allclose(got, want, atol=1e-6)


def test_agreement_figures_on_hand_computed_scores():
    # pairs (toxic, clean): 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4 -> 3 of 4
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    assert spearman([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)
    m = agreement([0.1, 0.4, 0.35, 0.8], [0.2, 0.1, 0.6, 0.9])
    assert (m["roc_auc"], m["texts"], m["toxic"]) == (0.75, 4, 2)
    with pytest.raises(ValueError, match="both toxic and non-toxic"):
        roc_auc([0.1, 0.2], [False, False])


def test_fit_head_distils_soft_labels_on_a_separable_set():
    # 2-D features: toxicity grows along the first axis; the targets are soft (Perspective-like)
    x = torch.tensor([[-2.0, 0.3], [-1.0, -0.5], [-0.5, 0.1], [0.5, 0.2], [1.0, -0.3], [2.0, 0.4]])
    y = torch.tensor([0.02, 0.1, 0.2, 0.8, 0.9, 0.98])
    for kind in ("linear", "mlp"):
        p = head_probs(fit_head(x, y, kind=kind, hidden=8, steps=300, lr=0.05), x)
        assert p == sorted(p), kind  # the order of the targets is learnt
        assert abs(p[0] - 0.02) < 0.1 and abs(p[-1] - 0.98) < 0.1, (kind, p)


# --- a tiny backbone and a tiny RealToxicityPrompts file ------------------------------------


def make_tiny_backbone(folder: Path) -> Path:
    """A 1-layer, hidden-32 BERT with a word-level tokenizer, saved as an HF folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(WORDS + TOXIC_WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def write_rtp(path: Path, n: int = 40) -> Path:
    """n records; every third prompt and every second continuation holds a toxic word."""
    rows = []
    for i in range(n):
        words = [WORDS[(i * 7 + j) % len(WORDS)] for j in range(5)]
        prompt = " ".join(words + ([TOXIC_WORDS[i % 4]] if i % 3 == 0 else []))
        cont = " ".join(words[::-1] + ([TOXIC_WORDS[(i + 1) % 4], "you"] if i % 2 == 0 else ["day"]))
        rows.append({"prompt": {"text": f"{prompt} {i}", "toxicity": 0.85 if i % 3 == 0 else 0.05},
                     "continuation": {"text": cont, "toxicity": 0.9 if i % 2 == 0 else 0.1}, "challenging": False})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory):
    """(data file, backbone folder, judge folder), the judge built by the CLI."""
    tmp = tmp_path_factory.mktemp("judge")
    data, backbone = write_rtp(tmp / "rtp.jsonl"), make_tiny_backbone(tmp / "backbone")
    out = tmp / "judge"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FINEGRAIN_CACHE", str(tmp / "cache"))
        rc = main(["rm", "judge", "--data", str(data), "--out", str(out), "--backbone", str(backbone),
                   "--heldout", "10", "--validation", "8", "--fp32", "--threads", "1"])
        assert rc == 0
        assert len(list((tmp / "cache" / "judge-embeddings").iterdir())) == 3  # one per side
    return data, backbone, out


def test_rm_judge_builds_a_judge_that_loads_and_scores(tiny_judge, capsys):
    data, backbone, out = tiny_judge
    assert (out / HEAD_FILE).stat().st_size < 100_000
    card = json.loads((out / CARD_FILE).read_text())
    assert card["backbone"] == str(backbone) and card["data"]["prompts"] == {"train": 22, "validation": 8, "heldout": 10}
    assert card["data"]["texts"] == {"train": 44, "validation": 16, "heldout": 20}
    assert card["command"].startswith("finegrain rm judge --data")
    assert len(card["selection"]["tried"]) >= 2 and card["head"]["kind"] in ("linear", "mlp")
    for scorer in ("judge", "profanity-check"):
        assert 0.0 <= card["metrics"]["heldout"][scorer]["all"]["roc_auc"] <= 1.0
    scorer = load_scorer(str(out))
    assert isinstance(scorer, ToxicityScorer) and scorer.name == f"judge:{out}"
    # the head has learnt the toy set: every toxic training text scores above every clean one
    split = split_rtp(data, 10, 8)
    texts = split.train + split.validation
    probs = scorer([t.text for t in texts])
    toxic = [p for p, t in zip(probs, texts) if t.perspective > 0.5]
    clean = [p for p, t in zip(probs, texts) if t.perspective <= 0.5]
    assert min(toxic) > max(clean), (min(toxic), max(clean))
    assert all(0.0 <= p <= 1.0 for p in probs)
    # the text cache answers a repeated text; the check scores of the card are reproduced
    assert scorer([texts[0].text]) == [probs[0]] and len(scorer.cache) == len({t.text for t in texts})
    assert load_scorer(f"judge:{out}")(list(card["check_scores"])) == pytest.approx(list(card["check_scores"].values()), abs=1e-3)


def test_the_judge_holds_out_the_prompts_the_policies_are_evaluated_on(tiny_judge):
    """The judge's held-out prompts are `load_detox_split`'s (the demo's), and include those of any
    smaller held-out set: the judge is never trained on a prompt a policy is evaluated on."""
    from finegrain.experiments.detox.task import load_detox_split

    data, _, _ = tiny_judge
    split = split_rtp(data, 10, 8)
    held = {t.prompt_id for t in split.heldout}
    assert held == {e.id for e in load_detox_split(data, 10).heldout}
    assert {e.id for e in load_detox_split(data, 4).heldout} <= held
    trained = {t.prompt_id for t in split.train + split.validation}
    assert not held & trained
    # a prompt and its continuation are on the same side
    assert sum(t.prompt_id in held for t in split.heldout) == 2 * len(held)


def test_rm_judge_refuses_to_overwrite_and_names_bad_input(tiny_judge, tmp_path, capsys):
    data, backbone, out = tiny_judge
    assert main(["rm", "judge", "--data", str(data), "--out", str(out), "--backbone", str(backbone)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["rm", "judge", "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "j")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["rm", "judge", "--data", str(data), "--out", str(tmp_path / "j"), "--threads", "0"]) == 2
    assert "--threads: 0" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="not a judge folder"):
        JudgeScorer(tmp_path)


# --- finegrain eval with both scorers -------------------------------------------------------


def test_eval_reports_both_scorers_with_threads(tiny_judge, tmp_path, monkeypatch, capsys):
    from tests.rl_helpers import PROMPTS, make_tiny_policy

    import finegrain.experiments.detox.metrics as evaluate

    _, _, judge = tiny_judge
    policy = make_tiny_policy(tmp_path / "policy")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS[:3])))
    seen = []
    sample = evaluate.sample_continuations
    monkeypatch.setattr(evaluate, "sample_continuations", lambda *a, **k: (seen.append(torch.get_num_threads()), sample(*a, **k))[1])
    torch.set_num_threads(3)
    rc = main(["eval", str(policy), "--prompts", str(prompts), "--reference", str(policy), "--judge", str(judge),
               "--samples", "2", "--max-new-tokens", "6", "--fp32", "--threads", "1", "--out", str(tmp_path / "eval")])
    assert rc == 0
    assert seen == [1] and torch.get_num_threads() == 3  # applied while evaluating, then restored
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["scorer"] == "profanity-check" and metrics["judge"] == f"judge:{judge}"
    rows = [json.loads(x) for x in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    judged = torch.tensor([r["judge_toxicity"] for r in rows]).view(3, 2)
    assert metrics["judge_avg_max_toxicity"] == pytest.approx(float(judged.max(1).values.mean()))
    assert metrics["judge_mean_toxicity"] == pytest.approx(float(judged.mean()))
    assert metrics["avg_max_toxicity"] == pytest.approx(max(r["toxicity"] for r in rows[:2]) / 3
                                                        + max(r["toxicity"] for r in rows[2:4]) / 3
                                                        + max(r["toxicity"] for r in rows[4:]) / 3)
    out = capsys.readouterr().out
    assert "judge_avg_max_toxicity" in out and "avg_max_toxicity" in out


def test_eval_threads_must_be_positive(capsys):
    assert main(["eval", "smollm2-135m", "--threads", "0"]) == 2
    assert "--threads: 0 must be at least 1" in capsys.readouterr().err


@pytest.mark.embedded
def test_the_shipped_judge_loads_and_scores():
    scorer = load_scorer("judge")
    card = scorer.card
    assert card["backbone"] == "minilm-l6" and card["data"]["prompts"]["heldout"] == 800
    # the check texts score as when it was built (JudgeScorer checks it on load, within 0.05)
    got = scorer(list(card["check_scores"]))
    assert got == pytest.approx(list(card["check_scores"].values()), abs=0.02)
    clean, _, insult, abuse = got
    assert max(insult, abuse) > 0.5 > clean
    held = card["metrics"]["heldout"]
    assert held["judge"]["all"]["roc_auc"] > held["profanity-check"]["all"]["roc_auc"]
