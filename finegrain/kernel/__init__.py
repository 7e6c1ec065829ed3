"""The kernel every recipe (SFT, DPO, SimPO, PPO) stands on. One concept, one file:

    sequences.py   a batch of (left-padded prompt, right-padded response) and the one response-mask rule
    generation.py  the generation seam (`Generator`: prompts -> responses, `sync_weights`), its Hugging
                   Face implementation (gathers sharded parameters), the library's only `generate(` call
    logprobs.py    token and sequence log-probs (summed or length-averaged), the response-only forward
    prompts.py     the prompt renderer: {prompt}/{question}/{passages}, chat template, token budget
    models.py      loading causal LMs (trained and frozen), bf16 autocast
    optim.py       AdamW and the learning-rate schedule
    checkpoint.py  atomic checkpoints with exact resume, the HF-format policy folders
    run.py         accelerator and seeds, run folder, metrics JSONL + TensorBoard/W&B, keep-best, progress
    stats.py       statistics as named tuples, summed by field
    config.py      the config sections every recipe shares (model, optimiser, run)

Nothing here knows about a particular recipe; a recipe imports the kernel, never another recipe.
Shape legend: B sequences, P prompt tokens (left-padded), T response tokens (right-padded),
V vocabulary, N preference pairs, G samples per prompt.
"""
