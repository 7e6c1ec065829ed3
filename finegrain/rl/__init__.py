"""PPO on dense, weighted, multi-source rewards: maths, rollout, trainer, checkpoints, `finegrain train`."""
