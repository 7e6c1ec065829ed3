"""Lexical reward models (`backbone: lexical`): the features, the fit, the card round trip, cross-validation
and their use as PPO reward sources."""

from __future__ import annotations

import json

import pytest

from finegrain.config import ConfigError
from finegrain.data.records import Example, Passage
from finegrain.rewards.rm_config import RMTrainConfig
from rm_helpers import BAD, GOOD, qa_example


def lexical_cfg(**kw) -> RMTrainConfig:
    return RMTrainConfig(backbone="lexical", **kw)


def examples(n: int = 12) -> list[Example]:
    return [qa_example(i, bad_second=i % 3 != 0) for i in range(n)]


def test_segment_features_on_hand_values():
    from finegrain.rewards.lexical import segment_feature_names, segment_features
    from finegrain.segment import segment_text

    ex = Example(id="x", prompt="Where is the tower?", passages=(Passage("Tower", ("The tower stands in Paris.",)),))
    text = "The tower stands in Paris. The tower stands in Paris. Bananas grow."
    rows = segment_features(ex, text, segment_text(text, "sentence"), passages=True)
    names = segment_feature_names(True)
    f = [dict(zip(names, r)) for r in rows]
    assert [r["position"] for r in f] == [0, 1, 2] and [r["last"] for r in f] == [0, 0, 1]
    assert [r["relative_position"] for r in f] == [0.0, 0.5, 1.0] and all(r["segments"] == 3 for r in f)
    # content words: tower, stands, paris; the question's: tower
    assert f[0]["question_overlap"] == pytest.approx(1 / 3) and f[0]["novelty"] == 1.0
    assert f[1]["novelty"] == 0.0 and f[1]["max_overlap_earlier"] == 1.0  # a repeat of the first sentence
    assert f[0]["passage_support"] == 1.0 and f[2]["passage_support"] == 0.0  # bananas, grow: not in the passages
    assert len(segment_features(ex, text, segment_text(text, "sentence"), passages=False)[0]) == len(names) - 1


def test_lexical_span_rm_learns_saves_and_loads_as_a_reward_source(tmp_path):
    from finegrain.rewards.card import RMCard, load_reward_model
    from finegrain.rewards.lexical import MODEL_FILE, LexicalSpanRM
    from finegrain.rewards.span_rm import train_span_rm

    cfg = lexical_cfg(category="relevance", level="sentence", passages=True, tune_threshold=True)
    card = train_span_rm(cfg, examples(), tmp_path / "rm", eval_examples=examples(6), log=lambda s: None)
    assert (tmp_path / "rm" / MODEL_FILE).is_file()
    saved = RMCard.load(tmp_path / "rm")
    assert saved.backbone == "lexical" and saved.backbone_kind == "lexical" and saved.kind == "span"
    assert "passage_support" in saved.input_template and saved.training["threshold"] == card.training["threshold"]
    assert card.metrics["f1"] == 1.0  # the toy's irrelevant sentence shares no word with the question or the passages
    rm = load_reward_model(tmp_path / "rm")
    assert isinstance(rm, LexicalSpanRM) and rm.density == "sentence"
    probs, ends = rm.probabilities([examples(1)[0]] * 2, [f"{GOOD} {BAD}", ""])
    assert probs[0][1] > card.training["threshold"] > probs[0][0] and probs[1] == [] and ends[0][-1] == len(f"{GOOD} {BAD}")
    scores = rm.score([examples(1)[0]] * 2, [f"{GOOD} {BAD}", ""])
    assert scores.scores.shape == (2, 2) and scores.mask.tolist() == [[True, True], [False, False]]


def test_lexical_pairwise_rm_ranks_the_more_complete_response(tmp_path):
    from finegrain.rewards.card import load_reward_model
    from finegrain.rewards.lexical import LexicalPairwiseRM
    from finegrain.rewards.pairwise_rm import train_pairwise_rm

    cfg = lexical_cfg(kind="pairwise", category="completeness")
    card = train_pairwise_rm(cfg, examples(), tmp_path / "rm", eval_examples=examples(4), log=lambda s: None)
    assert card.calibration.count > 0 and card.calibration.std > 0
    assert card.metrics["accuracy"] == 1.0 and "longer_wins" in card.metrics["baselines"]
    rm = load_reward_model(tmp_path / "rm")
    assert isinstance(rm, LexicalPairwiseRM)
    ex = examples(1)[0]
    alt = ex.responses[1].text
    raw = rm.raw_scores([ex, ex], [GOOD, alt])
    assert raw[1] > raw[0]
    s = rm.score([ex, ex], [alt, " "])
    assert s.mask.tolist() == [[True], [False]] and s.char_ends[0, 0] == len(alt)


def test_lexical_config_refuses_what_does_not_apply():
    for kw, field in ((dict(finetune="lora"), "finetune"), (dict(tasks=["relevance", "factuality"]), "tasks"),
                      (dict(ensemble=3), "ensemble"), (dict(l2=0.0), "l2")):
        with pytest.raises(ConfigError, match=field):
            lexical_cfg(**kw)


def test_lexical_training_needs_both_labels(tmp_path):
    from finegrain.errors import TrainingError
    from finegrain.rewards.span_rm import train_span_rm

    with pytest.raises(TrainingError, match="with and without an error"):
        train_span_rm(lexical_cfg(category="relevance"), [qa_example(i, bad_second=False) for i in range(4)], tmp_path / "rm",
                      log=lambda s: None)
    assert not (tmp_path / "rm").exists()


def test_a_damaged_model_file_names_the_file_and_field(tmp_path):
    from finegrain.rewards.card import load_reward_model
    from finegrain.rewards.lexical import MODEL_FILE
    from finegrain.rewards.span_rm import train_span_rm

    train_span_rm(lexical_cfg(category="relevance"), examples(), tmp_path / "rm", log=lambda s: None)
    path = tmp_path / "rm" / MODEL_FILE
    raw = json.loads(path.read_text())
    raw["coef"] = raw["coef"][:-1]
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=f"{MODEL_FILE}: field coef"):
        load_reward_model(tmp_path / "rm")
    path.unlink()
    with pytest.raises(ConfigError, match=f"{MODEL_FILE} is missing"):
        load_reward_model(tmp_path / "rm")


def test_cross_validation_with_a_lexical_rm(tmp_path):
    from finegrain.rewards.rm_cv import cross_validate

    report = cross_validate(lexical_cfg(category="relevance", passages=True, tune_threshold=True), examples(12), tmp_path / "cv",
                            folds=3, log=lambda s: None)
    assert report["folds_done"] == 3
    assert report["summary"]["f1"]["mean"] == 1.0 and report["summary"]["flag_all_f1"]["mean"] < 1.0


def test_lexical_rms_as_ppo_sources_with_their_card_defaults(tmp_path):
    from finegrain.rewards.pairwise_rm import train_pairwise_rm
    from finegrain.rewards.span_rm import train_span_rm
    from finegrain.rl.config import RewardConfig
    from finegrain.rl.sources import build_sources

    card = train_span_rm(lexical_cfg(category="relevance", level="sentence", passages=True, tune_threshold=True), examples(), tmp_path / "rel",
                         log=lambda s: None)
    train_pairwise_rm(lexical_cfg(kind="pairwise", category="completeness"), examples(), tmp_path / "comp", log=lambda s: None)
    sources = build_sources([RewardConfig(kind="rm", path=str(tmp_path / "rel"), mapping="binary", reward_ok=0.3, reward_error=-0.3),
                             RewardConfig(kind="rm", path=str(tmp_path / "comp"), mapping="standardize", scale=0.3)])
    assert sources[0].term.mapping.threshold == card.training["threshold"]
    ex = examples(1)[0]
    rel = sources[0].source.score([ex], [f"{GOOD} {BAD}"])
    assert sources[0].term.mapping(rel.scores)[0].tolist() == pytest.approx([0.3, -0.3])
    comp = sources[1].source.score([ex], [ex.responses[1].text])
    assert comp.mask.tolist() == [[True]]


def test_cli_trains_a_lexical_rm_and_never_overwrites_one_silently(tmp_path, capsys):
    from finegrain.cli import main
    from finegrain.data.jsonl import write_jsonl
    from finegrain.rewards.card import RMCard

    data = tmp_path / "fb.jsonl"
    write_jsonl(data, examples())
    out = tmp_path / "rm"
    args = ["rm", "train", "--kind", "span", "--category", "relevance", "--train-file", str(data), "--out", str(out), "backbone=lexical"]
    assert main(args) == 0 and RMCard.load(out).training["l2"] == 1.0
    assert main([*args, "l2=2"]) == 2
    assert "already holds a reward model" in capsys.readouterr().err
    assert RMCard.load(out).training["l2"] == 1.0  # untouched
    (out / "stale.bin").write_text("x")
    assert main([*args, "l2=2", "--force"]) == 0
    assert RMCard.load(out).training["l2"] == 2.0 and not (out / "stale.bin").exists()
