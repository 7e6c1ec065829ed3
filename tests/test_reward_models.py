"""Span and pairwise reward models: data building, encoding, losses and metrics on hand-made
inputs; a training smoke test per RM kind on a tiny BERT; the card; the CLI; bad inputs."""

from __future__ import annotations

import json
import re
import math

import pytest
import torch

from finegrain.cli import main
from finegrain.config import ConfigError, load_config
from finegrain.data.jsonl import write_jsonl
from finegrain.data.records import Annotation, Example, Passage, Response
from finegrain.rewards.base import RewardSource
from finegrain.rewards.card import CARD_FILE, RMCard, calibration_of, load_reward_model
from finegrain.rewards.pairwise_rm import bradley_terry_loss, pairwise_accuracy, train_pairwise_rm
from finegrain.rewards.rm_config import RMTrainConfig
from finegrain.rewards.rm_data import (
    build_span_data,
    completeness_data,
    encode_sequence,
    encode_span,
    plan_windows,
    preference_data,
    prompt_text,
    span_categories,
    split_file,
)
from finegrain.rewards.span_rm import count_binary, train_span_rm, weighted_marker_loss
from finegrain.segment import segment_text
from rm_helpers import BAD, GOOD, make_tiny_bert, qa_example, tiny_cfg

# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    from finegrain.models import load_tokenizer

    return load_tokenizer("minilm-l6", padding_side="right")


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


# --- config --------------------------------------------------------------------------------------


def test_config_rejects_bad_values_naming_the_field():
    with pytest.raises(ConfigError, match="kind"):
        RMTrainConfig(kind="ranker")
    with pytest.raises(ConfigError, match="pairwise RM; use kind=pairwise"):
        RMTrainConfig(kind="span", category="completeness")
    with pytest.raises(ConfigError, match="category"):
        RMTrainConfig(kind="pairwise", category="relevance")
    with pytest.raises(ConfigError, match="threshold"):
        load_config(RMTrainConfig, None, ["threshold=1.5"])
    cfg = RMTrainConfig(category="factuality")
    assert (cfg.span_level, cfg.with_passages) == ("sentence", True)
    assert (RMTrainConfig().span_level, RMTrainConfig().with_passages) == ("subsentence", False)


def test_unknown_categories_are_a_config_error():
    assert span_categories("relevance", None) == ("Irrelevant", "Redundant", "Incoherent")
    assert span_categories("factuality", ["Unverifiable"]) == ("Unverifiable",)
    with pytest.raises(ConfigError, match="unknown annotation category 'Rude'"):
        span_categories("relevance", ["Irrelevant", "Rude"])
    with pytest.raises(ConfigError, match="unknown reward-model category 'style'"):
        span_categories("style", None)


# --- data ----------------------------------------------------------------------------------------


def test_span_data_labels_segments_and_skips_empty_responses():
    empty = Example("e", "q", responses=(Response("   ", Annotation()),))
    data = build_span_data([qa_example(0), qa_example(1, bad_second=False), empty], ["Irrelevant"], "sentence")
    assert data.empty_skipped == 1
    assert [it.labels for it in data.items] == [(0, 1), (0, 0)]
    assert [len(it.segments) for it in data.items] == [2, 2]


def test_preference_pairs_drop_ties_and_orient_better_first():
    data = preference_data([qa_example(0)])
    # (0 vs 1: second better) -> (1, 0); (0 vs 2) involves the empty response: dropped; (1 vs 2) tie
    assert data.groups[0].pairs == ((1, 0),)
    assert (data.ties_dropped, data.empty_dropped) == (1, 1)


def test_completeness_pairs_follow_coverage_of_the_corrected_response():
    corrected = "alpha beta gamma delta"
    ex = Example(
        "c", "q",
        responses=(Response("alpha beta", Annotation(corrected=corrected)), Response("alpha beta gamma delta"),
                   Response("alpha beta."), Response("zeta")),
    )
    data = completeness_data([ex], "rouge1", margin=0.1)
    # coverage 0.5, 1.0, 0.5, 0.0: responses 0 and 2 tie (dropped), every other pair is ordered
    assert sorted(data.groups[0].pairs) == [(0, 3), (1, 0), (1, 2), (1, 3), (2, 3)]
    assert data.ties_dropped == 1


def test_split_is_fixed_by_the_seed_and_keeps_records(tmp_path):
    src = tmp_path / "all.json"
    src.write_text(json.dumps([{"question": f"q{i}"} for i in range(10)]))
    a = split_file(src, 7, 3, tmp_path / "a.json", tmp_path / "b.json")
    first = (tmp_path / "a.json").read_text(), (tmp_path / "b.json").read_text()
    split_file(src, 7, 3, tmp_path / "a.json", tmp_path / "b.json")
    assert a == (7, 3) and first == ((tmp_path / "a.json").read_text(), (tmp_path / "b.json").read_text())
    got = json.loads(first[0]) + json.loads(first[1])
    assert sorted(r["question"] for r in got) == [f"q{i}" for i in range(10)]
    with pytest.raises(ConfigError, match="--train"):
        split_file(src, 10, 0, tmp_path / "a.json", tmp_path / "b.json")


# --- encoding ------------------------------------------------------------------------------------


def test_plan_windows_groups_whole_segments():
    # budget 10: each segment costs its tokens + 1 marker
    assert plan_windows([3, 3, 3, 3], 10) == [(0, 2), (2, 4)]
    assert plan_windows([2, 20, 2], 10) == [(0, 1), (1, 2), (2, 3)]  # an over-long segment stands alone
    assert plan_windows([], 10) == []


@pytest.mark.embedded  # the embedded MiniLM tokenizer
def test_markers_follow_the_last_token_of_each_segment(tokenizer):
    text = f"{GOOD} {BAD}"
    segs = segment_text(text, "sentence")
    (inp,) = encode_span(tokenizer, "question: where?", text, segs, 128, tokenizer.sep_token_id)
    tokens = tokenizer.convert_ids_to_tokens(inp.input_ids)
    assert inp.segment_indices == [0, 1]
    assert [tokens[p] for p in inp.marker_positions] == ["[SEP]", "[SEP]"]
    assert [tokens[p - 1] for p in inp.marker_positions] == [".", "."]
    assert inp.token_type_ids[inp.marker_positions[0]] == 1  # markers belong to the response


@pytest.mark.embedded  # the embedded MiniLM tokenizer
def test_long_prompt_is_cut_never_the_response(tokenizer):
    ex = Example("x", "Where is it?", passages=(Passage("P", tuple(f"Filler sentence {i}." for i in range(200))),))
    prompt = prompt_text(ex, True)
    text = f"{GOOD} {BAD}"
    (inp,) = encode_span(tokenizer, prompt, text, segment_text(text, "sentence"), 64, tokenizer.sep_token_id)
    assert len(inp.input_ids) <= 64
    decoded = tokenizer.decode(inp.input_ids)
    assert "where is it?" in decoded and decoded.count("filler") < 30  # the question stays, passages are cut
    assert "bananas are yellow and sweet, like the sun." in decoded  # the whole response is there
    seq = encode_sequence(tokenizer, prompt, text, 64)
    assert len(seq.input_ids) <= 64 and not seq.response_cut
    assert "like the sun." in tokenizer.decode(seq.input_ids)
    # the prompt (over 512 tokens) is measured whole before it is cut: no "longer than the maximum
    # sequence length" warning from transformers, which would read as an error in every QA PPO step
    from finegrain.models import load_tokenizer

    fresh = load_tokenizer("minilm-l6", padding_side="right")
    assert len(fresh(prompt, add_special_tokens=False, verbose=False)["input_ids"]) > fresh.model_max_length
    encode_span(fresh, prompt, text, segment_text(text, "sentence"), 64, fresh.sep_token_id)
    encode_sequence(fresh, prompt, text, 64)
    assert not fresh.deprecation_warnings.get("sequence-length-is-longer-than-the-specified-maximum")


@pytest.mark.embedded  # the embedded MiniLM tokenizer
def test_over_long_response_is_read_in_windows_of_whole_segments(tokenizer):
    text = " ".join(f"Sentence number {i} says something about towers." for i in range(30))
    segs = segment_text(text, "sentence")
    inputs = encode_span(tokenizer, "question: towers?", text, segs, 64, tokenizer.sep_token_id)
    assert len(inputs) > 1
    assert all(len(x.input_ids) <= 64 for x in inputs)
    assert [j for x in inputs for j in x.segment_indices] == list(range(len(segs)))  # each segment once, in order
    for x in inputs:
        assert "question : towers?" in tokenizer.decode(x.input_ids) or "question: towers?" in tokenizer.decode(x.input_ids)
    # one segment longer than the window keeps its end (where its marker is)
    huge = "word " * 300 + "end."
    (only,) = encode_span(tokenizer, "q", huge, segment_text(huge, "sentence"), 64, tokenizer.sep_token_id)
    assert len(only.input_ids) <= 64
    assert tokenizer.convert_ids_to_tokens(only.input_ids)[only.marker_positions[0] - 2 : only.marker_positions[0]] == ["end", "."]


# --- maths ---------------------------------------------------------------------------------------


def test_bradley_terry_loss_on_hand_values():
    better, worse = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0])
    expected = (-math.log(1 / (1 + math.exp(-2.0))) + math.log(2.0)) / 2
    assert bradley_terry_loss(better, worse).item() == pytest.approx(expected, rel=1e-6)
    assert pairwise_accuracy([[1.0, 0.5, 0.5]], [[(0, 1), (1, 2), (2, 0)]]) == (1, 3)  # a tie is not right


def test_weighted_marker_loss_counts_markers_only():
    logits = torch.zeros(1, 3, 2)
    logits[0, 1] = torch.tensor([0.0, math.log(3.0)])  # P(error) = 0.75 at the marker
    labels = torch.tensor([[-100, 1, -100]])
    assert weighted_marker_loss(logits, labels, 1.0).item() == pytest.approx(-math.log(0.75), rel=1e-6)
    labels = torch.tensor([[-100, 1, 0]])  # two markers; the error one weighs 3
    expected = (3 * -math.log(0.75) + -math.log(0.5)) / 4
    assert weighted_marker_loss(logits, labels, 3.0).item() == pytest.approx(expected, rel=1e-6)


def test_binary_counts():
    c = count_binary([1, 1, 0, 0, 1], [1, 0, 1, 0, 1])
    assert (c.tp, c.fp, c.fn, c.tn) == (2, 1, 1, 1)
    assert (c.accuracy, c.precision, c.recall) == (0.6, 2 / 3, 2 / 3)
    assert c.f1 == pytest.approx(2 / 3)
    assert count_binary([0, 0], [0, 0]).f1 == 0.0
    assert calibration_of([1.0, 3.0]).mean == 2.0 and calibration_of([1.0, 3.0]).std == 1.0
    assert calibration_of([2.0, 2.0]).std == 1.0  # no spread: never divide by zero


# --- training smoke tests ------------------------------------------------------------------------


@pytest.mark.embedded  # the embedded MiniLM tokenizer
def test_span_rm_trains_saves_card_and_scores(tmp_path, tiny_backbone):
    train = [qa_example(i, bad_second=i % 2 == 0) for i in range(12)]
    cfg = tiny_cfg(tiny_backbone, kind="span", category="relevance", level="sentence", epochs=8.0)
    before = torch.get_num_threads()
    card = train_span_rm(cfg, train, tmp_path / "rm", eval_examples=train[:4], log=lambda s: None)
    assert torch.get_num_threads() == before and card.training["threads"] == 1  # threads=1 only while training
    assert card.training["epoch_losses"][-1] < card.training["epoch_losses"][0]
    saved = json.loads((tmp_path / "rm" / CARD_FILE).read_text())
    for key in ("kind", "categories", "level", "label_map", "input_template", "backbone", "tokenizer", "data",
                "training", "calibration", "metrics", "truncation"):
        assert key in saved
    assert saved["categories"] == ["Irrelevant", "Redundant", "Incoherent"] and saved["level"] == "sentence"
    assert saved["input_template"] == "[CLS] question: {question} [SEP] {segment 1} [SEP] {segment 2} [SEP] ... [SEP]"
    assert saved["metrics"]["segments"] == 8 and 0.0 <= saved["metrics"]["f1"] <= 1.0
    assert 0.0 <= saved["calibration"]["mean"] <= 1.0 and saved["calibration"]["count"] == 24

    rm = load_reward_model(tmp_path / "rm", bf16=False)
    assert isinstance(rm, RewardSource) and (rm.name, rm.density) == ("relevance", "sentence")
    ex = train[0]
    out = rm.score([ex, ex, ex], [ex.responses[0].text, "", "One short sentence."])
    assert out.scores.shape == (3, 2)
    assert out.mask.tolist() == [[True, True], [False, False], [True, False]]
    assert out.char_ends[0].tolist() == [len(GOOD) + 1, len(ex.responses[0].text)]
    assert ((out.scores >= 0) & (out.scores <= 1)).all()


@pytest.mark.embedded  # the embedded MiniLM tokenizer
def test_pairwise_rm_trains_and_scores_sequences(tmp_path, tiny_backbone):
    train = [qa_example(i) for i in range(8)]
    cfg = tiny_cfg(tiny_backbone, kind="pairwise", category="completeness", margin=0.05, epochs=6.0, batch_size=2)
    card = train_pairwise_rm(cfg, train, tmp_path / "rm", eval_examples=train[:4], log=lambda s: None)
    assert card.training["epoch_losses"][-1] < card.training["epoch_losses"][0]
    assert card.kind == "pairwise" and card.level == "sequence" and card.score == "raw"
    assert card.calibration.count == 16 and card.calibration.std > 0  # two non-empty responses per prompt
    assert card.metrics["pairs"] > 0 and 0.0 <= card.metrics["accuracy"] <= 1.0

    rm = load_reward_model(tmp_path / "rm", bf16=False)
    assert isinstance(rm, RewardSource) and (rm.name, rm.density) == ("completeness", "sequence")
    out = rm.score(train[:2], ["Some answer.", ""])
    assert out.scores.shape == (2, 1) and out.mask.tolist() == [[True], [False]]
    assert out.char_ends[0, 0].item() == len("Some answer.")
    assert (rm.mean, rm.std) == (card.calibration.mean, card.calibration.std)


@pytest.mark.embedded  # the embedded MiniLM tokenizer
def test_training_without_usable_data_says_why(tmp_path, tiny_backbone):
    from finegrain.errors import TrainingError

    unannotated = [Example("u", "q", responses=(Response("Hello there."),))]
    with pytest.raises(TrainingError, match="no annotated, non-empty responses"):
        train_span_rm(tiny_cfg(tiny_backbone), unannotated, tmp_path / "a", log=lambda s: None)
    with pytest.raises(TrainingError, match="no pairs"):
        train_pairwise_rm(tiny_cfg(tiny_backbone, kind="pairwise", category="preference"), unannotated, tmp_path / "b", log=lambda s: None)


# --- CLI -----------------------------------------------------------------------------------------


@pytest.mark.embedded  # the embedded MiniLM tokenizer
def test_cli_train_eval_on_finegrain_jsonl(tmp_path, tiny_backbone, capsys):
    data = tmp_path / "fb.jsonl"
    write_jsonl(data, [qa_example(i, bad_second=i % 2 == 0) for i in range(6)])
    out = tmp_path / "rm"
    rc = main(["rm", "train", "--kind", "span", "--category", "relevance", "--train-file", str(data), "--out", str(out),
               f"backbone={tiny_backbone}", "max_length=128", "epochs=2", "bf16=false", "level=sentence", "threads=1"])
    assert rc == 0 and (out / CARD_FILE).is_file()
    printed = capsys.readouterr()
    assert re.search(r"epoch 1/2: loss \d\.\d{3} \(\d+\.\d min\)", printed.out + printed.err)  # a line per epoch
    assert "epoch 2/2: loss" in printed.out + printed.err
    rc = main(["rm", "eval", str(out), str(data), "--json", str(tmp_path / "m.json"), "--update-card"])
    assert rc == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["responses"] == 6 and metrics["segments"] == 12
    assert RMCard.load(out).metrics == metrics
    assert "segments: 12" in capsys.readouterr().out


@pytest.mark.embedded  # the embedded MiniLM tokenizer
def test_cli_bad_inputs_give_one_line_errors(tmp_path, tiny_backbone, capsys):
    data = tmp_path / "fb.jsonl"
    write_jsonl(data, [qa_example(0)])
    rc = main(["rm", "train", "--train-file", str(data), "--out", str(tmp_path / "x"), f"backbone={tiny_backbone}",
               "categories=[Irrelevant,Rude]"])
    assert rc == 2 and "unknown annotation category 'Rude'" in capsys.readouterr().err
    rc = main(["rm", "eval", str(tmp_path), str(data)])
    assert rc == 2 and "finegrain_rm.json is missing" in capsys.readouterr().err
    rc = main(["rm", "train", "--train-file", str(tmp_path / "nope.json"), "--out", str(tmp_path / "x")])
    assert rc == 2 and "nope.json" in capsys.readouterr().err


@pytest.mark.embedded  # the embedded MiniLM tokenizer
def test_cli_pairwise_from_qa_feedback_json(tmp_path, tiny_backbone, capsys):
    from finegrain.data.qa_feedback import write_qa_feedback

    data = tmp_path / "fb.json"
    write_qa_feedback(data, [qa_example(i) for i in range(4)])
    out = tmp_path / "pref"
    rc = main(["rm", "train", "--kind", "pairwise", "--category", "preference", "--train-file", str(data),
               "--eval-file", str(data), "--out", str(out), f"backbone={tiny_backbone}", "max_length=128",
               "epochs=1", "bf16=false", "threads=1"])
    assert rc == 0
    card = RMCard.load(out)
    assert card.data["train_pairs"] == 4 and card.data["dropped_ties_or_close"] == 4  # one tie per prompt
    assert card.metrics["pairs"] == 4
    rc = main(["rm", "eval", str(out), str(data), "--threads", "1"])
    assert rc == 0 and "accuracy" in capsys.readouterr().out
