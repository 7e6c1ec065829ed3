"""`finegrain demo detox`: holistic vs fine-grained PPO detoxification on the embedded models.

From the embedded policy and toxicity scorer it
  1. evaluates the initial policy on the held-out prompts,
  2. trains a holistic run (reward 1 - toxicity of the whole response) and evaluates it,
  3. trains a fine-grained run (reward: the drop in toxicity of each sentence), same steps, same
     seed, every other setting equal, and evaluates it,
  4. writes `report.md` (the paper's table) and `curves.png` (toxicity and KL against steps).
The report is rewritten after every phase. Finished phases are kept: run the same command again
after an interruption and it goes on from the first unfinished phase (`--fresh` starts over).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from finegrain.config import ConfigBase, ConfigError, check_range

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from finegrain.data.records import Example
    from finegrain.evaluate import SamplingSettings
    from finegrain.experiments.detox.metrics import EvalResult, TextScorer

INITIAL = "initial"
LABELS = {INITIAL: "Initial policy", "holistic": "Holistic RLHF", "finegrained": "Fine-grained RLHF"}


@dataclass
class DemoConfig(ConfigBase):
    out: str = field(default="runs/demo", metadata={"help": "output folder: one sub-folder per policy, report.md, curves.png"})
    steps: int = field(default=30, metadata={"help": "PPO steps of each run"})
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "seeds: each trains both runs and evaluates with that sampling seed; "
                                                                            "with several, the table shows mean ± std over seeds"})
    prompts: str | None = field(default=None, metadata={"help": "prompt file (e.g. RealToxicityPrompts .jsonl); default: the shipped set"})
    heldout: int = field(default=100, metadata={"help": "with --prompts: prompts held out for evaluation (a fixed, hash-based choice)"})
    eval_prompts: int | None = field(default=None, metadata={"help": "evaluate on only the first N held-out prompts"})
    eval_samples: int = field(default=4, metadata={"help": "samples per held-out prompt (k of expected max toxicity)"})
    eval_max_new_tokens: int = field(default=32, metadata={"help": "length of the evaluation samples in tokens"})
    eval_batch_size: int = field(default=64, metadata={"help": "sequences per generate call in evaluation"})
    policy: str = field(default="smollm2-135m", metadata={"help": "initial policy: embedded name, HF folder or hub id"})
    modes: list[str] = field(default_factory=lambda: ["holistic", "finegrained"], metadata={"help": "runs to train"})
    overrides: list[str] = field(default_factory=list, metadata={"help": "key.sub=value settings for both training runs"})
    judge: str = field(default="judge", metadata={"help": "independent toxicity judge for the table (judge: the shipped one; a folder from "
                                                          "`finegrain rm judge`; none: no judge)"})
    threads: int | None = field(default=None, metadata={"help": "CPU threads (default: torch's; 1 is faster on a crowded machine); with workers: per worker"})
    workers: int = field(default=1, metadata={"help": "phases run at once, each in its own process once its inputs exist (the initial evaluation and both runs' training)"})

    def __post_init__(self) -> None:
        from finegrain.experiments.detox.task import MODES

        check_range(self, "workers", 1)
        check_range(self, "steps", 1)
        check_range(self, "heldout", 1)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds: {self.seeds} must name at least one seed, each once")
        check_range(self, "eval_samples", 1)
        check_range(self, "eval_max_new_tokens", 1)
        check_range(self, "eval_batch_size", 1)
        if self.eval_prompts is not None:
            check_range(self, "eval_prompts", 1)
        if self.threads is not None:
            check_range(self, "threads", 1)
        for m in self.modes:
            if m not in MODES:
                raise ConfigError(f"modes: {m!r} is not allowed; choose from {', '.join(map(repr, MODES))}")

    def sampling(self, seed: int) -> "SamplingSettings":
        from finegrain.evaluate import SamplingSettings

        return SamplingSettings(samples_per_prompt=self.eval_samples, max_new_tokens=self.eval_max_new_tokens,
                                batch_size=self.eval_batch_size, seed=seed)

    def seed_folder(self, out: Path, seed: int) -> Path:
        """One seed: the policies' folders sit in `out`; several: in `out/seed-S`."""
        return out if len(self.seeds) == 1 else out / f"seed-{seed}"


class Progress:
    """One line per event, with the time since the demo started: the demo's visible heartbeat."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def __call__(self, message: str) -> None:
        minutes, seconds = divmod(int(self.elapsed()), 60)
        print(f"[demo {minutes:02d}:{seconds:02d}] {message}", file=sys.stderr, flush=True)


def _settings_file(out: Path) -> Path:
    return out / "demo.json"


def prepare_out(cfg: DemoConfig, fresh: bool) -> Path:
    """Create the output folder; refuse to mix two different demos' results in one folder."""
    out = Path(cfg.out)
    if fresh and out.exists():
        shutil.rmtree(out)
    # `modes` may differ: `--only holistic` and `--only finegrained` can fill one folder side by side
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("modes", "threads", "workers")}
    previous = _settings_file(out)
    if previous.is_file():
        old = json.loads(previous.read_text(encoding="utf-8"))
        if old != settings:
            changed = sorted(k for k in settings if old.get(k) != settings[k])
            raise ConfigError(
                f"{out} holds a demo with other settings ({', '.join(changed)} differ); "
                "pass --fresh to start over, or choose another --out"
            )
    from finegrain.io import atomic_write_json

    atomic_write_json(previous, settings)
    return out


def evaluate_into(
    folder: Path,
    label: str,
    policy: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    prompts: list["Example"],
    scorer: "TextScorer",
    reference: "PreTrainedModel",
    settings: "SamplingSettings",
    say: Progress,
    judge: "TextScorer | None" = None,
) -> "EvalResult":
    from finegrain.experiments.detox.metrics import evaluate_policy, write_eval

    n = len(prompts)
    say(f"{label}: sampling {settings.samples_per_prompt} continuations for each of {n} held-out prompts")
    t0 = time.perf_counter()
    last = [0.0]

    def on_batch(done: int, total: int) -> None:
        if time.perf_counter() - last[0] > 20 or done == total:
            last[0] = time.perf_counter()
            say(f"{label}: {done}/{total} prompts sampled")

    result = evaluate_policy(policy, tokenizer, prompts, scorer, judge=judge, reference=reference, settings=settings, on_batch=on_batch)
    write_eval(result, folder / "eval")
    m = result.metrics
    judged = f" (judge {m.judge_avg_max_toxicity:.3f})" if m.judge_avg_max_toxicity is not None else ""
    say(f"{label}: avg max toxicity {m.avg_max_toxicity:.3f}{judged}, toxic prob {m.toxic_probability:.3f}, "
        f"perplexity {m.perplexity:.2f}, dist-2 {m.dist_2:.3f} ({time.perf_counter() - t0:.0f} s)")
    return result


Phase = tuple[str, str, int]  # ("train" | "evaluate", INITIAL or a mode, seed)


def phases(cfg: DemoConfig) -> list[Phase]:
    """The demo's work in its sequential order: per seed, the initial policy's evaluation, then each run's
    training and evaluation."""
    out: list[Phase] = []
    for seed in cfg.seeds:
        out.append(("evaluate", INITIAL, seed))
        for mode in cfg.modes:
            out += [("train", mode, seed), ("evaluate", mode, seed)]
    return out


def phase_label(cfg: DemoConfig, phase: Phase) -> str:
    """The timings' key of a phase, e.g. "train holistic (seed 1)"."""
    action, name, seed = phase
    return f"{action} {name}" + ("" if len(cfg.seeds) == 1 else f" (seed {seed})")


def phase_log(cfg: DemoConfig, out: Path, phase: Phase) -> Path:
    """Where a worker writes a phase's output, e.g. logs/train-holistic-seed-1.log."""
    action, name, seed = phase
    return out / "logs" / (f"{action}-{name}" + ("" if len(cfg.seeds) == 1 else f"-seed-{seed}") + ".log")


class Phases:
    """What the phases share: the held-out prompts, the training prompt file, the scorers and the
    initial policy (loaded on first use, once per process)."""

    def __init__(self, cfg: DemoConfig, out: Path, heldout: list["Example"], train_file: Path | str, say: Progress):
        self.cfg, self.out, self.heldout, self.train_file, self.say = cfg, out, heldout, train_file, say
        self._models: tuple | None = None

    def models(self) -> tuple:
        """(scorer, judge or None, the initial policy, its tokenizer)."""
        if self._models is None:
            from finegrain.models import load_policy
            from finegrain.rewards.toxicity import ProfanityCheckScorer, load_scorer

            judge = None if self.cfg.judge == "none" else load_scorer(self.cfg.judge)
            self._models = (ProfanityCheckScorer(), judge, *load_policy(self.cfg.policy))
        return self._models

    def done(self, phase: Phase) -> bool:
        action, name, seed = phase
        folder = self.cfg.seed_folder(self.out, seed) / name
        evaluated = (folder / "eval" / "metrics.json").is_file()
        return evaluated or (action == "train" and (folder / "final").is_dir())

    def needs(self, phase: Phase) -> tuple[Phase, ...]:
        action, name, seed = phase
        return (("train", name, seed),) if action == "evaluate" and name != INITIAL else ()

    def run(self, phase: Phase) -> None:
        import torch

        action, name, seed = phase
        cfg, folder = self.cfg, self.cfg.seed_folder(self.out, seed) / name
        label = LABELS[name] + ("" if len(cfg.seeds) == 1 else f" (seed {seed})")
        if action == "train":
            from finegrain.experiments.detox.task import detox_config
            from finegrain.kernel.checkpoint import latest_checkpoint
            from finegrain.rl.trainer import run_training

            run_cfg = detox_config(name, prompts=self.train_file, out=folder, steps=cfg.steps, seed=seed,
                                   overrides=[f"model.policy={cfg.policy}", *([f"run.threads={cfg.threads}"] if cfg.threads else []), *cfg.overrides])
            resume = latest_checkpoint(folder) is not None  # an interrupted run goes on from its last checkpoint
            if folder.exists() and not resume:  # one without a checkpoint starts again
                shutil.rmtree(folder)
            self.say(f"{label}: training {cfg.steps} PPO steps ({run_cfg.ppo.prompts_per_step} prompts x "
                     f"{run_cfg.sampling.samples_per_prompt} samples x {run_cfg.sampling.max_new_tokens} tokens per step, "
                     f"reward normalisation {run_cfg.ppo.reward_norm}){' from its last checkpoint' if resume else ''}")
            run_training(run_cfg, resume=resume)
            return
        scorer, judge, reference, tokenizer = self.models()
        if name == INITIAL:
            evaluate_into(folder, label, reference, tokenizer, self.heldout, scorer, reference, cfg.sampling(seed), self.say, judge)
            return
        from finegrain.models import load_policy

        policy, _ = load_policy(str(folder / "final"))
        evaluate_into(folder, label, policy, tokenizer, self.heldout, scorer, reference, cfg.sampling(seed), self.say, judge)
        del policy
        torch.cuda.empty_cache() if torch.cuda.is_available() else None


def run_demo(cfg: DemoConfig, *, fresh: bool = False, argv: list[str] | None = None) -> Path:
    """Run (or finish) the demo; returns the path of report.md."""
    import torch

    from finegrain.experiments.detox.task import detox_config, load_detox_split, shipped_prompt_files, write_prompts

    say = Progress()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # 1. Prompts and the output folder; the training prompts as a file for the trainer.
    split = load_detox_split(cfg.prompts, cfg.heldout)
    heldout = split.heldout[: cfg.eval_prompts] if cfg.eval_prompts else split.heldout
    for mode in cfg.modes:  # fail on a bad override before an hour of work, not after
        detox_config(mode, prompts="x.jsonl", out="x", steps=cfg.steps, seed=cfg.seeds[0], overrides=cfg.overrides)
    out = prepare_out(cfg, fresh)
    train_file = shipped_prompt_files()[0] if cfg.prompts is None else write_prompts(split.train, out / "prompts-train.jsonl")
    say(f"prompts: {len(split.train)} to train on, {len(heldout)} held out ({split.source}); output in {out}")
    timings: dict[str, float] = {}

    def report() -> Path:
        return write_demo_report(cfg, out, split.source, len(split.train), len(heldout), timings, argv)

    # 2. The initial policy's evaluation (the reference for perplexity, the table's first row), then
    # each run: train, and evaluate its final policy on the same prompts with the same seed.
    work = Phases(cfg, out, heldout, train_file, say)
    todo = [p for p in phases(cfg) if not work.done(p)]
    for action, name, seed in phases(cfg):
        if action == "evaluate" and name != INITIAL and work.done((action, name, seed)):
            say(f"{LABELS[name]}{'' if len(cfg.seeds) == 1 else f' (seed {seed})'}: already trained and evaluated in "
                f"{cfg.seed_folder(out, seed) / name}, kept")
    if cfg.workers > 1:
        from finegrain.experiments.parallel import Job, run_jobs

        def record(job: Job, wall: float, cpu: float) -> None:
            timings[job.label] = wall
            report()

        jobs = [Job(p, phase_label(cfg, p), phase_log(cfg, out, p), _run_phase, (cfg, out, heldout, str(train_file), p), work.needs(p), cfg.threads)
                for p in todo]
        run_jobs(jobs, cfg.workers, say, record)
    else:
        for p in todo:
            t0 = time.perf_counter()
            work.run(p)
            timings[phase_label(cfg, p)] = time.perf_counter() - t0
            if p[0] == "evaluate":
                report()
    path = report()
    say(f"done in {say.elapsed() / 60:.1f} min: {path} and {out / 'curves.png'}")
    return path


def _run_phase(cfg: DemoConfig, out: Path, heldout: list["Example"], train_file: str, phase: Phase) -> None:
    """One phase in a worker process (experiments/parallel.py), in the folder the main process prepared."""
    Phases(cfg, out, heldout, train_file, Progress()).run(phase)


def write_demo_report(cfg: DemoConfig, out: Path, source: str, n_train: int, n_heldout: int,
                      timings: dict[str, float], argv: list[str] | None) -> Path:
    from finegrain.experiments.detox.task import SHARED
    from finegrain.experiments.detox.report import summarize_run, write_report

    groups: dict[str, list] = {}
    for seed in cfg.seeds:
        folder = cfg.seed_folder(out, seed)
        tag = "" if len(cfg.seeds) == 1 else f" (seed {seed})"
        for name in (INITIAL, *cfg.modes):
            if (folder / name).is_dir():
                groups.setdefault(LABELS[name], []).append(summarize_run(folder / name, LABELS[name] + tag))
    runs = [r for seed_runs in zip(*groups.values()) for r in seed_runs] if len(cfg.seeds) > 1 else [g[0] for g in groups.values()]
    runs += [r for g in groups.values() for r in g if r not in runs]
    prompts = "the shipped prompt set (finegrain/assets/detox_prompts*.jsonl)" if source == "shipped" else source
    # timings of phases run by earlier invocations are kept in timings.json
    timing_file = out / "timings.json"
    all_timings = json.loads(timing_file.read_text(encoding="utf-8")) if timing_file.is_file() else {}
    all_timings.update({k: round(v, 1) for k, v in timings.items()})
    from finegrain.io import atomic_write_json

    atomic_write_json(timing_file, all_timings)
    norm = [o.split("=", 1)[1] for o in cfg.overrides if o.startswith("ppo.reward_norm=")]
    settings = {
        "initial policy": cfg.policy,
        "toxicity scorer": "profanity-check (embedded alt-profanity-check): the reward, and the table's first columns",
        "independent judge": "none" if cfg.judge == "none" else f"{cfg.judge} (MiniLM + head distilled from Perspective scores; never a reward): the table's 'Judge' columns",
        "prompts": f"{prompts}: {n_train} to train on, {n_heldout} held out",
        "PPO steps per run": cfg.steps,
        "seeds": ", ".join(map(str, cfg.seeds)),
        "reward normalisation (both runs)": norm[-1] if norm else SHARED["ppo.reward_norm"],
        "evaluation": f"{cfg.eval_samples} samples per prompt, {cfg.eval_max_new_tokens} new tokens, nucleus p=0.9, temperature 1; "
                      "toxicity of the continuation alone; perplexity under the initial policy",
        "training (both runs)": ", ".join(f"{k}={v}" for k, v in SHARED.items()),
        "extra overrides": " ".join(cfg.overrides) or "none",
        "wall-clock per phase (s)": ", ".join(f"{k} {v:.0f}" for k, v in all_timings.items()) or "-",
    }
    command = "finegrain demo detox " + " ".join(argv) if argv is not None else "finegrain demo detox --out " + cfg.out
    seed = cfg.seeds[0]
    folder = cfg.seed_folder(out, seed)
    commands = [
        command,
        f"# the same runs, one at a time{'' if len(cfg.seeds) == 1 else f' (seed {seed}; the others alike)'}:",
        f"finegrain train --config configs/detox_holistic.yaml run.out={folder}/holistic run.steps={cfg.steps} run.seed={seed}",
        f"finegrain train --config configs/detox_finegrained.yaml run.out={folder}/finegrained run.steps={cfg.steps} run.seed={seed}",
        f"finegrain eval {folder}/finegrained/final --out {folder}/finegrained/eval --seed {seed}",
        f"finegrain report {folder}/initial {folder}/holistic {folder}/finegrained --out {folder}",
    ]
    intro = ("Holistic vs fine-grained PPO detoxification on the embedded models (Wu et al. 2023, section 3). "
             "Holistic reward: -toxicity of the whole response, on its last token. Fine-grained reward: "
             "for each sentence (or line), the drop in toxicity when it is appended, on its last token. "
             "A response's rewards sum to -toxicity in both, and both are normalised the same way, so the two runs "
             "differ only in where the reward is placed.")
    return write_report(runs, out, title="Detoxification: holistic vs fine-grained RLHF", intro=intro,
                        settings=settings, commands=commands, groups=groups if len(cfg.seeds) > 1 else None,
                        paired=(LABELS["finegrained"], LABELS["holistic"]) if {"finegrained", "holistic"} <= set(cfg.modes) else None)
