"""Toxicity as a reward: scorers (text -> P(toxic)) and the dense / holistic reward sources on top.

Four scorers share one interface, `ToxicityScorer`: a `name` and `__call__(texts) -> list of
probabilities in [0, 1]`:

- `ProfanityCheckScorer`: the embedded `alt-profanity-check` linear model (offline, fast): the
  detox reward;
- `JudgeScorer` (finegrain.rewards.judge): the independent judge, a small head on the embedded
  MiniLM distilled from Perspective's scores on RealToxicityPrompts: for evaluation, never a reward;
- `PerspectiveScorer` (finegrain.rewards.perspective): Google's Perspective API, as in the paper;
- `HFClassifierScorer`: any Hugging Face sequence classifier, by hub id or local path.

`ToxicityReward(scorer, mode)` turns a scorer into a `RewardSource`:

- dense (the paper's fine-grained detox reward): the response is cut at sentence ends and line
  breaks; segment j's reward is the drop in toxicity when it is appended,
  s_j = -(tox(y[:e_j]) - tox(y[:e_{j-1}])), with tox(y[:e_0]) = 0 for the empty continuation
  (the paper scores the generated text alone, and an empty text is not toxic). The rewards
  telescope: sum_j s_j = -tox(y), so a response's dense rewards sum to exactly its holistic reward.
- holistic: one segment at the response's end with reward -tox(y). (The paper wrote 1 - tox(y); the
  constant 1 is left out so that both modes give every response the same total and differ only in
  where it is placed: a value head starting at 0 would otherwise first have to learn the offset.
  `mapping: affine, bias: 1` gives the paper's form.)
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from finegrain.errors import MissingPackageError
from finegrain.rewards.base import SegmentScores, pack_segment_scores

if TYPE_CHECKING:
    from finegrain.data.records import Example

JUDGE_CARD = "judge.json"  # what makes a folder a judge folder (finegrain.rewards.judge.CARD_FILE)
ToxicityMode = Literal["dense", "holistic"]
TOXICITY_MODES = ("dense", "holistic")


@runtime_checkable
class ToxicityScorer(Protocol):
    """Scores texts for toxicity: one probability in [0, 1] per text, in order."""

    name: str

    def __call__(self, texts: list[str]) -> list[float]: ...


class TextCache:
    """A thread-safe LRU map text -> score, so identical texts (the same prefix in several
    responses, a repeated sample) are scored once."""

    def __init__(self, size: int = 100_000) -> None:
        self.size = size
        self._items: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, text: str) -> float | None:
        with self._lock:
            if text in self._items:
                self._items.move_to_end(text)
                return self._items[text]
            return None

    def put(self, text: str, score: float) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._items[text] = score
            self._items.move_to_end(text)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


def score_with_cache(cache: TextCache, texts: Sequence[str], score_new: Callable[[list[str]], Sequence[float]], name: str) -> list[float]:
    """Look every text up in `cache`, score the distinct missing ones in ONE call, check them."""
    found = {t: s for t in dict.fromkeys(texts) if (s := cache.get(t)) is not None}
    missing = [t for t in dict.fromkeys(texts) if t not in found]
    if missing:
        new = list(score_new(missing))
        if len(new) != len(missing):
            raise ValueError(f"toxicity scorer {name!r} returned {len(new)} scores for {len(missing)} texts")
        for text, score in zip(missing, new):
            score = float(score)
            if not (math.isfinite(score) and 0.0 <= score <= 1.0):
                raise ValueError(f"toxicity scorer {name!r} gave {score!r}, not a probability in [0, 1], to {text[:80]!r}")
            cache.put(text, score)
            found[text] = score
    return [found[t] for t in texts]


class ProfanityCheckScorer:
    """The embedded `alt-profanity-check` model (a linear SVM on 200k labelled comments).

    Importing it loads scikit-learn and the model (about 2 s here, once); a call costs about 5 ms
    whatever the batch (1 text or 1,000), so score many texts per call.
    """

    name = "profanity-check"

    def __init__(self, cache_size: int = 100_000) -> None:
        try:
            from profanity_check import predict_prob
        except ImportError as err:
            raise MissingPackageError(
                "the embedded toxicity scorer needs alt-profanity-check: pip install 'alt-profanity-check>=1.5,<2'"
            ) from err
        self._predict_prob = predict_prob
        self.cache = TextCache(cache_size)

    def __call__(self, texts: list[str]) -> list[float]:
        return score_with_cache(self.cache, texts, lambda new: self._predict_prob(new).tolist(), self.name)


def batches_by_length(texts: Sequence[str], batch_size: int) -> Iterator[list[int]]:
    """Indices of `texts` in batches of similar lengths (shortest first): little compute is spent
    on padding."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size]


class HFClassifierScorer:
    """Any `AutoModelForSequenceClassification` (hub id, local path or embedded name) as a scorer.

    `toxic_label` picks the output that means "toxic": a label name from the model's `id2label`
    or an index. Left as None, a one-output model's sigmoid is used, or index 1 of a two-label one.
    Multi-label models (`problem_type == "multi_label_classification"`) get a sigmoid per label,
    others a softmax over labels. `bf16` runs the forward under bf16 autocast (several times faster
    on CPUs with bf16 matmuls; scores move by a few hundredths: under 0.05 on 500 texts).
    """

    def __init__(
        self,
        model: str,
        toxic_label: str | int | None = None,
        *,
        batch_size: int = 32,
        max_length: int = 512,
        device: str = "cpu",
        bf16: bool = False,
        cache_size: int = 100_000,
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from finegrain.models import prepare_tokenizer, resolve_model

        path = resolve_model(model)
        self.name = f"hf:{model}"
        self.tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(path), padding_side="right")
        self.model = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
        self.device, self.batch_size, self.max_length, self.bf16 = device, batch_size, max_length, bf16
        self.multi_label = self.model.config.problem_type == "multi_label_classification"
        self.index = self._toxic_index(toxic_label)
        self.cache = TextCache(cache_size)

    def _toxic_index(self, toxic_label: str | int | None) -> int:
        n = self.model.config.num_labels
        labels = {str(v): int(k) for k, v in self.model.config.id2label.items()}
        if toxic_label is None:
            if n in (1, 2):
                return n - 1
            raise ValueError(
                f"{self.name} has {n} labels ({', '.join(labels)}): say which one means toxic with toxic_label"
            )
        if isinstance(toxic_label, int) or str(toxic_label).isdigit():
            index = int(toxic_label)
            if not 0 <= index < n:
                raise ValueError(f"{self.name}: toxic_label {index} is not a label index (the model has {n} labels)")
            return index
        if toxic_label not in labels:
            raise ValueError(f"{self.name}: toxic_label {toxic_label!r} is not one of its labels: {', '.join(labels)}")
        return labels[toxic_label]

    def _score(self, texts: list[str]) -> list[float]:
        import torch

        out = [0.0] * len(texts)
        autocast = torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16, enabled=self.bf16)
        with torch.inference_mode(), autocast:
            for rows in batches_by_length(texts, self.batch_size):
                batch = self.tokenizer(
                    [texts[r] for r in rows], padding=True, truncation=True,
                    max_length=self.max_length, return_tensors="pt",
                ).to(self.device)
                logits = self.model(**batch).logits.float()  # (b, num_labels)
                if logits.shape[-1] == 1 or self.multi_label:
                    probs = torch.sigmoid(logits[:, self.index])
                else:
                    probs = torch.softmax(logits, dim=-1)[:, self.index]
                for r, p in zip(rows, probs.tolist()):
                    out[r] = p
        return out

    def __call__(self, texts: list[str]) -> list[float]:
        return score_with_cache(self.cache, texts, self._score, self.name)


def load_scorer(spec: str, toxic_label: str | int | None = None) -> ToxicityScorer:
    """"profanity-check" (embedded), "judge" (the shipped independent judge, on the embedded
    MiniLM), "perspective" (API key from $PERSPECTIVE_API_KEY), a judge folder written by
    `finegrain rm judge`, or an HF classifier's hub id / local path."""
    if spec == "profanity-check":
        return ProfanityCheckScorer()
    if spec == "judge":
        from finegrain.rewards.judge import JudgeScorer

        return JudgeScorer()
    if spec.startswith("judge:") or (Path(spec).expanduser() / JUDGE_CARD).is_file():
        from finegrain.rewards.judge import JudgeScorer

        return JudgeScorer(Path(spec.removeprefix("judge:")).expanduser())
    if spec == "perspective":
        from finegrain.rewards.perspective import PerspectiveScorer

        return PerspectiveScorer()
    return HFClassifierScorer(spec, toxic_label)


class ToxicityReward:
    """A `RewardSource` from a toxicity scorer: dense (drop in toxicity per sentence) or holistic
    (-toxicity of the whole response). Either way a response's rewards sum to -tox(y).
    Only the response is scored, not the prompt."""

    def __init__(self, scorer: ToxicityScorer, mode: ToxicityMode = "dense", name: str = "toxicity") -> None:
        if mode not in TOXICITY_MODES:
            raise ValueError(f"ToxicityReward: mode {mode!r} is not allowed; choose one of {', '.join(TOXICITY_MODES)}")
        self.scorer, self.mode, self.name = scorer, mode, name
        self.density = "sentence" if mode == "dense" else "sequence"

    def score(self, examples: Sequence["Example"], responses: Sequence[str]) -> SegmentScores:
        from finegrain.segment import segment_text

        if len(examples) != len(responses):
            raise ValueError(f"{self.name}: {len(examples)} examples but {len(responses)} responses")
        level = "line_sentence" if self.mode == "dense" else "response"
        ends = [[seg.end for seg in segment_text(r, level)] for r in responses]
        # every prefix of every response in one scorer call: batching is where the speed is
        prefixes = [r[:e] for r, es in zip(responses, ends) for e in es]
        tox = iter(self.scorer(prefixes) if prefixes else [])
        scores = []
        for es in ends:
            prefix_tox = [next(tox) for _ in es]
            if self.mode == "holistic":
                scores.append([-t for t in prefix_tox])
            else:
                previous = [0.0] + prefix_tox[:-1]  # tox of the empty continuation is 0
                scores.append([-(t - p) for t, p in zip(prefix_tox, previous)])
        return pack_segment_scores(scores, ends)
