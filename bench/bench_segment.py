"""Time segmentation on real responses, as it runs on the PPO hot path, and compare sentence
boundaries with pysbd.

    FINEGRAIN_CACHE=/tmp/fgcache .venv/bin/python bench/bench_segment.py [--data FILE] [--tokens 100]

Responses: QA-Feedback's `prediction 1` texts cut to their first `--tokens` SmolLM2 tokens (the
embedded policy's tokenizer). Prints the median time per response for each level, for
`token_end_indices` with the SmolLM2 offsets, and for pysbd's Segmenter (cached, char_span on).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from finegrain.models import load_tokenizer
from finegrain.data.categories import DEFAULT_TAXONOMY
from finegrain.data.load import load_examples
from finegrain.segment import LEVELS, label_segments, segment_text, split_sentences, token_end_indices

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/qa_feedback/feedback.json"


def median_us(fn, items, repeat: int) -> float:
    """Median over items of the best-of-`repeat` time of fn(item), in microseconds."""
    times = []
    for item in items:
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn(item)
            best = min(best, time.perf_counter() - t0)
        times.append(best)
    return statistics.median(times) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    tok = load_tokenizer("smollm2-135m")
    full = [item["prediction 1"] for item in json.loads(args.data.read_text())]
    texts = []
    for text in full:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        offs = enc["offset_mapping"][: args.tokens]
        texts.append(text[: offs[-1][1]] if offs else text)
    print(f"{len(texts)} responses, {args.tokens} SmolLM2 tokens at most, "
          f"{statistics.mean(map(len, texts)):.0f} characters on average")

    for level in LEVELS:
        us = median_us(lambda t: segment_text(t, level), texts, args.repeat)
        n = statistics.mean(len(segment_text(t, level)) for t in texts)
        print(f"segment_text {level:14s} median {us:7.1f} us per response, {n:.2f} segments on average")

    encoded = [(t, tok(t, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]) for t in texts]
    segs = {t: segment_text(t, "subsentence") for t in texts}
    us = median_us(lambda p: token_end_indices(p[1], segs[p[0]], p[0]), encoded, args.repeat)
    print(f"token_end_indices (subsentence, SmolLM2 offsets) median {us:7.1f} us per response")

    label_agreement(args.data)
    try:
        import pysbd
    except ImportError:
        return
    seg = pysbd.Segmenter(language="en", clean=False, char_span=True)
    us = median_us(seg.segment, texts, max(1, args.repeat // 2))
    print(f"pysbd Segmenter(char_span=True), cached  median {us:7.1f} us per response")
    # boundary agreement: positions of the last visible character of each sentence but the last
    ours, theirs, both = 0, 0, 0
    for t in texts:
        a = {t[: s.end].rstrip().__len__() for s in split_sentences(t)[:-1]}
        b = {t[: s.end].rstrip().__len__() for s in seg.segment(t)[:-1]}
        ours, theirs, both = ours + len(a), theirs + len(b), both + len(a & b)
    print(f"sentence boundaries: ours {ours}, pysbd {theirs}, shared {both}")
    pysbd_fuzz(seg)


def label_agreement(path: Path) -> None:
    """Our overlap rule against the paper's data code (a segment is an error when any of its
    visible characters lies in an error span) on the annotated responses, at the paper's levels."""
    examples = load_examples(path)
    for rm, level in (("relevance", "subsentence"), ("factuality", "sentence")):
        cats = DEFAULT_TAXONOMY.categories_for(rm)
        total = ours_pos = any_pos = differ = 0
        for ex in examples:
            for _, resp in ex.annotated:
                text, spans = resp.text, [s for s in resp.annotation.spans if s.category in cats]
                segments = segment_text(text, level)
                ours = label_segments(segments, spans, cats, text)
                touched = [
                    int(any(not text[c].isspace() for sp in spans for c in range(max(s.start, sp.start), min(s.end, sp.end))))
                    for s in segments
                ]
                total += len(segments)
                ours_pos += sum(ours)
                any_pos += sum(touched)
                differ += sum(a != b for a, b in zip(ours, touched))
        print(f"labels {rm:10s} at {level:11s}: {total} segments, errors ours {ours_pos}, any-overlap {any_pos}, differ {differ}")


def pysbd_fuzz(seg, n: int = 5000) -> None:
    """How often pysbd's character spans fail to tile odd text (overlap, gap, wrong text)."""
    import random

    pieces = list("ab cD.,;!?\n\t  \"'()[]-:…。！？é\u0301👋🏽日\u200b\u00a0") + [
        "Mr.", "U.S.", " e.g. ", "1.5", "...", "?!", "\r\n", "http://x.com/a.b"
    ]
    rng = random.Random(1)
    bad = 0
    for _ in range(n):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 60))).lstrip()
        pos, ok = 0, True
        for s in seg.segment(text):
            ok = ok and s.start == pos and text[s.start : s.end] == s.sent
            pos = s.end
        if not ok or (text.strip() and pos != len(text)):
            bad += 1
    print(f"pysbd char spans that do not tile the text: {bad} of {n} random odd strings (ours: 0 by construction)")


if __name__ == "__main__":
    main()
