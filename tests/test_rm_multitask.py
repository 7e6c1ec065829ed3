"""Two ways of learning more from few annotations: one multi-task span RM (a relevance and a factuality
head on one shared backbone, each head's inputs built as its single-category RM's), and an ensemble of
RMs trained with consecutive seeds whose predictions are averaged. Tiny BERTs built in-test."""

from __future__ import annotations

import json
import math

import pytest
import torch

from finegrain.cli import main
from finegrain.config import ConfigError, load_config
from finegrain.data.jsonl import write_jsonl
from finegrain.data.records import Annotation, Example, Response, Span
from finegrain.rewards.card import RMCard, load_reward_model
from finegrain.rewards.pairwise_rm import PairwiseRewardModel, train_pairwise_rm
from finegrain.rewards.rm_config import RMTrainConfig
from finegrain.rewards.rm_cv import cross_validate, fold_split
from finegrain.rewards.rm_data import encode_span, prompt_text, span_tasks
from finegrain.rewards.span_rm import IGNORE, SpanRewardModel, head_p_error, train_span_rm, weighted_marker_loss
from finegrain.segment import segment_text
from rm_helpers import BAD, GOOD, make_tiny_bert, qa_example, tiny_cfg

QUIET = dict(log=lambda s: None)
TASKS = ["relevance", "factuality"]


def two_kinds(i: int) -> Example:
    """A response whose second sentence is irrelevant (even i) and whose first is wrongly grounded (i % 3 == 0)."""
    ex = qa_example(i, bad_second=i % 2 == 0)
    resp = ex.responses[0]
    spans = resp.annotation.spans + ((Span(0, len(GOOD), "Wrong-Grounding"),) if i % 3 == 0 else ())
    return Example(ex.id, ex.prompt, (Response(resp.text, Annotation(spans, corrected=resp.annotation.corrected)),) + ex.responses[1:],
                   ex.passages, ex.preferences)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def multitask(tiny_bert, tmp_path_factory):
    """A multi-task RM trained once for the tests that read it: (folder, card, training examples)."""
    folder = tmp_path_factory.mktemp("mt") / "rm"
    train = [two_kinds(i) for i in range(8)]
    cfg = tiny_cfg(tiny_bert, kind="span", category="relevance", tasks=TASKS, epochs=4.0, tune_threshold=True)
    card = train_span_rm(cfg, train, folder, eval_examples=train[:4], **QUIET)
    return folder, card, train


# --- pure maths --------------------------------------------------------------------------------------


def test_marker_loss_reads_each_markers_own_head_by_hand():
    # one input of 3 positions, 2 heads (4 columns); position 0 is no marker
    logits = torch.tensor([[[9.0, -9.0, 9.0, -9.0],
                            [0.0, math.log(3.0), 50.0, -50.0],  # head 0, error: P = 3/4; head 1's columns are ignored
                            [-50.0, 50.0, 0.0, 0.0]]])  # head 1, no error: P = 1/2; head 0's columns are ignored
    labels = torch.tensor([[IGNORE, 1, 2]])  # column 2h + y: head 0 error, head 1 no error
    expected = (2.0 * math.log(4 / 3) + 1.0 * math.log(2.0)) / 3.0  # weighted mean, error weight 2
    assert weighted_marker_loss(logits, labels, 2.0).item() == pytest.approx(expected, rel=1e-6)
    one_head = logits[..., :2]
    plain = torch.nn.functional.cross_entropy(one_head.reshape(-1, 2), torch.tensor([IGNORE, 1, 0]), ignore_index=IGNORE)
    assert weighted_marker_loss(one_head, torch.tensor([[IGNORE, 1, 0]]), 1.0).item() == pytest.approx(plain.item())
    # one weight per head: head 0's error weighs 3, head 1's (a no-error marker here) would weigh 5
    assert weighted_marker_loss(logits, labels, [3.0, 5.0]).item() == pytest.approx((3.0 * math.log(4 / 3) + math.log(2.0)) / 4.0, rel=1e-6)
    both_error = torch.tensor([[IGNORE, 1, 3]])  # head 1 now an error: P = 1/2, weight 5
    assert weighted_marker_loss(logits, both_error, [3.0, 5.0]).item() == pytest.approx((3.0 * math.log(4 / 3) + 5.0 * math.log(2.0)) / 8.0, rel=1e-6)
    assert weighted_marker_loss(logits, labels, [2.0, 2.0]).item() == pytest.approx(expected, rel=1e-6)  # equal weights: the scalar's
    assert head_p_error(logits, 0)[0, 1].item() == pytest.approx(0.75)
    assert head_p_error(logits, 1)[0, 2].item() == pytest.approx(0.5)


# --- configuration -----------------------------------------------------------------------------------


def test_bad_tasks_and_ensemble_settings_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"tasks: .*multi-task heads are for kind=span"):
        RMTrainConfig(kind="pairwise", category="preference", tasks=["preference", "completeness"])
    with pytest.raises(ConfigError, match=r"tasks: 'completeness' is a pairwise RM category"):
        RMTrainConfig(tasks=["relevance", "completeness"])
    with pytest.raises(ConfigError, match=r"tasks: \['relevance'\]: name at least two"):
        RMTrainConfig(tasks=["relevance"])
    with pytest.raises(ConfigError, match=r"tasks: .*at least two different"):
        RMTrainConfig(tasks=["relevance", "relevance"])
    with pytest.raises(ConfigError, match=r"tasks: \['factuality', 'style'\] does not include category 'relevance'"):
        RMTrainConfig(tasks=["factuality", "style"])
    with pytest.raises(ConfigError, match=r"tasks: unknown reward-model category 'style'"):
        span_tasks(RMTrainConfig(tasks=["relevance", "style"]))
    with pytest.raises(ConfigError, match="ensemble"):
        RMTrainConfig(ensemble=0)
    cfg = load_config(RMTrainConfig, None, ["tasks=[relevance,factuality]", "level=sentence", "ensemble=3"])
    rel, fact = span_tasks(cfg)  # `category` keeps the config's settings, the other head its defaults
    assert (rel.name, rel.level, rel.passages) == ("relevance", "sentence", False)
    assert (fact.name, fact.level, fact.passages, fact.categories) == ("factuality", "sentence", True, ("Unverifiable", "Wrong-Grounding"))
    assert cfg.ensemble == 3 and RMTrainConfig().head_names == ["relevance"]
    weighted = load_config(RMTrainConfig, None, ["tasks=[relevance,factuality]", "task_error_weight={factuality: 3}", "error_weight=1.5"])
    assert weighted.head_error_weights() == [1.5, 3.0]
    with pytest.raises(ConfigError, match=r"task_error_weight: 'style' is not a head of this RM; its heads: relevance, factuality"):
        RMTrainConfig(tasks=["relevance", "factuality"], task_error_weight={"style": 2.0})
    with pytest.raises(ConfigError, match=r"task_error_weight.factuality: 0.0: an error weight must be > 0"):
        RMTrainConfig(tasks=["relevance", "factuality"], task_error_weight={"factuality": 0.0})


def _card_json(**extra) -> dict:
    return {"kind": "span", "name": "relevance", "level": "sentence", "categories": ["Irrelevant"], "label_map": {},
            "score": "p_error", "input_template": "", "passages": False, "truncation": "", "marker": "[SEP]",
            "max_length": 128, "backbone": "minilm-l6", "tokenizer": "BertTokenizer", "data": {"train_inputs": 4},
            "training": {"threshold": 0.5, "lr": 1e-3}, "calibration": {"mean": 0.5, "std": 0.1, "count": 3}, "metrics": {},
            "version": 1, **extra}


def test_a_card_gives_each_heads_view_and_refuses_malformed_heads(tmp_path):
    from finegrain.rewards.card import CARD_FILE

    single = tmp_path / "single"
    single.mkdir()
    (single / CARD_FILE).write_text(json.dumps(_card_json()))
    card = RMCard.load(single)
    assert card.heads == [] and card.members == [] and card.for_head("relevance") is card
    with pytest.raises(ConfigError, match=r"rewards\[2\]\.head: 'factuality': this RM has one head, 'relevance'"):
        card.for_head("factuality", "rewards[2].head")

    head = {"name": "factuality", "level": "sentence", "categories": ["Unverifiable"], "passages": True, "input_template": "t",
            "calibration": {"mean": 0.2, "std": 0.3, "count": 7}, "training": {"threshold": 0.4}, "data": {"train_responses": 5},
            "metrics": {"f1": 0.5}}
    rel = {**head, "name": "relevance", "level": "subsentence", "passages": False, "training": {"threshold": 0.6}}
    multi = tmp_path / "multi"
    multi.mkdir()
    (multi / CARD_FILE).write_text(json.dumps(_card_json(name="relevance+factuality", heads=[rel, head])))
    view = RMCard.load(multi).for_head("factuality")
    assert (view.name, view.level, view.passages, view.head_index, view.metrics) == ("factuality", "sentence", True, 1, {"f1": 0.5})
    assert view.training == {"threshold": 0.4, "lr": 1e-3} and view.data == {"train_inputs": 4, "train_responses": 5}
    assert view.calibration.count == 7 and view.for_head("relevance").training["threshold"] == 0.6
    from finegrain.experiments.qa.task import check_reward_roles
    from finegrain.rl.config import RewardConfig

    # the QA pipeline checks a source's head against the role it fills
    check_reward_roles("x.yaml", [RewardConfig(kind="rm", path=str(multi), head="factuality", mapping="binary")])
    with pytest.raises(ConfigError, match=r"x.yaml rewards\[0\]\.path: .* 'factuality' at sentence level, but the relevance source"):
        check_reward_roles("x.yaml", [RewardConfig(kind="rm", name="relevance", path=str(multi), head="factuality", mapping="binary")])
    del head["calibration"]
    (multi / CARD_FILE).write_text(json.dumps(_card_json(heads=[rel, head])))
    with pytest.raises(ConfigError, match=r"field heads\[1\]: 'calibration' is missing"):
        RMCard.load(multi)


# --- one multi-task model --------------------------------------------------------------------------------


@pytest.mark.embedded  # the embedded MiniLM tokenizer
def test_multitask_rm_trains_saves_and_loads_each_head(multitask, one_thread):
    folder, card, train = multitask
    assert card.head_names == TASKS and card.name == "relevance+factuality" and len(card.label_map) == 4
    rel_head, fact_head = card.heads
    assert (rel_head["level"], rel_head["passages"], fact_head["level"], fact_head["passages"]) == ("subsentence", False, "sentence", True)
    assert "context" in fact_head["input_template"] and "context" not in rel_head["input_template"]
    assert rel_head["data"]["train_error_segments"] > 0 and fact_head["data"]["train_error_segments"] == 3  # q0, q3, q6
    assert rel_head["metrics"]["f1_ci"] and fact_head["metrics"]["baselines"]["flag_all"]
    assert "threshold_on_train" in rel_head["training"] and rel_head["training"]["threshold"] == rel_head["training"]["threshold_on_train"]
    assert rel_head["training"]["error_weight"] == fact_head["training"]["error_weight"] == 1.0  # no task_error_weight: error_weight for both
    assert card.training["epoch_losses"][-1] < card.training["epoch_losses"][0]
    assert RMCard.load(folder) == card  # the card round trip
    assert card.for_head("factuality").calibration.count == 8 * 2  # two sentences per response

    with pytest.raises(ConfigError, match="multi-task RM with heads relevance, factuality"):
        load_reward_model(folder)
    with pytest.raises(ConfigError, match="head: 'completeness' is not a head"):
        load_reward_model(folder, head="completeness")
    rel = load_reward_model(folder, head="relevance", bf16=False)
    fact = rel.for_head("factuality")
    assert fact.models[0] is rel.models[0] and (rel.level, fact.level) == ("subsentence", "sentence")
    assert fact.card.training["threshold"] == fact_head["training"]["threshold"]

    # each head reads its inputs as its single-category RM would and its own two logit columns
    ex, text = train[0], train[0].responses[0].text
    for rm, passages, level, head in ((rel, False, "subsentence", 0), (fact, True, "sentence", 1)):
        segments = segment_text(text, level)
        (inp,) = encode_span(rm.tokenizer, prompt_text(ex, passages), text, segments, card.max_length, rm.marker_id)
        with torch.no_grad():
            logits = rm.models[0](input_ids=torch.tensor([inp.input_ids]), token_type_ids=torch.tensor([inp.token_type_ids])).logits
        expected = logits[0, inp.marker_positions][:, 2 * head : 2 * head + 2].softmax(-1)[:, 1]
        probs, ends = rm.probabilities([ex], [text])
        assert probs[0] == pytest.approx(expected.tolist(), abs=1e-5) and ends[0] == [s.end for s in segments]
    out = fact.score([ex, ex], [text, ""])
    assert out.scores.shape == (2, 2) and out.mask.tolist() == [[True, True], [False, False]]


@pytest.mark.embedded  # the embedded MiniLM tokenizer
def test_ppo_sources_pick_heads_of_one_multitask_rm_and_share_it(multitask, tmp_path, one_thread):
    from finegrain.rl.config import RewardConfig
    from finegrain.rl.sources import build_sources, check_sources

    folder, card, train = multitask
    rewards = [RewardConfig(kind="rm", path=str(folder), head="relevance", mapping="binary"),
               RewardConfig(kind="rm", path=str(folder), head="factuality", mapping="binary", reward_ok=0.5, reward_error=-0.5)]
    cards = check_sources(rewards)
    assert [c.name for c in cards] == TASKS and [r.label for r in rewards] == TASKS
    sources = build_sources(rewards, cards, device="cpu", bf16=False)
    assert sources[1].source.models[0] is sources[0].source.models[0]  # one backbone in memory for both
    assert sources[1].term.mapping.threshold == card.heads[1]["training"]["threshold"]
    out = sources[1].source.score(train[:2], [GOOD, f"{GOOD} {BAD}"])
    assert out.scores.shape == (2, 2) and torch.isfinite(out.scores).all()

    with pytest.raises(ConfigError, match=r"rewards\[0\]\.head: .* is a multi-task RM; name the category .*relevance, factuality"):
        check_sources([RewardConfig(kind="rm", path=str(folder), mapping="binary")])
    with pytest.raises(ConfigError, match=r"rewards\[0\]\.head: 'completeness' is not a head"):
        check_sources([RewardConfig(kind="rm", path=str(folder), head="completeness", mapping="binary")])
    with pytest.raises(ConfigError, match=r"head: .* applies to kind rm only"):
        RewardConfig(kind="toxicity", head="relevance")


@pytest.mark.embedded  # the embedded MiniLM tokenizer
def test_cli_eval_reports_every_head_with_its_baselines(multitask, tmp_path, capsys, one_thread):
    import shutil

    folder, card, train = multitask
    copy = tmp_path / "rm"
    shutil.copytree(folder, copy)
    data = tmp_path / "fb.jsonl"
    write_jsonl(data, train)
    assert main(["rm", "eval", str(copy), str(data), "--json", str(tmp_path / "m.json"), "--reliability", str(tmp_path / "r.png"),
                 "--update-card"]) == 0
    printed = capsys.readouterr().out
    assert "span RM 'relevance'" in printed and "span RM 'factuality'" in printed
    m = json.loads((tmp_path / "m.json").read_text())
    assert list(m) == TASKS
    # factuality: 3 wrongly grounded of 16 sentences; flag all F1 = 2*3 / (2*3 + 13)
    assert m["factuality"]["segments"] == 16 and m["factuality"]["baselines"]["flag_all"]["f1"] == pytest.approx(6 / 19)
    assert (tmp_path / "r-relevance.png").is_file() and (tmp_path / "r-factuality.png").is_file()
    assert RMCard.load(copy).heads[1]["metrics"] == m["factuality"]


# --- an ensemble over seeds --------------------------------------------------------------------------


@pytest.mark.embedded  # the embedded MiniLM tokenizer
def test_span_ensemble_scores_the_mean_of_its_members(tiny_bert, tmp_path, one_thread):
    from transformers import AutoModelForTokenClassification

    train = [qa_example(i, bad_second=i % 2 == 0) for i in range(6)]
    cfg = tiny_cfg(tiny_bert, kind="span", category="relevance", level="sentence", epochs=2.0, ensemble=3, seed=5)
    card = train_span_rm(cfg, train, tmp_path / "rm", **QUIET)
    assert card.members == ["member-0", "member-1", "member-2"] and [m["seed"] for m in card.training["members"]] == [5, 6, 7]
    assert card.training["steps"] == sum(m["steps"] for m in card.training["members"])
    assert RMCard.load(tmp_path / "rm") == card
    rm = load_reward_model(tmp_path / "rm", bf16=False)
    assert len(rm.models) == 3
    examples, texts = train[:3], [r.text for r in (train[0].responses[0], train[1].responses[0], train[2].responses[1])]
    mean, _ = rm.probabilities(examples, texts)
    alone = [SpanRewardModel(AutoModelForTokenClassification.from_pretrained(tmp_path / "rm" / m), rm.tokenizer, card, bf16=False)
             .probabilities(examples, texts)[0] for m in card.members]
    for b in range(3):
        assert mean[b] == pytest.approx([sum(a[b][j] for a in alone) / 3 for j in range(len(mean[b]))], abs=1e-6)
    assert alone[0] != alone[1]  # the seeds made different members
    # the calibration is the averaged prediction's, over the training segments
    assert card.calibration.count == 12


@pytest.mark.embedded  # the embedded MiniLM tokenizer
def test_pairwise_ensemble_scores_the_mean_of_its_members(tiny_bert, tmp_path, one_thread):
    from transformers import AutoModelForSequenceClassification

    train = [qa_example(i) for i in range(4)]
    cfg = tiny_cfg(tiny_bert, kind="pairwise", category="preference", epochs=1.0, batch_size=2, ensemble=2)
    card = train_pairwise_rm(cfg, train, tmp_path / "rm", **QUIET)
    rm = load_reward_model(tmp_path / "rm", bf16=False)
    texts = [r.text for r in train[0].responses]
    mean = rm.raw_scores([train[0]] * 3, texts)
    alone = [PairwiseRewardModel(AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm" / m), rm.tokenizer, card, bf16=False)
             .raw_scores([train[0]] * 3, texts) for m in card.members]
    assert mean == pytest.approx([(a + b) / 2 for a, b in zip(*alone)], abs=1e-6) and alone[0] != alone[1]


# --- cross-validation with each option --------------------------------------------------------------------


@pytest.mark.embedded  # the embedded MiniLM tokenizer
def test_cv_of_a_multitask_rm_reports_each_head_on_the_single_rms_folds(tiny_bert, tmp_path, one_thread):
    examples = [two_kinds(i) for i in range(6)]
    cfg = tiny_cfg(tiny_bert, kind="span", category="relevance", tasks=TASKS, epochs=1.0)
    report = cross_validate(cfg, examples, tmp_path / "mt", folds=2, seed=0, log=lambda s: None)
    assert list(report["tasks"]) == TASKS and report["summary"] == report["tasks"]["relevance"]["summary"]
    for name in TASKS:
        single = cross_validate(tiny_cfg(tiny_bert, kind="span", category=name), examples, tmp_path / f"base-{name}", folds=2,
                                seed=0, baselines_only=True, log=lambda s: None)
        rows = report["tasks"][name]["per_fold"]
        assert [r["baselines"] for r in rows] == [r["baselines"] for r in single["per_fold"]]  # same folds, same segments
        assert all(0 <= r["f1"] <= 1 and r["threshold_tuned"] is not None for r in rows)
        assert "f1" in report["tasks"][name]["summary"] and "flag_all_f1" in report["tasks"][name]["summary"]
    assert (tmp_path / "mt" / "reliability.png").is_file() and (tmp_path / "mt" / "reliability-factuality.png").is_file()
    lines: list[str] = []
    again = cross_validate(cfg, examples, tmp_path / "mt", folds=2, seed=0, log=lines.append)
    assert again["tasks"] == json.loads(json.dumps(report["tasks"])) and sum("reusing" in x for x in lines) == 2  # saved folds hold every head


@pytest.mark.embedded  # the embedded MiniLM tokenizer
def test_cv_of_an_ensemble_evaluates_the_averaged_prediction(tiny_bert, tmp_path, monkeypatch, one_thread):
    import finegrain.rewards.card as card_module

    examples = [qa_example(i, bad_second=i % 2 == 0) for i in range(6)]
    cfg = tiny_cfg(tiny_bert, kind="span", category="relevance", level="sentence", epochs=1.0, ensemble=2)
    scored: list[int] = []
    real = card_module.load_reward_model
    monkeypatch.setattr(card_module, "load_reward_model", lambda *a, **kw: (lambda rm: scored.append(len(rm.models)) or rm)(real(*a, **kw)))
    report = cross_validate(cfg, examples, tmp_path / "ens", folds=2, seed=0, keep_models=True, log=lambda s: None)
    assert scored == [2, 2]  # every fold is scored by both members together
    held = [{e.id for e in h} for _, h in fold_split(examples, 2, 0)]
    for row in report["per_fold"]:
        fold_card = RMCard.load(tmp_path / "ens" / f"fold-{row['fold']}")
        assert fold_card.members == ["member-0", "member-1"] and row["train_cpu_seconds"] == fold_card.training["cpu_seconds"]
        assert row["segments"] == 2 * len(held[row["fold"]])
    key = json.loads((tmp_path / "ens" / "fold-0.json").read_text())["config"]
    assert key["ensemble"] == 2
    plain = cross_validate(tiny_cfg(tiny_bert, kind="span", category="relevance", level="sentence"), examples, tmp_path / "b",
                           folds=2, seed=0, baselines_only=True, log=lambda s: None)
    assert "ensemble" not in json.loads((tmp_path / "b" / "fold-0.json").read_text())["config"]  # older folds keep matching
    assert [r["baselines"] for r in plain["per_fold"]] == [r["baselines"] for r in report["per_fold"]]


def test_cli_cv_of_a_multitask_config_prints_every_head(tmp_path, capsys):
    data = tmp_path / "fb.jsonl"
    write_jsonl(data, [two_kinds(i) for i in range(6)])
    assert main(["rm", "cv", "--file", str(data), "--out", str(tmp_path / "cv"), "--folds", "2", "--baselines-only",
                 "--kind", "span", "--category", "factuality", "tasks=[relevance,factuality]"]) == 0
    printed = capsys.readouterr().out
    assert "factuality (span)" in printed and "relevance head of the same multi-task RM:" in printed
    report = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert report["category"] == "factuality" and list(report["tasks"]) == TASKS
    assert report["tasks"]["relevance"]["summary"]["flag_all_f1"]["mean"] > 0
    assert main(["rm", "cv", "--file", str(data), "--out", str(tmp_path / "x"), "--baselines-only", "tasks=[relevance,preference]"]) == 2
    assert "tasks: 'preference' is a pairwise RM category" in capsys.readouterr().err
