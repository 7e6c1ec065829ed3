"""Step throughput on one GPU: PPO, GRPO and DPO steps on SmolLM2-135M and on a 1.1B Llama built from
a config (random weights: speed only), with Hugging Face or vLLM generation; seconds per step and
tokens/s per phase (generate, score, forward, update), and the model FLOP utilisation of the
forward and update phases against the GPU's bf16 peak. Each arm runs in a fresh process, one after
the other, through the recipes' own `train()` (their `time/*` metrics).

    python bench/bench_gpu.py [--steps 5] [--models smollm2-135m,llama-1b] [--backends hf,vllm] [--peak-tflops 989]

Without a CUDA GPU it says so and exits 0; the vLLM arms are skipped without `finegrain[vllm]`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0, "RTX 4090": 165.0}
PROMPTS = 64  # per step; x 4 samples = 256 responses for PPO and GRPO
NEW_TOKENS = 128


def build_llama_1b(folder: Path) -> Path:
    """A 1.1B Llama (16 layers, hidden 2048, GQA 32/8 heads) with SmolLM2's tokenizer, random weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from finegrain.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                      num_key_value_heads=8, max_position_embeddings=2048, tie_word_embeddings=True,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_pairs(path: Path, n: int = 256) -> Path:
    """A feedback file of n examples with two judged responses each (DPO pairs)."""
    from finegrain.data.jsonl import write_jsonl
    from finegrain.data.records import Example, Preference, Response

    words = "the a river city light morning story friend question answer quickly slowly because".split()
    examples = []
    for i in range(n):
        long = " ".join(words[(i + k) % len(words)] for k in range(60))
        examples.append(Example(id=f"e{i}", prompt=f"Tell me about item {i}.", responses=(Response(long), Response(long[::-1])),
                                preferences=(Preference(0, 1, 1),)))
    write_jsonl(path, examples)
    return path


def config(recipe: str, policy: str, backend: str, out: Path, steps: int, pairs: Path) -> dict:
    run = {"out": str(out), "steps": steps, "save_every": 0, "progress": False}
    if recipe == "dpo":
        return {"model": {"policy": policy}, "data": {"feedback": str(pairs), "pairs": ["human"]},
                "prompt": {"max_prompt_tokens": 64, "max_response_tokens": NEW_TOKENS, "chat_template": False, "template": "{prompt}"},
                "optim": {"lr": 1e-6, "batch_size": 32}, "run": run}
    prompts = [f"Write a short story about item {i}:" for i in range(PROMPTS * (steps + 1))]
    sampling = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "samples_per_prompt": 4, "backend": backend}
    base = {"model": {"policy": policy}, "data": {"prompt_list": prompts}, "sampling": sampling,
            "rewards": [{"kind": "toxicity", "mode": "dense"}], "run": run}
    if recipe == "ppo":
        return {**base, "ppo": {"prompts_per_step": PROMPTS, "minibatch_size": 64, "epochs": 1, "forward_batch_size": 64}}
    return {**base, "critic_free": {"prompts_per_step": PROMPTS, "forward_batch_size": 64}, "optim": {"batch_size": 64}}


def arm(recipe: str, policy: str, backend: str, steps: int, pairs: str) -> dict:
    """One arm, in this process: run the recipe, return its mean phase times (the first step, warm-up, dropped)."""
    import importlib

    import yaml

    from finegrain.config import load_config
    from finegrain.kernel.run import read_metrics
    from finegrain.recipes import RECIPES

    module_name, config_name, _ = RECIPES[recipe]
    module = importlib.import_module(module_name)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(yaml.safe_dump(config(recipe, policy, backend, Path(tmp) / "run", steps, Path(pairs))))
        out = module.train(load_config(getattr(module, config_name), path, []))
        rows = [r for r in read_metrics(out / "metrics.jsonl") if "time/step" in r][1:]
    times = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0] if k.startswith("time/")}
    n_tokens = NEW_TOKENS * (PROMPTS * 4 if recipe != "dpo" else 2 * 32)
    return {"times": times, "response_tokens": n_tokens}


def report(results: list[dict], params: dict[str, float], peak: float) -> None:
    import torch

    print(f"GPU: {torch.cuda.get_device_name()} (bf16 peak taken as {peak:.0f} TFLOP/s)")
    print("| model | recipe | generation | s/step | tokens/s generate | score | forward | update | MFU forward | MFU update |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        t, n, p = r["times"], r["response_tokens"], params[r["model"]]
        rate = {k: (n / t[f"time/{k}"] if t.get(f"time/{k}") else float("nan")) for k in ("generate", "score", "forward", "update")}
        if r["recipe"] == "dpo":
            rate["update"] = n / t["time/step"]
        mfu_f = 2 * p * rate["forward"] / (peak * 1e12)  # 2 FLOPs per parameter per token, forward
        mfu_u = 6 * p * rate["update"] / (peak * 1e12)  # forward + backward
        cells = " | ".join(f"{rate[k]:,.0f}" for k in ("generate", "score", "forward", "update"))
        print(f"| {r['model']} | {r['recipe']} | {r['backend']} | {t['time/step']:.2f} | {cells} | {mfu_f:.1%} | {mfu_u:.1%} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--models", default="smollm2-135m,llama-1b")
    p.add_argument("--recipes", default="ppo,grpo,dpo")
    p.add_argument("--backends", default="hf,vllm")
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's bf16 dense peak (default: looked up by name)")
    p.add_argument("--arm", help=argparse.SUPPRESS)  # child mode: recipe,policy,backend,steps,pairs -> JSON on the last line
    a = p.parse_args()
    import importlib.util

    import torch

    if a.arm:
        recipe, policy, backend, steps, pairs = a.arm.split(",")
        print(json.dumps(arm(recipe, policy, backend, int(steps), pairs)))
        return 0
    if not torch.cuda.is_available():
        print("bench_gpu: skipped: no CUDA GPU visible (this bench measures GPU throughput only)")
        return 0
    backends = [b for b in a.backends.split(",") if b != "vllm" or importlib.util.find_spec("vllm") is not None]
    if len(backends) < len(a.backends.split(",")):
        print("bench_gpu: vllm is not installed (pip install 'finegrain[vllm]'): HF generation only")
    name = torch.cuda.get_device_name()
    peak = a.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    if peak is None:
        print(f"bench_gpu: no bf16 peak known for {name}; pass --peak-tflops")
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    pairs = write_pairs(work / "pairs.jsonl")
    from finegrain.models import resolve_model
    from transformers import AutoConfig, AutoModelForCausalLM

    paths = {m: (str(build_llama_1b(work / "llama-1b")) if m == "llama-1b" else resolve_model(m)) for m in a.models.split(",")}
    params = {}
    for m, path in paths.items():
        with torch.device("meta"):
            params[m] = float(sum(x.numel() for x in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path)).parameters()))
    results = []
    for m, path in paths.items():
        for recipe in a.recipes.split(","):
            for backend in backends if recipe != "dpo" else ["-"]:
                cmd = [sys.executable, __file__, "--arm", ",".join([recipe, path, backend if backend != "-" else "hf", str(a.steps), str(pairs)])]
                done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
                if done.returncode != 0:
                    print(f"{m} {recipe} {backend}: failed\n{done.stderr[-2000:]}")
                    continue
                results.append({"model": m, "recipe": recipe, "backend": backend, **json.loads(done.stdout.strip().splitlines()[-1])})
    report(results, params, peak)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
