"""The kernel's pieces on hand-computed tensors: the response-mask rule, sequence log-probs (summed
and averaged), named statistics, the data position of a step, the prompt renderer's budget, and the
generator on a tiny model (its log-probs match an unpadded forward)."""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import pytest
import torch

from finegrain.config import ConfigError
from finegrain.data.records import Example, Passage
from finegrain.kernel.logprobs import sequence_logprobs, token_logprobs
from finegrain.kernel.run import batch_indices
from finegrain.kernel.sequences import encode_responses, pad_left, response_mask
from finegrain.kernel.stats import add_stats, divide_stats, stats_row
from rl_helpers import PROMPTS, make_tiny_policy


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_policy(tmp_path_factory.mktemp("tiny") / "policy")


# --- pure pieces ---------------------------------------------------------------------------------


def test_response_mask_ends_after_the_first_eos():
    ids = torch.tensor([[5, 6, 2, 2, 2], [2, 7, 8, 9, 9], [5, 6, 7, 8, 9], [5, 3, 0, 2, 0]])
    assert response_mask(ids, [2, 3]).tolist() == [
        [True, True, True, False, False],  # EOS kept: stopping is an action
        [True, False, False, False, False],
        [True, True, True, True, True],  # never stopped
        [True, True, False, False, False],  # any of several EOS ids ends it
    ]


def test_sequence_logprobs_sum_or_average_over_response_tokens():
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -9.0, -9.0], [-4.0, -4.0, -4.0]])
    mask = torch.tensor([[True, True, True], [True, False, False], [False, False, False]])
    assert sequence_logprobs(lp, mask).tolist() == [-6.0, -0.5, 0.0]
    assert sequence_logprobs(lp, mask, average=True).tolist() == [-2.0, -0.5, 0.0]


def test_token_logprobs_are_log_softmax_at_the_token():
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(2.0), math.log(2.0)]]])  # p = (1/4, 3/4), (1/2, 1/2)
    lp = token_logprobs(logits, torch.tensor([[1, 0]]))
    assert torch.allclose(lp, torch.tensor([[math.log(0.75), math.log(0.5)]]))


class _S(NamedTuple):
    loss: float
    tokens: float


def test_statistics_add_by_name():
    total = add_stats([_S(1.0, 3.0), _S(2.0, 4.0), _S(0.5, 1.0)])
    assert total == _S(loss=3.5, tokens=8.0)
    assert divide_stats(total, 2) == _S(1.75, 4.0)
    assert stats_row(total, "x/") == {"x/loss": 3.5, "x/tokens": 8.0}


def test_batch_indices_split_processes_and_cover_each_pass():
    n, per, procs = 8, 2, 2
    seen = []
    for step in range(4):  # 4 steps x 2 processes x 2 items = two passes over 8 items
        a = batch_indices(step, n, per, procs, 0, seed=3)
        b = batch_indices(step, n, per, procs, 1, seed=3)
        assert not set(a) & set(b)
        seen += a + b
    assert sorted(seen[:8]) == list(range(8)) and sorted(seen[8:]) == list(range(8))
    assert seen[:8] != seen[8:]  # a fresh order for each pass
    assert batch_indices(4, n, per, procs, 1, seed=3) == batch_indices(4, n, per, procs, 1, seed=3)
    assert batch_indices(0, n, per, procs, 0, seed=3) != batch_indices(0, n, per, procs, 0, seed=4)


def test_padding_left_and_right():
    ids, mask = pad_left([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[True] * 3, [False, False, True]]


# --- with the SmolLM2 tokenizer --------------------------------------------------------------------

QA = Example(
    id="q1",
    prompt="Who wrote Hamlet?",
    passages=(
        Passage("Hamlet", ("Hamlet is a tragedy.", "It was written by William Shakespeare.", "It is set in Denmark.")),
        Passage("Shakespeare", ("William Shakespeare was an English playwright.", "He was born in Stratford.")),
    ),
)


@pytest.mark.embedded  # the SmolLM2 tokenizer
def test_renderer_fills_the_template_and_cuts_passages_from_the_end_first():
    from finegrain.kernel.prompts import PromptRenderer
    from finegrain.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    template = "question: {question} context: {passages}"
    full = PromptRenderer(tok, template).render(QA)
    assert full.text == (
        "question: Who wrote Hamlet? context: wikipage: Hamlet text: Hamlet is a tragedy. It was written by William "
        "Shakespeare. It is set in Denmark. wikipage: Shakespeare text: William Shakespeare was an English playwright. "
        "He was born in Stratford."
    )
    assert (full.cut_sentences, full.cut_passages) == (0, 0)
    # a budget that holds the first passage whole and nothing of the second
    first = PromptRenderer(tok, template).count(
        "question: Who wrote Hamlet? context: wikipage: Hamlet text: Hamlet is a tragedy. It was written by William "
        "Shakespeare. It is set in Denmark."
    )
    cut = PromptRenderer(tok, template, max_tokens=first + 3).render(QA)
    assert cut.text.endswith("It is set in Denmark.") and "Stratford" not in cut.text
    assert (cut.cut_sentences, cut.cut_passages) == (2, 1) and cut.tokens <= first + 3
    # the question alone over the budget: an error naming the example, never a cut question
    with pytest.raises(ConfigError, match="'q1'.*never cut"):
        PromptRenderer(tok, template, max_tokens=3).render(QA)
    # the chat template wraps the user turn and opens the assistant's
    chat = PromptRenderer(tok, "{prompt}", chat_template=True).render(QA)
    assert "Who wrote Hamlet?" in chat.text and chat.text.rstrip().endswith("assistant")


@pytest.mark.embedded  # the SmolLM2 tokenizer
def test_encoded_responses_end_with_eos_and_are_right_padded():
    from finegrain.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    ids, mask = encode_responses(tok, ["Shakespeare.", "He did, in 1600 or so."], max_tokens=64)
    n0 = int(mask[0].sum())
    assert ids[0, n0 - 1] == tok.eos_token_id and not mask[0, n0:].any() and mask[1].all()
    cut, cut_mask = encode_responses(tok, ["He did, in 1600 or so."], max_tokens=3)
    assert cut.shape == (1, 3) and cut_mask.all() and tok.eos_token_id not in cut[0].tolist()


@pytest.mark.embedded  # the SmolLM2 tokenizer
def test_generator_samples_g_per_prompt_with_the_mask_rule_and_matching_logprobs(tiny):
    """Responses to prompt i are rows i*G..; after the first EOS comes padding; the kernel's log-probs
    of a generated batch equal those of each sequence's unpadded forward."""
    from finegrain.kernel.generation import GenerationSettings, HFGenerator
    from finegrain.kernel.logprobs import response_logprobs
    from finegrain.kernel.models import load_causal_lm
    from finegrain.kernel.prompts import PromptRenderer
    from finegrain.models import load_tokenizer

    torch.manual_seed(0)
    tok = load_tokenizer(str(tiny))
    model = load_causal_lm(str(tiny)).eval()
    ids, mask = PromptRenderer(tok).encode(PROMPTS[:3])
    out = HFGenerator(model, tok).sample(ids, mask, GenerationSettings(samples_per_prompt=2, max_new_tokens=8))
    assert len(out) == 6 and torch.equal(out.query_ids[2], out.query_ids[3])
    assert torch.equal(out.response_mask, response_mask(out.response_ids, [tok.eos_token_id]))
    assert (out.response_ids[~out.response_mask] == tok.pad_token_id).all()
    with torch.no_grad():
        lp = response_logprobs(model, out)
    for b in range(len(out)):
        prompt = out.query_ids[b][out.query_mask[b]]
        resp = out.response_ids[b][out.response_mask[b]]
        logits = model(torch.cat([prompt, resp])[None]).logits[0, len(prompt) - 1 : -1]
        assert torch.allclose(lp[b][: len(resp)], token_logprobs(logits[None], resp[None])[0], atol=1e-4)
        assert (lp[b][len(resp) :] == 0).all()


@pytest.mark.embedded  # the SmolLM2 tokenizer
def test_generator_records_the_sampled_tokens_logprobs_of_the_models_own_logits(tiny):
    """`logprobs=True`: the log-probs of each sampled token under the model's own logits (before
    temperature, top-k, top-p and the minimum length's ban on EOS) equal a forward pass over the
    finished batch, 0 on padding; the responses are those sampled without recording. A generation
    config that asks `generate` for a processor of its own (which would run first) records nothing."""
    from finegrain.kernel.generation import GenerationSettings, HFGenerator
    from finegrain.kernel.logprobs import response_logprobs
    from finegrain.kernel.models import load_causal_lm
    from finegrain.kernel.prompts import PromptRenderer
    from finegrain.models import load_tokenizer

    tok = load_tokenizer(str(tiny))
    model = load_causal_lm(str(tiny)).eval()
    head = torch.nn.Linear(*reversed(model.lm_head.weight.shape))  # EOS likely (bias 9: ~15%), so that responses end at different lengths
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()[tok.eos_token_id] = 9.0
    model.lm_head = head
    ids, mask = PromptRenderer(tok).encode(PROMPTS[:3])
    seen = set()  # response lengths
    for settings in (GenerationSettings(3, 10, 4, logprobs=True), GenerationSettings(3, 10, 2, 0.7, 20, 0.8, logprobs=True),
                     GenerationSettings(2, 6, do_sample=False, logprobs=True)):
        torch.manual_seed(0)
        out = HFGenerator(model, tok).sample(ids, mask, settings)
        torch.manual_seed(0)
        plain = HFGenerator(model, tok).sample(ids, mask, dataclasses.replace(settings, logprobs=False))
        assert torch.equal(out.response_ids, plain.response_ids) and plain.sampled_logprobs is None
        lengths = out.response_mask.sum(-1)
        assert (lengths >= settings.min_new_tokens).all()
        if settings.do_sample:
            assert (lengths < settings.max_new_tokens).any()  # some ended at EOS
            seen.update(lengths.tolist())
        with torch.no_grad():  # under the distribution sampled from: softmax(logits / temperature)
            want = response_logprobs(model, out, temperature=settings.temperature)
        assert out.sampled_logprobs.shape == want.shape and torch.allclose(out.sampled_logprobs, want, atol=1e-5)
        assert (out.sampled_logprobs[~out.response_mask] == 0).all()
        assert torch.equal(out.select(torch.tensor([1])).sampled_logprobs, out.sampled_logprobs[1:2])
    assert len(seen) > 2  # padding after responses of several lengths
    model.generation_config.repetition_penalty = 1.3
    assert HFGenerator(model, tok).sample(ids, mask, GenerationSettings(2, 4, logprobs=True)).sampled_logprobs is None


def test_nucleus_filter_keeps_what_transformers_top_p_keeps():
    """Peaked rows (the candidates hold the nucleus), flat rows (the full sort), -inf from a top-k
    before it, and several p: the same tokens as TopPLogitsWarper."""
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    from finegrain.kernel.generation import nucleus_filter

    g = torch.Generator().manual_seed(0)
    V = 5000
    peaked = torch.randn(6, V, generator=g) * 6
    flat = torch.randn(4, V, generator=g) * 0.3
    scores = torch.cat([peaked, flat, TopKLogitsWarper(50)(None, torch.randn(2, V, generator=g) * 2)])
    ids = torch.zeros(len(scores), 1, dtype=torch.long)
    for p in (0.5, 0.9, 0.95):
        want = TopPLogitsWarper(p)(ids, scores)
        got = nucleus_filter(p, candidates=256)(ids, scores)
        assert torch.equal(torch.isinf(got), torch.isinf(want)), p
        assert torch.equal(got[~torch.isinf(got)], scores[~torch.isinf(want)])
    assert (~torch.isinf(nucleus_filter(0.9, candidates=256)(ids[:4], flat))).sum(-1).min() > 256  # these rows took the full sort
    one = torch.full((1, V), -5.0)
    one[0, 7] = 20.0
    assert (~torch.isinf(nucleus_filter(0.9)(ids[:1], one))).nonzero()[:, 1].tolist() == [7]  # the first always stays


def test_generator_samples_as_transformers_top_p_does(tiny):
    """Temperature, top-k and top-p filter before the token is drawn: every sampled token is among
    the k most likely under the model's logits at its position (a forward pass over the finished
    responses), and for each prompt the G samples differ."""
    from finegrain.kernel.generation import GenerationSettings, HFGenerator
    from finegrain.kernel.logprobs import response_logits
    from finegrain.kernel.models import load_causal_lm
    from finegrain.kernel.prompts import PromptRenderer
    from finegrain.models import load_tokenizer

    tok = load_tokenizer(str(tiny))
    model = load_causal_lm(str(tiny)).eval()
    ids, mask = PromptRenderer(tok).encode(PROMPTS[:3])
    torch.manual_seed(3)
    out = HFGenerator(model, tok).sample(ids, mask, GenerationSettings(samples_per_prompt=4, max_new_tokens=8, temperature=0.8, top_k=3, top_p=0.7))
    with torch.no_grad():
        logits = response_logits(model, out.input_ids, out.attention_mask, out.response_ids.shape[1])
    top3 = logits.topk(3, dim=-1).indices  # (B, T, 3)
    assert (top3 == out.response_ids[..., None]).any(-1)[out.response_mask].all()
    assert all(len({tuple(r) for r in out.response_ids[i : i + 4].tolist()}) > 1 for i in range(0, 12, 4))


def test_inverse_cdf_sampler_draws_from_the_softmax_and_never_a_filtered_token():
    """20,000 draws from fixed scores (some filtered to -inf): the frequencies are the softmax's within
    sampling error, and the drawn token is the only one left for `generate`'s argmax."""
    from finegrain.kernel.generation import InverseCDFSampler

    scores = torch.tensor([[2.0, 0.5, -float("inf"), 1.0, -1.0, -float("inf")]]).repeat(20000, 1)
    torch.manual_seed(0)
    out = InverseCDFSampler()(None, scores)
    assert (torch.isfinite(out).sum(-1) == 1).all() and (out.max(-1).values == 0).all()
    freq = torch.bincount(out.argmax(-1), minlength=6).float() / len(out)
    assert freq[2] == 0 and freq[5] == 0
    assert torch.allclose(freq, scores[0].softmax(-1), atol=0.01)  # std of each frequency < 0.0036


@pytest.mark.embedded  # the SmolLM2 tokenizer
def test_prompt_cache_shared_by_the_samples_of_a_prompt_holds_what_each_would_compute(tiny):
    """The prompt's KV cache (but the last token), computed once and repeated G times, equals the cache
    of the G repeated prompts; the generator samples with it (the test above: the tokens of `generate`
    without it)."""
    from finegrain.kernel.generation import shared_prompt_cache
    from finegrain.kernel.models import load_causal_lm
    from finegrain.kernel.prompts import PromptRenderer
    from finegrain.models import load_tokenizer

    tok = load_tokenizer(str(tiny))
    model = load_causal_lm(str(tiny)).eval()
    ids, mask = PromptRenderer(tok).encode(PROMPTS[:3])
    with torch.no_grad():
        (name, shared), = shared_prompt_cache(model, ids, mask, 2).items()
        (_, each), = shared_prompt_cache(model, ids.repeat_interleave(2, 0), mask.repeat_interleave(2, 0), 1).items()
    assert name in ("cache", "past_key_values") and shared.get_seq_length() == ids.shape[1] - 1
    for a, b in zip(shared.layers, each.layers):
        assert a.keys.shape[0] == 6 and torch.allclose(a.keys, b.keys, atol=1e-5) and torch.allclose(a.values, b.values, atol=1e-5)


def test_hold_out_is_the_split_of_rm_split(tmp_path):
    """The recipes' held-out examples are those `finegrain rm split` puts in its eval file."""
    import json

    from finegrain.kernel.data import hold_out
    from finegrain.rewards.rm_data import split_file

    records = [{"id": i} for i in range(10)]
    (tmp_path / "all.json").write_text(json.dumps(records))
    split_file(tmp_path / "all.json", 7, 3, tmp_path / "train.json", tmp_path / "eval.json")
    train, held = hold_out(records, 3, 3, "x", "all.json")
    assert sorted(r["id"] for r in held) == sorted(r["id"] for r in json.loads((tmp_path / "eval.json").read_text()))
    assert [r["id"] for r in train] == sorted(r["id"] for r in train) and len(train) == 7
    with pytest.raises(ConfigError, match="x: 10 held-out items leave none"):
        hold_out(records, 10, 0, "x", "all.json")


@pytest.mark.embedded  # the SmolLM2 tokenizer
def test_gradient_checkpointing_recomputes_each_layer_and_changes_no_number(tiny, one_thread):
    """The layers run twice in a forward and backward (once more in the backward), the loss and every
    gradient are those of the plain model, the children stay in eval mode, and without gradients
    (generation, no-grad passes) each layer runs once."""
    from transformers import AutoModelForCausalLM

    from finegrain.kernel.models import use_gradient_checkpointing

    plain, checkpointed = (AutoModelForCausalLM.from_pretrained(tiny).eval() for _ in range(2))
    use_gradient_checkpointing(checkpointed)
    checkpointed.eval()  # as the recipes leave it
    calls = []
    for layer in checkpointed.model.layers:
        layer.self_attn.register_forward_hook(lambda *a: calls.append(1))
    ids = torch.randint(0, 100, (2, 7))

    def loss_and_grads(model):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    (a, ga), (b, gb) = loss_and_grads(plain), loss_and_grads(checkpointed)
    assert len(calls) == 2 * len(checkpointed.model.layers)
    assert torch.allclose(a, b) and all(torch.allclose(ga[n], gb[n], atol=1e-6) for n in ga)
    assert not any(m.training for layer in checkpointed.model.layers for m in layer.children())
    calls.clear()
    with torch.no_grad():
        checkpointed(input_ids=ids)
    assert len(calls) == len(checkpointed.model.layers)
    with pytest.raises(ConfigError, match="model.gradient_checkpointing: Linear holds no transformers model"):
        use_gradient_checkpointing(torch.nn.Linear(2, 2))


def test_a_pass_that_shares_repeated_prompts_gives_the_numbers_of_one_pass(one_thread):
    """Rows that repeat a prompt (three prompts of different lengths, left-padded, three samples each,
    rows shuffled) run each prompt's forward once: logits, hidden states and a shared value head's
    values equal those of one pass over every row; without a repeated prompt nothing is shared."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from finegrain.kernel.logprobs import prompt_groups, response_forward, response_logits
    from finegrain.rl.policy import ActorCritic

    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)).eval()
    P, T = 7, 5
    prompts, pmasks = [], []
    for n in (7, 4, 2):  # prompt lengths, left-padded to P
        prompts.append(torch.cat([torch.zeros(P - n, dtype=torch.long), torch.randint(1, 50, (n,))]))
        pmasks.append(torch.cat([torch.zeros(P - n, dtype=torch.long), torch.ones(n, dtype=torch.long)]))
    order = torch.randperm(9)
    ids = torch.stack([torch.cat([prompts[i // 3], torch.randint(1, 50, (T,))]) for i in range(9)])[order]
    rmask = torch.ones(9, T, dtype=torch.long)
    rmask[0, 3:] = 0  # a response that ended early: right padding
    mask = torch.cat([torch.stack([pmasks[i // 3] for i in range(9)])[order], rmask], dim=1)
    first, inverse = prompt_groups(ids, mask, T)
    assert len(first) == 3 and torch.equal(ids[first[inverse], :P], ids[:, :P])
    with torch.no_grad():
        one = response_forward(lm, ids, mask, T, output_hidden_states=True)
        shared = response_forward(lm, ids, mask, T, share_prompts=True, output_hidden_states=True)
        assert shared.logits.shape == one.logits.shape == (9, T + 1, 50)
        assert shared.hidden_states[-1].shape[1] == T + 1  # the prompts' positions were not run again
        assert torch.allclose(shared.logits, one.logits, atol=1e-5)
        assert torch.allclose(shared.hidden_states[-1], one.hidden_states[-1][:, -(T + 1):], atol=1e-5)
        assert torch.allclose(response_logits(lm, ids, mask, T, share_prompts=True), one.logits[:, :-1], atol=1e-5)
        ac = ActorCritic(lm, None)
        torch.nn.init.normal_(ac.value_head.weight)
        a, b = ac(ids, mask, T), ac(ids, mask, T, share_prompts=True)
        assert torch.allclose(a.values, b.values, atol=1e-5) and torch.allclose(a.logits, b.logits, atol=1e-5)
    distinct = ids.clone()
    distinct[:, P - 1] = torch.arange(9) + 1  # every prompt now differs in its last token
    assert prompt_groups(distinct, mask, T) is None and prompt_groups(ids[:, -T - 1 :], mask[:, -T - 1 :], T) is None

    # with autograd (the update's pass): the same gradients, also under gradient checkpointing (which
    # keeps no cache: the pass then runs every row's prompt)
    from finegrain.kernel.models import use_gradient_checkpointing

    def grads(model, share: bool) -> list[torch.Tensor]:
        model.zero_grad()
        out = model(ids, mask, T, share_prompts=share)
        weights = torch.linspace(-1, 1, T)
        (torch.log_softmax(out.logits, -1).amax(-1) * weights).sum().add(out.values.pow(2).sum()).backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    def close(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:  # float rounding, relative to each gradient's scale
        return all(float((x - y).abs().max()) <= 1e-5 * float(x.abs().max()) + 1e-7 for x, y in zip(a, b))

    plain, shared_grads = grads(ac, False), grads(ac, True)
    assert len(plain) == len(shared_grads) == len([p for p in ac.parameters()])
    assert close(plain, shared_grads)
    assert not close(plain, [g.roll(1, 0) if g.dim() else g for g in shared_grads])  # the check can fail
    use_gradient_checkpointing(ac)
    assert close(plain, grads(ac, True))

    # DPO/SimPO: the two sides of a pair share their prompt (pair_batch's layout: chosen rows, then rejected)
    from finegrain.kernel.logprobs import pair_logprobs, shares_prompts
    from finegrain.kernel.sequences import Sequences

    q, qm = torch.stack(prompts * 2), torch.stack(pmasks * 2).bool()
    pairs = Sequences(q, qm, torch.randint(1, 50, (6, T)), torch.ones(6, T, dtype=torch.bool))
    with torch.no_grad():
        for average in (False, True):
            one_c, one_r = pair_logprobs(lm, pairs, average)
            sh_c, sh_r = pair_logprobs(lm, pairs, average, share_prompts=True)
            assert torch.allclose(one_c, sh_c, atol=1e-5) and torch.allclose(one_r, sh_r, atol=1e-5)
    assert shares_prompts(None)
