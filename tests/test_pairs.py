"""Preference pairs from feedback: human judgements, span feedback, the pair file and `finegrain data pairs`."""

from __future__ import annotations

import json

import pytest

from finegrain.cli import main
from finegrain.data import DataError
from finegrain.data.pairs import (
    PreferencePair,
    human_pairs,
    load_pairs,
    make_pairs,
    read_pairs,
    remove_spans,
    span_pairs,
    write_pairs,
)
from finegrain.data.qa_feedback import write_qa_feedback
from finegrain.data.records import FIRST_BETTER, SECOND_BETTER, TIE, Annotation, Example, Passage, Preference, Response, Span

ANSWERS = ("answer A", "answer B", "answer C", "answer D")
# QA-Feedback's six judgements, in its order 1v2, 1v3, 1v4, 2v3, 2v4, 3v4 (0-based here); one tie
JUDGEMENTS = [(0, 1, FIRST_BETTER), (0, 2, SECOND_BETTER), (0, 3, TIE), (1, 2, FIRST_BETTER), (1, 3, SECOND_BETTER), (2, 3, FIRST_BETTER)]
EXPECTED_HUMAN = [  # (chosen, rejected)
    ("answer A", "answer B"), ("answer C", "answer A"), ("answer B", "answer C"), ("answer D", "answer B"), ("answer C", "answer D"),
]

TEXT = "Paris is the capital of France. It has many bakeries. It is in Europe, which is large."
BAKERIES = TEXT.index("It has many bakeries.")
LARGE = TEXT.index(", which is large")


def span(sub: str, category: str = "Irrelevant") -> Span:
    start = TEXT.index(sub)
    return Span(start, start + len(sub), category)


def qa_example(**annotation) -> Example:
    ann = Annotation(**{"spans": (), **annotation})
    responses = (Response(TEXT, ann), *(Response(t) for t in ANSWERS[1:]))
    return Example(
        "q1", "Where is Paris?", responses, (Passage("Paris", ("Paris is the capital of France.",)),),
        tuple(Preference(a, b, o) for a, b, o in JUDGEMENTS), reference="In France.",
    )


def four_answers() -> Example:
    """Four answers, the first annotated "no error" (QA-Feedback has feedback on its first prediction)."""
    responses = (Response(ANSWERS[0], Annotation()), *(Response(t) for t in ANSWERS[1:]))
    return Example("q2", "Pick one", responses, preferences=tuple(Preference(a, b, o) for a, b, o in JUDGEMENTS))


def test_six_judgements_with_a_tie_give_five_pairs_in_the_right_direction():
    ex = four_answers()
    pairs, skipped = make_pairs([ex], "human")
    assert [(p.chosen, p.rejected) for p in pairs] == EXPECTED_HUMAN
    assert {p.origin for p in pairs} == {"human"} and all(p.example is ex for p in pairs)
    assert skipped["tie"] == 1
    assert human_pairs([ex]) == pairs


def test_qa_feedback_preferences_map_to_the_same_pairs(tmp_path):
    path = tmp_path / "feedback.json"
    write_qa_feedback(path, [four_answers()])
    assert json.loads(path.read_text())[0]["preference"] == [1, 2, 0, 1, 2, 1]  # the QA-Feedback coding
    assert [(p.chosen, p.rejected) for p in load_pairs(path, "human")] == EXPECTED_HUMAN


def test_a_judgement_between_equal_texts_gives_no_pair():
    ex = Example("q", "p", (Response("same  text"), Response("same text")), preferences=(Preference(0, 1, FIRST_BETTER),))
    pairs, skipped = make_pairs([ex])
    assert pairs == [] and skipped["same-text"] == 1


@pytest.mark.parametrize(
    "text, removed, expected",
    [
        ("A is B. C is D. E is F.", ["C is D. "], "A is B. E is F."),
        ("A is B. C is D. E is F.", ["C is D."], "A is B. E is F."),  # whitespace at the seam: one space
        ("A is B, which is C, and D.", ["which is C,"], "A is B, and D."),
        ("A is B, which is C, and D.", [", which is C"], "A is B, and D."),  # no space before a comma
        ("A is B, which is C. E is F.", ["which is C."], "A is B. E is F."),  # the sentence end moves left
        ('The film (1937) and a villain. The Queen.', ["and a villain."], "The film (1937). The Queen."),
        ("However, the film is old.", ["However, "], "The film is old."),  # capital at the start
        ("One. Two. Three.", ["Two.", "Two. Three"], "One."),  # overlapping spans; no doubled end mark
        ("Keep me.  Trailing space ", ["Keep me."], "Trailing space "),  # away from the seams, text is kept
        ("Only this.", ["Only this."], ""),
        ("Nothing removed.", [], "Nothing removed."),
    ],
)
def test_remove_spans(text, removed, expected):
    spans = [(text.index(s), text.index(s) + len(s)) for s in removed]
    assert remove_spans(text, spans) == expected


def test_span_pairs_corrected_over_original_then_one_span_at_a_time():
    corrected = "Paris is the capital of France, in Europe."
    # spans listed out of text order: the chain removes them left to right
    ex = qa_example(spans=(span(", which is large"), span("It has many bakeries.", "Redundant")), corrected=corrected)
    step1 = "Paris is the capital of France. It is in Europe, which is large."
    step2 = "Paris is the capital of France. It is in Europe."
    pairs = span_pairs([ex])
    assert [(p.origin, p.chosen, p.rejected) for p in pairs] == [
        ("corrected", corrected, TEXT),
        ("span-removed", step1, TEXT),
        ("span-removed", step2, step1),
    ]


def test_a_span_whose_removal_empties_the_response_is_skipped():
    ex = qa_example(spans=(span("Paris is the capital of France. It has many bakeries."), span("It is in Europe, which is large.")))
    pairs, skipped = make_pairs([ex], "span")
    assert [(p.chosen, p.rejected) for p in pairs] == [("It is in Europe, which is large.", TEXT)]
    assert skipped["empty"] == 1


def test_a_corrected_response_equal_to_the_original_gives_no_pair():
    pairs, skipped = make_pairs([qa_example(corrected=TEXT.replace(". ", ".  "))], "span")
    assert pairs == [] and skipped["same-text"] == 1
    assert make_pairs([qa_example(corrected="")], "span")[0] == []  # QA-Feedback's "no correction"


def test_all_is_human_and_span_pairs():
    ex = qa_example(spans=(span(", which is large"),), corrected="Paris is in France.")
    pairs, skipped = make_pairs([ex], "all")
    assert [p.origin for p in pairs] == ["human"] * 5 + ["corrected", "span-removed"]
    assert skipped == {"tie": 1}


def test_pair_origin_is_checked():
    with pytest.raises(ValueError, match="origin 'model'"):
        PreferencePair(four_answers(), "a", "b", "model")


def test_write_read_round_trip(tmp_path):
    pairs = make_pairs([qa_example(spans=(span(", which is large"),), corrected="Paris is in France."), four_answers()])[0]
    path = tmp_path / "pairs.jsonl"
    write_pairs(path, pairs)
    assert read_pairs(path) == pairs
    first = json.loads(path.read_text().splitlines()[0])
    assert (first["schema"], first["version"], first["origin"]) == ("finegrain.pairs", 1, "human")
    assert load_pairs(path, "span") == [p for p in pairs if p.origin != "human"]  # a pair file, filtered


def test_write_refuses_to_overwrite_unless_forced(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("keep me\n")
    pairs = human_pairs([four_answers()])
    with pytest.raises(FileExistsError, match="already exists"):
        write_pairs(path, pairs)
    assert path.read_text() == "keep me\n"
    write_pairs(path, pairs, force=True)
    assert read_pairs(path) == pairs


def _corrupt(tmp_path, line: int, edit) -> str:
    path = tmp_path / "pairs.jsonl"
    write_pairs(path, human_pairs([four_answers()]))
    lines = path.read_text().splitlines()
    record = json.loads(lines[line - 1])
    edit(record)
    lines[line - 1] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        read_pairs(path)
    return str(err.value)


def test_a_bad_line_is_named_with_file_line_field_and_value(tmp_path):
    message = _corrupt(tmp_path, 2, lambda r: r.update(chosen=3))
    assert f"{tmp_path / 'pairs.jsonl'}:2 record 1 field chosen: expected str, got int (value: 3)" in message


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda r: r.update(origin="model"), "field origin: unknown origin; known: human, corrected, span-removed (value: 'model')"),
        (lambda r: r.update(rejected="  "), "field rejected: empty response"),
        (lambda r: r["example"].update(prompt=None), "field example.prompt: expected str, got NoneType"),
        (lambda r: r.pop("example"), "field example: missing field"),
    ],
)
def test_bad_fields_are_named(tmp_path, edit, expected):
    assert f"pairs.jsonl:3 record 2 {expected}" in _corrupt(tmp_path, 3, edit)


def test_malformed_json_line_is_named(tmp_path):
    path = tmp_path / "pairs.jsonl"
    write_pairs(path, human_pairs([four_answers()]))
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(DataError, match=r"pairs.jsonl:6 record 5: malformed JSON line"):
        read_pairs(path)


def test_cli_writes_pairs_and_counts_them(tmp_path, capsys):
    feedback = tmp_path / "feedback.json"
    write_qa_feedback(feedback, [qa_example(spans=(span(", which is large"), span("It has many bakeries.")), corrected="In France.")])
    out = tmp_path / "pairs.jsonl"
    assert main(["data", "pairs", str(feedback), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote 8 pairs to {out}: 5 human, 1 corrected, 2 span-removed" in printed
    assert "skipped: 1 ties, 0 judgements or corrections between texts equal up to whitespace, 0 spans" in printed
    assert len(read_pairs(out)) == 8

    assert main(["data", "pairs", str(feedback), "--out", str(out)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert main(["data", "pairs", str(feedback), "--out", str(out), "--from", "span", "--force"]) == 0
    assert "wrote 3 pairs" in capsys.readouterr().out
    assert [p.origin for p in read_pairs(out)] == ["corrected", "span-removed", "span-removed"]
    # a file that makes no pair: an error, and no empty pairs file for a trainer to trip on later
    bare = tmp_path / "bare.jsonl"
    bare.write_text(json.dumps({"id": "a", "prompt": "p"}) + "\n")
    assert main(["data", "pairs", str(bare), "--out", str(tmp_path / "none.jsonl")]) == 2
    assert "no pairs to write (--from all" in capsys.readouterr().err and not (tmp_path / "none.jsonl").exists()


def test_cli_names_bad_feedback_without_a_traceback(tmp_path, capsys):
    feedback = tmp_path / "feedback.json"
    feedback.write_text(json.dumps([{"question": "q", "passages": [], "prediction 1": "a", "feedback": {"errors": []}, "preference": [7]}]))
    assert main(["data", "pairs", str(feedback), "--out", str(tmp_path / "p.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "feedback.json record 0 field preference" in err and not (tmp_path / "p.jsonl").exists()
