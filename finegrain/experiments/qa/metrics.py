"""The QA experiment's evaluation of a policy on held-out questions (`finegrain eval --task qa`).

Judged by the reward models (the paper's form):
- relevance error rate: the share of the answers' sub-sentences the relevance RM flags (P(error) at
  or above its card's threshold), pooled over answers; factuality error rate: the same for sentences;
- completeness: the completeness RM's score, standardised with its card's mean and std;
- preference: the preference RM's standardised score, and the win rate against a baseline policy's
  answer to the same question (the SFT policy's; a tie counts one half).
Judged without them (a policy trained on an RM can learn to fool it):
- ROUGE-L F1 against the gold answer (rouge-score);
- repetition: the share of word 3-grams that repeat an earlier 3-gram of the same answer, and the
  share of sentences that nearly duplicate an earlier one (word-set Jaccard >= 0.8);
- passage support: the share of sentences whose content words (lower-cased words of 3+ letters or
  digits, stop words left out) are at least 80% found among the passages' words;
- length in policy tokens and in sentences; the share of empty answers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finegrain.words import content_words, jaccard, passage_words, repeated_ngram_share, words  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from finegrain.data.records import Example

NEAR_DUPLICATE = 0.8  # word-set Jaccard at or above which a sentence repeats an earlier one
SUPPORTED = 0.8  # share of a sentence's content words found in the passages for it to count as supported


# --- pure metrics ---------------------------------------------------------------------------


def duplicate_sentences(sentences: Sequence[str], threshold: float = NEAR_DUPLICATE) -> int:
    """How many sentences nearly duplicate an earlier one of the same answer (word-set Jaccard >= threshold)."""
    sets = [set(words(s)) for s in sentences]
    return sum(1 for j in range(len(sets)) if sets[j] and any(jaccard(sets[j], sets[i]) >= threshold for i in range(j)))


def supported_sentences(sentences: Sequence[str], passage_words: set[str], threshold: float = SUPPORTED) -> tuple[int, int]:
    """(supported, judged): sentences with content words, and those of them whose content words are at
    least `threshold` found in the passages."""
    supported = judged = 0
    for s in sentences:
        cw = content_words(s)
        if not cw:
            continue
        judged += 1
        supported += sum(w in passage_words for w in cw) / len(cw) >= threshold
    return supported, judged


def win_rate(scores: Sequence[float], baseline: Sequence[float]) -> float:
    """Share of questions where the score beats the baseline's, a tie counting one half."""
    if len(scores) != len(baseline) or not scores:
        raise ValueError(f"win_rate: {len(scores)} scores against {len(baseline)} baseline scores")
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores, baseline)) / len(scores)


def ratio(num: float, den: float) -> float | None:
    return num / den if den else None


# --- the result ------------------------------------------------------------------------------


@dataclass
class QAMetrics:
    questions: int
    relevance_error_rate: float | None = None  # flagged sub-sentences / all sub-sentences (relevance RM)
    factuality_error_rate: float | None = None  # flagged sentences / all sentences (factuality RM)
    completeness: float | None = None  # mean standardised completeness RM score
    preference: float | None = None  # mean standardised preference RM score
    win_rate: float | None = None  # against the baseline's answers, under the preference RM
    rouge_l: float = 0.0  # F1 against the gold answer
    repeated_3grams: float = 0.0  # repeated word 3-grams / all word 3-grams
    duplicate_sentences: float = 0.0  # near-duplicate sentences / all sentences
    passage_support: float | None = None  # supported sentences / sentences with content words
    length_tokens: float = 0.0
    length_sentences: float = 0.0
    empty: float = 0.0  # share of empty answers
    baseline: str | None = None  # whose answers the win rate is against

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_metrics(path: str | Path) -> QAMetrics:
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    known = {f.name for f in fields(QAMetrics)}
    return QAMetrics(**{k: v for k, v in raw.items() if k in known})


@dataclass
class QAJudges:
    """The reward models that judge answers (any may be missing: its metrics are then left out)."""

    relevance: Any = None  # SpanRewardModel
    factuality: Any = None  # SpanRewardModel
    completeness: Any = None  # PairwiseRewardModel
    preference: Any = None  # PairwiseRewardModel
    cards: dict[str, Any] = field(default_factory=dict)  # role -> RMCard


def load_judges(rm_dir: str | Path | None, heldout_file: str | Path | None = None, device: str | None = None) -> QAJudges:
    """The RMs in `rm_dir/<role>` (relevance, factuality, completeness, preference), each checked
    against its role before any loads (`role_rms`: a multi-task RM's folder judges each of its heads'
    roles, with one model in memory); a role without an RM is left out."""
    judges = QAJudges()
    if rm_dir is None:
        return judges
    for role, rm, card in load_role_rms(rm_dir, heldout_file, device=device):
        setattr(judges, role, rm)
        judges.cards[role] = card
    return judges


def load_role_rms(rm_dir: str | Path, heldout_file: str | Path | None = None, **kwargs: Any) -> list[tuple[str, Any, Any]]:
    """(role, loaded RM, card) for every role `role_rms` finds in `rm_dir`; the heads of one multi-task
    folder share one loaded model. `kwargs` go to `load_reward_model` (device, batch_size, bf16)."""
    from finegrain.experiments.qa.task import role_rms
    from finegrain.rewards.card import load_heads, load_reward_model

    heads: dict[Path, dict[str, Any]] = {}
    out = []
    for role, (folder, head, card) in role_rms(rm_dir, heldout_file).items():
        if head is None:
            out.append((role, load_reward_model(folder, card=card, **kwargs), card))
        else:
            if folder not in heads:
                heads[folder] = load_heads(folder, **kwargs)
            out.append((role, heads[folder][head], card))
    return out


def _span_rate(rm: Any, card: Any, examples: Sequence["Example"], texts: Sequence[str]) -> tuple[float | None, list[list[int]]]:
    probs, _ = rm.probabilities(examples, texts)
    threshold = float(card.training.get("threshold", 0.5))
    flags = [[int(p >= threshold) for p in row] for row in probs]
    return ratio(sum(map(sum, flags)), sum(map(len, flags))), flags


def _standardised(rm: Any, card: Any, examples: Sequence["Example"], texts: Sequence[str]) -> list[float]:
    raw = rm.raw_scores(examples, texts)
    return [(x - card.calibration.mean) / card.calibration.std for x in raw]


@dataclass
class QAResult:
    metrics: QAMetrics
    samples: list[dict[str, Any]]  # one per question: id, question, answer, gold, and what each judge said


def judge_answers(examples: Sequence["Example"], texts: Sequence[str], token_lengths: Sequence[int], judges: QAJudges,
                  baseline: dict[str, str] | None = None, baseline_name: str | None = None) -> QAResult:
    """Every metric of the module doc for one answer per example."""
    from finegrain.evaluate import rouge_l
    from finegrain.segment import split_sentences

    n = len(examples)
    samples: list[dict[str, Any]] = [{"id": e.id, "question": e.prompt, "answer": t, "gold": e.reference} for e, t in zip(examples, texts)]
    m = QAMetrics(questions=n)
    for role in ("relevance", "factuality"):
        rm = getattr(judges, role)
        if rm is not None:
            rate, flags = _span_rate(rm, judges.cards[role], examples, texts)
            setattr(m, f"{role}_error_rate", rate)
            for s, f in zip(samples, flags):
                s[f"{role}_flags"] = f
    for role in ("completeness", "preference"):
        rm = getattr(judges, role)
        if rm is not None:
            scores = _standardised(rm, judges.cards[role], examples, texts)
            setattr(m, role, sum(scores) / n)
            for s, x in zip(samples, scores):
                s[role] = x
    if judges.preference is not None and baseline:
        missing = [e.id for e in examples if e.id not in baseline]
        if missing:
            from finegrain.config import ConfigError

            raise ConfigError(f"--baseline: {baseline_name} has no answer to question {missing[0]!r} ({len(missing)} missing)")
        base = _standardised(judges.preference, judges.cards["preference"], examples, [baseline[e.id] for e in examples])
        m.win_rate, m.baseline = win_rate([s["preference"] for s in samples], base), baseline_name
    m.rouge_l = rouge_l(list(texts), [e.reference or "" for e in examples])
    rep = tot = dup = sents = sup = judged = 0
    for e, t, s in zip(examples, texts, samples):
        sentences = [x.text(t) for x in split_sentences(t)] if t.strip() else []
        r, g = repeated_ngram_share(t)
        d = duplicate_sentences(sentences)
        a, b = supported_sentences(sentences, passage_words(e.passages))
        rep, tot, dup, sents, sup, judged = rep + r, tot + g, dup + d, sents + len(sentences), sup + a, judged + b
        s.update(sentences=len(sentences), supported=a, duplicate_sentences=d)
    m.repeated_3grams = ratio(rep, tot) or 0.0
    m.duplicate_sentences = ratio(dup, sents) or 0.0
    m.passage_support = ratio(sup, judged)
    m.length_tokens = sum(token_lengths) / n
    m.length_sentences = sents / n
    m.empty = sum(1 for t in texts if not t.strip()) / n
    for s, k in zip(samples, token_lengths):
        s["tokens"] = k
    return QAResult(m, samples)


# --- sampling and the whole evaluation -----------------------------------------------------------


@dataclass(frozen=True)
class AnswerSettings:
    """How held-out answers are drawn: one per question, the training sampling by default."""

    max_new_tokens: int = 48
    temperature: float = 0.7
    top_k: int = 20
    max_prompt_tokens: int = 128
    batch_size: int = 16
    seed: int = 0
    precision: str = "auto"


def answer(policy: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", examples: Sequence["Example"],
           settings: AnswerSettings) -> tuple[list[str], list[int]]:
    """One answer per example through the kernel's renderer (the QA layout, chat template, prompt token
    budget) and generator; returns the texts and their lengths in tokens."""
    import torch

    from finegrain.experiments.qa.task import TEMPLATE
    from finegrain.kernel.generation import GenerationSettings, HFGenerator
    from finegrain.kernel.prompts import PromptRenderer

    renderer = PromptRenderer(tokenizer, TEMPLATE, settings.max_prompt_tokens, chat_template=True)
    generator = HFGenerator(policy, tokenizer, precision=settings.precision)
    sampling = GenerationSettings(1, settings.max_new_tokens, 0, settings.temperature, settings.top_k, 1.0)
    texts: list[str] = []
    lengths: list[int] = []
    torch.manual_seed(settings.seed)
    for start in range(0, len(examples), settings.batch_size):
        chunk = examples[start : start + settings.batch_size]
        ids, mask = renderer.encode([renderer.render(e).text for e in chunk])
        out = generator.sample(ids, mask, sampling)
        texts.extend(t.strip() for t in tokenizer.batch_decode(out.response_ids, skip_special_tokens=True))
        lengths.extend(int(x) for x in out.response_mask.sum(dim=1))
    return texts, lengths


def read_samples(folder: str | Path) -> dict[str, dict[str, Any]]:
    """A finished evaluation's answers with their per-answer figures by question id (`samples.jsonl` in
    an eval folder); {} when it has none."""
    path = Path(folder) / "samples.jsonl"
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["id"]: r for r in rows}


def read_answers(folder: str | Path) -> dict[str, str]:
    """A finished evaluation's answers by question id (`samples.jsonl` in an eval folder)."""
    if not (Path(folder) / "samples.jsonl").is_file():
        from finegrain.config import ConfigError

        raise ConfigError(f"--baseline: {Path(folder) / 'samples.jsonl'} does not exist (evaluate the baseline policy first, with --out)")
    return {k: r["answer"] for k, r in read_samples(folder).items()}


def write_eval(result: QAResult, folder: str | Path, settings: dict[str, Any]) -> Path:
    from finegrain.io import atomic_write_json, atomic_write_jsonl

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(out / "samples.jsonl", result.samples)
    atomic_write_json(out / "metrics.json", {**result.metrics.to_json(), "task": "qa", "settings": settings})
    return out / "metrics.json"


def evaluate_policy(policy: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", examples: Sequence["Example"], judges: QAJudges,
                    settings: AnswerSettings, baseline: dict[str, str] | None = None, baseline_name: str | None = None) -> QAResult:
    """Answer every held-out question once and judge the answers (the module doc's metrics)."""
    texts, lengths = answer(policy, tokenizer, examples, settings)
    return judge_answers(examples, texts, lengths, judges, baseline, baseline_name)


def format_metrics(m: QAMetrics) -> str:
    lines = []
    for key, value in m.to_json().items():
        if value is not None:
            lines.append(f"  {key:22s} {value:.4f}" if isinstance(value, float) else f"  {key:22s} {value}")
    return "\n".join(lines)
