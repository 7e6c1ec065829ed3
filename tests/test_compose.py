"""The composer and the score -> reward mappings, on hand-computed tensors."""

from __future__ import annotations

import pytest
import torch

from finegrain.errors import TrainingError
from finegrain.rewards.base import SegmentScores, pack_segment_scores
from finegrain.rewards.compose import (
    RewardTerm,
    TokenRewards,
    WeightedSource,
    char_ends_to_token_index,
    compose,
    decode_with_offsets,
    place_segment_rewards,
    score_and_compose,
    token_char_offsets,
    weighted_total,
)
from finegrain.rewards.mapping import Affine, BinaryError, Standardize

# "Hello world. How are you?" as a byte-level BPE (policy) and a WordPiece (RM) tokenizer cut it.
TEXT = "Hello world. How are you?"
BPE = [(0, 5), (5, 11), (11, 12), (12, 16), (16, 20), (20, 24), (24, 25)]  # Hello| world|.| How| are| you|?
WORDPIECE = [(0, 5), (6, 11), (11, 12), (13, 16), (17, 20), (21, 24), (24, 25)]  # spaces belong to no token


# --- mappings ------------------------------------------------------------------------------------


def test_mappings_on_hand_values():
    s = torch.tensor([0.2, 0.5, 0.9])
    assert torch.allclose(Affine(2.0, -1.0)(s), torch.tensor([-0.6, 0.0, 0.8]))
    assert torch.allclose(Standardize(mean=0.5, std=0.2, scale=0.3, bias=0.1)(s), torch.tensor([-0.35, 0.1, 0.7]))
    # P(error) >= threshold -> reward_error (rm eval's rule): exactly at the threshold is an error
    assert torch.equal(BinaryError(0.3, -0.3)(s), torch.tensor([0.3, -0.3, -0.3]))
    assert torch.equal(BinaryError(0.3, -0.3, threshold=0.6)(s), torch.tensor([0.3, 0.3, -0.3]))
    assert torch.equal(BinaryError(0.5, -0.5, threshold=0.1)(s), torch.tensor([-0.5, -0.5, -0.5]))


def test_mappings_reject_bad_parameters():
    with pytest.raises(ValueError, match="std must be > 0"):
        Standardize(mean=0.0, std=0.0)
    with pytest.raises(ValueError, match="threshold"):
        BinaryError(threshold=1.5)
    with pytest.raises(ValueError, match="scale must be a finite"):
        Affine(scale=float("nan"))


# --- place_segment_rewards -----------------------------------------------------------------------


def test_place_segment_rewards_scatter_adds_on_end_tokens():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    index = torch.tensor([[0, 2, 2], [1, 7, -5]])  # padded slots may hold anything
    mask = torch.tensor([[True, True, True], [True, False, False]])
    out = place_segment_rewards(rewards, index, mask, num_tokens=4)
    assert torch.equal(out, torch.tensor([[1.0, 0.0, 5.0, 0.0], [0.0, 4.0, 0.0, 0.0]]))


def test_place_segment_rewards_rejects_segments_outside_the_response():
    rewards, mask = torch.tensor([[1.0, 2.0]]), torch.tensor([[True, True]])
    with pytest.raises(ValueError, match="segment 1 of response 0 ends at token 4, outside the response's 4 tokens"):
        place_segment_rewards(rewards, torch.tensor([[0, 4]]), mask, num_tokens=4)
    with pytest.raises(ValueError, match="outside"):
        place_segment_rewards(rewards, torch.tensor([[-1, 2]]), mask, num_tokens=4)
    response_mask = torch.tensor([[True, True, True, False]])
    with pytest.raises(ValueError, match="segment 1 of response 0 ends on padding token 3"):
        place_segment_rewards(rewards, torch.tensor([[0, 3]]), mask, 4, response_mask)
    ok = place_segment_rewards(rewards, torch.tensor([[0, 2]]), mask, 4, response_mask)
    assert torch.equal(ok, torch.tensor([[1.0, 0.0, 2.0, 0.0]]))


def test_weighted_total():
    per_source = torch.tensor([[[1.0, 2.0]], [[10.0, 20.0]]])  # (K=2, B=1, T=2)
    assert torch.equal(weighted_total(per_source, torch.tensor([0.5, -1.0])), torch.tensor([[-9.5, -19.0]]))


# --- char ends -> token indices --------------------------------------------------------------------


def test_char_ends_land_on_the_last_visible_character_token():
    # segment 0 is "Hello world. " (its trailing space sits in the BPE token " How"): reward on "."
    ends, mask = torch.tensor([[13, 25]]), torch.tensor([[True, True]])
    assert char_ends_to_token_index(ends, mask, [TEXT], [BPE]).tolist() == [[2, 6]]
    assert char_ends_to_token_index(ends, mask, [TEXT], [WORDPIECE]).tolist() == [[2, 6]]
    # a segment ending inside a token lands on that token
    assert char_ends_to_token_index(torch.tensor([[8]]), torch.tensor([[True]]), [TEXT], [BPE]).tolist() == [[1]]


def test_char_ends_errors_are_clear():
    with pytest.raises(ValueError, match=r"response 0: segment 1 is \[13, 40\)"):
        char_ends_to_token_index(torch.tensor([[13, 40]]), torch.tensor([[True, True]]), [TEXT], [BPE])
    with pytest.raises(ValueError, match=r"response 0: segment 1 \[3, 4\) has no token left"):
        three = torch.tensor([[3, 4, 5]])
        char_ends_to_token_index(three, torch.ones(1, 3, dtype=torch.bool), [TEXT], [BPE[:1] + [(5, 5)]])


# --- token_char_offsets ------------------------------------------------------------------------------


class ByteTokenizer:
    """One token per UTF-8 byte, id 256 a special token: multi-byte characters span several tokens."""

    def decode(self, ids, skip_special_tokens=True, clean_up_tokenization_spaces=False):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def batch_decode(self, batch, **kwargs):
        return [self.decode(ids, **kwargs) for ids in batch]


def test_token_char_offsets_gives_a_multibyte_character_to_its_last_byte():
    tok = ByteTokenizer()
    ids = list("aé😀".encode()) + [256]  # a (1 byte), é (2 bytes), 😀 (4 bytes), then a special token
    assert token_char_offsets(tok, ids) == [(0, 1), (1, 1), (1, 2), (2, 2), (2, 2), (2, 2), (2, 3), (3, 3)]
    # a response cut in the middle of a character: the last token holds the replacement character
    assert token_char_offsets(tok, list("a😀".encode())[:3]) == [(0, 1), (1, 1), (1, 2)]
    assert token_char_offsets(tok, []) == []


def test_decode_with_offsets_pads_with_empty_spans():
    tok = ByteTokenizer()
    ids = torch.tensor([[104, 105, 0], [33, 0, 0]])
    response_mask = torch.tensor([[True, True, False], [True, False, False]])
    texts, offsets = decode_with_offsets(tok, ids, response_mask)
    assert texts == ["hi", "!"]
    assert offsets == [[(0, 1), (1, 2), (2, 2)], [(0, 1), (1, 1), (1, 1)]]


# --- compose -----------------------------------------------------------------------------------------


def _two_sources():
    # relevance-like source: P(error) per segment; sequence source: one score at the end
    span = pack_segment_scores([[0.9, 0.1], [], [0.2]], [[13, 25], [], [3]])
    seq = pack_segment_scores([[2.0], [], [4.0]], [[25], [], [3]])
    terms = [RewardTerm("relevance", 1.0, BinaryError(0.3, -0.3)), RewardTerm("completeness", 0.5, Standardize(3.0, 2.0, 0.3))]
    texts = [TEXT, "", "Hi!"]
    offsets = [BPE, [], [(0, 2), (2, 3)]]
    return terms, [span, seq], texts, offsets


def test_compose_by_hand_with_an_empty_response():
    terms, scores, texts, offsets = _two_sources()
    T = 7
    offsets = [list(o) + [(len(t), len(t))] * (T - len(o)) for o, t in zip(offsets, texts)]  # padding slots
    out = compose(terms, scores, texts, offsets, T)
    assert isinstance(out, TokenRewards) and out.names == ("relevance", "completeness")
    expected_rel = torch.zeros(3, T)
    expected_rel[0, 2], expected_rel[0, 6], expected_rel[2, 1] = -0.3, 0.3, 0.3
    expected_comp = torch.zeros(3, T)
    expected_comp[0, 6], expected_comp[2, 1] = (2.0 - 3.0) / 2.0 * 0.3, (4.0 - 3.0) / 2.0 * 0.3
    assert torch.allclose(out.per_source[0], expected_rel)
    assert torch.allclose(out.per_source[1], expected_comp)
    assert torch.allclose(out.total, expected_rel + 0.5 * expected_comp)
    assert torch.equal(out.weights, torch.tensor([1.0, 0.5]))
    assert out.total[1].abs().sum() == 0  # the empty response gets no reward


def test_compose_with_different_policy_and_rm_tokenizers():
    # The RM (WordPiece) scored tokens "world" and "you": it reports the char ends of its tokens.
    rm_token_ends = [WORDPIECE[1][1], WORDPIECE[5][1]]  # 11, 24
    scores = pack_segment_scores([[0.7, -0.2]], [rm_token_ends])
    out = compose([RewardTerm("rm")], scores=[scores], texts=[TEXT], offsets=[BPE], num_tokens=len(BPE))
    assert out.total.tolist() == [[0.0, pytest.approx(0.7), 0.0, 0.0, 0.0, pytest.approx(-0.2), 0.0]]


def test_compose_rejects_non_finite_scores_with_the_source_named():
    terms, scores, texts, offsets = _two_sources()
    bad = SegmentScores(scores[0].scores.clone(), scores[0].char_ends, scores[0].mask)
    bad.scores[2, 0] = float("nan")
    with pytest.raises(TrainingError, match=r"'relevance' gave a non-finite score \(nan\) to segment 0 of response 2"):
        compose(terms, [bad, scores[1]], texts, offsets, 7)
    # NaN in a padded slot is not a score and is ignored
    padded = SegmentScores(scores[0].scores.clone(), scores[0].char_ends, scores[0].mask)
    padded.scores[1, 0] = float("nan")
    assert torch.isfinite(compose(terms, [padded, scores[1]], texts, offsets, 7).total).all()


def test_compose_input_checks():
    terms, scores, texts, offsets = _two_sources()
    with pytest.raises(ValueError, match="2 reward terms but 1 score sets"):
        compose(terms, scores[:1], texts, offsets, 7)
    with pytest.raises(ValueError, match="unique"):
        compose([terms[0], terms[0]], scores, texts, offsets, 7)
    with pytest.raises(ValueError, match="scored 3 responses, expected 2"):
        compose(terms, scores, texts[:2], offsets[:2], 7)


class FixedSource:
    name, density = "fixed", "sequence"

    def score(self, examples, responses):
        return pack_segment_scores([[1.0] if r.strip() else [] for r in responses], [[len(r)] if r.strip() else [] for r in responses])


def test_score_and_compose_calls_each_source():
    out = score_and_compose([WeightedSource(FixedSource(), RewardTerm("fixed", 2.0))], [None, None], ["ab", ""], [[(0, 1), (1, 2)], [(0, 0), (0, 0)]], 2)
    assert out.total.tolist() == [[0.0, 2.0], [0.0, 0.0]]


@pytest.mark.embedded
def test_token_char_offsets_on_smollm2_with_emoji_and_multibyte_text():
    from finegrain.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    text = "Hi 😀 there. Ça va? 日本語です。\n\nNew line ok."
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    offsets = token_char_offsets(tok, ids)
    assert len(offsets) == len(ids)
    assert offsets[0][0] == 0 and offsets[-1] == (len(text), len(text))  # EOS: an empty span at the end
    assert all(a[1] == b[0] for a, b in zip(offsets, offsets[1:]))  # spans tile the text
    assert "".join(text[s:e] for s, e in offsets) == text
    emoji = text.index("😀")
    owner = [i for i, (s, e) in enumerate(offsets) if s <= emoji < e]
    assert len(owner) == 1 and tok.decode(ids[: owner[0] + 1]).endswith("😀")  # the token that completes it
    # SmolLM2's BPE vs MiniLM's WordPiece: a score at the end of "there." lands on SmolLM2's "."
    end = text.index(".") + 1
    index = char_ends_to_token_index(torch.tensor([[end]]), torch.tensor([[True]]), [text], [offsets])
    assert tok.decode([ids[int(index[0, 0])]]) == "."


@pytest.mark.embedded
def test_minilm_rm_scores_land_on_smollm2_policy_tokens():
    from finegrain.models import load_tokenizer

    policy, rm = load_tokenizer("smollm2-135m", padding_side="right"), load_tokenizer("minilm-l6", padding_side="right")
    text = "Paris is the capital. It has 2 million people 😀\nDone."
    ids = torch.tensor([policy(text, add_special_tokens=False)["input_ids"] + [policy.eos_token_id] * 2])
    response_mask = torch.ones_like(ids, dtype=torch.bool)
    response_mask[0, -1] = False  # one EOS kept, one padding slot
    texts, offsets = decode_with_offsets(policy, ids, response_mask)
    assert texts == [text]
    # an RM that scores at the end of its own (WordPiece) tokens "capital" and "people"
    rm_offsets = rm(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    rm_tokens = rm.convert_ids_to_tokens(rm(text, add_special_tokens=False)["input_ids"])
    ends = [rm_offsets[rm_tokens.index(w)][1] for w in ("capital", "people")] + [len(text)]
    scores = pack_segment_scores([[0.5, -1.0, 2.0]], [ends])
    out = compose([RewardTerm("rm", 2.0)], [scores], texts, offsets, ids.shape[1], response_mask)
    placed = torch.nonzero(out.total[0]).flatten().tolist()
    assert [policy.decode(ids[0, t]) for t in placed] == [" capital", " people", "."]
    assert out.total[0, placed].tolist() == [1.0, -2.0, 4.0]
