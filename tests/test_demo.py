"""The detox task (prompt split, run settings), the report, and `finegrain demo detox` / `eval` /
`report` end to end on a tiny random policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from finegrain.cli import main
from finegrain.config import ConfigError, load_config
from finegrain.data.records import Example
from finegrain.experiments.detox.metrics import DetoxMetrics
from finegrain.rl.config import TrainConfig
from finegrain.experiments.detox.task import (
    SHARED,
    detox_config,
    detox_overrides,
    load_detox_split,
    nest,
    shipped_prompt_files,
    split_by_hash,
    toxicity_from_row,
)
from finegrain.evaluate import detectable_difference, paired_difference, paired_t_power, paired_table, seeds_needed
from finegrain.experiments.detox.report import at_kl, equal_kl_table, metrics_table, moving_average, plot_curves, summarize_run, write_report

REPO = Path(__file__).resolve().parent.parent


# --- the task -------------------------------------------------------------------------------


def test_split_by_hash_is_fixed_whatever_the_order():
    examples = [Example(id=str(i), prompt=f"prompt number {i}") for i in range(50)]
    train, held = split_by_hash(examples, 10)
    assert len(train) == 40 and len(held) == 10
    assert not {e.id for e in train} & {e.id for e in held}
    train2, held2 = split_by_hash(list(reversed(examples)), 10)
    assert {e.id for e in held2} == {e.id for e in held}
    # both parts keep the file's order
    assert [int(e.id) for e in held] == sorted(int(e.id) for e in held)
    with pytest.raises(ConfigError, match="leave none to train on"):
        split_by_hash(examples[:5], 5)


def test_the_shipped_prompt_set_is_split_without_overlap():
    split = load_detox_split()
    assert split.source == "shipped"
    assert len(split.train) >= 200 and len(split.heldout) >= 60
    train_text = {e.prompt for e in split.train}
    assert not train_text & {e.prompt for e in split.heldout}
    assert len(train_text) == len(split.train)  # no duplicate openings
    assert all(e.prompt.strip() and not e.prompt.endswith(" ") for e in split.train + split.heldout)


def test_load_detox_split_of_a_user_file(tmp_path):
    rtp = tmp_path / "rtp.jsonl"
    rtp.write_text("".join(json.dumps({"prompt": {"text": f"Opening {i} of"}}) + "\n" for i in range(30)))
    split = load_detox_split(rtp, heldout=7)
    assert (len(split.train), len(split.heldout), split.source) == (23, 7, str(rtp))
    with pytest.raises(ConfigError, match="does not exist"):
        load_detox_split(tmp_path / "missing.jsonl")


@pytest.mark.parametrize("mode,reward_mode", [("holistic", "holistic"), ("finegrained", "dense")])
def test_config_files_hold_the_demo_settings(mode, reward_mode):
    """configs/detox_*.yaml and the demo's settings must not drift apart."""
    from_file = load_config(TrainConfig, REPO / "configs" / f"detox_{mode}.yaml")
    prompts, _ = shipped_prompt_files()
    in_code = detox_config(mode, prompts="finegrain/assets/detox_prompts.jsonl", out=from_file.run.out,
                           steps=from_file.run.steps, seed=from_file.run.seed)
    assert from_file == in_code
    assert from_file.rewards[0].mode == reward_mode
    assert (REPO / from_file.data.prompts).resolve() == prompts.resolve()


def test_the_two_config_files_differ_only_in_the_reward_mode():
    hol = yaml.safe_load((REPO / "configs" / "detox_holistic.yaml").read_text())
    fg = yaml.safe_load((REPO / "configs" / "detox_finegrained.yaml").read_text())
    assert (hol["rewards"][0].pop("mode"), fg["rewards"][0].pop("mode")) == ("holistic", "dense")
    assert hol == fg


def test_the_two_runs_differ_only_in_the_reward_mode():
    a = detox_overrides("holistic", prompts="p.jsonl", out="o", steps=5, seed=1)
    b = detox_overrides("finegrained", prompts="p.jsonl", out="o", steps=5, seed=1)
    assert {k for k in a if a[k] != b[k]} == {"rewards"}
    assert [r["mode"] for r in a["rewards"] + b["rewards"]] == ["holistic", "dense"]
    assert nest({"a.b": 1, "a.c": 2, "d": 3}) == {"a": {"b": 1, "c": 2}, "d": 3}
    with pytest.raises(ConfigError, match="mode"):
        detox_overrides("dense", prompts="p", out="o", steps=1, seed=0)
    with pytest.raises(ConfigError, match="ppo.lr"):
        detox_config("holistic", prompts="p", out="o", steps=1, seed=0, overrides=["ppo.lr=-1"])


def test_toxicity_from_the_logged_reward():
    assert toxicity_from_row({"reward/toxicity": -0.25}) == pytest.approx(0.25)
    assert toxicity_from_row({"kl": 1.0}) is None


# --- the report -----------------------------------------------------------------------------


def _metrics(tox: float, ppl: float) -> DetoxMetrics:
    return DetoxMetrics(tox, tox / 2, tox / 3, ppl, 0.5, 0.8, 0.9, 30.0, 10, 4)


def _fake_run(folder: Path, mode: str, rewards: list[float], metrics: DetoxMetrics | None, seed: int = 0, kl_step: float = 0.1) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"rewards": [{"kind": "toxicity", "mode": mode, "weight": 1.0, "mapping": "identity"}],
                                                        "run": {"seed": seed}}))
    rows = [{"step": i + 1, "reward/toxicity": r, "kl": kl_step * i, "time/step": 2.0} for i, r in enumerate(rewards)]
    rows.insert(1, {"step": 1, "eval/reward": 0.5})  # an evaluation row: not a training step
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if metrics is not None:
        (folder / "eval").mkdir()
        (folder / "eval" / "metrics.json").write_text(json.dumps(metrics.to_json()))
    return folder


def test_summarize_run_reads_toxicity_and_kl_per_step(tmp_path):
    hol = summarize_run(_fake_run(tmp_path / "hol", "holistic", [-0.3, -0.2, -0.1], _metrics(0.2, 10.0)), "Holistic")
    assert hol.steps == [1, 2, 3] and hol.toxicity == pytest.approx([0.3, 0.2, 0.1])
    assert hol.kl == pytest.approx([0.0, 0.1, 0.2]) and hol.seconds == pytest.approx(6.0)
    fg = summarize_run(_fake_run(tmp_path / "fg", "dense", [-0.3, -0.1], None))
    assert fg.label == "fg" and fg.toxicity == pytest.approx([0.3, 0.1]) and fg.metrics is None
    with pytest.raises(FileNotFoundError):
        summarize_run(tmp_path / "nope")


def test_metrics_table_in_the_papers_form(tmp_path):
    hol = summarize_run(_fake_run(tmp_path / "hol", "holistic", [-0.3], _metrics(0.2, 10.0)), "Holistic")
    fg = summarize_run(_fake_run(tmp_path / "fg", "dense", [-0.3], None), "FG")
    table = metrics_table([hol, fg]).splitlines()
    assert table[0].startswith("| Policy | Avg. max toxicity ↓ | Toxic prob. ↓ | Perplexity ↓ | dist-2 ↑ | dist-3 ↑")
    assert table[2].startswith("| Holistic | 0.200 | 0.100 | 10.00 | 0.800 | 0.900 |")
    assert len(table) == 3  # FG has no evaluation yet


def test_moving_average():
    assert moving_average([1.0, 3.0, 5.0, float("nan"), 7.0], 2) == pytest.approx([1.0, 2.0, 4.0, 5.0, 7.0])


def test_toxicity_at_equal_kl_by_hand():
    kl = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    tox = [0.6, 0.6, 0.3, 0.3, 0.0, 0.0]
    # trailing 2-step means from index 1 (full windows): KL 0.5, 1.5, 2.5, 3.5, 4.5; toxicity 0.6, 0.45, 0.3, 0.15, 0.0
    assert at_kl(tox, kl, 1.0, window=2) == (2, pytest.approx(0.45))
    assert at_kl(tox, kl, 2.0, window=2) == (3, pytest.approx(0.3))
    assert at_kl(tox, kl, 0.1, window=2) == (1, pytest.approx(0.6))  # not index 0: its window is not full
    assert at_kl(tox, kl, 9.0, window=2) is None
    steps = list(range(1, 21))
    slow = (steps, [0.5] * 20, [0.2 * i for i in range(20)])  # 10-step mean KL 0.9 at step 10, 1.1 at step 11; at most 2.9
    fast = (steps, [0.2] * 20, [0.4 * i for i in range(20)])  # 1.8 at step 10; 5.0 first at step 18
    rows = equal_kl_table("FG", "Hol", {"FG": {0: fast}, "Hol": {0: slow}}, levels=(1.0, 5.0, 9.0)).splitlines()
    assert rows[0] == "| KL (nats) | FG | Hol | FG minus Hol, paired |"
    assert rows[2] == "| 1 | 0.200 (1/1 seeds, step 10) | 0.500 (1/1 seeds, step 11) | -0.300 (1 seed) |"
    assert rows[3] == "| 5 | 0.200 (1/1 seeds, step 18) | not reached (0/1 seeds) | - |"
    assert len(rows) == 4  # KL 9: neither run got there, no row
    two = equal_kl_table("FG", "Hol", {"FG": {0: fast, 1: fast}, "Hol": {0: slow, 1: (steps, [0.3] * 20, slow[2])}}, levels=(1.0,))
    assert "| 1 | 0.200 ± 0.000 (2/2 seeds, step 10) | 0.400 ± 0.141 (2/2 seeds, step 11) | -0.200 [" in two
    assert equal_kl_table("FG", "Hol", {"FG": {0: fast}, "Hol": {1: slow}}) == ""  # no seed in common


def test_write_report_and_plot(tmp_path):
    runs = [
        summarize_run(_fake_run(tmp_path / "initial", "holistic", [], _metrics(0.3, 9.0)), "Initial policy"),
        summarize_run(_fake_run(tmp_path / "hol", "holistic", [-0.3, -0.2, -0.1] * 5, _metrics(0.2, 10.0)), "Holistic"),
        summarize_run(_fake_run(tmp_path / "fg", "dense", [-0.3, -0.1] * 7, _metrics(0.1, 11.0)), "Fine-grained"),
    ]
    path = write_report(runs, tmp_path / "report", title="T", settings={"steps": 15}, commands=["finegrain demo detox"])
    text = path.read_text()
    for needle in ("# T", "| Initial policy | 0.300", "| Fine-grained | 0.100", "![toxicity and KL against steps](curves.png)",
                   "- steps: `15`", "finegrain demo detox", "| Holistic | 15 |"):
        assert needle in text, needle
    png = (tmp_path / "report" / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert plot_curves(runs[:1], tmp_path / "none.png") is None  # no training log: no plot


def test_a_single_seed_report_compares_the_arms_at_equal_kl(tmp_path):
    """`make demo` runs one seed: its report still reads both arms at equal KL, without an interval."""
    runs = [summarize_run(_fake_run(tmp_path / "hol", "holistic", [-0.3] * 12, _metrics(0.2, 10.0), kl_step=0.1), "Holistic"),
            summarize_run(_fake_run(tmp_path / "fg", "dense", [-0.2] * 12, _metrics(0.1, 11.0), kl_step=0.2), "Fine-grained")]
    text = write_report(runs, tmp_path / "report", paired=("Fine-grained", "Holistic")).read_text()
    assert "Training toxicity at equal KL" in text and "(one seed: no interval" in text
    assert "| 1 | 0.200 (1/1 seeds, step 11) | not reached (0/1 seeds) | - |" in text
    assert "at equal KL" not in write_report(runs, tmp_path / "r2").read_text()  # no pair named: no table


def test_paired_difference_by_hand():
    # differences 1, 2, 3: mean 2, sample std 1, t(0.975, 2 df) = 4.302653 -> half width 4.302653 / sqrt(3)
    d = paired_difference([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert (d.n, d.a_lower) == (3, 0) and d.mean == pytest.approx(2.0)
    assert (d.low, d.high) == (pytest.approx(2 - 2.484138, abs=1e-6), pytest.approx(2 + 2.484138, abs=1e-6))
    assert d.within_noise
    clear = paired_difference([0.1, 0.2, 0.3], [1.1, 1.3, 1.2])  # -1.0, -1.1, -0.9: std 0.1
    assert clear.a_lower == 3 and clear.high == pytest.approx(-1.0 + 0.2484138, abs=1e-6) and not clear.within_noise
    with pytest.raises(ValueError, match="equal length"):
        paired_difference([1.0], [2.0])
    with pytest.raises(ValueError, match="equal length"):
        paired_difference([1.0, 2.0], [2.0])
    assert d.sd == pytest.approx(1.0) and clear.sd == pytest.approx(0.1)


def test_power_of_the_paired_t_test_against_the_textbook():
    # Cohen's d_z = 1 needs 10 pairs (power 0.803) and d_z = 0.5 needs 34 (0.808), two-sided at 5%
    # (the values G*Power gives for a paired t test)
    assert paired_t_power(1.0, 1.0, 10) == pytest.approx(0.8031, abs=1e-4)
    assert paired_t_power(0.5, 1.0, 34) == pytest.approx(0.8078, abs=1e-4)
    assert seeds_needed(1.0, 1.0) == 10 and seeds_needed(0.05, 0.1) == 34 and seeds_needed(-0.05, 0.1) == 34
    assert seeds_needed(0.001, 1.0, most=50) is None
    # no true difference: the test's own false-positive rate
    assert paired_t_power(0.0, 1.0, 5) == pytest.approx(0.05, abs=1e-9)
    # the detectable difference is where the power reaches 80%, and it shrinks with more seeds
    e5 = detectable_difference(0.027, 5)
    assert paired_t_power(e5, 0.027, 5) == pytest.approx(0.8, abs=1e-6)
    assert detectable_difference(0.027, 10) < e5 and detectable_difference(0.0, 5) == 0.0
    assert paired_difference([0.1, 0.2, 0.3], [1.1, 1.3, 1.2]).detectable() == pytest.approx(detectable_difference(0.1, 3))
    with pytest.raises(ValueError, match="n >= 2"):
        paired_t_power(1.0, 1.0, 1)
    # two seeds: scipy's noncentral t returns NaN at some shifts with one degree of freedom; the power
    # stays finite and rising, and the detectable difference is found (a two-seed study's summary needs it)
    powers = [paired_t_power(e, 0.02, 2) for e in (0.05, 0.1, 0.1684, 0.3, 1.0)]
    assert all(0.05 < p <= 1.0 for p in powers) and powers == sorted(powers)
    e2 = detectable_difference(0.02, 2)
    assert paired_t_power(e2, 0.02, 2) == pytest.approx(0.8, abs=1e-6) and e2 > detectable_difference(0.02, 3)


def test_paired_table_pairs_by_seed_and_skips_the_unpaired():
    cols = [("tox", "Tox ↓", "{:.3f}"), ("ppl", "PPL ↓", "{:.2f}"), ("none", "Missing", "{:.1f}")]
    a = {0: {"tox": 0.1, "ppl": 10.0}, 1: {"tox": 0.2, "ppl": 11.0}, 2: {"tox": 0.3, "ppl": 12.0}, 7: {"tox": 9.0, "ppl": 9.0}}
    b = {0: {"tox": 1.1, "ppl": 10.0}, 1: {"tox": 1.3, "ppl": 12.0}, 2: {"tox": 1.2, "ppl": 11.0}}
    rows = paired_table("FG", "Hol", a, b, cols).splitlines()
    assert rows[0].startswith("| FG minus Hol | Seeds |") and len(rows) == 4  # no row for a metric neither has
    # seed 7 has no pair; differences -1.0, -1.1, -0.9: sd 0.1, detectable with 80% power over 3 pairs: 0.326
    assert rows[2] == "| Tox ↓ | 3 | -1.000 | [-1.248, -0.752] | 3/3 | yes | 0.326 |"
    assert rows[3].startswith("| PPL ↓ | 3 | +0.00 | [") and "| 1/3 | no (the interval holds 0) |" in rows[3]
    assert paired_table("FG", "Hol", {0: a[0]}, b, cols) == ""  # one seed pairs up: no table


def test_the_report_over_seeds_pairs_the_arms_by_seed(tmp_path):
    groups: dict[str, list] = {}
    for seed, (h, f) in enumerate([(0.20, 0.10), (0.25, 0.12), (0.22, 0.15)]):
        for label, tox in (("Holistic", h), ("Fine-grained", f)):
            folder = _fake_run(tmp_path / f"s{seed}" / label, "dense", [-0.3, -0.2], _metrics(tox, 10.0 + seed), seed=seed)
            groups.setdefault(label, []).append(summarize_run(folder, f"{label} (seed {seed})"))
    assert [r.seed for r in groups["Holistic"]] == [0, 1, 2]
    runs = [r for g in groups.values() for r in g]
    text = write_report(runs, tmp_path / "report", groups=groups, paired=("Fine-grained", "Holistic")).read_text()
    assert "Fine-grained minus Holistic, paired by seed" in text
    assert "| Avg. max toxicity ↓ | 3 | -0.100 | [" in text and "| 3/3 | yes |" in text
    # one arm without an evaluation for a seed: only the seeds both have pair up
    assert "paired by seed" not in write_report(runs, tmp_path / "r2", groups={"Holistic": groups["Holistic"][:1],
                                                                               "Fine-grained": groups["Fine-grained"]},
                                                paired=("Fine-grained", "Holistic")).read_text()
    assert "at equal KL" not in text  # two steps each: no run has a full 10-step window
    for seed in range(3):  # 12 steps; fine-grained's KL grows twice as fast (10-step mean 1.1 at step 11)
        for label, kl_step, tox in (("Holistic", 0.1, 0.3), ("Fine-grained", 0.2, 0.2 + 0.01 * seed)):
            folder = _fake_run(tmp_path / "long" / f"s{seed}" / label, "dense", [-tox] * 12, _metrics(0.1, 10.0), seed=seed, kl_step=kl_step)
            groups[label][seed] = summarize_run(folder, f"{label} (seed {seed})")
    text = write_report(runs, tmp_path / "report", groups=groups, paired=("Fine-grained", "Holistic")).read_text()
    assert "Training toxicity at equal KL" in text and "| KL (nats) | Fine-grained | Holistic | Fine-grained minus Holistic, paired |" in text
    assert "| 1 | 0.210 ± 0.010 (3/3 seeds, step 11) | not reached (0/3 seeds) | - |" in text  # holistic: mean KL at most 0.65


def test_the_report_command_pairs_two_labels_by_seed(tmp_path, capsys):
    from finegrain.cli import main

    args, labels = [], []
    for seed, (h, f) in enumerate([(0.20, 0.10), (0.25, 0.12), (0.22, 0.15)]):
        for label, tox in (("hol", h), ("fg", f)):
            args.append(str(_fake_run(tmp_path / f"s{seed}" / label, "dense", [-0.3], _metrics(tox, 10.0), seed=seed)))
            labels += ["--label", label]
    assert main(["report", *args, *labels, "--paired", "fg", "hol", "--out", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "fg minus hol, paired by seed" in text and "| Avg. max toxicity ↓ | 3 | -0.100 | [" in text
    assert main(["report", *args, *labels, "--paired", "fg", "nope", "--out", str(tmp_path / "rep2")]) == 2
    assert "--paired: 'nope' is none of the runs' labels (fg, hol)" in capsys.readouterr().err


# --- end to end on a tiny model ---------------------------------------------------------------


# `tiny` (a tiny random policy) and `one_thread` come from conftest.py


TINY_TRAINING = [
    "model.precision=fp32", "sampling.max_new_tokens=8", "ppo.prompts_per_step=2", "ppo.minibatch_size=4",
    "ppo.epochs=1", "ppo.lr=1e-3", "run.progress=false", "run.threads=1",
]


@pytest.mark.embedded
def test_demo_end_to_end_on_a_tiny_model(tiny, tmp_path, one_thread, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--policy", str(tiny), "--steps", "2", "--eval-prompts", "3",
            "--eval-samples", "2", "detox", *TINY_TRAINING[:-1], "--set", TINY_TRAINING[-1]]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "[demo " in err and "Initial policy: avg max toxicity" in err and "Fine-grained RLHF: training 2 PPO steps" in err
    report = (out / "report.md").read_text()
    assert "| Judge: avg. max toxicity ↓ |" in report  # the independent judge's columns beside the reward's
    for label in ("Initial policy", "Holistic RLHF", "Fine-grained RLHF"):
        assert f"| {label} | " in report
        folder = out / {"Initial policy": "initial", "Holistic RLHF": "holistic", "Fine-grained RLHF": "finegrained"}[label]
        metrics = json.loads((folder / "eval" / "metrics.json").read_text())
        assert (metrics["prompts"], metrics["samples_per_prompt"]) == (3, 2)
        assert len((folder / "eval" / "samples.jsonl").read_text().splitlines()) == 6
    for mode, reward_mode in (("holistic", "holistic"), ("finegrained", "dense")):
        cfg = yaml.safe_load((out / mode / "config.yaml").read_text())
        assert cfg["rewards"][0]["mode"] == reward_mode and cfg["run"]["steps"] == 2 and cfg["run"]["seed"] == 0
        assert len([l for l in (out / mode / "metrics.jsonl").read_text().splitlines() if '"kl"' in l]) == 2
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # both runs see the same held-out prompts with the same sampling seed
    prompts = {m: [json.loads(l)["prompt_id"] for l in (out / m / "eval" / "samples.jsonl").read_text().splitlines()]
               for m in ("initial", "holistic", "finegrained")}
    assert prompts["initial"] == prompts["holistic"] == prompts["finegrained"]

    # run again: every phase is kept, nothing is retrained
    before = (out / "holistic" / "metrics.jsonl").stat().st_mtime_ns
    assert main(args) == 0
    assert "already trained and evaluated" in capsys.readouterr().err
    assert (out / "holistic" / "metrics.jsonl").stat().st_mtime_ns == before
    # other settings in the same folder: refused, naming what differs
    assert main([*args, "--set", "ppo.lr=2e-3"]) == 2
    assert "overrides differ" in capsys.readouterr().err

    # `finegrain eval` and `finegrain report` on the demo's folders
    assert main(["eval", str(out / "finegrained" / "final"), "--reference", str(tiny), "--max-prompts", "2", "-k", "2",
                 "--max-new-tokens", "6", "--json", "--out", str(tmp_path / "ev")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["prompts"], printed["samples_per_prompt"]) == (2, 2)
    assert (tmp_path / "ev" / "metrics.json").is_file()
    assert main(["report", str(out / "initial"), str(out / "finegrained"), "--out", str(tmp_path / "rep")]) == 0
    assert "| finegrained | " in (tmp_path / "rep" / "report.md").read_text()


@pytest.mark.embedded
def test_demo_over_several_seeds_reports_mean_and_spread(tiny, tmp_path, one_thread, capsys):
    out = tmp_path / "demo"
    args = ["demo", "detox", *TINY_TRAINING[:-1], "--out", str(out), "--policy", str(tiny), "--steps", "1", "--eval-prompts", "2",
            "--eval-samples", "2", "--seeds", "3", "4", "--judge", "none", "--set", TINY_TRAINING[-1], "--set", "ppo.reward_norm=segment"]
    assert main(args) == 0
    report = (out / "report.md").read_text()
    for seed in (3, 4):
        for mode in ("holistic", "finegrained"):
            cfg = yaml.safe_load((out / f"seed-{seed}" / mode / "config.yaml").read_text())
            assert cfg["run"]["seed"] == seed and cfg["ppo"]["reward_norm"] == "segment"
        assert f"| Fine-grained RLHF (seed {seed}) | " in report
    assert "Mean ± standard deviation over seeds" in report and "| Holistic RLHF | 2 | " in report
    assert " ± " in report.split("Each run:")[0]
    assert "- reward normalisation (both runs): `segment`" in report
    assert "Judge:" not in report  # --judge none


@pytest.mark.embedded
def test_demo_workers_run_both_arms_side_by_side_and_resume_an_interrupted_run(tiny, tmp_path, capsys):
    import shutil

    out = tmp_path / "demo"
    args = ["demo", "detox", *TINY_TRAINING[:-1], "run.save_every=1", "--out", str(out), "--policy", str(tiny), "--steps", "2",
            "--eval-prompts", "2", "--eval-samples", "2", "--judge", "none", "--workers", "2", "--set", TINY_TRAINING[-1]]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "train holistic: started" in err and "train finegrained: started" in err and "2 running" in err
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings) == {"evaluate initial", "train holistic", "evaluate holistic", "train finegrained", "evaluate finegrained"}
    for phase in ("train-holistic", "evaluate-finegrained"):
        assert (out / "logs" / f"{phase}.log").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "| Holistic RLHF | " in report and "| Fine-grained RLHF | " in report
    # an interrupted run (no final policy, no evaluation) goes on from its last checkpoint
    shutil.rmtree(out / "holistic" / "final")
    shutil.rmtree(out / "holistic" / "eval")
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "Fine-grained RLHF: already trained and evaluated" in err and "train finegrained: started" not in err
    assert "from its last checkpoint" in (out / "logs" / "train-holistic.log").read_text()
    assert (out / "holistic" / "eval" / "metrics.json").is_file()


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", "smollm2-135m", "--prompts", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl does not exist" in capsys.readouterr().err
    assert main(["eval", "smollm2-135m", "--top-p", "1.5"]) == 2
    assert "--top-p" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "nothing to report" in capsys.readouterr().err
    assert main(["report", "--task", "qa", str(tmp_path), "--out", str(tmp_path / "r")]) == 2  # the QA report too
    assert "nothing to report" in capsys.readouterr().err and not (tmp_path / "r").exists()
    # a run's folder instead of its policy: named, with where the policy is, before anything loads
    (tmp_path / "run" / "final").mkdir(parents=True)
    (tmp_path / "run" / "final" / "config.json").write_text("{}")
    assert main(["eval", str(tmp_path / "run"), "--out", str(tmp_path / "e")]) == 2
    assert f"policy: {tmp_path / 'run'} holds no model (no config.json) (a run's folder: its policy is in {tmp_path / 'run' / 'final'})" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nowhere"), "--out", str(tmp_path / "e")]) == 2
    assert f"policy: {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    assert main(["eval", "smollm2-135m", "--reference", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    assert f"--reference: {tmp_path} holds no model" in capsys.readouterr().err
    assert main(["models", "generate", "--model", str(tmp_path / "run"), "hi"]) == 2  # every loader of a policy
    assert f"--model: {tmp_path / 'run'} holds no model" in capsys.readouterr().err
    assert main(["demo", "detox", "--out", str(tmp_path / "d"), "--steps", "0"]) == 2
    assert "steps" in capsys.readouterr().err
    assert main(["demo", "detox", "--out", str(tmp_path / "d"), "--set", "ppo.nope=1"]) == 2
    assert "unknown config key ppo.nope" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "d"), "detox", "ppo.lr"]) == 2
    assert "'ppo.lr' is not a key.sub=value setting" in capsys.readouterr().err
    assert main(["demo", "detax"]) == 2
    assert "'detax' is not a demo" in capsys.readouterr().err
