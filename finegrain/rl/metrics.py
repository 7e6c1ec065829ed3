"""What a step logs: per-source rewards and raw scores, KL, entropy, lengths, losses, phase timings.

Rows are flat {name: float} dicts written to `metrics.jsonl`, one per step (evaluation rows carry
`eval/...` names). Names:
    reward/total          mean over responses of the summed weighted source rewards (no KL)
    reward/<source>       mean over responses of source's summed (mapped, unweighted) rewards
    score/<source>        mean raw score over the source's segments (before its mapping)
    segments/<source>     mean number of segments per response
    kl                    mean over responses of the summed per-token KL(pi || pi_ref) estimate
    reward/penalised      mean over responses of the summed rewards PPO optimised (sources - beta KL)
    entropy, length       mean per-token entropy of pi_old (nats), mean response length (tokens)
    loss/policy, loss/value, loss/ptx, clip_frac, value_clip_frac, approx_kl, grad_norm, epochs
    time/generate, time/score, time/forward, time/update, time/step   seconds
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from finegrain.io import atomic_write_jsonl

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

    from finegrain.rl.rollout import Rollout, Scores

TIMING_PREFIX = "time/"


def rollout_metrics(rollout: "Rollout", scores: "Scores", kl_coef: float) -> dict[str, float]:
    from finegrain.rl import maths

    mask = rollout.response_mask
    row = {
        "reward/total": maths.sequence_sums(scores.total, mask).mean().item(),
        "reward/penalised": maths.sequence_sums(rollout.rewards, mask).mean().item(),
        "kl": maths.sequence_sums(rollout.kl, mask).mean().item(),
        "kl_coef": kl_coef,
        "entropy": maths.masked_mean(rollout.entropy, mask).item(),
        "length": mask.sum(-1).float().mean().item(),
    }
    for k, name in enumerate(scores.names):
        row[f"reward/{name}"] = maths.sequence_sums(scores.per_source[k], mask).mean().item()
        raw = scores.raw[k]
        seg_mask = raw.mask.bool()
        row[f"score/{name}"] = raw.scores[seg_mask].float().mean().item() if seg_mask.any() else 0.0
        row[f"segments/{name}"] = seg_mask.sum(-1).float().mean().item()
    return row


def reduce_across_processes(accelerator: "Accelerator", row: dict[str, float]) -> dict[str, float]:
    """Average every metric over processes (each process scored its own responses)."""
    if accelerator.num_processes == 1:
        return row
    import torch

    keys = sorted(row)
    values = torch.tensor([row[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    values = accelerator.reduce(values, reduction="mean")
    return dict(zip(keys, values.tolist()))


class MetricsLog:
    """`metrics.jsonl`, appended a row at a time (by the main process)."""

    def __init__(self, path: Path):
        self.path = path

    def append(self, row: dict[str, float | int]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()

    def truncate_after(self, step: int) -> None:
        """On resume: drop rows of steps after the checkpoint (they will be run again)."""
        if not self.path.is_file():
            return
        rows = [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
        atomic_write_jsonl(self.path, [r for r in rows if r.get("step", 0) <= step])


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def without_timings(row: dict[str, float]) -> dict[str, float]:
    """A row minus wall-clock measurements: what two identical runs must agree on."""
    return {k: v for k, v in row.items() if not k.startswith(TIMING_PREFIX) and k != "elapsed"}

