"""The training recipes, one file each, on the shared kernel (finegrain/kernel):

    sft.py     supervised fine-tuning on (prompt, target) pairs from a feedback file
    dpo.py     Direct Preference Optimisation (sigmoid loss, frozen or precomputed reference)
    simpo.py   SimPO (length-averaged log-probs, target margin, no reference)
    ppo        finegrain/rl: PPO on dense, weighted, multi-source rewards (rl/trainer.py)
    grpo.py    GRPO and RLOO: critic-free, on holistic or fine-grained multi-source rewards
    cli.py     `finegrain train sft|ppo|dpo|simpo --config FILE [key.sub=value ...]`

A recipe is a config dataclass and a `train(cfg, resume)` that reads as numbered steps. No recipe
imports another; what two recipes share lives in the kernel.
"""

RECIPES = {
    "sft": ("finegrain.recipes.sft", "SFTConfig", "supervised fine-tuning on targets from a feedback file"),
    "dpo": ("finegrain.recipes.dpo", "DPOConfig", "Direct Preference Optimisation on preference pairs"),
    "simpo": ("finegrain.recipes.simpo", "SimPOConfig", "SimPO on preference pairs (no reference model)"),
    "ppo": ("finegrain.rl.trainer", "TrainConfig", "PPO on dense, weighted, multi-source rewards (fine-grained or holistic)"),
    "grpo": ("finegrain.recipes.grpo", "GRPOConfig", "GRPO: group-normalised advantages, holistic or per segment (no value model)"),
    "rloo": ("finegrain.recipes.grpo", "RLOOConfig", "RLOO: leave-one-out baseline, holistic or reward-to-go per segment (no value model)"),
}
