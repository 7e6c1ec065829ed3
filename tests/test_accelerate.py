"""The same trainer under `accelerate launch` on two CPU processes: a smoke run (DDP over gloo),
with evaluation, checkpoints and the final policy written once.

accelerate 1.x starts several CPU processes only through MPI (`--cpu` plus an mpirun hostfile) or
through its torchrun launcher (`--multi_gpu`) with ACCELERATE_USE_CPU=true, which is what we use:
`--cpu --num_processes 2` alone quietly runs a single process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from finegrain.kernel.run import read_metrics
from rl_helpers import make_tiny_policy, tiny_config, write_config

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.embedded  # the SmolLM2 tokenizer
def test_two_process_accelerate_launch_on_cpu(tmp_path):
    policy = make_tiny_policy(tmp_path / "policy")
    out = tmp_path / "run"
    cfg = tiny_config(policy, out, run={"steps": 2, "eval_every": 2, "save_every": 1}, ppo={"grad_accum": 2, "minibatch_size": 4})
    path = write_config(cfg, tmp_path / "c.yaml")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        "-m", "finegrain.cli", "train", "--config", str(path),
    ]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run finished") == 2  # two processes, one run
    rows = read_metrics(out / "metrics.jsonl")
    steps = [r for r in rows if "reward/total" in r]
    assert [r["step"] for r in steps] == [1, 2]  # written once, by the main process
    assert [r["step"] for r in rows if "eval/reward/total" in r] == [2]
    assert all(r["epochs"] == 2 for r in steps)
    assert (out / "checkpoints" / "step-000002" / "random_states_1.pkl").is_file()  # both processes' RNGs
    assert (out / "final" / "model.safetensors").is_file() and (out / "best" / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.embedded  # the SmolLM2 tokenizer
@pytest.mark.parametrize("recipe", ["sft", "dpo", "simpo"])
def test_every_recipe_under_two_process_accelerate_launch(tmp_path, recipe):
    from recipe_helpers import recipe_config, write_feedback

    policy = make_tiny_policy(tmp_path / "policy")
    feedback = write_feedback(tmp_path / "feedback.jsonl")
    out = tmp_path / "run"
    cfg = recipe_config(recipe, policy, feedback, out, run={"steps": 2, "eval_every": 2, "save_every": 1}, optim={"batch_size": 2, "grad_accum": 2})
    path = write_config(cfg, tmp_path / "c.yaml")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        "-m", "finegrain.cli", "train", recipe, "--config", str(path),
    ]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run finished") == 2  # two processes, one run
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]  # written once, by the main process
    assert [r["step"] for r in rows if "eval/loss" in r] == [0, 2]
    assert (out / "checkpoints" / "step-000002" / "random_states_1.pkl").is_file()  # both processes' RNGs
    assert (out / "final" / "model.safetensors").is_file() and (out / "best" / "model.safetensors").is_file()
