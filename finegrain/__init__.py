"""finegrain: Fine-Grained RLHF, training language models from span-level, multi-category feedback.

Importing finegrain is cheap (no torch): heavy modules load when a command or function needs them.
"""

__version__ = "0.1.0"
