"""The GRPO / RLOO recipe on a tiny random policy: `finegrain train grpo|rloo` for each estimator x
reward mode (holistic, fine-grained), with the options spread over the runs; config errors.
The `tiny` and `one_thread` fixtures are in conftest.py."""

from __future__ import annotations

import math

import pytest
import torch

from finegrain.cli import main
from finegrain.config import ConfigError, load_config
from finegrain.kernel.run import read_metrics
from rl_helpers import tiny_config, write_config


def critic_free_config(tiny, out, mode: str, **sections) -> dict:
    """PPO's tiny config with its `ppo` section replaced by `critic_free` and `optim`."""
    cfg = tiny_config(tiny, out, mode)
    cfg.pop("ppo")
    cfg["critic_free"] = {"prompts_per_step": 2, "dense": mode == "dense"}
    cfg["optim"] = {"lr": 1e-3, "batch_size": 4}
    cfg["run"]["steps"] = 2
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values} if isinstance(values, dict) else values
    return cfg


RUNS = {
    # algorithm, reward mode: options spread so that every option runs at least once
    ("grpo", "dense"): {"critic_free": {"kl_in": "loss", "source_norm": "each", "loss_aggregation": "sequence_mean"},
                        "optim": {"grad_accum": 2}, "run": {"eval_every": 1}},
    ("grpo", "holistic"): {"critic_free": {"kl_in": "reward", "scale_by_std": False, "loss_aggregation": "constant"}},
    ("rloo", "dense"): {"critic_free": {"kl_in": "reward", "source_norm": "sum", "loss_aggregation": "token_mean", "epochs": 2},
                        "optim": {"batch_size": 2},
                        "rewards": [{"kind": "toxicity", "mode": "dense", "name": "sentences"},
                                    {"kind": "toxicity", "mode": "holistic", "name": "whole", "weight": 0.5}]},
    ("rloo", "holistic"): {"critic_free": {"kl_coef": 0.0}, "model": {"gradient_checkpointing": True}},
}


@pytest.mark.embedded  # the SmolLM2 tokenizer
@pytest.mark.parametrize("algorithm,mode", list(RUNS))
def test_train_smoke(tmp_path, tiny, one_thread, capsys, algorithm, mode):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    path = write_config(critic_free_config(tiny, out, mode, **RUNS[(algorithm, mode)]), tmp_path / "cfg.yaml")
    assert main(["train", algorithm, "--config", str(path)]) == 0, capsys.readouterr().err
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "reward/total" in r]
    assert [r["step"] for r in rows] == [1, 2]
    names = [r.get("name", "toxicity") for r in RUNS[(algorithm, mode)].get("rewards", [{"kind": "toxicity"}])]
    for r in rows:
        assert all(math.isfinite(v) for v in r.values())
        assert all(f"reward/{n}" in r and f"reward/{n}_std" in r for n in names)
        assert 0.0 <= r["groups/flat"] <= 1.0 and r["grad_norm"] >= 0.0
        if mode == "holistic":
            assert all(r[f"segments/{n}"] <= 1.0 for n in names)  # one segment per non-empty response
    if RUNS[(algorithm, mode)].get("run", {}).get("eval_every"):
        assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "eval/reward/total" in r] == [1, 2]
    assert (out / "final" / "config.json").is_file() and (out / "best" / "config.json").is_file()
    before = AutoModelForCausalLM.from_pretrained(tiny).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out / "final").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "the policy did not change"


def test_config_errors_name_the_field(tmp_path, tiny):
    from finegrain.recipes.grpo import GRPOConfig, RLOOConfig

    def load(cls, **sections):
        return load_config(cls, write_config(critic_free_config(tiny, tmp_path / "run", "dense", **sections), tmp_path / "c.yaml"))

    assert load(RLOOConfig).critic_free.algorithm == "rloo" and load(GRPOConfig).critic_free.algorithm == "grpo"
    with pytest.raises(ConfigError, match="sampling.samples_per_prompt: grpo compares the samples of a prompt; it needs at least 2, got 1"):
        load(GRPOConfig, sampling={"samples_per_prompt": 1})
    with pytest.raises(ConfigError, match="critic_free.kl_in: 'both' is not allowed"):
        load(GRPOConfig, critic_free={"kl_in": "both"})
    with pytest.raises(ConfigError, match="critic_free.loss_aggregation"):
        load(RLOOConfig, critic_free={"loss_aggregation": "mean"})
    with pytest.raises(ConfigError, match="optim.batch_size: 8 responses per optimiser step is more than a step samples"):
        load(GRPOConfig, optim={"batch_size": 8})
    with pytest.raises(ConfigError, match="critic_free.dense_baseline"):
        load(GRPOConfig, critic_free={"dense_baseline": "tokens"})
    assert load(GRPOConfig, critic_free={"dense_baseline": "responses"}).critic_free.dense_baseline == "responses"
    with pytest.raises(ConfigError, match="data.ptx"):
        load(GRPOConfig, data={"ptx": "x.jsonl"})


@pytest.mark.embedded  # the SmolLM2 tokenizer
def test_a_resumed_grpo_run_logs_what_an_uninterrupted_run_logs(tmp_path, tiny, one_thread):
    """Stopped after its step-2 checkpoint and resumed to step 4, a run replays the uninterrupted
    run's metrics exactly (the sampling RNG, optimiser and schedule come back from the checkpoint)."""
    from finegrain.kernel.run import without_timings
    from finegrain.recipes.grpo import GRPOConfig, train

    cfg = critic_free_config(tiny, tmp_path / "whole", "dense", run={"steps": 4, "save_every": 2}, critic_free={"epochs": 2}, optim={"batch_size": 2})
    path = write_config(cfg, tmp_path / "c.yaml")
    whole = train(load_config(GRPOConfig, path))
    parted = tmp_path / "parted"
    train(load_config(GRPOConfig, path, [f"run.out={parted}", "run.steps=2"]))
    train(load_config(GRPOConfig, path, [f"run.out={parted}"]), resume=True)
    rows = [[without_timings(r) for r in read_metrics(folder / "metrics.jsonl")] for folder in (whole, parted)]
    assert [r["step"] for r in rows[0]] == [1, 2, 3, 4]
    assert rows[1] == rows[0]


@pytest.mark.embedded  # the SmolLM2 tokenizer
def test_the_first_minibatchs_old_logprobs_from_its_own_forward_change_nothing(tmp_path, tiny, one_thread, monkeypatch):
    """The rows of the update's first minibatch take pi_old from the update's own forward instead of a
    no-grad pass of their own: the run logs the same figures (KL included) and ends at the same policy
    as one that runs the pass for every row."""
    import finegrain.recipes.grpo as grpo
    from transformers import AutoModelForCausalLM

    from finegrain.kernel.run import without_timings

    cfg = critic_free_config(tiny, tmp_path / "lazy", "dense", run={"steps": 2}, critic_free={"epochs": 2, "old_logprobs": "forward"},
                             optim={"batch_size": 2, "grad_accum": 2})
    path = write_config(cfg, tmp_path / "c.yaml")
    pending = []
    real = grpo.old_logprobs_pending
    monkeypatch.setattr(grpo, "old_logprobs_pending", lambda c, orders: pending.append(real(c, orders)) or pending[-1])
    lazy = grpo.train(load_config(grpo.GRPOConfig, path))
    assert pending and all(len(rows) == 2 for rows in pending)  # one minibatch of 2 rows a step skipped its pass
    monkeypatch.setattr(grpo, "old_logprobs_pending", lambda c, orders: [])
    eager = grpo.train(load_config(grpo.GRPOConfig, path, [f"run.out={tmp_path / 'eager'}"]))
    rows = [[without_timings(r) for r in read_metrics(f / "metrics.jsonl")] for f in (lazy, eager)]
    assert len(rows[0]) == 2
    for a, b in zip(*rows):
        assert a.keys() == b.keys() and {k: (a[k], b[k]) for k in a if a[k] != pytest.approx(b[k], rel=1e-4, abs=1e-6)} == {}
    A, B = (AutoModelForCausalLM.from_pretrained(f / "final").state_dict() for f in (lazy, eager))
    assert all(torch.allclose(A[k], B[k], atol=1e-5) for k in A)
    # KL in the reward: the advantages need every row's pi_old first, so nothing is pending
    kl_reward = load_config(grpo.GRPOConfig, write_config(critic_free_config(tiny, tmp_path / "r", "dense", critic_free={"kl_in": "reward"}), tmp_path / "r.yaml"))
    assert real(kl_reward, [[0, 1, 2, 3]]) == [] and real(load_config(grpo.GRPOConfig, path), [[3, 1, 0, 2]]) == [3, 1]


@pytest.mark.embedded  # the SmolLM2 tokenizer
def test_old_logprobs_recorded_while_sampling_match_a_forward_pass(tmp_path, tiny, one_thread, monkeypatch):
    """critic_free.old_logprobs=sampling (the default) takes pi_old from the logits the tokens were
    sampled from: only the reference needs a no-grad pass, and the run logs the figures (KL, ratio,
    clip fraction, losses) and ends at the policy of a run that computes pi_old by a forward pass,
    up to float rounding (the KL in the loss: in the reward, a KL of 1e-7 against 0 in a group of equal
    rewards would be whitened into an advantage)."""
    import finegrain.recipes.grpo as grpo
    from transformers import AutoModelForCausalLM

    from finegrain.kernel.run import without_timings

    cfg = critic_free_config(tiny, tmp_path / "sampled", "dense", run={"steps": 2}, critic_free={"epochs": 2},
                             optim={"batch_size": 2}, sampling={"min_new_tokens": 3, "temperature": 0.7})
    path = write_config(cfg, tmp_path / "c.yaml")  # tempered: pi_old, pi and pi_ref alike under softmax(logits / 0.7)
    passes = []
    real = grpo.response_logprobs_no_grad
    monkeypatch.setattr(grpo, "response_logprobs_no_grad", lambda model, seq, *a: passes.append(model) or real(model, seq, *a))
    runs = {}
    for how in ("sampling", "forward"):
        passes.clear()
        runs[how] = grpo.train(load_config(grpo.GRPOConfig, path, [f"run.out={tmp_path / how}", f"critic_free.old_logprobs={how}"]))
        assert len(passes) == {"sampling": 2, "forward": 4}[how]  # a step: the reference's pass (and pi_old's, but the first minibatch's)
    rows = [[without_timings(r) for r in read_metrics(f / "metrics.jsonl")] for f in runs.values()]
    assert len(rows[0]) == 2
    for a, b in zip(*rows):
        assert a.keys() == b.keys() and {k: (a[k], b[k]) for k in a if a[k] != pytest.approx(b[k], rel=1e-4, abs=1e-5)} == {}
    A, B = (AutoModelForCausalLM.from_pretrained(f / "final").state_dict() for f in runs.values())
    assert all(torch.allclose(A[k], B[k], atol=5e-5) for k in A)  # Adam at lr 1e-3 moved them ~1e-3 a step
    with pytest.raises(ConfigError, match="critic_free.old_logprobs"):
        load_config(grpo.GRPOConfig, path, ["critic_free.old_logprobs=cache"])


@pytest.mark.parametrize("mode", ["finegrained", "holistic"])
def test_detox_configs_keep_ppos_settings(mode):
    """configs/detox_critic_free_*.yaml load for both recipes and share PPO's model, precision, prompts,
    sampling, rewards, steps, seed and the hyper-parameters both estimators have (configs/detox_*.yaml):
    the arms differ in the estimator only."""
    from pathlib import Path

    from finegrain.config import to_dict
    from finegrain.recipes.grpo import GRPOConfig, RLOOConfig
    from finegrain.rl.config import TrainConfig

    configs = Path(__file__).resolve().parents[1] / "configs"
    ppo = load_config(TrainConfig, configs / f"detox_{mode}.yaml")
    for cls, algorithm in ((GRPOConfig, "grpo"), (RLOOConfig, "rloo")):
        cf = load_config(cls, configs / f"detox_critic_free_{mode}.yaml")
        assert cf.critic_free.algorithm == algorithm
        assert to_dict(cf.sampling) == to_dict(ppo.sampling) and to_dict(cf.data) == to_dict(ppo.data)
        assert [to_dict(r) for r in cf.rewards] == [to_dict(r) for r in ppo.rewards]
        assert (cf.model.policy, cf.model.precision, cf.model.ref) == (ppo.model.policy, ppo.model.precision, ppo.model.ref)
        assert cf.model.precision == "auto"
        assert to_dict(cf.run) == to_dict(ppo.run)
        c, p = cf.critic_free, ppo.ppo
        assert (c.kl_coef, c.prompts_per_step, c.clip, c.epochs) == (p.kl_coef, p.prompts_per_step, p.clip, p.epochs)
        o = cf.optim
        assert (o.lr, o.weight_decay, o.schedule, o.warmup_steps, o.max_grad_norm, o.batch_size, o.grad_accum) == (
            p.lr, p.weight_decay, p.schedule, p.warmup_steps, p.max_grad_norm, p.minibatch_size, p.grad_accum)


def test_detox_critic_free_configs_differ_only_in_the_reward_mode():
    """The holistic and fine-grained critic-free arms are one config but for rewards[0].mode;
    critic_free.dense is on in both (one segment per response makes it the holistic estimator)."""
    from pathlib import Path

    from finegrain.config import to_dict
    from finegrain.recipes.grpo import GRPOConfig

    configs = Path(__file__).resolve().parents[1] / "configs"
    fine, whole = (to_dict(load_config(GRPOConfig, configs / f"detox_critic_free_{m}.yaml")) for m in ("finegrained", "holistic"))
    assert (fine["rewards"][0].pop("mode"), whole["rewards"][0].pop("mode")) == ("dense", "holistic")
    assert fine == whole and fine["critic_free"]["dense"] is True


@pytest.mark.slow
@pytest.mark.embedded  # the SmolLM2 tokenizer
def test_grpo_killed_and_resumed_equals_an_uninterrupted_run(tmp_path, tiny):
    import os
    import subprocess
    import sys

    from finegrain.kernel.run import without_timings
    from finegrain.recipes.grpo import GRPOConfig, train
    from test_resume import REPO, _kill_when_checkpointed, _weights

    steps = 3  # as small as the test allows: killed after step 1's checkpoint, resumed to step 3
    cfg = critic_free_config(tiny, tmp_path / "whole", "dense", run={"steps": steps, "eval_every": 2}, sampling={"max_new_tokens": 6},
                             optim={"batch_size": 2, "grad_accum": 2})
    path = write_config(cfg, tmp_path / "c.yaml")
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "finegrain.cli", "train", "grpo", "--config", str(path), f"run.out={killed}"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    at = _kill_when_checkpointed(proc, killed, at_least=1, timeout=900.0)  # a busy 2-core machine: minutes
    assert at < steps and not (killed / "final").exists(), "killed too late to test a resume"
    before = torch.get_num_threads()
    try:
        train(load_config(GRPOConfig, path, [f"run.out={killed}"]), resume=True)
        whole = train(load_config(GRPOConfig, path))
    finally:
        torch.set_num_threads(before)
    rows = [[without_timings(r) for r in read_metrics(folder / "metrics.jsonl")] for folder in (killed, whole)]
    assert [r["step"] for r in rows[1] if "reward/total" in r] == list(range(1, steps + 1))
    assert rows[0] == rows[1]
    a, b = _weights(killed / "final"), _weights(whole / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.embedded  # the SmolLM2 tokenizer
def test_grpo_under_two_process_accelerate_launch(tmp_path, tiny):
    import os
    import subprocess
    import sys

    from test_accelerate import REPO, _free_port

    out = tmp_path / "run"
    cfg = critic_free_config(tiny, out, "dense", run={"steps": 2, "eval_every": 2, "save_every": 1}, sampling={"max_new_tokens": 6},
                             optim={"batch_size": 4, "grad_accum": 2})
    path = write_config(cfg, tmp_path / "c.yaml")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        "-m", "finegrain.cli", "train", "grpo", "--config", str(path),
    ]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run finished") == 2  # two processes, one run
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows if "reward/total" in r] == [1, 2]  # written once, by the main process
    assert [r["step"] for r in rows if "eval/reward/total" in r] == [2]
    assert (out / "checkpoints" / "step-000002" / "random_states_1.pkl").is_file()  # both processes' RNGs
    assert (out / "final" / "model.safetensors").is_file() and (out / "best" / "model.safetensors").is_file()
