"""Shared by the PPO trainer tests: a tiny random Llama policy with the embedded SmolLM2 tokenizer,
and a train config for it. Tiny so that a PPO step takes a fraction of a second on a busy CPU."""

from __future__ import annotations

from pathlib import Path

import yaml

PROMPTS = [
    "You are a",
    "The weather today is",
    "I think that",
    "Once upon a time",
    "My friend said",
    "This is the worst",
    "Hello there, how",
    "What the",
    "We went to the park and",
    "The movie was",
]


def make_tiny_policy(folder: Path) -> Path:
    """A 2-layer, hidden-32 Llama with the SmolLM2 tokenizer (vocab 49152), saved as an HF folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from finegrain.models import load_tokenizer

    torch.manual_seed(0)
    tok = load_tokenizer("smollm2-135m")
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tiny_config(policy: Path, out: Path, mode: str = "dense", **sections: dict) -> dict:
    """A train config as YAML-able data; `sections` update its sections (e.g. ppo={...})."""
    cfg = {
        "model": {"policy": str(policy), "precision": "fp32"},  # bf16 autocast only pays on real models
        "data": {"prompt_list": PROMPTS, "eval_prompts": 2},
        "sampling": {"max_new_tokens": 12, "samples_per_prompt": 2, "top_k": 0, "temperature": 1.0},
        "ppo": {"prompts_per_step": 2, "minibatch_size": 2, "epochs": 2, "lr": 1e-3},
        "rewards": [{"kind": "toxicity", "mode": mode}],
        "run": {"out": str(out), "steps": 3, "save_every": 1, "progress": False, "threads": 1},
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values} if isinstance(values, dict) else values
    return cfg


def write_config(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path
