"""Evaluation metrics any experiment uses: diversity (distinct-n), fluency (perplexity), ROUGE-L,
length; sampling k continuations per prompt with their log-probs under a reference model,
through the kernel's renderer and generator; and two arms compared over seeds (the mean of their
paired differences with its t interval, and its markdown table, for every experiment's report). An experiment's own metrics live with it
(the detoxification experiment's toxicity table: finegrain/experiments/detox/metrics.py).

- perplexity of the samples under a reference LM (the initial policy): fluency, over the response
  tokens up to and including the EOS (the kernel's one response rule);
- distinct-n: per prompt, unique n-grams / all n-grams over its k samples (whitespace tokens);
  averaged over prompts: diversity.

Shape legend: N prompts, k samples per prompt, B sequences (N * k), P prompt length,
T response length.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from finegrain.kernel.sequences import Sequences


# --- pure metrics ---------------------------------------------------------------------------


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(samples_per_prompt: Sequence[Sequence[str]], n: int) -> float:
    """Unique n-grams / all n-grams among each prompt's samples (split on whitespace), averaged
    over the prompts that have at least one n-gram. 0.0 when no prompt has one."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ratios = []
    for samples in samples_per_prompt:
        grams = [g for text in samples for g in ngrams(text.split(), n)]
        if grams:
            ratios.append(len(set(grams)) / len(grams))
    return sum(ratios) / len(ratios) if ratios else 0.0


def perplexity(logprobs: "torch.Tensor", mask: "torch.Tensor") -> float:
    """exp of the mean negative log-likelihood per response token, over all tokens of all responses
    (token-weighted, so long and short responses count by their tokens).

    Shape: logprobs (B, T) log p_ref(y_t | prompt, y_<t); mask (B, T) bool, True on response tokens."""
    if logprobs.shape != mask.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)} and mask {tuple(mask.shape)} differ in shape")
    m = mask.to(logprobs.dtype)
    count = float(m.sum())
    if count == 0:
        return float("nan")
    return math.exp(float(-(logprobs * m).sum()) / count)


def mean_length(mask: "torch.Tensor") -> float:
    """Average number of response tokens. Shape: mask (B, T) bool."""
    if mask.shape[0] == 0:
        return 0.0
    return float(mask.sum(dim=1).float().mean())


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 (rouge-score, with stemming) of each prediction against its reference."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return 0.0
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return sum(scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)) / len(predictions)


# --- model-side pieces: sampling and log-probs come from the kernel ---------------------------------


def precision_of(bf16: bool | None) -> str:
    """SamplingSettings.bf16 -> the kernel's precision name (None: auto, finegrain/precision.py)."""
    return "auto" if bf16 is None else "bf16" if bf16 else "fp32"


@dataclass(frozen=True)
class SamplingSettings:
    """How held-out samples are drawn (the paper: nucleus sampling, p = 0.9, 20-token continuations)."""

    samples_per_prompt: int = 4  # k
    max_new_tokens: int = 32
    top_p: float = 0.9
    temperature: float = 1.0
    batch_size: int = 64  # sequences per generate call
    seed: int = 0
    bf16: bool | None = None  # bf16 autocast; None: where the hardware runs bf16 natively (finegrain/precision.py)


def sample_continuations(
    policy: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    prompts: Sequence[str],
    settings: SamplingSettings,
    on_batch: Callable[[int, int], None] | None = None,
) -> tuple[list[str], list["Sequences"]]:
    """k continuations per prompt, in prompt order (prompt i's samples are rows i*k .. i*k + k - 1),
    through the kernel's renderer and generator (a response is its tokens up to and including the
    first EOS, as everywhere in finegrain).

    Returns the texts (B) and the sampled batches (each b rows of prompt + response tokens)."""
    import torch

    from finegrain.kernel.generation import GenerationSettings, HFGenerator
    from finegrain.kernel.prompts import PromptRenderer

    k = settings.samples_per_prompt
    per_call = max(1, settings.batch_size // k)
    generator = HFGenerator(policy, tokenizer, precision=precision_of(settings.bf16))
    renderer = PromptRenderer(tokenizer, "{prompt}")
    sampling = GenerationSettings(k, settings.max_new_tokens, 0, settings.temperature, 0, settings.top_p)
    texts: list[str] = []
    batches = []
    torch.manual_seed(settings.seed)
    for start in range(0, len(prompts), per_call):
        ids, mask = renderer.encode(list(prompts[start : start + per_call]))
        out = generator.sample(ids, mask, sampling)
        texts.extend(tokenizer.batch_decode(out.response_ids, skip_special_tokens=True))
        batches.append(out)
        if on_batch is not None:
            on_batch(min(start + per_call, len(prompts)), len(prompts))
    return texts, batches


def response_logprobs_under(model: "PreTrainedModel", batches: Sequence["Sequences"], max_new_tokens: int, bf16: bool | None) -> tuple["torch.Tensor", "torch.Tensor"]:
    """log p_model(y_t | prompt, y_<t) of every sampled response token, and the response mask,
    padded to `max_new_tokens` so the batches stack; a prompt's k samples run its forward once
    (`response_forward`'s `share_prompts`). Shape: -> (B, T), (B, T) bool."""
    import torch
    import torch.nn.functional as F

    from finegrain.kernel.logprobs import response_logprobs
    from finegrain.kernel.models import autocast

    device = next(model.parameters()).device
    logprobs, masks = [], []
    with torch.no_grad(), autocast(device, precision_of(bf16)):
        for b in batches:
            pad = max_new_tokens - b.response_ids.shape[1]
            logprobs.append(F.pad(response_logprobs(model, b.to(device), share_prompts=True).float().cpu(), (0, pad)))
            masks.append(F.pad(b.response_mask.cpu(), (0, pad)))
    return torch.cat(logprobs), torch.cat(masks)


# --- two arms over seeds -----------------------------------------------------------------------


@dataclass(frozen=True)
class PairedDifference:
    """a - b over runs paired by seed: the mean difference, its t interval, the number of pairs and
    in how many a is lower. With a handful of seeds the interval, not the count, says whether a
    difference is more than the seeds' noise."""

    n: int
    mean: float
    low: float
    high: float
    a_lower: int
    sd: float = 0.0  # sample standard deviation of the n differences

    @property
    def within_noise(self) -> bool:
        return self.low <= 0.0 <= self.high

    def detectable(self, power: float = 0.8, level: float = 0.95) -> float:
        """The smallest true difference that a paired t test at this `level` finds with `power` over
        these n pairs, taking the observed spread of the differences for the true one
        (`detectable_difference`): how large a difference this many seeds can see at all."""
        return detectable_difference(self.sd, self.n, power, level)


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> PairedDifference:
    """Mean of a[i] - b[i] with the Student t interval at `level` (two-sided) over the n pairs."""
    import statistics

    from scipy.stats import t

    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"paired_difference needs two lists of equal length >= 2, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    mean = statistics.mean(diffs)
    half = float(t.ppf(0.5 + level / 2, len(diffs) - 1)) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return PairedDifference(len(diffs), mean, mean - half, mean + half, sum(d < 0 for d in diffs), statistics.stdev(diffs))


def paired_t_power(effect: float, sd: float, n: int, level: float = 0.95) -> float:
    """Power of the two-sided paired t test at `level` over n pairs when the true mean difference is
    `effect` and the differences' standard deviation is `sd`: the chance that the t interval leaves 0
    out (the noncentral t distribution with n - 1 degrees of freedom and noncentrality
    effect / sd * sqrt(n)). The textbook check: effect / sd = 1 needs 10 pairs for 80% (power 0.803)."""
    from scipy.stats import nct, t

    if n < 2 or sd < 0:
        raise ValueError(f"paired_t_power needs n >= 2 and sd >= 0, got n={n}, sd={sd}")
    if sd == 0:
        return 1.0 if effect else 1.0 - level
    crit = float(t.ppf(0.5 + level / 2, n - 1))
    shift = abs(effect) / sd * math.sqrt(n)
    power = float(nct.sf(crit, n - 1, shift) + nct.cdf(-crit, n - 1, shift))
    if math.isnan(power):  # scipy's noncentral t gives NaN at some shifts for 1-2 degrees of freedom (2-3 seeds)
        power = _t_power_by_integration(crit, n - 1, shift)
    return power


def _t_power_by_integration(crit: float, df: int, shift: float) -> float:
    """P(|T| > crit) for T = (Z + shift) / sqrt(V / df), Z standard normal, V chi-squared with df degrees
    of freedom: the noncentral t's tails as an integral over the scale, which stays finite where scipy's
    closed form does not."""
    from scipy.integrate import quad
    from scipy.stats import chi, norm

    def tails(s: float) -> float:  # s = sqrt(V), chi-distributed
        scale = crit * s / math.sqrt(df)
        return (norm.sf(scale - shift) + norm.cdf(-scale - shift)) * chi.pdf(s, df)

    return float(quad(tails, 0.0, math.inf)[0])


def seeds_needed(effect: float, sd: float, power: float = 0.8, level: float = 0.95, most: int = 10_000) -> int | None:
    """The fewest pairs (seeds) for which `paired_t_power` reaches `power`; None beyond `most`."""
    for n in range(2, most + 1):
        if paired_t_power(effect, sd, n, level) >= power:
            return n
    return None


def detectable_difference(sd: float, n: int, power: float = 0.8, level: float = 0.95) -> float:
    """The smallest |mean difference| that the paired t test at `level` over n pairs detects with
    `power`, for differences of standard deviation `sd` (0 when they do not vary)."""
    from scipy.optimize import brentq

    if sd == 0:
        return 0.0
    high = sd
    while paired_t_power(high, sd, n, level) < power:
        high *= 2
    return float(brentq(lambda e: paired_t_power(e, sd, n, level) - power, 0.0, high, xtol=sd * 1e-9))


def metrics_by_seed(runs: Sequence[Any]) -> dict[int, dict[str, Any]]:
    """{run.seed: run.metrics.to_json()} of the evaluated runs that know their seed (an experiment's run
    summaries: detox's RunSummary, QA's QARun), for `paired_table`."""
    return {r.seed: r.metrics.to_json() for r in runs if r.metrics is not None and r.seed is not None}


def paired_metrics(a: dict[int, dict[str, Any]], b: dict[int, dict[str, Any]],
                   columns: Sequence[tuple[str, str, str]]) -> dict[str, tuple[PairedDifference, str]]:
    """{key: (a - b over the seeds where both have the metric, the column's format with a sign)} for each
    metric of `columns` ((key, title, format)) that pairs up in two seeds or more."""
    seeds = sorted(set(a) & set(b))
    out = {}
    for key, _, fmt in columns:
        pairs = [(a[s][key], b[s][key]) for s in seeds if a[s].get(key) is not None and b[s].get(key) is not None]
        if len(pairs) >= 2:
            out[key] = (paired_difference([x for x, _ in pairs], [y for _, y in pairs]), fmt.replace("{:", "{:+") if "+" not in fmt else fmt)
    return out


def paired_table(a_label: str, b_label: str, a: dict[int, dict[str, Any]], b: dict[int, dict[str, Any]],
                 columns: Sequence[tuple[str, str, str]]) -> str:
    """A markdown table of `a_label` minus `b_label`, one row per metric in `columns` ((key, title,
    format)), over the seeds both arms have: the mean difference, its 95% t interval, in how many
    seeds a is lower, whether the interval holds 0, and the smallest difference this many seeds would
    detect with 80% power at their observed spread (`PairedDifference.detectable`: a within-noise
    result says little when that is larger than any difference that would matter). Empty when fewer
    than two seeds pair up."""
    rows = [f"| {a_label} minus {b_label} | Seeds | Mean difference | 95% interval | {a_label} lower | Beyond the seeds' noise "
            "| Detectable (80% power) |", "|---|---:|---:|---|---:|---|---:|"]
    diffs = paired_metrics(a, b, columns)
    for key, title, _ in columns:
        if key in diffs:
            d, f = diffs[key]
            rows.append(f"| {title} | {d.n} | {f.format(d.mean)} | [{f.format(d.low)}, {f.format(d.high)}] | {d.a_lower}/{d.n} | "
                        f"{'no (the interval holds 0)' if d.within_noise else 'yes'} | {f.replace('{:+', '{:').format(d.detectable())} |")
    return "\n".join(rows) if len(rows) > 2 else ""
