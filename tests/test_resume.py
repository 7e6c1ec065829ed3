"""Checkpoint and resume: a run killed mid-way and resumed logs exactly what an uninterrupted run
logs, and a save interrupted half-way never leaves a broken `latest` checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from finegrain.config import load_config
from finegrain.kernel.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from finegrain.rl.trainer import TrainerState
from finegrain.rl.config import TrainConfig
from finegrain.kernel.run import read_metrics, without_timings
from rl_helpers import make_tiny_policy, tiny_config, write_config

REPO = Path(__file__).resolve().parents[1]
STEPS = 8


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _kill_when_checkpointed(proc: subprocess.Popen, out: Path, at_least: int, timeout: float = 240.0) -> int:
    """SIGKILL the run as soon as its latest checkpoint is step `at_least` or later; returns that step."""
    deadline = time.monotonic() + timeout
    pointer = out / "checkpoints" / "latest"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be killed:\n{proc.stderr.read() if proc.stderr else ''}")
        if pointer.is_file():
            text = pointer.read_text().strip()
            if text and int(text.split("-")[1]) >= at_least:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return int(text.split("-")[1])
        time.sleep(0.01)
    proc.kill()
    pytest.fail("the run wrote no checkpoint in time")


@pytest.mark.slow
@pytest.mark.embedded  # the SmolLM2 tokenizer
def test_killed_and_resumed_run_logs_what_an_uninterrupted_run_logs(tmp_path):
    from finegrain.rl.trainer import run_training

    policy = make_tiny_policy(tmp_path / "policy")
    cfg = tiny_config(policy, tmp_path / "whole", run={"steps": STEPS, "eval_every": 3}, ppo={"epochs": 2, "prompts_per_step": 3, "minibatch_size": 6, "reward_norm": "running"})
    path = write_config(cfg, tmp_path / "c.yaml")

    # the run, killed with SIGKILL after its second checkpoint (in a process of its own)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "finegrain.cli", "train", "--config", str(path), f"run.out={killed}"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    at = _kill_when_checkpointed(proc, killed, at_least=2)
    assert at < STEPS and not (killed / "final").exists(), "killed too late to test a resume"

    # resumed in this process; then the same run, uninterrupted
    before = torch.get_num_threads()
    try:
        run_training(load_config(TrainConfig, path, [f"run.out={killed}"]), resume=True)
        whole = run_training(load_config(TrainConfig, path))
    finally:
        torch.set_num_threads(before)

    resumed_rows = [without_timings(r) for r in read_metrics(killed / "metrics.jsonl")]
    whole_rows = [without_timings(r) for r in read_metrics(whole / "metrics.jsonl")]
    assert [r["step"] for r in whole_rows if "reward/total" in r] == list(range(1, STEPS + 1))
    assert resumed_rows == whole_rows
    a, b = _weights(killed / "final"), _weights(whole / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # each start of the run is recorded with the code that ran it: the killed start and the resumed one
    starts = [json.loads(line) for line in (killed / "environment.jsonl").read_text().splitlines()]
    assert len(starts) == 2 and all(s["finegrain"] and s["torch"] == torch.__version__ for s in starts)
    # and with what it computed in: the config's precision ("auto" by default) as resolved on this machine
    from finegrain.precision import resolve_precision

    configured = yaml.safe_load((killed / "config.yaml").read_text())["model"]["precision"]
    assert starts[-1]["device"] == "cpu" and starts[-1]["precision"] == resolve_precision(configured, "cpu")
    if (REPO / ".git").exists():
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        assert starts[-1]["git_commit"] == commit and isinstance(starts[-1]["git_dirty"], bool)


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    from finegrain.config import ConfigError
    from finegrain.rl.trainer import run_training

    cfg = load_config(TrainConfig, write_config(tiny_config(tmp_path / "p", tmp_path / "run"), tmp_path / "c.yaml"))
    with pytest.raises(ConfigError, match="--resume"):
        run_training(cfg, resume=True)


def test_an_interrupted_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    from accelerate import Accelerator

    acc = Accelerator()
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, opt = acc.prepare(model, opt)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    first = save_checkpoint(acc, tmp_path, TrainerState(step=1, kl_coef=0.3), keep=2)

    real_save_state = acc.save_state

    def dies_half_way(output_dir, **kwargs):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "model.bin").write_bytes(b"half a file")
        raise KeyboardInterrupt  # what a kill looks like from inside the process

    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    monkeypatch.setattr(acc, "save_state", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(acc, tmp_path, TrainerState(step=2, kl_coef=0.3), keep=2)
    assert latest_checkpoint(tmp_path) == first
    state = load_checkpoint(acc, first, TrainerState)
    assert state.step == 1 and state.kl_coef == 0.3
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())

    monkeypatch.setattr(acc, "save_state", real_save_state)
    second = save_checkpoint(acc, tmp_path, TrainerState(step=2, kl_coef=0.3), keep=1)
    assert latest_checkpoint(tmp_path) == second
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-000002"]


def test_a_full_disk_during_a_save_is_one_clear_error_and_frees_the_half_written_folder(tmp_path, monkeypatch):
    from accelerate import Accelerator

    from finegrain.errors import TrainingError

    acc = Accelerator()
    model = acc.prepare(torch.nn.Linear(3, 2))
    first = save_checkpoint(acc, tmp_path, TrainerState(step=1, kl_coef=0.3), keep=2)

    def disk_full(output_dir, **kwargs):  # torch's own words when the disk fills during torch.save
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "model.bin").write_bytes(b"part of a file")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")

    monkeypatch.setattr(acc, "save_state", disk_full)
    with pytest.raises(TrainingError, match=r"could not write checkpoint step-000002 to .*checkpoints: RuntimeError: .*unexpected pos.*GiB free"):
        save_checkpoint(acc, tmp_path, TrainerState(step=2, kl_coef=0.3), keep=2)
    assert latest_checkpoint(tmp_path) == first
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-000001"]  # no .tmp-* left

    from finegrain.kernel.checkpoint import save_policy

    class FullDiskPolicy:
        def save_pretrained(self, folder, state_dict=None):
            Path(folder).mkdir(parents=True)
            raise OSError(28, "No space left on device")

    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "config.json").write_text("{}")  # an earlier save of the policy
    with pytest.raises(TrainingError, match=r"could not write the policy final/ .*No space left on device.*GiB free"):
        save_policy(FullDiskPolicy(), None, tmp_path / "final")
    assert (tmp_path / "final" / "config.json").read_text() == "{}" and not list(tmp_path.glob(".tmp-*"))


@pytest.mark.slow
@pytest.mark.embedded  # the SmolLM2 tokenizer
@pytest.mark.parametrize("recipe", ["sft", "dpo", "simpo"])
def test_every_recipe_killed_and_resumed_equals_an_uninterrupted_run(tmp_path, recipe):
    import importlib

    from finegrain.recipes import RECIPES
    from recipe_helpers import recipe_config, write_feedback

    steps = 6
    policy = make_tiny_policy(tmp_path / "policy")
    feedback = write_feedback(tmp_path / "feedback.jsonl")
    cfg = recipe_config(recipe, policy, feedback, tmp_path / "whole", run={"steps": steps, "eval_every": 2}, optim={"grad_accum": 2})
    path = write_config(cfg, tmp_path / "c.yaml")
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "finegrain.cli", "train", recipe, "--config", str(path), f"run.out={killed}"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    at = _kill_when_checkpointed(proc, killed, at_least=2)
    assert at < steps and not (killed / "final").exists(), "killed too late to test a resume"

    module_name, config_name, _ = RECIPES[recipe]
    module = importlib.import_module(module_name)
    config_type = getattr(module, config_name)
    before = torch.get_num_threads()
    try:
        module.train(load_config(config_type, path, [f"run.out={killed}"]), resume=True)
        whole = module.train(load_config(config_type, path))
    finally:
        torch.set_num_threads(before)
    resumed_rows = [without_timings(r) for r in read_metrics(killed / "metrics.jsonl")]
    whole_rows = [without_timings(r) for r in read_metrics(whole / "metrics.jsonl")]
    assert [r["step"] for r in whole_rows if "loss" in r] == list(range(1, steps + 1))
    assert resumed_rows == whole_rows
    a, b = _weights(killed / "final"), _weights(whole / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # each start of the run is recorded with the code that ran it: the killed start and the resumed one
    starts = [json.loads(line) for line in (killed / "environment.jsonl").read_text().splitlines()]
    assert len(starts) == 2 and all(s["finegrain"] and s["torch"] == torch.__version__ for s in starts)
    if (REPO / ".git").exists():
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        assert starts[-1]["git_commit"] == commit and isinstance(starts[-1]["git_dirty"], bool)
