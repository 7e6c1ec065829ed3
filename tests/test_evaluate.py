"""Evaluation metrics (the generic ones and the detox experiment's) on hand-made inputs, and the
detox experiment's evaluate_policy on a tiny random model."""

from __future__ import annotations

import math

import pytest
import torch

from finegrain.data.records import Example
from finegrain.evaluate import SamplingSettings, distinct_n, mean_length, perplexity, response_logprobs_under, rouge_l
from finegrain.experiments.detox.metrics import (
    DetoxMetrics,
    evaluate_policy,
    expected_max_toxicity,
    read_metrics,
    toxic_probability,
    write_eval,
)

WORDS = "the a cat dog sat ran on under mat rug and but you idiot fool nice kind very so it".split()


def tiny_tokenizer():
    """A word-level fast tokenizer built in memory (no files, no network)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    fast.padding_side = "left"
    return fast


def tiny_model(vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=0, eos_token_id=1, bos_token_id=1,
    )
    return LlamaForCausalLM(cfg).eval()


# --- pure metrics ---------------------------------------------------------------------------


def test_expected_max_toxicity_and_toxic_probability_by_hand():
    scores = torch.tensor([[0.1, 0.9, 0.2], [0.2, 0.3, 0.25]])
    assert expected_max_toxicity(scores) == pytest.approx((0.9 + 0.3) / 2)
    assert toxic_probability(scores) == pytest.approx(0.5)
    # "toxic" means strictly above the threshold
    assert toxic_probability(torch.tensor([[0.5, 0.5]])) == 0.0
    assert toxic_probability(scores, threshold=0.25) == 1.0


def test_toxicity_metrics_refuse_a_flat_or_empty_matrix():
    with pytest.raises(ValueError, match="N prompts, k samples"):
        expected_max_toxicity(torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="N prompts, k samples"):
        toxic_probability(torch.zeros(0, 4))


def test_distinct_n_per_prompt_then_averaged():
    # prompt 0: tokens a b a b | a b c -> unigrams 3 unique / 7; bigrams ab ba ab | ab bc -> 3 / 5
    # prompt 1: "x y" -> unigrams 2/2, bigrams 1/1
    per_prompt = [["a b a b", "a b c"], ["x y"]]
    assert distinct_n(per_prompt, 1) == pytest.approx((3 / 7 + 1.0) / 2)
    assert distinct_n(per_prompt, 2) == pytest.approx((3 / 5 + 1.0) / 2)
    # prompt 1 has no trigram, so only prompt 0 counts: abab -> aba bab ; abc -> abc : 3 unique / 3
    assert distinct_n(per_prompt, 3) == pytest.approx(1.0)
    assert distinct_n([["same same same same"]], 1) == pytest.approx(1 / 4)
    assert distinct_n([[""]], 2) == 0.0
    with pytest.raises(ValueError):
        distinct_n(per_prompt, 0)


def test_perplexity_is_token_weighted_and_ignores_masked_positions():
    logprobs = torch.tensor([[math.log(0.5), math.log(0.25), -100.0], [math.log(0.5), -50.0, -50.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    # mean NLL over the 3 real tokens: (ln2 + ln4 + ln2) / 3 = 4 ln2 / 3
    assert perplexity(logprobs, mask) == pytest.approx(2 ** (4 / 3))
    assert math.isnan(perplexity(logprobs, torch.zeros_like(mask)))
    with pytest.raises(ValueError, match="shape"):
        perplexity(logprobs, mask[:, :2])


def test_mean_length_counts_the_masked_tokens():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    assert mean_length(mask) == pytest.approx((3 + 2 + 4 + 0) / 4)


def test_rouge_l():
    assert rouge_l(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(1.0)
    assert rouge_l(["dogs bark"], ["the cat sat"]) == 0.0
    # LCS "the cat on the mat" = 5 of 6 tokens on both sides
    assert rouge_l(["the cat was on the mat"], ["the cat sat on the mat"]) == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        rouge_l(["a", "b"], ["a"])


# --- model side -----------------------------------------------------------------------------


def test_reference_logprobs_with_left_padding_match_unpadded_forwards():
    """Also when a prompt repeats (its samples run the prompt's forward once)."""
    from finegrain.kernel.sequences import Sequences

    tok = tiny_tokenizer()
    model = tiny_model(len(tok))
    prompts = ["the cat sat on the mat", "you idiot", "the cat sat on the mat"]
    responses = [[10, 11, 12], [13, 14, 15], [16, 11, 10]]
    enc = tok(prompts, return_tensors="pt", padding=True)
    batch = Sequences(enc["input_ids"], enc["attention_mask"].bool(), torch.tensor(responses), torch.ones(3, 3, dtype=torch.bool))
    got, mask = response_logprobs_under(model, [batch], 5, bf16=False)  # (3, 5): padded to 5
    assert mask.tolist() == [[True] * 3 + [False] * 2] * 3 and (got[:, 3:] == 0).all()
    for b, prompt in enumerate(prompts):
        ids = torch.tensor([tok(prompt)["input_ids"] + responses[b]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
        p = ids.shape[1] - 3
        want = torch.stack([logp[p - 1 + t, responses[b][t]] for t in range(3)])
        assert torch.allclose(got[b, :3], want, atol=1e-5), (b, got[b], want)


def _bad_word_share(texts):
    return [sum(w in ("idiot", "fool") for w in t.split()) / max(1, len(t.split())) for t in texts]


def test_evaluate_policy_on_a_tiny_model(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_model(len(tok))
    examples = [Example(id=f"p{i}", prompt=p) for i, p in enumerate(["the cat", "you", "a dog sat on", "so very"])]
    settings = SamplingSettings(samples_per_prompt=3, max_new_tokens=6, batch_size=4, bf16=False, seed=7)
    progress = []
    result = evaluate_policy(model, tok, examples, _bad_word_share, settings=settings,
                             on_batch=lambda done, total: progress.append((done, total)))
    m = result.metrics
    assert (m.prompts, m.samples_per_prompt, len(result.samples)) == (4, 3, 12)
    assert progress[-1] == (4, 4) and len(progress) == 4  # batch_size 4 // k 3 = one prompt per call
    # samples are grouped by prompt, in prompt order
    assert [s.prompt_id for s in result.samples] == [f"p{i}" for i in range(4) for _ in range(3)]
    scores = torch.tensor([s.toxicity for s in result.samples]).view(4, 3)
    assert m.avg_max_toxicity == pytest.approx(float(scores.max(1).values.mean()))
    assert m.toxic_probability == pytest.approx(float((scores > 0.5).any(1).float().mean()))
    assert m.mean_toxicity == pytest.approx(float(scores.mean()))
    assert 0 < m.mean_length <= 6
    # a random model over ~24 tokens: perplexity near the vocabulary size, certainly above 1
    assert 1.0 < m.perplexity < 200
    assert 0.0 <= m.dist_1 <= 1.0 and 0.0 <= m.dist_3 <= 1.0
    # the same seed draws the same samples
    again = evaluate_policy(model, tok, examples, _bad_word_share, settings=settings)
    assert [s.text for s in again.samples] == [s.text for s in result.samples]
    write_eval(result, tmp_path / "eval")
    assert read_metrics(tmp_path / "eval" / "metrics.json") == m
    assert len((tmp_path / "eval" / "samples.jsonl").read_text().splitlines()) == 12


def test_evaluate_policy_refuses_a_scorer_that_drops_texts():
    tok = tiny_tokenizer()
    model = tiny_model(len(tok))
    settings = SamplingSettings(samples_per_prompt=2, max_new_tokens=3, bf16=False)
    with pytest.raises(ValueError, match="returned 1 scores for 2 texts"):
        evaluate_policy(model, tok, [Example(id="a", prompt="the cat")], lambda texts: [0.0], settings=settings)


def test_read_metrics_names_a_bad_file(tmp_path):
    from finegrain.data.problems import DataError

    bad = tmp_path / "metrics.json"
    bad.write_text('{"avg_max_toxicity": 0.1}')
    with pytest.raises(DataError, match="metrics.json.*not a finegrain metrics file"):
        read_metrics(bad)
    assert DetoxMetrics(0, 0, 0, 1, 1, 1, 1, 3, 2, 4).prompts == 2
