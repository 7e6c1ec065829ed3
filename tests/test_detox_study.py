"""bench/detox_study.py: the plan of the fair detox study and its summary, on the runs it kept."""

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KEPT = ROOT / "bench" / "results" / "detox-study"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("detox_study", ROOT / "bench" / "detox_study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_long_curves_are_both_arms_at_their_own_steps(study):
    jobs = study.plan("batch", [], [0, 1, 2], [], [], curve_seeds=[0, 1], curve_steps=100)
    long = [j for j in jobs if j.steps == 100]
    assert [(j.seed, j.arm) for j in long] == [(0, "holistic"), (0, "finegrained"), (1, "holistic"), (1, "finegrained")]
    assert {j.group for j in long} == {"shipped-batch-100steps"}
    assert long[0].folder(Path("OUT")) == Path("OUT/shipped-batch-100steps/seed-0/holistic")
    assert {j.group for j in jobs if j.steps == 30 and j.arm != "initial"} == {"shipped-batch"}  # the main table is untouched
    assert not [j for j in study.plan("batch", [], [0], [], []) if j.steps != 30]  # no curves unless asked for


def test_steps_to_counts_full_windows_only(study):
    steps = list(range(1, 13))
    toxicity = [0.0] + [1.0] * 11  # one lucky first batch: its 1-step "mean" is 0
    assert study.steps_to(steps, toxicity, 0.5, window=3) is None
    falling = [1.0, 1.0, 1.0, 0.4, 0.4, 0.4, 0.4]
    assert study.steps_to(list(range(1, 8)), falling, 0.5, window=3) == 6  # mean of steps 4-6 is the first <= 0.5
    assert study.steps_to(list(range(1, 8)), falling, 0.7, window=3) == 5  # (1 + 0.4 + 0.4) / 3 = 0.6; step 4: 0.8


@pytest.mark.skipif(not (KEPT / "rtp-batch").is_dir(), reason="the study's kept runs are not in this checkout")
def test_summary_of_a_long_curve_group(study, tmp_path):
    out = tmp_path / "study"
    shutil.copytree(KEPT / "rtp-batch", out / "shipped-batch-100steps")  # kept runs standing in for the long ones
    text = study.write_summary(out)
    assert "## shipped-batch-100steps" in text
    assert "Fine-grained minus holistic" in text and "steps to 75% / 50%" in text
    assert "Power: with 5 seeds" in text and "detects with 80% power a difference of" in text
    assert (out / "curves-100steps.png").stat().st_size > 0
    assert "Training toxicity at equal KL" in text and (out / "kl-frontier.png").stat().st_size > 0
    assert not (out / "curves.png").exists()  # no algorithm group: no algorithm plot


@pytest.mark.skipif(not (KEPT / "rtp-batch").is_dir(), reason="the study's kept runs are not in this checkout")
def test_segment_runs_are_paired_with_the_batch_holistic_runs(study, tmp_path):
    """With one reward per response `segment` is `batch`: the study trains holistic once, and the summary
    compares `segment`'s fine-grained runs with those holistic runs, seed by seed, saying so."""
    out = tmp_path / "study"
    shutil.copytree(KEPT / "rtp-batch", out / "shipped-batch")
    shutil.copytree(KEPT / "rtp-batch", out / "shipped-segment", ignore=shutil.ignore_patterns("holistic"))
    assert not list((out / "shipped-segment").glob("seed-*/holistic"))
    groups, shared = study.with_shared_holistic(study.collect(out))
    assert shared == {"shipped-segment"} and groups["shipped-segment"]["holistic"] is groups["shipped-batch"]["holistic"]
    text = study.write_summary(out)
    section = text.split("## shipped-segment")[1].split("## ")[0]
    assert "| shipped-segment | holistic (the batch runs: the same under `segment`) |" in section
    assert "Fine-grained minus holistic, held-out avg max toxicity, paired by seed [0, 1, 2, 3, 4]" in section
    # a group that trained its own holistic arm keeps it
    assert study.with_shared_holistic({"shipped-segment": {"holistic": {0: {}}}, "shipped-batch": {"holistic": {1: {}}}})[1] == set()
