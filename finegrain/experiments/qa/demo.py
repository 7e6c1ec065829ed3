"""`finegrain demo qa`: the paper's long-form QA experiment, every stage in order, on the embedded models.

Stages (each the config of the same name under configs/qa/, runnable on its own):
  split                the fixed split of the QA file (task.py): data/train.jsonl, data/heldout.jsonl
  sft                  SFT of the initial policy on the training questions' gold answers
  rm-<role>            the relevance, factuality, completeness and preference RMs on the training split
  ppo-finegrained      PPO from the SFT policy on the three fine-grained RMs (the paper's mappings)
  ppo-holistic         the same on the standardised preference RM, on the last token
  dpo-/simpo-human|span  DPO and SimPO from the SFT policy on human pairs and on span pairs
  preset-short|long    the fine-grained run re-weighted (preset "medium" is the fine-grained run itself)
  eval-<policy>        answers to the held-out questions, judged (metrics.py); rm-eval: the RMs' held-out metrics
  report               report.md and the plots (report.py)
A stage whose output exists is kept: run the same command again after an interruption and it goes on
from the first unfinished stage (a PPO/SFT/DPO run resumes from its last checkpoint). `--fresh` starts over.
With several seeds, every run from PPO on is trained once per seed, in OUT/seed-S/.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finegrain.config import ConfigBase, ConfigError, check_range

if TYPE_CHECKING:
    import argparse

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "configs" / "qa"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "qa_feedback" / "feedback.json"
RM_ROLES = ("relevance", "factuality", "completeness", "preference")
PPO_RUNS = {"ppo-finegrained": "ppo_finegrained", "ppo-holistic": "ppo_holistic", "preset-short": "preset_short", "preset-long": "preset_long"}
PREF_RUNS = {"dpo-human": ("dpo", "dpo_human"), "dpo-span": ("dpo", "dpo_span"), "simpo-human": ("simpo", "simpo_human"), "simpo-span": ("simpo", "simpo_span")}
LABELS = {
    "sft": "SFT", "ppo-holistic": "Holistic PPO (preference RM)", "ppo-finegrained": "Fine-grained PPO (preset medium)",
    "dpo-human": "DPO, human pairs", "dpo-span": "DPO, span pairs", "simpo-human": "SimPO, human pairs", "simpo-span": "SimPO, span pairs",
    "preset-short": "Fine-grained PPO, preset short", "preset-long": "Fine-grained PPO, preset long",
}
GROUPS = ("sft", "rm", "ppo", "pref")  # --set GROUP.key=value goes to every config of the group


@dataclass
class QADemoConfig(ConfigBase):
    out: str = field(default="runs/demo-qa", metadata={"help": "output folder: data/, rm/, one folder per policy, report.md, plots"})
    data: str | None = field(default=None, metadata={"help": "QA file (QA-Feedback .json, the task's qa.json or finegrain .jsonl); default ../shared/data/qa_feedback/feedback.json"})
    heldout: int = field(default=60, metadata={"help": "held-out questions (the fixed split, task.py)"})
    split_seed: int = field(default=0, metadata={"help": "seed of the split (not of the runs)"})
    skip_incomplete: bool = field(default=True, metadata={"help": "leave out (and list) examples without passages or gold answer, instead of failing"})
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "seeds of the runs from PPO on; several: OUT/seed-S each, mean ± std in the report"})
    policy: str = field(default="smollm2-135m", metadata={"help": "initial policy (SFT starts from it)"})
    stages: list[str] = field(default_factory=list, metadata={"help": "run only these stages (and nothing after); default all"})
    overrides: list[str] = field(default_factory=list, metadata={"help": "GROUP.key=value for every config of a group: sft, rm, ppo, pref"})
    eval_max_new_tokens: int = field(default=48, metadata={"help": "answer length in evaluation (tokens)"})
    eval_max_prompt_tokens: int = field(default=128, metadata={"help": "prompt token budget in evaluation (as training's data.max_prompt_tokens)"})
    eval_questions: int | None = field(default=None, metadata={"help": "evaluate on only the first N held-out questions"})
    threads: int | None = field(default=None, metadata={"help": "CPU threads (default: torch's; 1 is faster on a crowded machine); with workers: per worker"})
    workers: int = field(default=1, metadata={"help": "stages run at once, each in its own process, once their inputs exist (e.g. both PPO arms, the four RMs)"})

    def __post_init__(self) -> None:
        check_range(self, "heldout", 1)
        check_range(self, "workers", 1)
        check_range(self, "eval_max_new_tokens", 1)
        check_range(self, "eval_max_prompt_tokens", 1)
        if self.eval_questions is not None:
            check_range(self, "eval_questions", 1)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds: {self.seeds} must name at least one seed, each once")
        for i, s in enumerate(self.stages):
            if s not in all_stages(self.seeds):
                raise ConfigError(f"stages[{i}]: {s!r} is not a stage; choose from {', '.join(all_stages(self.seeds))}")
        for i, o in enumerate(self.overrides):
            if "=" not in o or o.split(".", 1)[0] not in GROUPS:
                raise ConfigError(f"overrides[{i}]: {o!r} is not GROUP.key=value with GROUP one of {', '.join(GROUPS)}")

    def group(self, name: str) -> list[str]:
        return [o.split(".", 1)[1] for o in self.overrides if o.split(".", 1)[0] == name]

    def seed_folder(self, out: Path, seed: int) -> Path:
        return out if len(self.seeds) == 1 else out / f"seed-{seed}"


def policy_runs() -> list[str]:
    """The trained policies of one seed, in the report's order."""
    return ["ppo-holistic", "ppo-finegrained", "dpo-human", "dpo-span", "simpo-human", "simpo-span", "preset-short", "preset-long"]


def all_stages(seeds: list[int]) -> list[str]:
    out = ["split", "sft", *(f"rm-{r}" for r in RM_ROLES)]
    for _ in seeds[:1]:
        out += policy_runs()
    out += ["eval-sft", *(f"eval-{p}" for p in policy_runs()), "rm-eval", "report"]
    return out


def config_file(name: str) -> Path:
    path = CONFIGS / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: `finegrain demo qa` reads the stage configs of the repository's configs/qa/")
    return path


def _json_settings(values: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]  # JSON is YAML: parsed like a command-line override


def ppo_stage_config(name: str, *, train_file: Path, policy: Path, rm_dir: Path, out: Path, seed: int, overrides: list[str],
                     threads: int | None = None):
    """A PPO stage's TrainConfig: configs/qa/<name>.yaml with this demo's paths, then `overrides`."""
    import yaml

    from finegrain.config import load_config
    from finegrain.rl.config import TrainConfig

    path = config_file(PPO_RUNS[name])
    rewards = yaml.safe_load(path.read_text(encoding="utf-8"))["rewards"]
    for r in rewards:
        r["path"] = str(rm_dir / r["name"])
    settings = {"model.policy": str(policy), "data.prompts": str(train_file), "run.out": str(out), "run.seed": seed, "rewards": rewards}
    if threads:
        settings["run.threads"] = threads
    return load_config(TrainConfig, path, [*_json_settings(settings), *overrides])


def recipe_stage_config(recipe: str, name: str, *, train_file: Path, policy: str | Path, out: Path, seed: int, overrides: list[str],
                        threads: int | None = None):
    """An SFT/DPO/SimPO stage's config: configs/qa/<name>.yaml with this demo's paths, then `overrides`."""
    import importlib

    from finegrain.config import load_config
    from finegrain.recipes import RECIPES

    module_name, class_name, _ = RECIPES[recipe]
    settings = {"model.policy": str(policy), "data.feedback": str(train_file), "run.out": str(out), "run.seed": seed}
    if threads:
        settings["run.threads"] = threads
    return load_config(getattr(importlib.import_module(module_name), class_name), config_file(name), [*_json_settings(settings), *overrides])


def rm_stage_config(role: str, overrides: list[str]):
    from finegrain.config import load_config
    from finegrain.rewards.rm_config import RMTrainConfig

    return load_config(RMTrainConfig, config_file(f"rm_{role}"), overrides)


def prepare_out(cfg: QADemoConfig, fresh: bool) -> Path:
    """Create the output folder; refuse to mix two different demos' results in one folder."""
    from finegrain.io import atomic_write_json

    out = Path(cfg.out)
    if fresh and out.exists():
        shutil.rmtree(out)
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("stages", "threads", "workers")}
    path = out / "demo.json"
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != settings:
            changed = sorted(k for k in settings if old.get(k) != settings[k])
            raise ConfigError(f"{out} holds a QA demo with other settings ({', '.join(changed)} differ); pass --fresh to start over, or choose another --out")
    atomic_write_json(path, settings)
    return out


def _train_recipe(module_name: str, cfg: Any, out: Path) -> None:
    """Train, resuming from the last checkpoint of an interrupted run (a run without one starts over)."""
    import importlib

    from finegrain.kernel.checkpoint import latest_checkpoint

    resume = latest_checkpoint(out) is not None
    if out.exists() and not resume:
        shutil.rmtree(out)
    importlib.import_module(module_name).train(cfg, resume=resume)


class Demo:
    """The demo's state: folders, the split, timings; one method per kind of stage."""

    def __init__(self, cfg: QADemoConfig, fresh: bool, argv: list[str] | None, prepare: bool = True):
        from finegrain.experiments.detox.demo import Progress  # one heartbeat for every demo

        self.cfg, self.argv, self.say = cfg, argv, Progress()
        self.data = Path(cfg.data) if cfg.data else Path(os.path.relpath(DEFAULT_DATA))  # relative: no machine path in reports
        if not self.data.is_file():
            raise ConfigError(f"--data: {self.data} does not exist (pass a QA file: QA-Feedback .json, qa.json or finegrain .jsonl)")
        # a worker process (prepare=False) works in the folder its parent prepared and checked
        self.out = prepare_out(cfg, fresh) if prepare else Path(cfg.out)
        self.split_dir, self.rm_dir, self.sft_dir = self.out / "data", self.out / "rm", self.out / "sft"
        self.train_file, self.heldout_file = self.split_dir / "train.jsonl", self.split_dir / "heldout.jsonl"
        timing_file = self.out / "timings.json"
        saved = json.loads(timing_file.read_text(encoding="utf-8")) if timing_file.is_file() else {}
        # per stage: wall-clock seconds, and CPU seconds of this process (all its threads): with --threads 1
        # the CPU time is what the stage takes on one idle core, whatever else the machine runs
        self.timings: dict[str, float] = saved.get("wall_s", {})
        self.cpu: dict[str, float] = saved.get("cpu_s", {})
        self._judges: tuple[Any, Any] | None = None

    def record(self, name: str, wall: float, cpu: float) -> None:
        """A finished unit's wall-clock and CPU seconds, in timings.json (written by the demo's main process only)."""
        from finegrain.io import atomic_write_json

        self.timings[name], self.cpu[name] = round(wall, 1), round(cpu, 1)
        atomic_write_json(self.out / "timings.json", {"wall_s": self.timings, "cpu_s": self.cpu})

    def done(self, unit: Unit) -> bool:
        """Whether a unit's output exists (it is then kept)."""
        name = unit.stage
        if name == "split":
            return (self.split_dir / "split.json").is_file() and self.heldout_file.is_file()
        if name == "sft":
            return (self.sft_dir / "final").is_dir()
        if name == "rm-eval":
            return (self.rm_dir / "heldout.json").is_file()
        if name.startswith("rm-"):
            return (self.rm_dir / name[3:] / "finegrain_rm.json").is_file()
        if name == "eval-sft":
            return (self.sft_eval_dir(unit.seed) / "metrics.json").is_file()
        if name.startswith("eval-"):
            return (self.cfg.seed_folder(self.out, unit.seed) / name[5:] / "eval" / "metrics.json").is_file()
        if name in PPO_RUNS or name in PREF_RUNS:
            return (self.cfg.seed_folder(self.out, unit.seed) / name / "final").is_dir()
        return False

    def run(self, unit: Unit) -> None:
        """Run one unit (the report is not one: see `report`)."""
        name = unit.stage
        if name == "split":
            self.split()
        elif name == "sft":
            self.sft()
        elif name == "rm-eval":
            self.rm_eval()
        elif name.startswith("rm-"):
            self.rm(name[3:])
        elif name in PPO_RUNS:
            self.ppo(name, unit.seed)
        elif name in PREF_RUNS:
            self.pref(name, unit.seed)
        elif name.startswith("eval-"):
            if self._judges is None:
                from finegrain.data.load import load_examples
                from finegrain.experiments.qa.metrics import load_judges

                self._judges = (load_judges(self.rm_dir, self.heldout_file), load_examples(self.heldout_file)[: self.cfg.eval_questions])
            judges, examples = self._judges
            policy = name[5:]
            if policy == "sft":
                self.evaluate(self.sft_dir, LABELS[policy], unit.seed, judges, examples, None, self.sft_eval_dir(unit.seed))
            else:
                folder = self.cfg.seed_folder(self.out, unit.seed) / policy
                self.evaluate(folder, LABELS[policy], unit.seed, judges, examples, self.sft_dir / "eval")
        else:
            raise ConfigError(f"stage {name!r} is not a unit of work")

    # --- stages -------------------------------------------------------------------------------

    def split(self) -> None:
        from finegrain.experiments.qa.task import write_split

        m = write_split(self.data, self.split_dir, self.cfg.heldout, self.cfg.split_seed, self.cfg.skip_incomplete)
        for line in m["dropped"]:
            self.say(f"split: left out {line}")
        self.say(f"split: {m['train']} training questions, {len(m['heldout_ids'])} held out ({self.data}, seed {m['seed']}) in {self.split_dir}")

    def sft(self) -> None:
        cfg = recipe_stage_config("sft", "sft", train_file=self.train_file, policy=self.cfg.policy, out=self.sft_dir,
                                  seed=self.cfg.seeds[0], overrides=self.cfg.group("sft"), threads=self.cfg.threads)
        self.say(f"sft: {cfg.run.steps} steps x {cfg.optim.batch_size} gold answers from {self.cfg.policy}")
        _train_recipe("finegrain.recipes.sft", cfg, self.sft_dir)

    def rm(self, role: str) -> None:
        from finegrain.data.load import load_examples

        cfg = rm_stage_config(role, self.cfg.group("rm"))
        out = self.rm_dir / role
        if out.exists():  # an RM is saved at the end only: an interrupted one starts over
            shutil.rmtree(out)
        self.say(f"rm-{role}: {cfg.kind} RM, {cfg.epochs:g} epochs on {self.train_file.name}")
        from transformers.utils import logging

        logging.set_verbosity_error()
        common = dict(train_file=self.train_file, log=lambda line: None)
        if cfg.threads is None and self.cfg.threads:
            cfg.threads = self.cfg.threads
        if cfg.kind == "span":
            from finegrain.rewards.span_rm import train_span_rm

            card = train_span_rm(cfg, load_examples(self.train_file), out, **common)
        else:
            from finegrain.rewards.pairwise_rm import train_pairwise_rm

            card = train_pairwise_rm(cfg, load_examples(self.train_file), out, **common)
        self.say(f"rm-{role}: saved in {out} ({card.training['seconds']} s)")

    def ppo(self, name: str, seed: int) -> None:
        out = self.cfg.seed_folder(self.out, seed) / name
        cfg = ppo_stage_config(name, train_file=self.train_file, policy=self.sft_dir / "final", rm_dir=self.rm_dir, out=out, seed=seed,
                               overrides=self.cfg.group("ppo"), threads=self.cfg.threads)
        from finegrain.experiments.qa.task import check_reward_roles

        check_reward_roles(config_file(PPO_RUNS[name]), cfg.rewards, self.heldout_file)
        weights = ", ".join(f"{r.label} x{r.weight:g}" for r in cfg.rewards)
        self.say(f"{name} (seed {seed}): {cfg.run.steps} PPO steps ({cfg.ppo.prompts_per_step} questions x {cfg.sampling.samples_per_prompt} "
                 f"answers x {cfg.sampling.max_new_tokens} tokens; rewards {weights}; reward_norm {cfg.ppo.reward_norm})")
        _train_recipe("finegrain.rl.trainer", cfg, out)

    def pref(self, name: str, seed: int) -> None:
        recipe, file = PREF_RUNS[name]
        out = self.cfg.seed_folder(self.out, seed) / name
        cfg = recipe_stage_config(recipe, file, train_file=self.train_file, policy=self.sft_dir / "final", out=out, seed=seed,
                                  overrides=self.cfg.group("pref"), threads=self.cfg.threads)
        self.say(f"{name} (seed {seed}): {cfg.run.steps} steps x {cfg.optim.batch_size} {'/'.join(cfg.data.pairs)} pairs")
        _train_recipe(f"finegrain.recipes.{recipe}", cfg, out)

    def sft_eval_dir(self, seed: int | None) -> Path:
        """The SFT policy's evaluation at a seed's sampling: the first seed's in OUT/sft/eval (every other
        evaluation's win-rate baseline), another seed's in its seed folder (OUT/seed-S/sft/eval), so that
        the SFT row, like every policy's, spreads over the same sampling seeds."""
        if seed is None or seed == self.cfg.seeds[0]:
            return self.sft_dir / "eval"
        return self.cfg.seed_folder(self.out, seed) / "sft" / "eval"

    def evaluate(self, folder: Path, label: str, seed: int, judges, examples, baseline: Path | None, out: Path | None = None) -> None:
        """Evaluate the policy in `folder` (its final/ when there is one) with `seed`'s sampling into
        `out` (default: folder/eval)."""
        from finegrain.experiments.qa.metrics import AnswerSettings, evaluate_policy, format_metrics, read_answers, write_eval
        from finegrain.models import load_policy

        policy_dir = folder / "final" if (folder / "final").is_dir() else folder
        policy, tokenizer = load_policy(str(policy_dir))
        settings = AnswerSettings(max_new_tokens=self.cfg.eval_max_new_tokens, max_prompt_tokens=self.cfg.eval_max_prompt_tokens, seed=seed)
        base = read_answers(baseline) if baseline is not None else None
        self.say(f"eval {label}: answering {len(examples)} held-out questions")
        result = evaluate_policy(policy, tokenizer, examples, judges, settings, base, str(baseline) if baseline else None)
        write_eval(result, out or folder / "eval", {**asdict(settings), "heldout": str(self.heldout_file), "rms": str(self.rm_dir), "policy": str(policy_dir)})
        self.say(f"eval {label}:\n{format_metrics(result.metrics)}")

    def rm_eval(self) -> None:
        from finegrain.experiments.qa.report import rm_heldout_metrics
        from finegrain.io import atomic_write_json

        atomic_write_json(self.rm_dir / "heldout.json", rm_heldout_metrics(self.rm_dir, self.heldout_file))
        self.say(f"rm-eval: held-out metrics of the RMs and their trivial baselines in {self.rm_dir / 'heldout.json'}")

    def report(self) -> Path:
        from finegrain.experiments.qa.report import write_qa_report

        groups: dict[str, list[Path]] = {"sft": [self.sft_dir, *(self.sft_eval_dir(s).parent for s in self.cfg.seeds[1:])]}
        for seed in self.cfg.seeds:
            for name in policy_runs():
                groups.setdefault(name, []).append(self.cfg.seed_folder(self.out, seed) / name)
        command = "finegrain demo qa " + " ".join(self.argv) if self.argv is not None else f"finegrain demo qa --out {self.cfg.out}"
        settings = {
            "data": f"{self.data} ({self.split_dir / 'split.json'})", "initial policy": self.cfg.policy, "seeds": ", ".join(map(str, self.cfg.seeds)),
            "overrides": " ".join(self.cfg.overrides) or "none", "evaluation": f"one answer per held-out question, {self.cfg.eval_max_new_tokens} tokens, "
            "temperature 0.7, top-k 20; win rate against the SFT policy's answers",
            "per stage, wall-clock / CPU seconds": ", ".join(f"{k} {v:.0f}/{self.cpu.get(k, 0):.0f}" for k, v in self.timings.items()) or "-",
        }
        return write_qa_report(groups, self.out, LABELS, rm_dir=self.rm_dir, settings=settings, command=command)


def check_stage_configs(cfg: QADemoConfig) -> None:
    """Every stage config with the demo's overrides, built before anything runs: a bad setting fails here."""
    for role in RM_ROLES:
        rm_stage_config(role, cfg.group("rm"))
    x = Path("x")
    for name in policy_runs():
        if name in PPO_RUNS:
            ppo_stage_config(name, train_file=x, policy=x, rm_dir=x, out=x, seed=0, overrides=cfg.group("ppo"))
        else:
            recipe_stage_config(*PREF_RUNS[name], train_file=x, policy=x, out=x, seed=0, overrides=cfg.group("pref"))
    recipe_stage_config("sft", "sft", train_file=x, policy=x, out=x, seed=0, overrides=cfg.group("sft"))


@dataclass(frozen=True)
class Unit:
    """One piece of work: a stage, or a per-seed stage (a policy's training or evaluation) for one seed."""

    stage: str
    seed: int | None = None

    def label(self, seeds: list[int]) -> str:
        return f"{self.stage} (seed {self.seed})" if self.seed is not None and len(seeds) > 1 else self.stage

    def slug(self) -> str:
        return self.stage if self.seed is None else f"{self.stage}-seed-{self.seed}"


def per_seed(stage: str) -> bool:
    """A policy's training or any evaluation (the SFT policy's too: each seed samples its own answers)."""
    return stage in PPO_RUNS or stage in PREF_RUNS or stage.startswith("eval-")


def stage_units(stage: str, seeds: list[int]) -> list[Unit]:
    """A stage's units: one per seed for a policy's training or evaluation, else one."""
    return [Unit(stage, seed) for seed in (seeds if per_seed(stage) else [None])]


def plan(cfg: QADemoConfig) -> list[Unit]:
    """The units of the selected stages, in the order the sequential demo runs them."""
    wanted = set(cfg.stages) or set(all_stages(cfg.seeds))
    return [u for s in all_stages(cfg.seeds) if s in wanted for u in stage_units(s, cfg.seeds)]


def needs(unit: Unit, seeds: list[int]) -> list[Unit]:
    """The units whose outputs `unit` reads (the demo's dependency graph)."""
    rms = [Unit(f"rm-{r}") for r in RM_ROLES]
    name = unit.stage
    if name == "split":
        return []
    if name == "sft" or (name.startswith("rm-") and name != "rm-eval"):
        return [Unit("split")]
    if name in PPO_RUNS:
        import yaml

        rewards = yaml.safe_load(config_file(PPO_RUNS[name]).read_text(encoding="utf-8"))["rewards"]
        return [Unit("sft"), *(Unit(f"rm-{r['name']}") for r in rewards if r.get("name") in RM_ROLES)]
    if name in PREF_RUNS:
        return [Unit("sft")]
    if name == "eval-sft":
        return [Unit("sft"), *rms]
    if name.startswith("eval-"):
        return [Unit(name[5:], unit.seed), Unit("eval-sft", seeds[0]), *rms]  # the first seed's SFT answers: the win-rate baseline
    if name == "rm-eval":
        return [Unit("split"), *rms]
    return [u for s in all_stages(seeds) if s != "report" for u in stage_units(s, seeds)]


def run_demo(cfg: QADemoConfig, *, fresh: bool = False, argv: list[str] | None = None) -> Path:
    """Run (or finish) the QA demo; returns the path of report.md (or of the last stage's output)."""
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    check_stage_configs(cfg)
    demo = Demo(cfg, fresh, argv)
    units = plan(cfg)
    if cfg.workers > 1:
        _run_parallel(demo, units)
    else:
        for i, unit in enumerate(units):
            bar = "#" * (i * 20 // len(units)) + "." * (20 - i * 20 // len(units))
            label = unit.label(cfg.seeds)
            if unit.stage == "report":
                demo.say(f"[{bar}] {i + 1}/{len(units)} report: {demo.report()}")
            elif demo.done(unit):
                demo.say(f"[{bar}] {i + 1}/{len(units)} {label}: done earlier, kept")
            else:
                demo.say(f"[{bar}] {i + 1}/{len(units)} {label}")
                _run_here(demo, unit, label)
    path = demo.report() if (demo.out / "sft").is_dir() or any(u.stage == "report" for u in units) else demo.out
    demo.say(f"done in {demo.say.elapsed() / 60:.1f} min: {path}")
    return path


def _run_here(demo: Demo, unit: Unit, label: str) -> None:
    """One unit in this process, its wall-clock and CPU seconds kept in the demo's timings."""
    t0, c0 = time.perf_counter(), time.process_time()
    demo.run(unit)
    demo.record(label, time.perf_counter() - t0, time.process_time() - c0)


def _run_parallel(demo: Demo, units: list[Unit]) -> None:
    """The units not yet done, `cfg.workers` at a time, each once its inputs exist (experiments/parallel.py)."""
    from finegrain.experiments.parallel import Job, run_jobs

    cfg, logs = demo.cfg, demo.out / "logs"
    jobs = []
    for u in units:
        if u.stage == "report":
            continue
        if demo.done(u):
            demo.say(f"{u.label(cfg.seeds)}: done earlier, kept")
            continue
        if u.stage == "split":  # seconds, and everything waits on it: here, so that its warnings about the data show
            _run_here(demo, u, u.label(cfg.seeds))
            demo.say(f"{u.label(cfg.seeds)}: done (in this process)")
            continue
        jobs.append(Job(u, u.label(cfg.seeds), logs / f"{u.slug()}.log", _run_unit, (cfg, u), tuple(needs(u, cfg.seeds)), cfg.threads))
    run_jobs(jobs, cfg.workers, demo.say, lambda job, wall, cpu: demo.record(job.label, wall, cpu))


def _run_unit(cfg: QADemoConfig, unit: Unit) -> None:
    """One unit in a worker process, in the folder the main process prepared and checked."""
    Demo(cfg, fresh=False, argv=None, prepare=False).run(unit)


def demo_command(args: "argparse.Namespace", overrides: list[str]) -> int:
    """`finegrain demo qa [GROUP.key=value ...] [--data F] [--stage S ...] [--seeds ...] [--workers N]`."""
    kwargs: dict[str, Any] = dict(out=args.out or "runs/demo-qa", seeds=args.seeds, policy=args.policy, threads=args.threads,
                                  overrides=overrides, stages=args.stage or [], data=args.data,
                                  skip_incomplete=not args.strict)
    if args.heldout is not None:
        kwargs["heldout"] = args.heldout
    if args.eval_prompts is not None:
        kwargs["eval_questions"] = args.eval_prompts
    if args.steps is not None:  # PPO, DPO and SimPO steps
        kwargs["overrides"] = [f"ppo.run.steps={args.steps}", f"pref.run.steps={args.steps}", *kwargs["overrides"]]
    if args.answer_tokens is not None:  # one answer length for what the policy learns from, samples and is judged on
        n = args.answer_tokens
        if n < 1:
            raise ConfigError(f"--answer-tokens: {n} is not a length in tokens (at least 1)")
        kwargs["overrides"] = [f"sft.prompt.max_response_tokens={n}", f"pref.prompt.max_response_tokens={n}",
                               f"ppo.sampling.max_new_tokens={n}", *kwargs["overrides"]]
        kwargs["eval_max_new_tokens"] = n
    from finegrain.experiments.parallel import default_workers, worker_settings

    # stages side by side unless told otherwise: on 2 cores two one-thread workers finished the demo in
    # 0.51x of its stages' summed time, where two threads make a stage about 1.7x faster (README)
    kwargs.update(worker_settings(args.workers if args.workers is not None else default_workers(), args.threads))
    cfg = QADemoConfig(**kwargs)
    path = run_demo(cfg, fresh=args.fresh, argv=sys.argv[3:] if sys.argv[1:3] == ["demo", "qa"] else None)
    print(path)
    return 0


def evaluate_command(args: "argparse.Namespace") -> int:
    """`finegrain eval --task qa POLICY --prompts HELDOUT --rms DIR [--baseline EVAL_DIR] [--out DIR]`."""
    from finegrain.experiments.qa.metrics import AnswerSettings, evaluate_policy, format_metrics, load_judges, read_answers, write_eval
    from finegrain.experiments.qa.task import load_qa
    from finegrain.models import load_policy

    if not args.prompts:
        raise ConfigError("--prompts: --task qa needs the held-out questions (e.g. runs/qa/data/heldout.jsonl)")
    examples = load_qa(args.prompts).examples  # every example must have passages and a gold answer
    if args.max_prompts:
        examples = examples[: args.max_prompts]
    if args.rms is not None and not Path(args.rms).is_dir():
        raise ConfigError(f"--rms: {args.rms} is not a folder")
    baseline = read_answers(args.baseline) if args.baseline else None
    judges = load_judges(args.rms, args.prompts)
    policy, tokenizer = load_policy(args.policy)
    settings = AnswerSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, max_prompt_tokens=args.max_prompt_tokens,
                              batch_size=args.batch_size, seed=args.seed, precision="fp32" if args.fp32 else "bf16" if args.bf16 else "auto")
    result = evaluate_policy(policy, tokenizer, examples, judges, settings, baseline, args.baseline)
    if args.out:
        write_eval(result, args.out, {**asdict(settings), "heldout": args.prompts, "rms": args.rms, "policy": args.policy})
    if args.json:
        print(json.dumps(result.metrics.to_json(), indent=2))
    else:
        print(f"{args.policy} on {len(examples)} held-out questions ({args.prompts})")
        print(format_metrics(result.metrics))
    return 0
