"""Reward models on every backbone kind and head, fully fine-tuned or with LoRA: a tiny Llama (the
embedded SmolLM2 tokenizer) as a causal-LM backbone with a span head and a sequence head, a tiny
BERT with LoRA; the card round trip; PPO's reward sources loading them; the training choices for
little data (validation split with early stopping, the tuned threshold, auxiliary pairs)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from finegrain.config import ConfigError
from finegrain.data.records import Annotation, Example, Response, Span
from finegrain.rewards.base import RewardSource
from finegrain.rewards.card import CARD_FILE, RMCard, load_reward_model
from finegrain.rewards.pairwise_rm import pair_data, train_pairwise_rm
from finegrain.rewards.rm_config import RMTrainConfig
from finegrain.rewards.rm_data import preference_data, with_extra_pairs
from finegrain.rewards.span_rm import train_span_rm
from rm_helpers import GOOD, make_tiny_bert, qa_example, tiny_cfg

QUIET = dict(log=lambda s: None)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def _span_examples(n=8):
    return [qa_example(i, bad_second=i % 2 == 0) for i in range(n)]


# --- decoder (causal LM) backbones ---------------------------------------------------------------


@pytest.mark.embedded  # the embedded SmolLM2 tokenizer
def test_decoder_span_rm_reads_each_segment_end_and_round_trips(tmp_path, tiny, one_thread):
    train = _span_examples()
    cfg = tiny_cfg(str(tiny), kind="span", category="relevance", level="sentence", epochs=4.0)
    card = train_span_rm(cfg, train, tmp_path / "rm", eval_examples=train[:4], **QUIET)
    assert card.backbone_kind == "decoder" and card.model_class == "AutoModelForTokenClassification"
    assert card.finetune["method"] == "full" and card.finetune["trainable_parameters"] == card.finetune["parameters"]
    assert card.marker == "<|im_end|>"  # a causal LM's end-of-sequence token closes every segment
    assert card.input_template == "question: {question} <|im_end|> {segment 1} <|im_end|> {segment 2} <|im_end|> ... <|im_end|>"
    assert card.training["epoch_losses"][-1] < card.training["epoch_losses"][0]
    assert RMCard.load(tmp_path / "rm") == card  # the card round trip

    rm = load_reward_model(tmp_path / "rm", bf16=False)
    assert isinstance(rm, RewardSource) and rm.card.backbone_kind == "decoder"
    ex = train[0]
    out = rm.score([ex, ex], [ex.responses[0].text, ""])
    assert out.scores.shape == (2, 2) and out.mask.tolist() == [[True, True], [False, False]]
    # causal: the first segment's P(error) does not depend on what follows it
    alone = rm.score([ex], [GOOD])
    assert alone.scores[0, 0].item() == pytest.approx(out.scores[0, 0].item(), abs=1e-5)


@pytest.mark.embedded  # the embedded SmolLM2 tokenizer
def test_decoder_pairwise_rm_with_lora_merges_and_round_trips(tmp_path, tiny, one_thread):
    train = [qa_example(i) for i in range(6)]
    cfg = tiny_cfg(str(tiny), kind="pairwise", category="completeness", epochs=4.0, batch_size=2, finetune="lora", lora_r=4)
    card = train_pairwise_rm(cfg, train, tmp_path / "rm", eval_examples=train[:2], **QUIET)
    assert card.backbone_kind == "decoder" and card.model_class == "AutoModelForSequenceClassification"
    assert card.finetune["method"] == "lora" and card.finetune["r"] == 4 and card.finetune["targets"]
    assert 0 < card.finetune["trainable_parameters"] < card.finetune["parameters"] / 2
    assert not (tmp_path / "rm" / "adapter_config.json").exists()  # merged: a plain HF model
    assert card.training["epoch_losses"][-1] < card.training["epoch_losses"][0]
    assert RMCard.load(tmp_path / "rm") == card

    rm = load_reward_model(tmp_path / "rm", bf16=False)
    texts = [r.text for r in train[0].responses]
    scores = rm.raw_scores([train[0]] * 3, texts)
    assert scores == pytest.approx(rm.raw_scores([train[0]] * 3, texts))  # deterministic in eval mode
    assert scores[1] > scores[0]  # learnt: the response covering the corrected one ranks higher
    assert card.calibration.count == 12


@pytest.mark.embedded  # the embedded MiniLM tokenizer
def test_encoder_span_rm_with_lora_trains_only_adapters_and_head(tmp_path, tiny_bert, one_thread):
    cfg = tiny_cfg(tiny_bert, kind="span", category="relevance", level="sentence", epochs=3.0, finetune="lora",
                   lora_targets=["query", "value"])
    card = train_span_rm(cfg, _span_examples(), tmp_path / "rm", **QUIET)
    assert card.backbone_kind == "encoder" and card.finetune["targets"] == ["query", "value"]
    assert card.finetune["trainable_parameters"] < card.finetune["parameters"]
    rm = load_reward_model(tmp_path / "rm", bf16=False)
    assert rm.score(_span_examples(1), [GOOD]).scores.shape == (1, 1)


@pytest.mark.embedded  # the embedded SmolLM2 tokenizer
def test_ppo_reward_sources_load_decoder_rms(tmp_path, tiny, one_thread):
    from finegrain.rl.config import RewardConfig
    from finegrain.rl.sources import build_sources, check_sources

    train = _span_examples(4)
    train_span_rm(tiny_cfg(str(tiny), kind="span", category="relevance", level="sentence", epochs=1.0), train, tmp_path / "span", **QUIET)
    train_pairwise_rm(tiny_cfg(str(tiny), kind="pairwise", category="preference", epochs=1.0), train, tmp_path / "pair", **QUIET)
    rewards = [RewardConfig(kind="rm", path=str(tmp_path / "span"), mapping="binary"),
               RewardConfig(kind="rm", path=str(tmp_path / "pair"), mapping="standardize", scale=0.3)]
    sources = build_sources(rewards, check_sources(rewards), device="cpu", bf16=False)
    for s in sources:
        out = s.source.score(train[:2], [GOOD, "Paris."])
        assert out.mask[:, 0].all() and torch.isfinite(out.scores).all()


# --- the card ----------------------------------------------------------------------------------------


def test_cards_written_before_backbone_fields_still_load(tmp_path):
    raw = {"kind": "span", "name": "relevance", "level": "sentence", "categories": ["Irrelevant"], "label_map": {},
           "score": "p_error", "input_template": "", "passages": False, "truncation": "", "marker": "[SEP]",
           "max_length": 128, "backbone": "minilm-l6", "tokenizer": "BertTokenizer", "data": {}, "training": {},
           "calibration": {"mean": 0.5, "std": 0.1, "count": 3}, "metrics": {}, "version": 1}
    (tmp_path / CARD_FILE).write_text(json.dumps(raw))
    card = RMCard.load(tmp_path)
    assert (card.backbone_kind, card.model_class, card.finetune) == ("encoder", "", {"method": "full"})
    card.model_class = "AutoModelForSequenceClassification"
    with pytest.raises(ConfigError, match="model_class"):
        load_reward_model(tmp_path, card=card)


def test_config_checks_the_new_fields():
    with pytest.raises(ConfigError, match="finetune"):
        RMTrainConfig(finetune="qlora")
    with pytest.raises(ConfigError, match="extra_pairs"):
        RMTrainConfig(kind="pairwise", category="preference", extra_pairs=["longer"])
    with pytest.raises(ConfigError, match="extra_pairs"):
        RMTrainConfig(kind="span", extra_pairs=["corrected"])
    with pytest.raises(ConfigError, match="validation"):
        RMTrainConfig(validation=0.9)


# --- learning from little data -------------------------------------------------------------------------


def test_extra_pairs_from_span_feedback_by_hand():
    ex = Example("x", "q", responses=(
        Response("One. Two.", Annotation((Span(0, 4, "Irrelevant"), Span(5, 9, "Irrelevant")), corrected="One fixed.")),
        Response("Three.", Annotation((Span(0, 6, "Unverifiable"),))),
        Response("Four.", Annotation(())),
    ))
    base = preference_data([ex])  # no judgements: no group
    data = with_extra_pairs(base, [ex], ["fewer_errors", "corrected"])
    (g,) = data.groups
    assert g.responses == ("One. Two.", "Three.", "Four.", "One fixed.")
    # fewer error spans rank higher: 1 over 0, 2 over 0, 2 over 1; the corrected text over response 0
    assert set(g.pairs) == {(1, 0), (2, 0), (2, 1), (3, 0)}
    only = with_extra_pairs(base, [ex], ["corrected"])
    assert only.groups[0].pairs == ((3, 0),)
    cfg = RMTrainConfig(kind="pairwise", category="preference", extra_pairs=["corrected"])
    assert pair_data(cfg, [ex]).groups == [] and len(pair_data(cfg, [ex], training=True).groups) == 1  # never evaluated on


@pytest.mark.embedded  # the embedded MiniLM tokenizer
def test_validation_split_stops_early_and_tunes_the_threshold(tmp_path, tiny_bert, one_thread):
    cfg = tiny_cfg(tiny_bert, kind="span", category="relevance", level="sentence", epochs=6.0, lr=5e-2,
                   validation=0.25, patience=1, tune_threshold=True)
    card = train_span_rm(cfg, _span_examples(), tmp_path / "rm", **QUIET)
    t = card.training
    assert t["validation_prompts"] == 2 and card.data["train_responses"] == 6
    assert 1 <= len(t["validation_losses"]) <= 6 and t["best_epoch"] == 1 + t["validation_losses"].index(min(t["validation_losses"]))
    assert t["epochs_run"] == len(t["validation_losses"])
    assert len(t["validation_losses"]) < 6 or t["best_epoch"] >= 5  # stopped after one epoch without improvement
    assert t["threshold"] == t["threshold_on_validation"]  # tuned on the validation split, not the training data
    no_val = train_span_rm(dataclasses.replace(cfg, validation=0.0), _span_examples(), tmp_path / "rm2", **QUIET)
    assert no_val.training["threshold"] == no_val.training["threshold_on_train"] and no_val.training["validation_losses"] == []


@pytest.mark.embedded  # the embedded MiniLM tokenizer
def test_pairwise_training_with_extra_pairs_and_validation(tmp_path, tiny_bert, one_thread):
    train = [qa_example(i) for i in range(6)]
    cfg = tiny_cfg(tiny_bert, kind="pairwise", category="preference", epochs=2.0, batch_size=2, extra_pairs=["corrected"],
                   validation=0.34)
    card = train_pairwise_rm(cfg, train, tmp_path / "rm", eval_examples=train, **QUIET)
    assert card.data["extra_pairs"] == ["corrected"] and card.training["validation_prompts"] == 2
    assert card.data["train_pairs"] == 4 * 2  # 4 fitting prompts: one judgement + corrected over original each
    assert card.metrics["pairs"] == 6  # evaluation: the judgements only
