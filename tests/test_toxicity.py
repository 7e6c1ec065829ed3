"""Toxicity scorers (profanity-check, Perspective against a local fake server, HF classifiers) and
the dense / holistic toxicity reward sources."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from finegrain.config import ConfigError
from finegrain.rewards.base import RewardSource
from finegrain.rewards.perspective import PerspectiveError, PerspectiveScorer, RateLimiter
from finegrain.rewards.toxicity import (
    ProfanityCheckScorer,
    TextCache,
    ToxicityReward,
    ToxicityScorer,
    score_with_cache,
)


class WordScorer:
    """tox(text) = 0.3 per "idiot" (capped at 0.9); records its calls."""

    name = "words"

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, texts):
        self.calls.append(list(texts))
        return [min(0.9, 0.3 * t.count("idiot")) for t in texts]


def no_examples(n):
    return [None] * n


# --- scorers -------------------------------------------------------------------------------------


def test_profanity_check_scores_and_caches():
    scorer = ProfanityCheckScorer()
    assert isinstance(scorer, ToxicityScorer)
    clean, toxic = scorer(["What a lovely day in the park.", "you stupid fucking idiot"])
    assert 0.0 <= clean < 0.2 and 0.8 < toxic <= 1.0
    calls = []
    predict = scorer._predict_prob
    scorer._predict_prob = lambda texts: calls.append(list(texts)) or predict(texts)
    again = scorer(["you stupid fucking idiot", "new text", "new text"])
    assert calls == [["new text"]]  # cached texts skipped, duplicates scored once
    assert again[0] == toxic and again[1] == again[2]


def test_score_with_cache_rejects_bad_scorer_output():
    with pytest.raises(ValueError, match=r"'bad' gave 1.5, not a probability in \[0, 1\], to 'a'"):
        score_with_cache(TextCache(), ["a"], lambda new: [1.5], "bad")
    with pytest.raises(ValueError, match="returned 1 scores for 2 texts"):
        score_with_cache(TextCache(), ["a", "b"], lambda new: [0.1], "bad")
    with pytest.raises(ValueError, match="nan"):
        score_with_cache(TextCache(), ["a"], lambda new: [float("nan")], "bad")


def test_text_cache_is_lru():
    cache = TextCache(size=2)
    cache.put("a", 0.1), cache.put("b", 0.2)
    assert cache.get("a") == 0.1  # a is now the most recent
    cache.put("c", 0.3)
    assert cache.get("b") is None and cache.get("a") == 0.1 and len(cache) == 2


# --- the reward sources ------------------------------------------------------------------------------


def test_dense_reward_is_the_drop_in_toxicity_per_sentence():
    scorer = WordScorer()
    source = ToxicityReward(scorer, "dense")
    assert isinstance(source, RewardSource) and source.density == "sentence"
    responses = ["You idiot. Sorry, I mean it.\nIdiot idiot!", "", "   ", "Fine"]
    out = source.score(no_examples(4), responses)
    # prefixes: "You idiot. " 0.3, "...I mean it.\n" 0.3, "... idiot!" 0.6 (the capital I does not count)
    assert len(scorer.calls) == 1  # one batched call for every prefix of every response
    assert out.mask.tolist() == [[True, True, True], [False] * 3, [False] * 3, [True, False, False]]
    assert torch.allclose(out.scores[0], torch.tensor([-0.3, 0.0, -0.3]))
    assert out.scores[3, 0] == 0.0
    assert out.char_ends[0].tolist() == [11, 29, len(responses[0])]
    assert out.char_ends[3, 0] == 4
    # the dense rewards telescope to -tox(y): exactly the holistic reward
    holistic = ToxicityReward(WordScorer(), "holistic").score(no_examples(4), responses)
    assert torch.allclose(out.scores.sum(dim=1)[[0, 3]], holistic.scores[[0, 3], 0])


def test_holistic_reward_is_minus_toxicity_at_the_end():
    source = ToxicityReward(WordScorer(), "holistic", name="tox")
    assert source.density == "sequence" and source.name == "tox"
    out = source.score(no_examples(3), ["idiot. idiot.", "", "ok"])
    assert out.mask.tolist() == [[True], [False], [True]]
    assert torch.allclose(out.scores[:, 0], torch.tensor([-0.6, 0.0, 0.0]))
    assert out.char_ends[:, 0].tolist() == [13, 0, 2]


def test_reward_source_edge_cases():
    assert ToxicityReward(WordScorer()).score([], []).mask.shape == (0, 1)
    scorer = WordScorer()
    out = ToxicityReward(scorer).score(no_examples(2), ["", "\n"])
    assert not out.mask.any() and scorer.calls == []  # nothing to score, no call
    with pytest.raises(ValueError, match="mode 'sparse' is not allowed"):
        ToxicityReward(WordScorer(), "sparse")
    with pytest.raises(ValueError, match="2 examples but 1 responses"):
        ToxicityReward(WordScorer()).score(no_examples(2), ["a"])


def test_dense_reward_with_the_embedded_scorer_composes_on_tokens():
    from finegrain.rewards.compose import RewardTerm, compose

    text = "Have a nice day. You are a fucking idiot."
    out = ToxicityReward(ProfanityCheckScorer(), "dense").score(no_examples(1), [text])
    assert out.mask.sum() == 2 and out.scores[0, 1] < -0.5  # the insult raises toxicity a lot
    offsets = [(0, 4), (4, 6), (6, 11), (11, 15), (15, 16), (16, 20), (20, 24), (24, 26), (26, 34), (34, 40), (40, 41)]
    rewards = compose([RewardTerm("toxicity")], [out], [text], [offsets], len(offsets))
    assert torch.nonzero(rewards.total[0]).flatten().tolist() == [4, 10]  # on the two "." tokens


# --- Perspective against a local fake server ------------------------------------------------------


class FakePerspective(BaseHTTPRequestHandler):
    """Scores like WordScorer; `script` holds the status codes to answer before a success."""

    script: list[int] = []
    seen: list[tuple[float, dict, str]] = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((time.monotonic(), body, self.path))
        if self.script:
            code = self.script.pop(0)
            payload = {"error": {"code": code, "message": f"scripted failure {code}"}}
            self._send(code, payload, {"Retry-After": "0"} if code == 429 else {})
            return
        score = min(0.9, 0.3 * body["comment"]["text"].count("idiot"))
        self._send(200, {"attributeScores": {"TOXICITY": {"summaryScore": {"value": score, "type": "PROBABILITY"}}}})

    def _send(self, code, payload, headers=None):
        raw = json.dumps(payload).encode()
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture
def fake_api():
    FakePerspective.script, FakePerspective.seen = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakePerspective)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1alpha1/comments:analyze", FakePerspective
    server.shutdown()
    server.server_close()


def fast(url, **kw):
    kw.setdefault("requests_per_second", 1000.0)
    return PerspectiveScorer("test-key", url=url, backoff_s=0.01, **kw)


def test_perspective_scores_batches_and_caches(fake_api):
    url, server = fake_api
    scorer = fast(url, concurrency=3)
    assert scorer(["idiot", "fine", "idiot idiot", "idiot"]) == [pytest.approx(0.3), 0.0, pytest.approx(0.6), pytest.approx(0.3)]
    assert scorer(["fine", "idiot"]) == [0.0, pytest.approx(0.3)]
    assert len(server.seen) == 3 == scorer.requests_sent  # identical texts are sent once, ever
    _, body, path = server.seen[0]
    assert "key=test-key" in path
    assert body["requestedAttributes"] == {"TOXICITY": {}} and body["languages"] == ["en"] and body["doNotStore"]


def test_perspective_retries_429_and_5xx_with_backoff(fake_api):
    url, server = fake_api
    server.script = [429, 503, 500]
    assert fast(url)(["idiot"]) == [pytest.approx(0.3)]
    assert len(server.seen) == 4
    server.script = [500] * 10
    with pytest.raises(PerspectiveError, match="still failing after 2 retries: 500: scripted failure 500"):
        fast(url, max_retries=2)(["x"])


def test_perspective_stops_at_once_on_a_permanent_4xx(fake_api):
    url, server = fake_api
    server.script = [400]
    with pytest.raises(PerspectiveError, match="answered 400: scripted failure 400") as err:
        fast(url)(["x"])
    assert "test-key" not in str(err.value)  # the key never shows in a message
    assert len(server.seen) == 1


def test_perspective_respects_the_rate_limit(fake_api):
    url, server = fake_api
    fast(url, requests_per_second=20.0, concurrency=4)([f"text {i}" for i in range(5)])
    times = sorted(t for t, _, _ in server.seen)
    assert times[-1] - times[0] >= 4 / 20 - 0.02  # 5 starts need at least 4 intervals of 50 ms


def test_perspective_needs_a_key(monkeypatch):
    monkeypatch.delenv("PERSPECTIVE_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="set PERSPECTIVE_API_KEY"):
        PerspectiveScorer()
    monkeypatch.setenv("PERSPECTIVE_API_KEY", "k")
    assert PerspectiveScorer().url.endswith("?key=k")


def test_perspective_unreachable_server_fails_after_retries():
    scorer = PerspectiveScorer("k", url="http://127.0.0.1:9/analyze", max_retries=1, backoff_s=0.01, timeout_s=2, requests_per_second=1000.0)
    with pytest.raises(PerspectiveError, match="still failing after 1 retries"):
        scorer(["x"])


def test_rate_limiter_spaces_starts():
    now, slept = [0.0], []
    limiter = RateLimiter(4.0, clock=lambda: now[0], sleep=slept.append)
    for _ in range(3):
        limiter.wait()
    assert slept == [0.25, 0.5] and limiter.started == 3


# --- a Hugging Face classifier -------------------------------------------------------------------------


@pytest.mark.embedded
def test_hf_classifier_scorer_on_a_tiny_random_bert(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    from finegrain.models import load_tokenizer
    from finegrain.rewards.toxicity import HFClassifierScorer

    tok = load_tokenizer("minilm-l6", padding_side="right")
    config = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=3, id2label={0: "clean", 1: "toxic", 2: "insult"},
        label2id={"clean": 0, "toxic": 1, "insult": 2},
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)

    texts = ["hello there", "you are an idiot, a real one", "hello there"]
    with torch.no_grad():
        enc = tok(texts, padding=True, return_tensors="pt")
        expected = torch.softmax(model(**enc).logits, dim=-1)[:, 1]
    scorer = HFClassifierScorer(str(tmp_path), toxic_label="toxic", batch_size=2)
    assert isinstance(scorer, ToxicityScorer) and scorer.name == f"hf:{tmp_path}"
    assert torch.allclose(torch.tensor(scorer(texts)), expected, atol=1e-5)
    fast_scores = HFClassifierScorer(str(tmp_path), toxic_label="toxic", bf16=True)(texts)
    assert torch.allclose(torch.tensor(fast_scores), expected, atol=0.02)
    assert HFClassifierScorer(str(tmp_path), toxic_label=1)(texts[:1]) == pytest.approx(expected[:1].tolist(), abs=1e-5)
    with pytest.raises(ValueError, match="'rude' is not one of its labels: clean, toxic, insult"):
        HFClassifierScorer(str(tmp_path), toxic_label="rude")
    with pytest.raises(ValueError, match="has 3 labels"):
        HFClassifierScorer(str(tmp_path))
    # a dense source on top of it
    out = ToxicityReward(scorer, "dense").score(no_examples(1), ["Hello there. You idiot."])
    assert out.mask.sum() == 2 and torch.isfinite(out.scores).all()
