"""What a step logs: per-source rewards and raw scores, KL, entropy, lengths, losses, phase timings.

Rows are flat {name: float} dicts written to `metrics.jsonl` (kernel.run.log_row), one per step (evaluation rows carry
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

from typing import TYPE_CHECKING



if TYPE_CHECKING:
    from finegrain.rl.rollout import Rollout, Scores


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
