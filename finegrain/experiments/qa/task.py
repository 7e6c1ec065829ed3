"""The long-form QA task (Wu et al. 2023, section 4): examples, the one split every stage uses, and
the checks that run before any model loads.

An example is a question, its retrieved passages and a gold answer. They are read from
- QA-Feedback JSON (`feedback.json`: `question`, `passages` as `[title, sentence, ...]`, `gold`, the
  four predictions with their feedback and preferences), through finegrain's reader;
- the task's input format (`qa.json`: `question`, `passages` as `{"wikipage", "content"}`, `answer`
  a list of gold answers): the content is cut into sentences (finegrain.segment), its first line
  being the page title repeated, which is dropped;
- finegrain JSONL with `prompt`, `passages` and `reference`.

The split: the examples shuffled with `random.Random(seed)`, the last `heldout` held out
(kernel.data.hold_out). Its held-out set is that of `finegrain rm split FILE --train N-heldout --seed
seed` and of a recipe's `data.eval_examples: heldout` with `run.seed: seed` on the same file, so it
agrees with every recipe's own split. `write_split` writes the two parts as finegrain JSONL files
(`train.jsonl`, `heldout.jsonl`) and `split.json` (source, its sha256, seed, ids); every training
stage reads only `train.jsonl` (a recipe's own `eval_examples` then hold out *training* questions for
validation), evaluation only `heldout.jsonl`, so changing a run's seed never moves a question across.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finegrain.config import ConfigError
from finegrain.data.problems import DataError, Problem

if TYPE_CHECKING:
    from finegrain.data.records import Example
    from finegrain.rewards.card import RMCard

HELDOUT = 60  # the 300 QA-Feedback dev examples: 240 to train on, 60 held out (as docs/reward-models.md)
SPLIT_SEED = 0
TEMPLATE = "question: {question} context: {passages}"  # the paper's input layout (kernel.prompts.QA_TEMPLATE)
TRAIN_FILE, HELDOUT_FILE, MANIFEST = "train.jsonl", "heldout.jsonl", "split.json"


@dataclass(frozen=True)
class Role:
    """What a QA reward model must be, by the name its source carries in a config."""

    kind: str  # span or pairwise
    level: str  # subsentence, sentence or sequence


# The paper's three fine-grained RMs and the holistic one (C1 relevance, C2 factuality, C3 completeness).
ROLES = {
    "relevance": Role("span", "subsentence"),
    "factuality": Role("span", "sentence"),
    "completeness": Role("pairwise", "sequence"),
    "preference": Role("pairwise", "sequence"),
}


# --- reading ---------------------------------------------------------------------------------


def _is_task_format(path: Path) -> bool:
    """qa.json-style input: a JSON list whose first record has `answer` or dict passages."""
    if path.suffix != ".json":
        return False
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    if not isinstance(records, list) or not records or not isinstance(records[0], dict):
        return False
    first = records[0]
    passages = first.get("passages")
    return "answer" in first or (isinstance(passages, list) and bool(passages) and isinstance(passages[0], dict))


def read_task_json(path: str | Path) -> list["Example"]:
    """Read the task's input format (qa.json); DataError names file, record and field of every fault."""
    from finegrain.data.records import Example, Passage
    from finegrain.segment import split_sentences

    path = Path(path)
    records = json.loads(path.read_text(encoding="utf-8"))
    out, problems = [], []
    for i, raw in enumerate(records):
        if not isinstance(raw, dict):
            problems.append(Problem(str(path), i, "", type(raw).__name__, "expected a JSON object"))
            continue
        question = raw.get("question")
        if not isinstance(question, str) or not question.strip():
            problems.append(Problem(str(path), i, "question", question, "missing or empty question"))
            continue
        passages = []
        for j, p in enumerate(raw.get("passages") or []):
            if not isinstance(p, dict) or not isinstance(p.get("content"), str):
                problems.append(Problem(str(path), i, f"passages[{j}]", p, 'expected {"wikipage": ..., "content": ...}'))
                continue
            title = str(p.get("wikipage") or "").strip()
            body = p["content"]
            if title and body.startswith(title):  # the content repeats the title on its first line
                body = body[len(title):]
            body = body.strip()
            sentences = tuple(t for t in (s.text(body).strip() for s in split_sentences(body)) if t)
            if sentences:
                passages.append(Passage(title, sentences))
        answers = raw.get("answer")
        answers = [answers] if isinstance(answers, str) else answers if isinstance(answers, list) else []
        gold = next((a.strip() for a in answers if isinstance(a, str) and a.strip()), None)
        out.append(Example(id=str(raw.get("id", f"qa-{i}")), prompt=question.strip(), passages=tuple(passages), reference=gold))
    if problems:
        raise DataError(problems)
    return out


def read_qa(path: str | Path) -> list["Example"]:
    """Every example of a QA file in any of the three formats (DataError / ConfigError on faults)."""
    from finegrain.data.load import load_examples

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist")
    return read_task_json(path) if _is_task_format(path) else load_examples(path)


def qa_problems(path: str | Path, examples: list["Example"]) -> list[Problem]:
    """What keeps an example out of the QA task: no passages, no gold answer. (The record numbers are
    the examples' positions in the file.)"""
    problems = []
    for i, e in enumerate(examples):
        if not any(p.sentences for p in e.passages):
            problems.append(Problem(str(path), i, "passages", list(e.passages), "a QA example needs the retrieved passages"))
        if not (e.reference and e.reference.strip()):
            field = "gold" if Path(path).suffix == ".json" else "reference"
            problems.append(Problem(str(path), i, field, e.reference, "a QA example needs a gold answer"))
    return problems


@dataclass(frozen=True)
class QAData:
    examples: list["Example"]  # complete examples, in file order
    dropped: list[Problem]  # what was left out (skip_incomplete) and why


def load_qa(path: str | Path, skip_incomplete: bool = False) -> QAData:
    """The QA examples of a file. Without `skip_incomplete` any example lacking passages or a gold
    answer is an error naming file, record and field; with it such examples are left out and listed
    (a file with no complete example is an error either way)."""
    return complete(path, read_qa(path), skip_incomplete)


def complete(path: str | Path, examples: list["Example"], skip_incomplete: bool) -> QAData:
    """`load_qa` on examples already read."""
    problems = qa_problems(path, examples)
    if problems and not skip_incomplete:
        raise DataError(problems)
    bad = {p.record for p in problems}
    kept = [e for i, e in enumerate(examples) if i not in bad]
    if not kept:
        raise DataError(problems or [Problem(str(path), None, "", None, "holds no example")])
    return QAData(kept, problems)


# --- the split -------------------------------------------------------------------------------


@dataclass(frozen=True)
class QASplit:
    train: list["Example"]
    heldout: list["Example"]
    dropped: list[Problem]


def split_qa(path: str | Path, heldout: int = HELDOUT, seed: int = SPLIT_SEED, skip_incomplete: bool = False) -> QASplit:
    """The fixed split (see the module doc); fails when it would leave no held-out or no training question."""
    from finegrain.kernel.data import hold_out

    if heldout < 1:
        raise ConfigError(f"heldout: {heldout} leaves no held-out question ({path}): evaluation needs at least one")
    examples = read_qa(path)
    data = complete(path, examples, skip_incomplete)
    # split every record, then leave the incomplete ones out of their part: the parts stay those of
    # `rm split` and of the recipes' eval_examples on the same file
    bad = {p.record for p in data.dropped}
    train, held = hold_out(list(range(len(examples))), heldout, seed, "heldout", str(path))
    train, held = [examples[i] for i in train if i not in bad], [examples[i] for i in held if i not in bad]
    if not held:
        raise ConfigError(f"heldout: every held-out record of {path} is incomplete: no held-out question is left")
    return QASplit(train, held, data.dropped)


def write_split(path: str | Path, out_dir: str | Path, heldout: int = HELDOUT, seed: int = SPLIT_SEED,
                skip_incomplete: bool = False) -> dict[str, Any]:
    """Write train.jsonl, heldout.jsonl and split.json into `out_dir`; returns the manifest. An
    existing split made from other settings or another file is refused, never overwritten."""
    from finegrain.data.jsonl import write_jsonl
    from finegrain.io import atomic_write_json
    from finegrain.rewards.rm_data import file_sha256

    out = Path(out_dir)
    manifest_path = out / MANIFEST
    settings = {"source": str(path), "source_sha256": file_sha256(path), "heldout": heldout, "seed": seed,
                "skip_incomplete": skip_incomplete}
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text(encoding="utf-8"))
        if {k: old.get(k) for k in settings} != settings:
            changed = sorted(k for k in settings if old.get(k) != settings[k])
            raise ConfigError(f"{out} holds a split made with other settings ({', '.join(changed)} differ); choose another folder")
        if (out / TRAIN_FILE).is_file() and (out / HELDOUT_FILE).is_file():
            return old
    split = split_qa(path, heldout, seed, skip_incomplete)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / TRAIN_FILE, split.train)
    write_jsonl(out / HELDOUT_FILE, split.heldout)
    manifest = {**settings, "train": len(split.train), "heldout_ids": [e.id for e in split.heldout],
                "dropped": [str(p) for p in split.dropped]}
    atomic_write_json(manifest_path, manifest)
    return manifest


def heldout_questions(split_dir: str | Path) -> set[str]:
    from finegrain.data.load import load_examples

    return {e.prompt for e in load_examples(Path(split_dir) / HELDOUT_FILE)}


# --- reward models ---------------------------------------------------------------------------


def check_rm(role: str, folder: str | Path, where: str, heldout_file: str | Path | None = None,
             head: str | None = None, head_where: str | None = None) -> "RMCard":
    """The RM in `folder` (`head`: that head of a multi-task RM) must be the one its role names (kind,
    category, level) and must not have been trained on the held-out file. ConfigError names `where`
    (file and field) and the value; `head_where` names the head's field (default: `where`'s last field
    replaced by `head`)."""
    from finegrain.rewards.card import RMCard

    if role not in ROLES:
        raise ConfigError(f"{where}: {role!r} is not a QA reward model; choose from {', '.join(ROLES)}")
    if not Path(folder).is_dir():
        raise ConfigError(f"{where}: {str(folder)!r} is not a folder (train the {role} RM first: configs/qa/rm_{role}.yaml)")
    card = RMCard.load(folder)
    if head is not None:
        card = card.for_head(head, head_where or where.rsplit(".", 1)[0] + ".head")
    want = ROLES[role]
    got = (card.kind, card.name, card.level)
    if got != (want.kind, role, want.level):
        raise ConfigError(
            f"{where}: {folder} is a {card.kind} RM {card.name!r} at {card.level} level, but the {role} source needs "
            f"a {want.kind} RM {role!r} at {want.level} level (value: {str(folder)!r})"
        )
    if heldout_file is not None and Path(heldout_file).is_file():
        from finegrain.rewards.rm_data import file_sha256

        if card.data.get("train_sha256") == file_sha256(heldout_file):
            raise ConfigError(f"{where}: {folder} was trained on the held-out file {heldout_file} (value: {str(folder)!r})")
    return card


def role_rms(rm_dir: str | Path, heldout_file: str | Path | None = None) -> dict[str, tuple[Path, str | None, "RMCard"]]:
    """Which RM judges each QA role in `rm_dir`, as {role: (folder, head, card)}: `rm_dir/<role>` (`head`:
    the role's own head when that folder is a multi-task RM), or, for a role without a folder of its own,
    the head of that name of a multi-task RM in another role's folder (relevance and factuality on one
    backbone: one folder judges both). Every card is checked against its role (`check_rm`) before any
    model loads; a role no folder covers is left out."""
    from finegrain.rewards.card import RMCard

    own = {role: Path(rm_dir) / role for role in ROLES if (Path(rm_dir) / role).is_dir()}
    found: dict[str, tuple[Path, str | None]] = {}
    for role, folder in own.items():
        found[role] = (folder, role if RMCard.load(folder).heads else None)
    for folder in own.values():
        card = RMCard.load(folder)
        for head in card.head_names if card.heads else []:
            if head in ROLES and head not in found:
                found[head] = (folder, head)
    return {role: (folder, head, check_rm(role, folder, f"--rms {rm_dir}: {role}", heldout_file, head=head,
                                          head_where=f"--rms {rm_dir}: {folder.name}, head {head!r}"))
            for role, (folder, head) in found.items()}


def check_reward_roles(config_file: str | Path, rewards: list[Any], heldout_file: str | Path | None = None) -> None:
    """Every RM source of a QA PPO config named after a role must be that role's RM."""
    for i, r in enumerate(rewards):
        if r.kind == "rm" and r.label in ROLES:
            check_rm(r.label, r.path or "", f"{config_file} rewards[{i}].path", heldout_file, head=r.head)
