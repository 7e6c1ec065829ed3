"""Feedback records, readers, writers, validation and stats on small files made in the test."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from finegrain.cli import main
from finegrain.data import DataError, load_examples, read_examples
from finegrain.data.categories import DEFAULT_TAXONOMY
from finegrain.data.jsonl import write_jsonl
from finegrain.data.qa_feedback import write_qa_feedback
from finegrain.data.records import FIRST_BETTER, SECOND_BETTER, TIE
from finegrain.data.stats import compute_stats

RESPONSE = "Paris is the capital of France. It has a tower. The tower is tall."


def qa_item(**changes) -> dict:
    item = {
        "question": "What is the capital of France?",
        "passages": [
            ["Paris", "Paris is the capital of France.", "It is known for the Eiffel Tower."],
            ["France", "France is a country in Europe."],
        ],
        "gold": "Paris.",
        "prediction 1": RESPONSE,
        "prediction 2": "Paris.",
        "prediction 3": "Lyon is the capital.",
        "prediction 4": "It is Paris, in France.",
        "feedback": {
            "errors": [
                {"error type": "Irrelevant", "explanation": "", "start": 32, "end": 47},
                {"error type": "Unverifiable", "explanation": "not in passages", "start": 48, "end": 66},
            ],
            "missing-info": [{"error type": "Missing-Minor-Auxiliary", "passage_id": 1, "sentence_id": [2]}],
            "corrected-prediction": "Paris is the capital of France.",
        },
        "preference": [1, 1, 0, 2, 1, 2],
    }
    item.update(changes)
    return item


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def test_qa_feedback_reads_into_typed_records(tmp_path):
    path = write_json(tmp_path / "fb.json", [qa_item(), qa_item(question="Second?")])
    examples = load_examples(path)
    assert len(examples) == 2
    ex = examples[0]
    assert ex.prompt == "What is the capital of France?"
    assert [p.title for p in ex.passages] == ["Paris", "France"]
    assert ex.passages[0].sentence(0) == "Paris" and ex.passages[0].sentence(2).startswith("It is known")
    assert len(ex.responses) == 4 and ex.responses[1].annotation is None
    ann = ex.responses[0].annotation
    assert [(s.start, s.end, s.category) for s in ann.spans] == [(32, 47, "Irrelevant"), (48, 66, "Unverifiable")]
    assert RESPONSE[32:47] == "It has a tower."
    assert ann.missing[0].passage == 1 and ann.missing[0].sentences == (2,)
    assert ann.corrected == "Paris is the capital of France."
    pairs = [(p.a, p.b, p.outcome) for p in ex.preferences]
    assert pairs == [(0, 1, 1), (0, 2, 1), (0, 3, 0), (1, 2, 2), (1, 3, 1), (2, 3, 2)]
    assert ex.reference == "Paris."


def test_jsonl_round_trip_and_qa_feedback_round_trip(tmp_path):
    examples = load_examples(write_json(tmp_path / "fb.json", [qa_item()]))
    write_jsonl(tmp_path / "fb.jsonl", examples)
    again = load_examples(tmp_path / "fb.jsonl")
    assert again == examples
    line = json.loads((tmp_path / "fb.jsonl").read_text().splitlines()[0])
    assert line["schema"] == "finegrain.feedback" and line["version"] == 1
    assert line["responses"][0]["annotation"]["spans"][0]["text"] == "It has a tower."
    write_qa_feedback(tmp_path / "back.json", again)
    assert load_examples(tmp_path / "back.json") == examples


def test_every_fault_is_reported_with_its_location(tmp_path):
    bad_offsets = qa_item()
    bad_offsets["feedback"]["errors"][0]["end"] = 500  # outside the response
    inverted = qa_item()
    inverted["feedback"]["errors"][1]["start"] = 60
    inverted["feedback"]["errors"][1]["end"] = 50  # start >= end
    unknown = qa_item()
    unknown["feedback"]["errors"][0]["error type"] = "Boring"
    bad_pref = qa_item(preference=[1, 1, 7, 2, 1, 2])
    short_pref = qa_item(preference=[1, 1, 0])
    missing_field = qa_item()
    del missing_field["question"]
    bad_sentence = qa_item()
    bad_sentence["feedback"]["missing-info"][0]["sentence_id"] = [9]
    items = [qa_item(), bad_offsets, inverted, unknown, bad_pref, short_pref, missing_field, bad_sentence]
    path = write_json(tmp_path / "faulty.json", items)
    examples, problems = read_examples(path)
    assert len(examples) == 1
    got = {(p.record, p.field) for p in problems}
    assert got == {
        (1, "feedback.errors[0].end"),
        (2, "feedback.errors[1].end"),
        (3, "feedback.errors[0].category"),
        (4, "preference[2].outcome"),
        (5, "preference"),
        (6, "question"),
        (7, "feedback.missing-info[0].sentences[0]"),
    }
    by_record = {p.record: p for p in problems}
    assert by_record[1].value == 500 and "outside the response" in str(by_record[1])
    assert str(path) in str(by_record[3]) and "'Boring'" in str(by_record[3])
    assert by_record[4].value == 7
    with pytest.raises(DataError) as err:
        load_examples(path)
    assert len(err.value.problems) == 7 and "record 3" in str(err.value)


def test_jsonl_faults_name_the_line(tmp_path):
    good = load_examples(write_json(tmp_path / "fb.json", [qa_item()]))
    write_jsonl(tmp_path / "ok.jsonl", good)
    line = json.loads((tmp_path / "ok.jsonl").read_text())
    drifted = copy.deepcopy(line)
    drifted["responses"][0]["annotation"]["spans"][0]["text"] = "something else"
    self_pair = copy.deepcopy(line)
    self_pair["preferences"].append({"a": 2, "b": 2, "outcome": 1})
    no_text = copy.deepcopy(line)
    del no_text["responses"][1]["text"]
    rows = [json.dumps(line), "{not json", "", json.dumps(drifted), json.dumps(self_pair), json.dumps(no_text)]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    examples, problems = read_examples(path)
    assert len(examples) == 1
    located = sorted((p.line, p.record, p.field) for p in problems)
    assert located == [
        (2, 1, ""),
        (4, 2, "responses[0].annotation.spans[0].text"),
        (5, 3, "preferences[6].b"),
        (6, 4, "responses[1].text"),
    ]
    assert all(f"{path}:{p.line}" in str(p) for p in problems)


def test_realtoxicityprompts_reader(tmp_path):
    rows = [
        {"prompt": {"text": "So I said", "toxicity": 0.1}, "continuation": {"text": " hi", "toxicity": 0.0}, "challenging": False},
        {"prompt": {"text": "You are", "toxicity": 1.7}, "continuation": {"text": " x"}},
        {"prompt": {"toxicity": 0.2}},
    ]
    path = tmp_path / "rtp.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    examples, problems = read_examples(path)
    assert [e.prompt for e in examples] == ["So I said", "You are"]
    assert examples[0].meta["prompt_toxicity"] == 0.1
    assert {(p.line, p.field) for p in problems} == {(2, "prompt.toxicity"), (3, "prompt.text")}


def test_stats_counts(tmp_path):
    second = qa_item(preference=[0, 0, 0, 0, 0, 1])
    second["feedback"] = {"errors": [], "missing-info": [], "corrected-prediction": ""}
    stats = compute_stats(load_examples(write_json(tmp_path / "fb.json", [qa_item(), second])))
    assert stats.examples == 2 and stats.responses == 8 and stats.annotated_responses == 2
    assert stats.no_error_responses == 1 and stats.corrected == 1
    assert stats.spans == {"Irrelevant": 1, "Unverifiable": 1}
    assert stats.missing == {"Missing-Minor-Auxiliary": 1}
    assert stats.preferences == {"first better": 4, "second better": 2, "tie": 6}
    assert (TIE, FIRST_BETTER, SECOND_BETTER) == (0, 1, 2)


def test_cli_check_and_stats(tmp_path, capsys):
    clean = write_json(tmp_path / "clean.json", [qa_item()])
    assert main(["data", "check", str(clean)]) == 0
    assert "clean (1 records)" in capsys.readouterr().out
    bad = qa_item(preference=[3, 1, 0, 2, 1, 2])
    faulty = write_json(tmp_path / "faulty.json", [qa_item(), bad])
    assert main(["data", "check", str(faulty)]) == 1
    out = capsys.readouterr().out
    assert f"{faulty} record 1 field preference[0].outcome" in out and "(value: 3)" in out
    assert main(["data", "stats", str(clean)]) == 0
    assert "Irrelevant" in capsys.readouterr().out
    # a training loader refuses the faulty file with the same message, as one line from the CLI
    assert main(["data", "stats", str(faulty)]) == 2
    assert "preference[0].outcome" in capsys.readouterr().err


def test_custom_category_map(tmp_path, capsys):
    item = qa_item()
    item["feedback"]["errors"][0]["error type"] = "Off-Topic"
    path = write_json(tmp_path / "fb.json", [item])
    cats = tmp_path / "cats.yaml"
    cats.write_text("span_categories:\n  Off-Topic: relevance\n  Unverifiable: factuality\n")
    assert main(["data", "check", str(path)]) == 1
    capsys.readouterr()
    assert main(["data", "check", str(path), "--categories", str(cats)]) == 0
    assert DEFAULT_TAXONOMY.categories_for("relevance") == ("Irrelevant", "Redundant", "Incoherent")


def test_malformed_json_file(tmp_path, capsys):
    path = tmp_path / "broken.json"
    path.write_text('[{"question": "x",\n  oops}]')
    assert main(["data", "check", str(path)]) == 1
    assert f"{path}:2" in capsys.readouterr().out


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "qa_feedback" / "feedback.json"


@pytest.mark.skipif(not SHARED.is_file(), reason="../shared/data is not beside this checkout")
def test_real_qa_feedback_stats_match_a_direct_count():
    raw = json.loads(SHARED.read_text())
    stats = compute_stats(load_examples(SHARED))
    assert stats.examples == len(raw)
    direct = {}
    for item in raw:
        for e in item["feedback"]["errors"]:
            direct[e["error type"]] = direct.get(e["error type"], 0) + 1
    assert dict(stats.spans) == direct
    assert sum(stats.preferences.values()) == 6 * len(raw)
