"""Honest RM evaluation: counts, bootstrap intervals, trivial baselines, calibration and threshold
choice on hand-computed inputs; k-fold cross-validation on a tiny BERT (no example in two folds, the
threshold never sees the held-out fold); `rm eval` and `rm cv` from the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from finegrain.cli import main
from finegrain.data.jsonl import write_jsonl
from finegrain.data.records import Annotation, Example, Response, Span
from finegrain.rewards import rm_eval
from finegrain.rewards.rm_cv import cross_validate, fold_split
from rm_helpers import GOOD, make_tiny_bert, qa_example, tiny_cfg

# --- pure statistics -------------------------------------------------------------------------------


def test_count_rows_f1_and_accuracy_by_hand():
    rows = rm_eval.binary_count_rows([[1, 0, 1], [0, 0]], [[1, 1, 0], [0, 1]])
    assert rows.tolist() == [[1, 1, 1, 0], [0, 0, 1, 1]]  # tp fp fn tn per response
    total = rows.sum(0)  # tp 1, fp 1, fn 2, tn 1
    assert rm_eval.f1_of_counts(total) == pytest.approx(2 / 5)
    assert rm_eval.accuracy_of_counts(total) == pytest.approx(2 / 5)
    assert rm_eval.f1_of_counts(np.array([0, 0, 0, 3])) == 0.0  # no positive anywhere
    assert rm_eval.pair_accuracy_of_counts(np.array([[3.0, 4.0], [0.0, 0.0]])).tolist() == [0.75, 0.0]


def test_bootstrap_interval_brackets_the_value_and_is_fixed_by_the_seed():
    rows = np.array([[1, 1]] * 30 + [[0, 1]] * 10, dtype=float)  # 30 of 40 right
    est = rm_eval.estimate(rows, rm_eval.pair_accuracy_of_counts)
    assert est.value == pytest.approx(0.75)
    assert 0.55 < est.low < 0.75 < est.high < 0.9
    assert rm_eval.bootstrap_interval(rows, rm_eval.pair_accuracy_of_counts, seed=3) == \
        rm_eval.bootstrap_interval(rows, rm_eval.pair_accuracy_of_counts, seed=3)
    same = np.array([[1, 1]] * 5, dtype=float)  # no spread between units: a point interval
    assert rm_eval.bootstrap_interval(same, rm_eval.pair_accuracy_of_counts) == (1.0, 1.0)


def test_span_baselines_flag_all_and_none():
    flag_all, flag_none = rm_eval.span_baseline_rows([[1, 0, 0], [1]])
    assert flag_all.sum(0).tolist() == [2, 2, 0, 0] and flag_none.sum(0).tolist() == [0, 0, 2, 2]
    assert rm_eval.f1_of_counts(flag_all.sum(0)) == pytest.approx(2 / 3)  # 2tp / (2tp + fp) = 4/6


def test_ece_and_reliability_bins_by_hand():
    probs = [0.05, 0.15, 0.85, 0.95]
    labels = [0, 1, 1, 1]
    table = rm_eval.reliability_table(probs, labels, bins=2)
    assert [(b.count, b.mean_p, b.error_rate) for b in table] == [(2, pytest.approx(0.1), 0.5), (2, pytest.approx(0.9), 1.0)]
    # |0.1 - 0.5| * 2/4 + |0.9 - 1.0| * 2/4
    assert rm_eval.expected_calibration_error(probs, labels, bins=2) == pytest.approx(0.25)
    assert rm_eval.reliability_table([1.0], [1], bins=4)[-1].count == 1  # P = 1 lands in the last bin


def test_best_threshold_maximises_f1_on_the_given_predictions():
    probs = [0.9, 0.8, 0.3, 0.2, 0.1]
    labels = [1, 0, 1, 0, 0]
    # flag top 1: F1 2/3; top 2: 1/2; top 3: 4/5; top 4: 2/3; all: 4/7 -> cut between 0.3 and 0.2
    t = rm_eval.best_threshold(probs, labels)
    assert t == pytest.approx(0.25)
    assert rm_eval.best_threshold([0.4, 0.4, 0.1], [1, 0, 0]) == pytest.approx(0.25)  # ties are never split
    assert rm_eval.best_threshold([0.3, 0.7], [0, 0]) == 0.5  # nothing to find


def test_pairwise_baselines_by_hand():
    lengths = [[10, 20, 20], [5, 3]]
    pairs = [[(1, 0), (2, 1), (0, 2)], [(0, 1)]]
    rows = rm_eval.longer_wins_rows(lengths, pairs)
    assert rows.tolist() == [[1.5, 3.0], [1.0, 1.0]]  # right, right (tie: half), wrong; right
    assert rm_eval.first_listed_share(pairs) == pytest.approx(2 / 4)
    assert rm_eval.majority_rows(pairs, first_wins=True).tolist() == [[1.0, 3.0], [1.0, 1.0]]
    assert rm_eval.majority_rows(pairs, first_wins=False).tolist() == [[2.0, 3.0], [0.0, 1.0]]


def test_folds_hold_every_example_out_exactly_once():
    folds = rm_eval.kfold_indices(23, 5, seed=1)
    flat = [i for f in folds for i in f]
    assert sorted(flat) == list(range(23)) and {len(f) for f in folds} == {4, 5}
    assert folds == rm_eval.kfold_indices(23, 5, seed=1) != rm_eval.kfold_indices(23, 5, seed=2)
    examples = [qa_example(i) for i in range(7)]
    splits = fold_split(examples, 3, seed=0)
    for train, held in splits:
        assert not {e.id for e in train} & {e.id for e in held} and len(train) + len(held) == 7
    assert sorted(e.id for _, held in splits for e in held) == sorted(e.id for e in examples)
    curve = fold_split(examples, 3, seed=0, train_examples=2)  # a learning curve keeps the held-out folds
    assert [h for _, h in curve] == [h for _, h in splits] and all(len(t) == 2 and set(t) <= set(s) for (t, _), (s, _) in zip(curve, splits))
    with pytest.raises(ValueError, match="folds"):
        rm_eval.kfold_indices(3, 5)
    assert rm_eval.mean_and_spread([1.0, 3.0]) == (2.0, pytest.approx(2 ** 0.5))


def test_reliability_plot_is_a_png(tmp_path):
    table = rm_eval.reliability_table([0.1, 0.4, 0.8], [0, 1, 1])
    path = rm_eval.plot_reliability(tmp_path / "r.png", table, "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- cross-validation on a tiny model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def _relabel(ex: Example) -> Example:
    """The same example with its first sentence marked irrelevant too (different gold labels)."""
    resp = ex.responses[0]
    spans = resp.annotation.spans + (Span(0, len(GOOD), "Irrelevant"),)
    return Example(ex.id, ex.prompt, (Response(resp.text, Annotation(spans, corrected=resp.annotation.corrected)),) + ex.responses[1:],
                   ex.passages, ex.preferences)


@pytest.mark.embedded  # the embedded MiniLM tokenizer
def test_cv_trains_on_training_folds_only_and_tunes_the_threshold_there(tmp_path, tiny_backbone, monkeypatch, one_thread):
    import finegrain.rewards.span_rm as span_rm

    examples = [qa_example(i, bad_second=i % 2 == 0) for i in range(8)]
    seen: list[set[str]] = []
    real = span_rm.train_span_rm
    monkeypatch.setattr(span_rm, "train_span_rm", lambda cfg, train, *a, **kw: seen.append({e.id for e in train}) or real(cfg, train, *a, **kw))
    cfg = tiny_cfg(tiny_backbone, kind="span", category="relevance", level="sentence", epochs=2.0)
    report = cross_validate(cfg, examples, tmp_path / "a", folds=2, seed=0, log=lambda s: None)
    held = [{e.id for e in h} for _, h in fold_split(examples, 2, 0)]
    assert [s & h for s, h in zip(seen, held)] == [set(), set()]  # never trained on its held-out fold
    assert report["summary"]["f1"]["spread"] >= 0 and len(report["per_fold"]) == 2
    for row in report["per_fold"]:
        n_bad = sum(int(e.id[1:]) % 2 == 0 for e in examples if e.id in held[row["fold"]])
        flag_all_f1 = 2 * n_bad / (2 * n_bad + (8 - n_bad))  # 8 segments, n_bad errors: 2tp / (2tp + fp)
        assert row["segments"] == 8 and 0 <= row["f1"] <= 1 and row["baselines"]["flag_all"]["f1"] == pytest.approx(flag_all_f1)
    assert (tmp_path / "a" / "reliability.png").is_file() and json.loads((tmp_path / "a" / "cv.json").read_text())["folds"] == 2
    assert [p.name for p in (tmp_path / "a").iterdir() if p.is_dir()] == []  # fold models are not kept

    # relabel the held-out examples of fold 0: its threshold (chosen on training folds) must not move
    changed = [_relabel(e) if e.id in held[0] else e for e in examples]
    again = cross_validate(cfg, changed, tmp_path / "b", folds=2, seed=0, log=lambda s: None)
    assert again["per_fold"][0]["threshold_tuned"] == report["per_fold"][0]["threshold_tuned"]
    assert again["per_fold"][0]["baselines"] != report["per_fold"][0]["baselines"]  # the held-out labels did change


@pytest.mark.embedded  # the embedded MiniLM tokenizer
def test_cli_eval_reports_baselines_intervals_and_reliability(tmp_path, tiny_backbone, capsys, one_thread):
    data = tmp_path / "fb.jsonl"
    write_jsonl(data, [qa_example(i, bad_second=i % 2 == 0) for i in range(6)])
    out = tmp_path / "rm"
    assert main(["rm", "train", "--kind", "span", "--category", "relevance", "--train-file", str(data), "--out", str(out),
                 f"backbone={tiny_backbone}", "max_length=128", "epochs=1", "bf16=false", "level=sentence", "threads=1"]) == 0
    capsys.readouterr()
    assert main(["rm", "eval", str(out), str(data), "--json", str(tmp_path / "m.json"), "--reliability", str(tmp_path / "r.png")]) == 0
    printed = capsys.readouterr().out
    assert "| flag all 0.400" in printed  # 3 errors in 12 segments: 2*3 / (2*3 + 9) and "flag none" in printed and "bootstrap" in printed
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["baselines"]["flag_none"]["accuracy"] == pytest.approx(0.75) and len(metrics["f1_ci"]) == 2
    assert 0 <= metrics["ece"] <= 1 and (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"

    pref = tmp_path / "pref"
    assert main(["rm", "train", "--kind", "pairwise", "--category", "preference", "--train-file", str(data), "--out", str(pref),
                 f"backbone={tiny_backbone}", "max_length=128", "epochs=1", "bf16=false", "threads=1"]) == 0
    capsys.readouterr()
    assert main(["rm", "eval", str(pref), str(data), "--json", str(tmp_path / "p.json")]) == 0
    assert "longer wins" in capsys.readouterr().out
    p = json.loads((tmp_path / "p.json").read_text())
    # every prompt: 1 beats 0 (the shorter, second-listed one), 0 vs 2 (empty) and the tie 1 vs 2 are dropped
    assert p["pairs"] == 6 and p["baselines"]["longer_wins"]["accuracy"] == 0.0
    assert p["baselines"]["majority"]["accuracy"] == 1.0 and p["baselines"]["majority"]["chosen_on"] == "training data"


def test_cli_cv_baselines_only_and_bad_folds(tmp_path, capsys):
    data = tmp_path / "fb.jsonl"
    write_jsonl(data, [qa_example(i, bad_second=i % 2 == 0) for i in range(6)])
    rc = main(["rm", "cv", "--file", str(data), "--out", str(tmp_path / "cv"), "--folds", "3", "--baselines-only",
               "--kind", "span", "--category", "relevance", "level=sentence"])
    assert rc == 0
    report = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert len(report["per_fold"]) == 3 and "f1" not in report["per_fold"][0]
    assert report["summary"]["flag_all_f1"]["mean"] == pytest.approx(np.mean([r["baselines"]["flag_all"]["f1"] for r in report["per_fold"]]))
    assert "flag_all_f1" in capsys.readouterr().out
    assert main(["rm", "cv", "--file", str(data), "--out", str(tmp_path / "x"), "--folds", "9"]) == 2
    assert "--folds: 9" in capsys.readouterr().err
    assert main(["rm", "cv", "--file", str(data), "--out", str(tmp_path / "x"), "--only-folds", "0,7"]) == 2
    assert "--only-folds: '7'" in capsys.readouterr().err

    # folds computed apart (e.g. one process each) are reused by a run with the same settings
    common = ["rm", "cv", "--file", str(data), "--folds", "3", "--baselines-only", "--kind", "span", "--category", "relevance"]
    assert main(common + ["--out", str(tmp_path / "p"), "--only-folds", "1", "level=sentence"]) == 0
    part = json.loads((tmp_path / "p" / "cv.json").read_text())
    assert part["folds_done"] == 1 and part["per_fold"][0]["fold"] == 1
    (tmp_path / "p" / "fold-1.json").write_text((tmp_path / "p" / "fold-1.json").read_text().replace('"fold": 1', '"fold": 1, "marked": 1'))
    capsys.readouterr()
    assert main(common + ["--out", str(tmp_path / "p"), "level=sentence"]) == 0
    whole = json.loads((tmp_path / "p" / "cv.json").read_text())
    assert whole["folds_done"] == 3 and whole["per_fold"][1].get("marked") == 1  # reused, not recomputed
    assert whole["summary"] == report["summary"] and "reusing" in capsys.readouterr().out
    assert main(common + ["--out", str(tmp_path / "p"), "level=subsentence"]) == 0  # other settings: nothing reused
    assert "marked" not in json.loads((tmp_path / "p" / "cv.json").read_text())["per_fold"][1]
