"""The Perspective API (https://perspectiveapi.com) as a toxicity scorer, as the paper used it.

The key comes from $PERSPECTIVE_API_KEY; the endpoint from `url` (or $PERSPECTIVE_API_URL), so tests
point it at a local fake server. The API scores one comment per request, so a batch of texts is
sent as concurrent requests (`concurrency`) under a requests-per-second limit (the default quota is
1 QPS); 429 and 5xx answers and dropped connections are retried with exponential back-off
(honouring Retry-After), other 4xx answers stop at once with the API's own message. Identical
texts are scored once (a cache shared across calls).
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from finegrain.config import ConfigError
from finegrain.errors import TrainingError
from finegrain.rewards.toxicity import TextCache, score_with_cache

DEFAULT_URL = "https://commentanalyzer.googleapis.com/v1alpha1/comments:analyze"
KEY_ENV, URL_ENV = "PERSPECTIVE_API_KEY", "PERSPECTIVE_API_URL"


class PerspectiveError(TrainingError):
    """The API refused a request for good (bad key, bad request) or kept failing past the retries."""


class RateLimiter:
    """At most `per_second` starts per second across threads: each caller waits for its slot."""

    def __init__(self, per_second: float, clock=time.monotonic, sleep=time.sleep) -> None:
        self.interval = 1.0 / per_second
        self.clock, self.sleep = clock, sleep
        self._next = 0.0
        self._lock = threading.Lock()
        self.started = 0  # requests let through so far

    def wait(self) -> None:
        with self._lock:
            self.started += 1
            now = self.clock()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            self.sleep(slot - now)


class PerspectiveScorer:
    """P(toxic) from the Perspective API's TOXICITY attribute (its `summaryScore.value`)."""

    name = "perspective"

    def __init__(
        self,
        api_key: str | None = None,
        *,
        url: str | None = None,
        attribute: str = "TOXICITY",
        languages: tuple[str, ...] = ("en",),
        requests_per_second: float = 1.0,
        concurrency: int = 4,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        timeout_s: float = 30.0,
        cache_size: int = 100_000,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get(KEY_ENV, "")
        if not key:
            raise ConfigError(
                f"the Perspective API needs a key: set {KEY_ENV} (get one at https://developers.perspectiveapi.com)"
            )
        if requests_per_second <= 0 or concurrency < 1 or max_retries < 0:
            raise ConfigError(
                f"PerspectiveScorer: requests_per_second must be > 0 ({requests_per_second!r}), concurrency >= 1 "
                f"({concurrency!r}) and max_retries >= 0 ({max_retries!r})"
            )
        base = url or os.environ.get(URL_ENV) or DEFAULT_URL
        self.url = f"{base}{'&' if '?' in base else '?'}{urllib.parse.urlencode({'key': key})}"
        self._shown_url = base  # never put the key in a message
        self.attribute, self.languages = attribute, list(languages)
        self.concurrency, self.max_retries = concurrency, max_retries
        self.backoff_s, self.max_backoff_s, self.timeout_s = backoff_s, max_backoff_s, timeout_s
        self.limiter = RateLimiter(requests_per_second)
        self.cache = TextCache(cache_size)

    @property
    def requests_sent(self) -> int:
        """Requests sent so far, retries included (what the quota was spent on)."""
        return self.limiter.started

    def __call__(self, texts: list[str]) -> list[float]:
        return score_with_cache(self.cache, texts, self._score_all, self.name)

    def _score_all(self, texts: list[str]) -> list[float]:
        if len(texts) == 1 or self.concurrency == 1:
            return [self._score_one(t) for t in texts]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(texts))) as pool:
            return list(pool.map(self._score_one, texts))

    def _score_one(self, text: str) -> float:
        body = json.dumps({
            "comment": {"text": text},
            "languages": self.languages,
            "requestedAttributes": {self.attribute: {}},
            "doNotStore": True,
        }).encode()
        for attempt in range(self.max_retries + 1):
            self.limiter.wait()
            request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                    return self._parse(answer.read(), text)
            except urllib.error.HTTPError as err:
                detail = _api_message(err)
                if err.code != 429 and err.code < 500:
                    raise PerspectiveError(f"Perspective API at {self._shown_url} answered {err.code}: {detail}") from None
                failure, retry_after = f"{err.code}: {detail}", _retry_after(err)
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                failure, retry_after = f"{getattr(err, 'reason', err)}", None
            if attempt < self.max_retries:
                time.sleep(retry_after if retry_after is not None else min(self.backoff_s * 2**attempt, self.max_backoff_s))
        raise PerspectiveError(f"Perspective API at {self._shown_url} still failing after {self.max_retries} retries: {failure}")

    def _parse(self, raw: bytes, text: str) -> float:
        try:
            return float(json.loads(raw)["attributeScores"][self.attribute]["summaryScore"]["value"])
        except (ValueError, KeyError, TypeError) as err:
            raise PerspectiveError(
                f"Perspective API at {self._shown_url}: no attributeScores.{self.attribute}.summaryScore.value "
                f"in its answer for {text[:60]!r}: {raw[:200]!r}"
            ) from err


def _api_message(err: urllib.error.HTTPError) -> str:
    """The API's own error message ({"error": {"message": ...}}) or the HTTP reason."""
    try:
        return str(json.loads(err.read())["error"]["message"])
    except Exception:  # any unreadable body: fall back to the status line
        return str(err.reason)


def _retry_after(err: urllib.error.HTTPError) -> float | None:
    value = err.headers.get("Retry-After") if err.headers else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
