"""The long-form QA experiment: the task's split and checks, the metrics on hand-computed cases, the
stage configs, and a smoke run of every stage of `finegrain demo qa` on tiny models made here (with
its resume), checking that no training stage reads a held-out question."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def qa_examples(n: int = 10):
    """QA examples with passages, a gold answer, annotated responses (relevance and factuality spans,
    corrections) and pairwise judgements."""
    from finegrain.data.records import Annotation, Example, Passage, Preference, Response, Span

    out = []
    for i in range(n):
        good = f"Basket {i} holds {i} apples."
        bad = f"Basket {i} holds {i + 7} apples. Also, the sky is blue today."
        spans = (Span(0, bad.index(" Also"), "Wrong-Grounding"), Span(bad.index("Also"), len(bad), "Irrelevant"))
        annotated = Response(bad, Annotation(spans=spans, corrected=good + " Apples are fruit."))
        out.append(Example(
            id=f"q{i}", prompt=f"How many apples are in basket {i}?",
            responses=(annotated, Response(good), Response(f"I do not know about basket {i}.")),
            passages=(Passage(f"Basket {i}", (f"Basket {i} holds {i} apples.", "Apples are fruit.")),),
            preferences=(Preference(0, 1, 2), Preference(1, 2, 1), Preference(0, 2, 0)),
            reference=good,
        ))
    return out


def write_qa(path: Path, n: int = 10) -> Path:
    from finegrain.data.jsonl import write_jsonl

    write_jsonl(path, qa_examples(n))
    return path


# --- the task -----------------------------------------------------------------------------------


def test_the_split_is_rm_splits_and_the_recipes(tmp_path):
    from finegrain.data.load import load_examples
    from finegrain.experiments.qa.task import split_qa, write_split
    from finegrain.kernel.data import hold_out
    from finegrain.rewards.rm_data import split_file

    data = write_qa(tmp_path / "qa.jsonl", 12)
    split = split_qa(data, heldout=3, seed=5)
    split_file(data, 9, 5, tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    assert {e.id for e in split.heldout} == {e.id for e in load_examples(tmp_path / "b.jsonl")}
    _, held = hold_out(load_examples(data), 3, 5, "data.eval_examples", str(data))  # a recipe's eval_examples
    assert [e.id for e in held] == [e.id for e in split.heldout]
    manifest = write_split(data, tmp_path / "split", heldout=3, seed=5)
    assert manifest["heldout_ids"] == [e.id for e in split.heldout]
    assert [e.prompt for e in load_examples(tmp_path / "split" / "train.jsonl")] == [e.prompt for e in split.train]
    from finegrain.config import ConfigError

    with pytest.raises(ConfigError, match="other settings"):
        write_split(data, tmp_path / "split", heldout=4, seed=5)


def test_bad_qa_files_fail_naming_file_record_and_field(tmp_path):
    from dataclasses import replace

    from finegrain.config import ConfigError
    from finegrain.data.jsonl import write_jsonl
    from finegrain.data.problems import DataError
    from finegrain.experiments.qa.task import load_qa, split_qa

    examples = qa_examples(4)
    examples[1] = replace(examples[1], passages=())
    examples[2] = replace(examples[2], reference=None)
    path = tmp_path / "bad.jsonl"
    write_jsonl(path, examples)
    with pytest.raises(DataError) as err:
        load_qa(path)
    text = str(err.value)
    assert f"{path} record 1 field passages" in text and f"{path} record 2 field reference" in text
    kept = load_qa(path, skip_incomplete=True)
    assert [e.id for e in kept.examples] == ["q0", "q3"] and len(kept.dropped) == 2
    # incomplete records leave their part of the split; the parts stay those of the whole file
    from finegrain.kernel.data import hold_out

    split = split_qa(path, heldout=2, seed=0, skip_incomplete=True)  # seed 0 holds out records 1 and 3
    train_all, held_all = hold_out([e.id for e in examples], 2, 0, "x", "x")
    assert [e.id for e in split.heldout] == [i for i in held_all if i in ("q0", "q3")] == ["q3"]
    assert [e.id for e in split.train] == [i for i in train_all if i in ("q0", "q3")] == ["q0"]
    with pytest.raises(ConfigError, match="every held-out record .* is incomplete"):
        split_qa(path, heldout=2, seed=1, skip_incomplete=True)  # seed 1 holds out records 1 and 2
    with pytest.raises(ConfigError, match="leaves no held-out question"):
        split_qa(write_qa(tmp_path / "ok.jsonl", 4), heldout=0)
    with pytest.raises(ConfigError, match="leave none to train on"):
        split_qa(tmp_path / "ok.jsonl", heldout=4)


def test_the_task_format_is_read(tmp_path):
    from finegrain.experiments.qa.task import load_qa

    records = [{"question": "When did it open?", "answer": ["It opened in 1889."],
                "passages": [{"wikipage": "Tower", "content": "Tower\n\nThe tower opened in 1889. It is tall."}]},
               {"question": "Who built it?", "answer": [], "passages": [{"wikipage": "Tower", "content": "Tower\n\nEiffel built it."}]}]
    path = tmp_path / "qa.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    data = load_qa(path, skip_incomplete=True)
    (e,) = data.examples
    assert e.passages[0].title == "Tower" and e.passages[0].sentences == ("The tower opened in 1889.", "It is tall.")
    assert e.reference == "It opened in 1889."
    assert str(data.dropped[0]).startswith(f"{path} record 1 field gold")


# --- metrics ---------------------------------------------------------------------------------


def test_repetition_support_and_win_rate_by_hand():
    from finegrain.experiments.qa.metrics import duplicate_sentences, repeated_ngram_share, supported_sentences, win_rate

    # "a b c a b c": 3-grams abc, bca, cab, abc -> one of four repeats an earlier one
    assert repeated_ngram_share("a b c a b c") == (1, 4)
    assert repeated_ngram_share("one two") == (0, 0)
    assert duplicate_sentences(["The tower is tall.", "Paris is big.", "the tower is TALL!"]) == 1
    passage = {"tower", "opened", "1889", "paris"}
    # content words: [tower, opened, 1889] all found; [tower, painted, red] one of three
    assert supported_sentences(["The tower opened in 1889.", "The tower is painted red.", "It is."], passage) == (1, 2)
    assert win_rate([1.0, 0.0, 0.5], [0.0, 1.0, 0.5]) == pytest.approx(0.5)


# --- configs -----------------------------------------------------------------------------------


def _yaml(name: str) -> dict:
    return yaml.safe_load((REPO / "configs" / "qa" / f"{name}.yaml").read_text(encoding="utf-8"))


def test_ppo_arms_differ_only_in_rewards_and_use_the_papers_mappings():
    fg, hol = _yaml("ppo_finegrained"), _yaml("ppo_holistic")
    strip = lambda c: {k: v for k, v in c.items() if k not in ("rewards", "run")} | {"run": {k: v for k, v in c["run"].items() if k != "out"}}
    assert strip(fg) == strip(hol)
    assert fg["ppo"]["reward_norm"] == "batch"
    by = {r["name"]: r for r in fg["rewards"]}
    assert (by["relevance"]["mapping"], by["relevance"]["reward_ok"], by["relevance"]["reward_error"]) == ("binary", 0.3, -0.3)
    assert (by["factuality"]["mapping"], by["factuality"]["reward_ok"], by["factuality"]["reward_error"]) == ("binary", 0.5, -0.5)
    assert (by["completeness"]["mapping"], by["completeness"]["scale"]) == ("standardize", 0.3)
    assert [(r["name"], r["mapping"]) for r in hol["rewards"]] == [("preference", "standardize")]
    weights = {}
    for preset in ("short", "medium", "long"):
        p = _yaml(f"preset_{preset}")
        assert strip(p) == strip(fg)
        weights[preset] = {r["name"]: r["weight"] for r in p["rewards"]}
        assert [{k: v for k, v in r.items() if k != "weight"} for r in p["rewards"]] == [{k: v for k, v in r.items() if k != "weight"} for r in fg["rewards"]]
    assert weights["medium"] == {r["name"]: r["weight"] for r in fg["rewards"]}
    assert weights["short"]["relevance"] > weights["medium"]["relevance"] > weights["long"]["relevance"]
    assert weights["short"]["completeness"] < weights["medium"]["completeness"] < weights["long"]["completeness"]


def test_qa_rm_configs_are_the_reward_model_defaults_at_cpu_scale():
    """The QA pipeline uses the configuration the reward-model study chose (configs/rm_*.yaml): its
    RM configs may differ from them only in input length and epochs (the CPU demo's scale)."""
    from dataclasses import asdict

    from finegrain.config import load_config
    from finegrain.rewards.rm_config import RMTrainConfig

    for role in ("relevance", "factuality", "completeness", "preference"):
        study = asdict(load_config(RMTrainConfig, REPO / "configs" / f"rm_{role}.yaml"))
        qa = asdict(load_config(RMTrainConfig, REPO / "configs" / "qa" / f"rm_{role}.yaml"))
        differ = {k for k in study if study[k] != qa[k]}
        assert differ <= {"max_length", "epochs"}, (role, {k: (study[k], qa[k]) for k in differ})


def test_every_stage_config_loads_and_reads_only_the_training_split():
    from finegrain.config import load_config
    from finegrain.experiments.qa.demo import PPO_RUNS, PREF_RUNS
    from finegrain.recipes.sft import SFTConfig
    from finegrain.rewards.rm_config import RMTrainConfig
    from finegrain.rl.config import TrainConfig

    folder = REPO / "configs" / "qa"
    assert load_config(SFTConfig, folder / "sft.yaml").data.feedback == "runs/qa/data/train.jsonl"
    for name in PPO_RUNS.values():
        assert load_config(TrainConfig, folder / f"{name}.yaml").data.prompts == "runs/qa/data/train.jsonl"
    for recipe, name in PREF_RUNS.values():
        from finegrain.recipes import RECIPES
        import importlib

        module, cls, _ = RECIPES[recipe]
        assert load_config(getattr(importlib.import_module(module), cls), folder / f"{name}.yaml").data.feedback == "runs/qa/data/train.jsonl"
    for role in ("relevance", "factuality", "completeness", "preference"):
        cfg = load_config(RMTrainConfig, folder / f"rm_{role}.yaml")
        assert cfg.category == role


# --- the demo on tiny models --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    import torch
    from transformers import BertConfig, BertModel

    from finegrain.models import load_tokenizer

    tok = load_tokenizer("minilm-l6", padding_side="right")
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("qa-bert")
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tiny_settings(bert: Path | None) -> list[str]:
    """Tiny stage settings; the RMs on `bert` (fine-tuned, without a tuned threshold), or with None the
    configs' own lexical RMs."""
    rm = [f"rm.backbone={bert}", "rm.max_length=128", "rm.epochs=1", "rm.bf16=false", "rm.threads=1", "rm.tune_threshold=false"] if bert else []
    return [
        "sft.run.steps=2", "sft.run.eval_every=2", "sft.data.eval_examples=2", "sft.prompt.max_prompt_tokens=96", "sft.prompt.max_response_tokens=12",
        "sft.optim.lr=1e-3", "sft.model.precision=fp32", *rm,
        "ppo.run.steps=2", "ppo.run.save_every=1", "ppo.data.max_prompt_tokens=96", "ppo.sampling.max_new_tokens=10", "ppo.sampling.samples_per_prompt=2",
        "ppo.ppo.prompts_per_step=2", "ppo.ppo.minibatch_size=4", "ppo.run.progress=false", "ppo.model.precision=fp32",
        "pref.run.steps=2", "pref.run.eval_every=2", "pref.data.eval_examples=2", "pref.prompt.max_prompt_tokens=96", "pref.prompt.max_response_tokens=12",
        "pref.model.precision=fp32",
    ]


def test_demo_qa_every_stage_resumes_and_never_trains_on_held_out_questions(tmp_path, tiny, one_thread, monkeypatch, capsys):
    """Every stage on a tiny policy and the configs' own (lexical) RMs; test_demo_qa_workers... runs fine-tuned ones."""
    import finegrain.data.load as load
    from finegrain.experiments.qa.demo import QADemoConfig, all_stages, run_demo
    from finegrain.experiments.qa.task import heldout_questions

    data = write_qa(tmp_path / "qa.jsonl", 10)
    base = dict(out=str(tmp_path / "demo"), data=str(data), heldout=2, policy=str(tiny), overrides=tiny_settings(None),
                eval_max_new_tokens=8, eval_max_prompt_tokens=96, threads=1)
    run_demo(QADemoConfig(**base, stages=["split"]))
    held = heldout_questions(tmp_path / "demo" / "data")
    assert len(held) == 2
    # 1. every training stage, with any read of a held-out question failing the test
    real = load.load_examples
    reads: list[str] = []

    def guarded(path, *args, **kwargs):
        examples = real(path, *args, **kwargs)
        leaked = [e.prompt for e in examples if e.prompt in held]
        assert not leaked, f"a training stage read held-out question(s) {leaked} from {path}"
        reads.append(str(path))
        return examples

    monkeypatch.setattr(load, "load_examples", guarded)
    training = [s for s in all_stages([0]) if s not in ("split", "rm-eval", "report") and not s.startswith("eval-")]
    run_demo(QADemoConfig(**base, stages=training))
    assert reads and all(Path(p).name == "train.jsonl" for p in reads)
    monkeypatch.setattr(load, "load_examples", real)
    # 2. evaluation and the report
    report = run_demo(QADemoConfig(**base))
    out = tmp_path / "demo"
    text = report.read_text(encoding="utf-8")
    for label in ("SFT", "Holistic PPO", "Fine-grained PPO (preset medium)", "DPO, span pairs", "SimPO, human pairs", "preset long"):
        assert label in text
    assert (out / "rewards.png").stat().st_size > 0 and (out / "presets.png").stat().st_size > 0
    sft = json.loads((out / "sft" / "eval" / "metrics.json").read_text())
    fg = json.loads((out / "ppo-finegrained" / "eval" / "metrics.json").read_text())
    assert sft["win_rate"] is None and 0.0 <= fg["win_rate"] <= 1.0
    for key in ("relevance_error_rate", "factuality_error_rate", "completeness", "rouge_l", "passage_support", "length_tokens"):
        assert fg[key] is not None
    assert set(json.loads((out / "rm" / "heldout.json").read_text())) == {"relevance", "factuality", "completeness", "preference"}
    assert json.loads((out / "rm" / "factuality" / "finegrain_rm.json").read_text())["backbone"] == "lexical"
    # 3. resume: a finished demo keeps every stage; a lost evaluation and an interrupted run are redone
    (out / "ppo-holistic" / "final").rename(out / "ppo-holistic" / "final-old")
    import shutil

    shutil.rmtree(out / "ppo-holistic" / "eval")
    capsys.readouterr()
    run_demo(QADemoConfig(**base))
    err = capsys.readouterr().err
    assert "sft: done earlier, kept" in err and "rm-preference: done earlier, kept" in err
    assert "ppo-holistic: done earlier" not in err and "eval-ppo-holistic: done earlier" not in err
    assert "eval-ppo-finegrained: done earlier, kept" in err
    assert (out / "ppo-holistic" / "final").is_dir() and (out / "ppo-holistic" / "eval" / "metrics.json").is_file()
    # 4. the same evaluation and report from the command line
    from finegrain.cli import main

    assert main(["eval", "--task", "qa", str(out / "ppo-finegrained" / "final"), "--prompts", str(out / "data" / "heldout.jsonl"),
                 "--rms", str(out / "rm"), "--baseline", str(out / "sft" / "eval"), "--max-new-tokens", "6", "--max-prompt-tokens", "96",
                 "--out", str(tmp_path / "cli-eval"), "--threads", "1"]) == 0
    assert json.loads((tmp_path / "cli-eval" / "metrics.json").read_text())["questions"] == 2
    assert main(["report", "--task", "qa", str(out / "sft"), str(out / "ppo-finegrained"), "--out", str(tmp_path / "rep"), "--rms", str(out / "rm")]) == 0
    assert "| sft | 1 |" in (tmp_path / "rep" / "report.md").read_text()


def test_every_units_inputs_come_before_it_in_the_sequential_order():
    from finegrain.experiments.qa.demo import QADemoConfig, Unit, needs, plan

    for seeds in ([0], [0, 1, 2]):
        units = plan(QADemoConfig(seeds=seeds))
        assert len(units) == len(set(units)) and units[-1] == Unit("report")
        for i, u in enumerate(units):
            for d in needs(u, seeds):
                assert d in units[:i], f"{u} needs {d}, which comes after it"
    assert set(needs(Unit("ppo-holistic", 0), [0])) == {Unit("sft"), Unit("rm-preference")}
    assert set(needs(Unit("preset-long", 1), [0, 1])) == {Unit("sft"), Unit("rm-relevance"), Unit("rm-factuality"), Unit("rm-completeness")}
    assert Unit("ppo-holistic", 1) in needs(Unit("eval-ppo-holistic", 1), [0, 1])
    assert Unit("eval-sft", 0) in needs(Unit("eval-ppo-holistic", 1), [0, 1])  # the win-rate baseline: the first seed's SFT answers
    assert [u for u in plan(QADemoConfig(seeds=[0, 1])) if u.stage == "eval-sft"] == [Unit("eval-sft", 0), Unit("eval-sft", 1)]
    assert Unit("dpo-span", 0) in plan(QADemoConfig(seeds=[0, 1], stages=["dpo-span"]))


def test_side_by_side_starts_first_what_more_stages_wait_on():
    """Among ready units, the one more units wait on (transitively) starts first; list order among equals.
    The SFT evaluation, every other evaluation's win-rate baseline, goes before the training runs."""
    from finegrain.experiments.parallel import Job, start_order
    from finegrain.experiments.qa.demo import QADemoConfig, needs, plan

    def job(key, *deps):
        return Job(key, key, Path("log"), print, needs=deps)

    jobs = [job("a"), job("b"), job("c", "b"), job("d", "c"), job("e", "a"), job("f", "outside")]
    assert [j.key for j in start_order(jobs)] == ["b", "a", "c", "d", "e", "f"]  # b: 2 wait on it; a, c: 1 each, in list order

    seeds = [0, 1]
    units = [u for u in plan(QADemoConfig(seeds=seeds)) if u.stage != "report"]
    order = [j.key for j in start_order([Job(u, u.stage, Path("log"), print, needs=tuple(needs(u, seeds))) for u in units])]
    first_eval = min(order.index(u) for u in units if u.stage == "eval-sft")
    assert order[:2] == [u for u in units if u.stage in ("split", "sft")][:2]
    assert all(first_eval < order.index(u) for u in units if u.stage in ("ppo-holistic", "dpo-human", "preset-long"))


def test_demo_qa_workers_run_stages_side_by_side_once_their_inputs_exist(tmp_path, tiny, tiny_bert):
    """--workers 2: each unit in its own process with its own log; timings kept by the main process; a
    failed unit is one error naming it and its log, and the same command goes on from there."""
    import shutil

    from finegrain.cli import main
    from finegrain.errors import StageFailed
    from finegrain.experiments.qa.demo import QADemoConfig, run_demo

    data = write_qa(tmp_path / "qa.jsonl", 8)
    out = tmp_path / "demo"
    stages = ["split", "sft", "rm-relevance", "rm-factuality", "rm-completeness", "rm-preference", "ppo-holistic", "eval-sft", "eval-ppo-holistic"]
    base = dict(out=str(out), data=str(data), heldout=2, policy=str(tiny), overrides=tiny_settings(tiny_bert), threads=1, workers=2, seeds=[0, 1])
    # a stage whose input is missing fails in its worker: one error, naming the stage and its log
    with pytest.raises(StageFailed, match=r"stage ppo-holistic \(seed (\d)\) failed: .*logs/ppo-holistic-seed-\1\.log"):
        run_demo(QADemoConfig(**base, stages=["ppo-holistic"]))
    assert "Traceback" in (out / "logs" / "ppo-holistic-seed-0.log").read_text()
    shutil.rmtree(out)
    argv = ["demo", "qa", "--out", str(out), "--data", str(data), "--heldout", "2", "--policy", str(tiny), "--threads", "1", "--workers", "2",
            "--seeds", "0", "1", *(x for s in stages for x in ("--stage", s)), *(x for o in tiny_settings(tiny_bert) for x in ("--set", o))]
    assert main(argv) == 0
    timings = json.loads((out / "timings.json").read_text())
    units = ["split", "sft", "rm-relevance", "rm-preference"] + [f"{s} (seed {x})" for s in ("eval-sft", "ppo-holistic", "eval-ppo-holistic") for x in (0, 1)]
    # the split runs in the main process (a fraction of a second, its data warnings on screen); the rest in workers
    assert set(units) <= set(timings["wall_s"]) and all(timings["cpu_s"][u] > 0 for u in units if u != "split")
    assert not (out / "logs" / "split.log").exists()
    for x in (0, 1):
        m = json.loads((out / f"seed-{x}" / "ppo-holistic" / "eval" / "metrics.json").read_text())
        assert 0.0 <= m["win_rate"] <= 1.0
        assert (out / "logs" / f"eval-ppo-holistic-seed-{x}.log").is_file()
    # the SFT policy is evaluated at each seed's sampling too (the first seed's answers: the win-rate baseline)
    sft = [json.loads((folder / "sft" / "eval" / "metrics.json").read_text()) for folder in (out, out / "seed-1")]
    assert [m["settings"]["seed"] for m in sft] == [0, 1]
    report = (out / "report.md").read_text()
    assert "Holistic PPO" in report and "| SFT | 2 |" in report
    # run again: everything kept, nothing started
    run_demo(QADemoConfig(**base, stages=stages))
    assert json.loads((out / "timings.json").read_text()) == timings


def test_an_rm_that_does_not_fit_its_role_fails_before_any_model_loads(tmp_path):
    from finegrain.config import ConfigError
    from finegrain.experiments.qa.task import check_reward_roles
    from finegrain.rewards.card import Calibration, RMCard
    from finegrain.rl.config import RewardConfig

    folder = tmp_path / "rm-factuality"
    folder.mkdir()
    RMCard(kind="span", name="factuality", level="sentence", categories=[], label_map={}, score="p_error", input_template="", passages=True,
           truncation="", marker=None, max_length=16, backbone="x", tokenizer="x", data={}, training={}, calibration=Calibration(0, 1, 0)).save(folder)
    rewards = [RewardConfig(kind="rm", name="relevance", path=str(folder), mapping="binary")]
    with pytest.raises(ConfigError) as err:
        check_reward_roles("configs/qa/ppo_finegrained.yaml", rewards)
    assert "configs/qa/ppo_finegrained.yaml rewards[0].path" in str(err.value) and "span RM 'factuality' at sentence level" in str(err.value)
    check_reward_roles("x.yaml", [RewardConfig(kind="rm", name="factuality", path=str(folder), mapping="binary")])


def test_qa_cli_errors_are_one_line_and_come_before_any_model(tmp_path, capsys):
    from dataclasses import replace

    from finegrain.cli import main
    from finegrain.data.jsonl import write_jsonl

    out = str(tmp_path / "d")
    assert main(["demo", "qa", "--out", out, "--set", "ppo.ppo.nope=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err and not Path(out).exists()
    assert main(["demo", "qa", "--out", out, "--set", "dpo.run.steps=1"]) == 2
    assert "GROUP one of sft, rm, ppo, pref" in capsys.readouterr().err
    assert main(["demo", "qa", "--out", out, "--stage", "ppo-sideways"]) == 2
    assert "'ppo-sideways' is not a stage" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [replace(e, reference=None) if e.id == "q1" else e for e in qa_examples(5)])  # record 3 is held out
    assert main(["demo", "qa", "--out", out, "--data", str(bad), "--heldout", "1", "--stage", "split"]) == 0  # the demo leaves q1 out...
    assert "record 1 field reference: a QA example needs a gold answer" in capsys.readouterr().err
    assert main(["demo", "qa", "--out", out + "-strict", "--data", str(bad), "--heldout", "1", "--stage", "split", "--strict"]) == 2
    assert f"{bad} record 1 field reference: a QA example needs a gold answer" in capsys.readouterr().err
    assert main(["eval", "--task", "qa", "some-policy", "--prompts", str(bad)]) == 2  # ...evaluation refuses it
    assert f"{bad} record 1 field reference" in capsys.readouterr().err
    assert main(["eval", "--task", "qa", "some-policy"]) == 2
    assert "--prompts: --task qa needs the held-out questions" in capsys.readouterr().err
    assert main(["demo", "detox", "--stage", "split"]) == 2
    assert "options of `finegrain demo qa`" in capsys.readouterr().err
    assert main(["demo", "qa", "--out", out + "-w", "--workers", "0"]) == 2
    assert "workers" in capsys.readouterr().err and not Path(out + "-w").exists()


def test_ppo_prompts_carry_the_passages_within_the_budget(tiny):
    from finegrain.config import load_config
    from finegrain.rl.config import TrainConfig
    from finegrain.rl.trainer import make_renderer

    cfg = load_config(TrainConfig, REPO / "configs" / "qa" / "ppo_finegrained.yaml")
    renderer = make_renderer(cfg, str(tiny))
    example = qa_examples(1)[0]
    rendered = renderer.render(example)
    assert "How many apples are in basket 0?" in rendered.text and "wikipage: Basket 0 text: Basket 0 holds 0 apples." in rendered.text
    assert rendered.tokens <= cfg.data.max_prompt_tokens == 128


def test_one_multitask_rm_judges_relevance_and_factuality(tmp_path, tiny_bert):
    """A multi-task RM in rm/relevance with a factuality head judges both roles (one model in memory);
    each role's figures are those of that head loaded alone, and a head that fits no role is refused."""
    from finegrain.config import ConfigError
    from finegrain.experiments.qa.metrics import _span_rate, load_judges
    from finegrain.experiments.qa.report import rm_heldout_metrics
    from finegrain.rewards.card import RMCard, load_reward_model
    from finegrain.rewards.rm_config import RMTrainConfig
    from finegrain.rewards.span_rm import train_span_rm

    rms = tmp_path / "rm"
    cfg = RMTrainConfig(kind="span", category="relevance", tasks=["relevance", "factuality"], backbone=str(tiny_bert), max_length=128,
                        epochs=1.0, batch_size=4, lr=1e-3, bf16=False, warmup_ratio=0.0, threads=1)
    train_span_rm(cfg, qa_examples(8), rms / "relevance", log=lambda s: None)
    judges = load_judges(rms, device="cpu")
    assert judges.relevance is not None and judges.factuality is not None and judges.completeness is None
    assert judges.factuality.models[0] is judges.relevance.models[0]
    assert (judges.cards["relevance"].level, judges.cards["factuality"].level) == ("subsentence", "sentence")
    held = qa_examples(10)[8:]
    texts = [e.responses[0].text for e in held]
    for role in ("relevance", "factuality"):
        alone = load_reward_model(rms / "relevance", device="cpu", bf16=False, head=role)
        assert _span_rate(getattr(judges, role), judges.cards[role], held, texts) == _span_rate(alone, alone.card, held, texts)
    write_qa(tmp_path / "held.jsonl", 10)
    assert set(rm_heldout_metrics(rms, tmp_path / "held.jsonl")) == {"relevance", "factuality"}
    # the same folder under the factuality role's name judges both too; under completeness it is refused
    (rms / "relevance").rename(rms / "completeness")
    with pytest.raises(ConfigError, match="--rms .*completeness.*is not a head of this multi-task RM"):
        load_judges(rms, device="cpu")
    assert RMCard.load(rms / "completeness").head_names == ["relevance", "factuality"]


def test_the_qa_report_pairs_fine_grained_and_holistic_by_seed(tmp_path):
    from finegrain.experiments.qa.metrics import QAMetrics
    from finegrain.experiments.qa.report import write_qa_report

    groups: dict[str, list[Path]] = {}
    for seed, (hol, fg) in enumerate([(0.20, 0.10), (0.25, 0.12), (0.22, 0.15)]):
        for name, rel in (("ppo-holistic", hol), ("ppo-finegrained", fg)):
            folder = tmp_path / f"seed-{seed}" / name
            (folder / "eval").mkdir(parents=True)
            (folder / "config.yaml").write_text(yaml.safe_dump({"run": {"seed": seed}}))
            metrics = QAMetrics(questions=5, relevance_error_rate=rel, rouge_l=0.2, length_tokens=40.0 + seed)
            (folder / "eval" / "metrics.json").write_text(json.dumps(metrics.to_json()))
            groups.setdefault(name, []).append(folder)
    labels = {"ppo-holistic": "Holistic PPO", "ppo-finegrained": "Fine-grained PPO"}
    text = write_qa_report(groups, tmp_path / "rep", labels).read_text()
    assert "Fine-grained PPO minus Holistic PPO, paired by seed" in text
    assert "| Rel. err. ↓ | 3 | -0.100 | [" in text and "| ROUGE-L ↑ | 3 | +0.000 | [+0.000, +0.000] | 0/3 | no (the interval holds 0) |" in text
    one = {k: v[:1] for k, v in groups.items()}  # one seed: nothing to pair
    assert "paired by seed" not in write_qa_report(one, tmp_path / "rep1", labels).read_text()
    # the same from the command line, runs grouped by --label
    from finegrain.cli import main

    folders = [str(f) for name in ("ppo-finegrained", "ppo-holistic") for f in groups[name]]
    names = [x for name in ("fg", "hol") for x in ("--label", name) * 3]
    assert main(["report", "--task", "qa", *folders, *names, "--paired", "fg", "hol", "--out", str(tmp_path / "cli")]) == 0
    assert "| Rel. err. ↓ | 3 | -0.100 | [" in (tmp_path / "cli" / "report.md").read_text()


def test_the_qa_report_compares_every_policy_with_sft_paired_by_sampling_seed(tmp_path):
    """SFT evaluated at seeds 0-2 (seed 0 in the SFT run's folder, with its config; 1-2 in folders that hold
    only an evaluation, whose sampling seed pairs them): each policy minus SFT, bold where the interval
    leaves out 0."""
    from finegrain.experiments.qa.metrics import QAMetrics
    from finegrain.experiments.qa.report import write_qa_report

    def evaluation(folder, rel, seed, config):
        (folder / "eval").mkdir(parents=True)
        if config:
            (folder / "config.yaml").write_text(yaml.safe_dump({"run": {"seed": seed}}))
        metrics = QAMetrics(questions=5, relevance_error_rate=rel, rouge_l=0.2)
        (folder / "eval" / "metrics.json").write_text(json.dumps({**metrics.to_json(), "settings": {"seed": seed}}))
        return folder

    groups = {"sft": [evaluation(tmp_path / "sft", 0.15, 0, True)] + [evaluation(tmp_path / f"seed-{s}" / "sft", 0.15 + s / 100, s, False) for s in (1, 2)]}
    for name, rels in (("ppo-holistic", (0.20, 0.25, 0.22)), ("ppo-finegrained", (0.10, 0.12, 0.15))):
        groups[name] = [evaluation(tmp_path / f"seed-{s}" / name, rel, s, True) for s, rel in enumerate(rels)]
    text = write_qa_report(groups, tmp_path / "rep", {"sft": "SFT"}).read_text()
    assert "| SFT | 3 | 0.160 ± 0.010 |" in text
    # holistic - SFT: +0.05, +0.09, +0.05: mean 0.063, t(2) interval +-0.057 -> leaves out 0; fine-grained: -0.05, -0.04, -0.02 -> holds 0
    assert "| ppo-holistic | 3 | **+0.063 [+0.006, +0.121]** |" in text
    assert "| ppo-finegrained | 3 | -0.037 [-0.075, +0.001] |" in text
    assert "| SFT | 3 | **" not in text and "minus SFT, paired by seed" in text
    one = {k: v[:1] for k, v in groups.items()}
    assert "minus SFT" not in write_qa_report(one, tmp_path / "rep1", {"sft": "SFT"}).read_text()


def test_a_one_seed_policy_is_compared_with_sft_question_by_question(tmp_path):
    """One seed: each policy minus SFT at that seed, paired by question, from the answers' own figures
    (relevance pooled over segments, as the evaluation pools it), with a bootstrap interval over questions."""
    from finegrain.experiments.qa.metrics import QAMetrics
    from finegrain.experiments.qa.report import write_qa_report

    def evaluation(folder, seed, answers):
        (folder / "eval").mkdir(parents=True)
        (folder / "config.yaml").write_text(yaml.safe_dump({"run": {"seed": seed}}))
        (folder / "eval" / "metrics.json").write_text(json.dumps({**QAMetrics(questions=3).to_json(), "settings": {"seed": seed}}))
        rows = [{"id": f"q{i}", "answer": "a", "relevance_flags": f, "tokens": t, "sentences": n} for i, (f, t, n) in enumerate(answers)]
        (folder / "eval" / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return folder

    sft = [([1, 1], 12, 2), ([0, 0], 20, 2), ([1], 40, 3)]  # 3 of 5 segments flagged
    ppo = [([0, 1], 10, 2), ([0], 18, 2), ([1, 1], 30, 3)]  # 3 of 5 too; 2, 2 and 10 tokens shorter
    groups = {"sft": [evaluation(tmp_path / "sft", 0, sft)], "ppo": [evaluation(tmp_path / "ppo", 0, ppo)],
              "other-seed": [evaluation(tmp_path / "other", 1, ppo)]}  # no SFT evaluation at seed 1: nothing to pair
    text = write_qa_report(groups, tmp_path / "rep", {"sft": "SFT"}).read_text()
    row = next(line for line in text.splitlines() if line.startswith("| ppo | 0 | 3 |"))
    rel, compl, tokens, sentences = (c.strip() for c in row.split("|")[4:8])
    assert rel.startswith("+0.000 [") and not rel.startswith("**")  # equal pooled rates; resampled, the sign goes both ways
    assert compl == "-"  # the answers carry no completeness score
    assert tokens.startswith("**-4.7 [") and tokens.endswith("]**")  # every question shorter: the interval leaves out 0
    assert sentences == "+0.00 [+0.00, +0.00]"
    assert "| other-seed |" not in text.split("paired by question")[1]
    # two seeds of each: the seed-paired table takes over and the question-paired one is left out
    groups = {"sft": groups["sft"] + [evaluation(tmp_path / "sft1", 1, sft)], "ppo": groups["ppo"] + [evaluation(tmp_path / "ppo1", 1, ppo)]}
    assert "paired by question" not in write_qa_report(groups, tmp_path / "rep2", {"sft": "SFT"}).read_text()


def test_answer_tokens_sets_one_answer_length_for_every_stage(tmp_path, capsys):
    from finegrain.cli import main
    from finegrain.experiments.qa.demo import QADemoConfig, ppo_stage_config, recipe_stage_config

    data = write_qa(tmp_path / "qa.jsonl", 6)
    out = tmp_path / "d"
    assert main(["demo", "qa", "--out", str(out), "--data", str(data), "--heldout", "2", "--answer-tokens", "7", "--stage", "split"]) == 0
    saved = json.loads((out / "demo.json").read_text())
    assert saved["eval_max_new_tokens"] == 7
    cfg = QADemoConfig(overrides=saved["overrides"])
    x = Path("x")
    assert ppo_stage_config("preset-long", train_file=x, policy=x, rm_dir=x, out=x, seed=0, overrides=cfg.group("ppo")).sampling.max_new_tokens == 7
    for recipe, file, group in (("sft", "sft", "sft"), ("dpo", "dpo_span", "pref"), ("simpo", "simpo_human", "pref")):
        stage = recipe_stage_config(recipe, file, train_file=x, policy=x, out=x, seed=0, overrides=cfg.group(group))
        assert stage.prompt.max_response_tokens == 7, file
    capsys.readouterr()
    assert main(["demo", "qa", "--out", str(tmp_path / "e"), "--answer-tokens", "0"]) == 2
    assert "--answer-tokens: 0" in capsys.readouterr().err
    assert main(["demo", "detox", "--out", str(tmp_path / "f"), "--answer-tokens", "9"]) == 2
    assert "--answer-tokens are options of `finegrain demo qa`" in capsys.readouterr().err


def test_the_qa_demo_runs_two_workers_by_default_where_two_cores_and_the_memory_allow(monkeypatch):
    import os

    import torch

    from finegrain.experiments import parallel

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 24 * 2**30 // 4096}
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert parallel.default_workers() == 2
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert parallel.default_workers() == 2  # at most two
    pages["SC_PHYS_PAGES"] = 12 * 2**30 // 4096  # memory for one worker only
    assert parallel.default_workers() == 1
    pages["SC_PHYS_PAGES"] = 24 * 2**30 // 4096
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert parallel.default_workers() == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU: its stages in turn
    assert parallel.default_workers() == 1
