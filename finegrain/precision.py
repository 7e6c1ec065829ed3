"""Whether to compute under bf16 autocast: one rule for the trainer, the reward models and evaluation.

bf16 autocast pays only where the hardware multiplies bf16 natively. Measured with torch 2.13 on one
thread (1024 x 1024 matmul): a CPU with AMX/AVX-512 bf16 ran bf16 about 4-5x faster than fp32, while
an AMD EPYC with AVX2 and no AVX-512 ran it about 90x *slower* (0.6 against 55 GFLOP/s), since torch
then emulates it. So every `precision` / `bf16` setting takes "auto" (the default): bf16 on a CUDA
device that supports it and on a CPU whose flags show native bf16 (avx512_bf16 or amx_bf16), fp32
otherwise. "bf16" and "fp32" force either.
"""

from __future__ import annotations

import functools
from pathlib import Path

PRECISIONS = ("auto", "bf16", "fp32")


@functools.lru_cache(maxsize=None)
def _cpu_has_native_bf16() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():  # not Linux: no cheap, reliable test; fp32 is the safe choice
        return False
    flags = set()
    for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def bf16_is_fast(device_type: str) -> bool:
    """True where bf16 matmuls run natively on this device type ("cpu", "cuda", ...)."""
    if device_type == "cuda":
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device_type == "cpu":
        return _cpu_has_native_bf16()
    return False


def resolve_precision(precision: str | bool | None, device_type: str = "cpu") -> str:
    """"auto" / None -> "bf16" or "fp32" for this device; True/"bf16" -> "bf16"; False/"fp32" -> "fp32"."""
    if precision is None or precision == "auto":
        return "bf16" if bf16_is_fast(device_type) else "fp32"
    if precision is True or precision == "bf16":
        return "bf16"
    if precision is False or precision == "fp32":
        return "fp32"
    raise ValueError(f"precision: {precision!r} is not allowed; choose one of {', '.join(PRECISIONS)}")


def use_bf16(precision: str | bool | None, device_type: str = "cpu") -> bool:
    return resolve_precision(precision, device_type) == "bf16"
