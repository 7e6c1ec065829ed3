"""SFT, DPO and SimPO on a tiny model made in-test: few-step smoke runs through `finegrain train`,
their held-out evaluation, the numbers a first step must give, and config errors that name the field."""

from __future__ import annotations

import math

import pytest
import torch

from finegrain.cli import main
from finegrain.kernel.run import read_metrics
from recipe_helpers import recipe_config, write_config, write_feedback


@pytest.fixture(scope="module")
def feedback(tmp_path_factory):
    return write_feedback(tmp_path_factory.mktemp("data") / "feedback.jsonl")



def _run(recipe, tiny, feedback, tmp_path, *overrides, **sections):
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / recipe
    path = write_config(recipe_config(recipe, tiny, feedback, out, **sections), tmp_path / f"{recipe}.yaml")
    assert main(["train", recipe, "--config", str(path), *overrides]) == 0
    return out


def _check(out, steps=3):
    from transformers import AutoModelForCausalLM

    rows = read_metrics(out / "metrics.jsonl")
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, steps + 1))
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in train_rows)
    evals = [r for r in rows if "eval/loss" in r]
    assert [r["step"] for r in evals] == [0, steps]  # before training, and at the end
    for folder in ("final", "best"):
        AutoModelForCausalLM.from_pretrained(out / folder)
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step-{steps:06d}"
    assert (out / "config.yaml").is_file()
    return train_rows, evals


@pytest.mark.embedded  # the SmolLM2 tokenizer
def test_sft_smoke_learns_its_targets(tmp_path, tiny, feedback, one_thread):
    out = _run("sft", tiny, feedback, tmp_path, "run.steps=4", "run.eval_every=4", "optim.grad_accum=2")
    rows, evals = _check(out, steps=4)
    assert all(r["tokens"] > 0 for r in rows)
    for e in evals:
        assert e["eval/perplexity"] == pytest.approx(math.exp(e["eval/loss"]))
    assert evals[-1]["eval/loss"] < evals[0]["eval/loss"]  # a random model learns the answers' format fast
    # with the layers recomputed in the backward: the same run
    again = _run("sft", tiny, feedback, tmp_path / "checkpointed", "run.steps=4", "run.eval_every=4", "optim.grad_accum=2", "model.gradient_checkpointing=true")
    assert [r["loss"] for r in _check(again, steps=4)[0]] == pytest.approx([r["loss"] for r in rows], abs=1e-5)


@pytest.mark.embedded  # the SmolLM2 tokenizer
def test_dpo_smoke_starts_at_log_two_and_both_references_agree(tmp_path, tiny, feedback, one_thread):
    """The policy is its own reference at the start: every margin 0, every loss log 2. Reference
    log-probs computed once or by the frozen model at every step: the same run."""
    runs = {ref: _run("dpo", tiny, feedback, tmp_path / ref, f"dpo.reference={ref}", "dpo.beta=0.5") for ref in ("precompute", "model")}
    for out in runs.values():
        rows, evals = _check(out)
        assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
        assert evals[0]["eval/loss"] == pytest.approx(math.log(2), abs=1e-5) and evals[0]["eval/accuracy"] == 0.0
        assert rows[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
        assert rows[-1]["rewards/margins"] > 0  # the policy moved towards the chosen responses
    a, b = ([r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r] for out in runs.values())
    assert a == pytest.approx(b, abs=1e-5)


@pytest.mark.embedded  # the SmolLM2 tokenizer
def test_simpo_smoke_first_loss_is_the_margin_alone(tmp_path, tiny, feedback, one_thread):
    out = _run("simpo", tiny, feedback, tmp_path, "simpo.beta=2.0", "simpo.gamma=0.0")
    rows, evals = _check(out)
    # gamma 0: loss = -log sigmoid(beta * (mean lp_w - mean lp_l)); the logged rewards are beta * mean lp
    r = rows[0]
    expected = -torch.nn.functional.logsigmoid(torch.tensor(r["rewards/chosen"] - r["rewards/rejected"])).item()
    assert r["loss"] == pytest.approx(expected, rel=0.2)  # mean of per-pair losses vs loss of the mean margin
    assert 0.0 <= evals[-1]["eval/accuracy"] <= 1.0 and evals[-1]["eval/pairs"] > 0


@pytest.mark.embedded  # the SmolLM2 tokenizer
def test_recipes_read_a_pairs_file(tmp_path, tiny, feedback, one_thread):
    assert main(["data", "pairs", str(feedback), "--out", str(tmp_path / "pairs.jsonl")]) == 0
    out = tmp_path / "run"
    cfg = recipe_config("simpo", tiny, feedback, out, run={"steps": 1, "eval_every": 1})
    cfg["data"] = {"pairs_file": str(tmp_path / "pairs.jsonl"), "eval_examples": 2}
    assert main(["train", "simpo", "--config", str(write_config(cfg, tmp_path / "c.yaml"))]) == 0
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r] == [1]


def test_config_errors_name_the_field(tmp_path, capsys):
    feedback = write_feedback(tmp_path / "f.jsonl", n=3)
    cases = [
        ("dpo", ["dpo.beta=-1"], "dpo.beta"),
        ("dpo", ["dpo.reference=cached"], "dpo.reference"),
        ("simpo", ["simpo.gamma=-0.5"], "simpo.gamma"),
        ("sft", ["data.targets=[gold, silver]"], "data.targets[1]"),
        ("sft", ["optim.grad_accum=3"], "optim.grad_accum"),
        ("sft", ["data.eval_examples=3"], "data.eval_examples"),
        ("sft", [f"data.feedback={tmp_path / 'missing.json'}"], "data.feedback"),
        ("sft", ["prompt.template=no placeholder"], "prompt.template"),
        ("dpo", ["run.eval_every=1", "data.eval_examples=0"], "run.eval_every"),
        ("kto", [], "recipe 'kto'"),
    ]
    for recipe, overrides, field in cases:
        cfg = recipe_config("sft" if recipe == "kto" else recipe, tmp_path / "no-model", feedback, tmp_path / "run")
        path = write_config(cfg, tmp_path / "c.yaml")
        assert main(["train", recipe, "--config", str(path), "--check", *overrides]) == 2, (recipe, overrides)
        assert field in capsys.readouterr().err, (recipe, overrides)


@pytest.mark.embedded  # the SmolLM2 tokenizer
def test_check_and_print_config(tmp_path, tiny, feedback, capsys):
    path = write_config(recipe_config("dpo", tiny, feedback, tmp_path / "run"), tmp_path / "c.yaml")
    assert main(["train", "dpo", "--config", str(path), "--check"]) == 0
    assert "config OK (dpo)" in capsys.readouterr().out
    assert main(["train", "dpo", "--config", str(path), "--print-config", "dpo.beta=0.25"]) == 0
    assert "beta: 0.25" in capsys.readouterr().out


@pytest.mark.parametrize("recipe", ["sft", "dpo", "simpo"])
def test_shipped_configs_load(recipe):
    """configs/<recipe>_qa.yaml is a valid config of its recipe (the data file itself is ../shared's)."""
    import importlib
    from pathlib import Path

    from finegrain.config import load_config
    from finegrain.recipes import RECIPES

    module_name, config_name, _ = RECIPES[recipe]
    path = Path(__file__).resolve().parents[1] / "configs" / f"{recipe}_qa.yaml"
    cfg = load_config(getattr(importlib.import_module(module_name), config_name), path)
    assert cfg.data.feedback == "../shared/data/qa_feedback/feedback.json" and cfg.run.eval_every


def test_a_precomputed_reference_covers_exactly_the_pairs_a_process_will_use():
    """Precomputing the reference for every pair of a large file costs more than a short run; the
    pairs a run uses are known before it starts, per process, and are all that is computed."""
    from types import SimpleNamespace

    from finegrain.kernel.run import batch_indices
    from finegrain.recipes.dpo import pairs_used

    cfg = SimpleNamespace(run=SimpleNamespace(steps=3, seed=5), optim=SimpleNamespace(batch_size=4))
    for rank in (0, 1):
        used = pairs_used(cfg, 100, 2, rank)
        expected = [i for step in range(3) for i in batch_indices(step, 100, 4, 2, rank, 5)]
        assert used == expected and len(used) == 12  # 3 steps x 4 pairs, no repeats within a pass
    assert not set(pairs_used(cfg, 100, 2, 0)) & set(pairs_used(cfg, 100, 2, 1))
    # Past one pass over the data, a pair used twice is computed once.
    assert sorted(pairs_used(SimpleNamespace(run=SimpleNamespace(steps=5, seed=0), optim=SimpleNamespace(batch_size=4)), 10, 1, 0)) == list(range(10))
