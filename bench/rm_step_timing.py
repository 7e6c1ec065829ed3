"""Seconds per sequence of one MiniLM token-classification training step (forward, backward,
AdamW), fp32 against bf16 autocast, at a few lengths and thread counts: the README's bf16 and
threads figures for the reward models.

    .venv/bin/python bench/rm_step_timing.py --lengths 128 256 512 --threads 1 2
"""

from __future__ import annotations

import argparse
import time


def step_seconds(length: int, bf16: bool, batch: int, repeats: int) -> float:
    import torch
    from transformers import AutoModelForTokenClassification

    from finegrain.models import resolve_model

    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_pretrained(resolve_model("minilm-l6"), num_labels=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(1000, 20000, (batch, length))
    labels = torch.full_like(ids, -100)
    labels[:, -1] = 1
    times = []
    for _ in range(repeats + 1):  # the first step warms up
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - start)
    return min(times[1:]) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import os

    import torch
    from transformers.utils import logging

    logging.set_verbosity_error()
    print(f"load average {os.getloadavg()[0]:.1f}; best of {args.repeats} steps, batch {args.batch}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for length in args.lengths:
            fp32 = step_seconds(length, False, args.batch, args.repeats)
            bf16 = step_seconds(length, True, args.batch, args.repeats)
            print(f"threads {threads}  length {length}:  fp32 {fp32:.3f} s/seq  bf16 {bf16:.3f} s/seq  ({fp32 / bf16:.1f}x)")


if __name__ == "__main__":
    main()
