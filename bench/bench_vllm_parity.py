"""Do the vLLM and Hugging Face backends agree? Responses sampled by the vLLM backend
(finegrain/kernel/vllm_generation.py), with the log-prob vLLM gives each sampled token, against the
trained model's own log-probs of the same tokens (kernel.logprobs.response_logprobs, what every
recipe trains on). Also checks the response mask (EOS kept, nothing after it).

    python bench/bench_vllm_parity.py [--policy smollm2-135m] [--prompts 32] [--samples 4] [--precision bf16]

Needs a CUDA GPU and `pip install 'finegrain[vllm]'`; without them it says so and exits 0.
Expect max |diff| around 1e-5 in float32 and 1e-2 to 1e-1 in bf16 (different kernels).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = ["The weather today is", "Once upon a time", "My favourite food is", "In the year 2050,", "The best way to learn is", "Dear friend,", "Scientists have found", "The city at night"]


def missing() -> str | None:
    """Why this check cannot run here, or None."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU visible: the vLLM backend runs on GPUs only"
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed: pip install 'finegrain[vllm]'"
    return None


def parity(policy: str, prompts: int = 32, samples: int = 4, max_new_tokens: int = 64, precision: str = "fp32") -> dict[str, float]:
    import torch

    from finegrain.kernel.generation import GenerationSettings, HFGenerator, finish_responses
    from finegrain.kernel.logprobs import response_logprobs
    from finegrain.kernel.models import autocast, load_causal_lm, set_pad_token
    from finegrain.kernel.sequences import pad_left
    from finegrain.kernel.vllm_generation import VLLMGenerator, completion_tokens, vllm_sampling
    from finegrain.models import load_tokenizer, resolve_model

    path = resolve_model(policy)
    tok = load_tokenizer(path, padding_side="left")
    model = load_causal_lm(path).cuda().eval()
    set_pad_token(model, tok)
    gen = VLLMGenerator(HFGenerator(model, tok, precision=precision), gpu_memory=0.4)
    rows = [tok(PROMPTS[i % len(PROMPTS)], add_special_tokens=False)["input_ids"] for i in range(prompts)]
    ids, mask = pad_left(rows, tok.pad_token_id)
    settings = GenerationSettings(samples, max_new_tokens, 0, 1.0, 0, 1.0)  # no filtering: vLLM's log-probs are the model's
    params = vllm_sampling(settings, gen.eos, seed=0)
    params.logprobs = 0  # the sampled token's log-prob
    from vllm.inputs import TokensPrompt

    outs = gen.llm.generate([TokensPrompt(prompt_token_ids=r) for r in rows], params, use_tqdm=False)
    completions = [c for o in outs for c in o.outputs]
    tokens = [completion_tokens(c, gen.eos) for c in completions]
    width = max(len(t) for t in tokens)
    responses = torch.full((len(tokens), width), tok.pad_token_id, dtype=torch.long)
    vllm_lp = torch.zeros(len(tokens), width)
    for b, (t, c) in enumerate(zip(tokens, completions)):
        responses[b, : len(t)] = torch.tensor(t)
        for j, (tid, lp) in enumerate(zip(c.token_ids, c.logprobs or [])):
            vllm_lp[b, j] = lp[tid].logprob
    seq = finish_responses(ids.repeat_interleave(samples, 0), mask.repeat_interleave(samples, 0), responses, gen.eos, tok.pad_token_id).to("cuda")
    with torch.no_grad(), autocast("cuda", precision):
        hf_lp = response_logprobs(model, seq).float().cpu()
    m = seq.response_mask.cpu()  # (B, T)
    T = m.shape[1]
    scored = torch.zeros_like(m)  # the tokens vLLM gave a log-prob (an appended stop token has none)
    for b, c in enumerate(completions):
        scored[b, : min(len(c.token_ids), T)] = True
    m &= scored
    diff = (hf_lp - vllm_lp[:, :T]).abs()[m]
    return {"responses": float(len(tokens)), "tokens": float(m.sum()), "max_abs_logprob_diff": float(diff.max()), "mean_abs_logprob_diff": float(diff.mean())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", default="smollm2-135m")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    a = p.parse_args()
    why = missing()
    if why:
        print(f"bench_vllm_parity: skipped: {why}")
        return 0
    import torch

    result = parity(a.policy, a.prompts, a.samples, a.max_new_tokens, a.precision)
    print(f"GPU: {torch.cuda.get_device_name()}; policy {a.policy}; precision {a.precision}")
    for k, v in result.items():
        print(f"{k}: {v:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
