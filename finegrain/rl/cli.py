"""`finegrain train --config configs/x.yaml [key.sub=value ...] [--resume]`: run any configured PPO experiment."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file of TrainConfig settings (see docs/ppo.md)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override config values, e.g. ppo.lr=2e-5 run.steps=10")
    parser.add_argument("--resume", action="store_true", help="continue the run in run.out from its latest checkpoint")
    parser.add_argument("--check", action="store_true", help="check the config, data and reward sources, then stop")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and stop")
    parser.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    import yaml

    from finegrain.config import load_config, to_dict
    from finegrain.rl.config import TrainConfig

    cfg = load_config(TrainConfig, args.config, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    from pathlib import Path

    from finegrain.rl.trainer import check_inputs, run_training

    if args.check:
        inputs = check_inputs(cfg, Path(cfg.run.out), args.resume)
        print(f"config OK: {len(inputs.prompts.train)} training prompts, {len(inputs.prompts.eval)} held out, "
              f"{len(cfg.rewards)} reward source(s), policy {inputs.policy_path}")
        return 0
    out = run_training(cfg, resume=args.resume)
    print(f"run finished: {out} (metrics.jsonl, final/, best/)")
    return 0
