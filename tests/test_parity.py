"""Two processes train as one: 2 processes x N prompts (targets, pairs) reproduce 1 process x 2N,
on CPU, for PPO, GRPO, SFT and DPO.

Equal rollouts need equal sampled tokens, which two samplers seeded per process never give; the
generation seam gives them: `ReplayGenerator` answers prompt p's sample j with tokens that are a
fixed function of (p, j), of varied lengths, some ending with EOS, and finishes them with the
backends' own `finish_responses`. Everything else is the recipes' own code: the reward model
(toxicity scorer), the reference, advantage whitening and reward normalisation (pooled over
processes), token-mean losses (divided by the mean token count per process), DDP's gradient
average, clipping, AdamW.

Each recipe takes one minibatch per epoch (a step's responses), so the per-process shuffles that
order minibatches do not matter; with several minibatches per epoch the two runs see different
minibatch compositions (docs/scaling.md).

Tolerances (stated in docs/scaling.md): per-step metrics agree within rtol 1e-4 + atol 1e-5 and the
trained weights after the run within atol 1e-5 (float32 sums taken in another order: two halves
all-reduced against one batch). Not compared: metrics that are counts per process (`tokens`,
`pairs`) and four diagnostics that are per-process token or segment means averaged over processes
(`entropy`, `score/<source>`, `advantage/abs_mean`, GRPO's `ratio`), equal only when every process
holds as many tokens or segments.

The 2-process run is one `accelerate launch` of this file (`--worker`) running the four recipes in turn.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("ppo", "grpo", "sft", "dpo")
METRIC_RTOL, METRIC_ATOL, WEIGHT_ATOL = 1e-4, 1e-5, 1e-5
NOT_COMPARED = {"tokens", "pairs", "entropy", "advantage/abs_mean", "ratio"}  # plus score/* and time/*


class ReplayGenerator:
    """The generation seam with fixed answers: sample j of a prompt is a function of the prompt's
    tokens and j only, whatever the process, batch or weights."""

    def __init__(self, tokenizer, **_):
        self.tokenizer = tokenizer

    def sync_weights(self) -> None:
        """Nothing to push: the answers do not depend on the weights."""

    def sample(self, query_ids, query_mask, settings):
        import torch

        from finegrain.kernel.generation import finish_responses

        rows = []
        for ids, mask in zip(query_ids, query_mask.bool()):
            for j in range(settings.samples_per_prompt):
                seed = zlib.crc32(json.dumps([ids[mask].tolist(), j]).encode())
                g = torch.Generator().manual_seed(seed)
                n = int(torch.randint(2, settings.max_new_tokens + 1, (), generator=g))
                tokens = torch.randint(200, 5000, (settings.max_new_tokens,), generator=g)
                if n < settings.max_new_tokens:
                    tokens[n - 1] = self.tokenizer.eos_token_id
                    tokens[n:] = self.tokenizer.pad_token_id
                rows.append(tokens)
        g_ = settings.samples_per_prompt
        eos = [self.tokenizer.eos_token_id]
        return finish_responses(query_ids.repeat_interleave(g_, 0), query_mask.repeat_interleave(g_, 0), torch.stack(rows), eos, self.tokenizer.pad_token_id)


def replay_generator(backend, model, tokenizer, *args, **kwargs) -> ReplayGenerator:
    """Stands in for `generation.make_generator`: every recipe then samples through ReplayGenerator."""
    return ReplayGenerator(tokenizer)


def configs(policy: Path, feedback: Path, out: Path, processes: int) -> dict[str, dict]:
    """Each recipe's config for `processes` processes: per-process sizes halve with two."""
    from recipe_helpers import recipe_config
    from rl_helpers import tiny_config

    n = 4 // processes  # prompts (targets, pairs) per process per step
    run = {"steps": 2, "save_every": 0, "eval_every": 0}
    ppo = tiny_config(policy, out / "ppo", ppo={"prompts_per_step": n, "minibatch_size": 2 * n, "epochs": 2}, run=run)
    grpo = tiny_config(policy, out / "grpo", run=run)
    grpo.pop("ppo")
    grpo["critic_free"] = {"prompts_per_step": n, "epochs": 2, "kl_coef": 0.04}
    grpo["optim"] = {"lr": 1e-3, "batch_size": 2 * n}
    offline = {r: recipe_config(r, policy, feedback, out / r, optim={"batch_size": n}, run=run) for r in ("sft", "dpo")}
    return {"ppo": ppo, "grpo": grpo, **offline}


def worker(plan_file: str) -> None:
    """Run each recipe of the plan (a JSON {recipe: config file}) with the ReplayGenerator."""
    import importlib

    import finegrain.kernel.generation as generation
    from finegrain.config import load_config
    from finegrain.recipes import RECIPES as ALL

    generation.make_generator = replay_generator
    from accelerate.state import AcceleratorState, PartialState

    # one process group for the four runs: each recipe's `end_training` would destroy it
    for state in (PartialState, AcceleratorState):
        state.destroy_process_group = lambda self, group=None: None
    for recipe, path in json.loads(Path(plan_file).read_text()).items():
        module_name, config_name, _ = ALL[recipe]
        module = importlib.import_module(module_name)
        module.train(load_config(getattr(module, config_name), path, []))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The four recipes on one process (in this one) and on two (one accelerate launch)."""
    from recipe_helpers import write_feedback
    from rl_helpers import make_tiny_policy, write_config

    root = tmp_path_factory.mktemp("parity")
    policy, feedback = make_tiny_policy(root / "policy"), write_feedback(root / "feedback.jsonl")
    plans = {}
    for processes in (1, 2):
        cfgs = configs(policy, feedback, root / f"p{processes}", processes)
        plans[processes] = {r: str(write_config(c, root / f"p{processes}-{r}.yaml")) for r, c in cfgs.items()}
        (root / f"plan{processes}.json").write_text(json.dumps(plans[processes]), encoding="utf-8")
    from test_accelerate import _free_port

    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        str(Path(__file__)), "--worker", str(root / "plan2.json"),
    ]
    launched = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import torch

    before = torch.get_num_threads()
    mp = pytest.MonkeyPatch()
    try:
        import finegrain.kernel.generation as generation

        mp.setattr(generation, "make_generator", replay_generator)
        worker(str(root / "plan1.json"))  # meanwhile, the two processes run theirs
    finally:
        mp.undo()
        torch.set_num_threads(before)
    _, err = launched.communicate(timeout=600)
    assert launched.returncode == 0, err[-3000:]
    return root


def _compared(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in NOT_COMPARED and not k.startswith(("time/", "score/"))}


@pytest.mark.slow
@pytest.mark.embedded  # the SmolLM2 tokenizer
@pytest.mark.parametrize("recipe", RECIPES)
def test_two_processes_train_as_one(runs, recipe):
    from safetensors.torch import load_file

    from finegrain.kernel.run import read_metrics

    one, two = (read_metrics(runs / p / recipe / "metrics.jsonl") for p in ("p1", "p2"))
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2]
    for a, b in zip(one, two):
        a, b = _compared(a), _compared(b)
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=METRIC_RTOL, abs=METRIC_ATOL), (recipe, a["step"], k, a[k], b[k])
    w1, w2 = (load_file(runs / p / recipe / "final" / "model.safetensors") for p in ("p1", "p2"))
    start = load_file(runs / "policy" / "model.safetensors")
    assert w1.keys() == w2.keys()
    moved = max(float((w1[k] - start[k]).abs().max()) for k in w1)
    assert moved > 100 * WEIGHT_ATOL  # the steps changed the weights far more than the tolerance
    worst = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    print(f"parity {recipe}: weights moved up to {moved:.1e}, 1 vs 2 processes differ by at most {worst:.1e}")
    assert worst <= WEIGHT_ATOL, (recipe, worst)


def test_replay_generator_is_a_function_of_prompt_and_sample():
    """Same prompt, any batch: the same answers; a response ends at its first EOS (the mask rule)."""
    import torch

    from finegrain.kernel.generation import GenerationSettings

    class Tok:
        eos_token_id, pad_token_id = 2, 0

    gen = ReplayGenerator(Tok())
    settings = GenerationSettings(samples_per_prompt=2, max_new_tokens=6)
    a = torch.tensor([[0, 5, 6], [7, 8, 9]])
    ma = torch.tensor([[False, True, True], [True, True, True]])
    both = gen.sample(a, ma, settings)
    alone = gen.sample(torch.tensor([[5, 6]]), torch.tensor([[True, True]]), settings)
    assert len(both) == 4 and both.response_ids[0].tolist() != both.response_ids[1].tolist()
    width = alone.response_ids.shape[1]
    assert torch.equal(both.response_ids[:2, :width], alone.response_ids)
    assert not both.response_ids[:2, width:].bool().any()  # beyond the shorter batch: padding
    for ids, mask in zip(both.response_ids, both.response_mask):
        ends = (ids == 2).nonzero()
        n = int(mask.sum())
        assert (n == ids.shape[0] or ids[n - 1] == 2) and (len(ends) == 0 or int(ends[0]) == n - 1)


if __name__ == "__main__" and "--worker" in sys.argv:
    worker(sys.argv[sys.argv.index("--worker") + 1])
