"""Reward sources (span classifiers, pairwise sequence models, toxicity scorers) and the composer
that turns their per-segment scores into per-token rewards on the policy's tokens."""
