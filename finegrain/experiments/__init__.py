"""Experiments: one folder each, with its task (data, split, run settings), its evaluation metrics,
its demo and its report, built on the recipes and the kernel.

    detox/   the paper's first experiment: holistic vs fine-grained PPO detoxification
"""
