"""`finegrain train [sft|ppo|dpo|simpo] --config FILE [key.sub=value ...] [--resume]`: run a recipe.
Without a recipe name the config is PPO's (what `finegrain train --config configs/detox_*.yaml` ran
before there were other recipes)."""

from __future__ import annotations

import argparse

from finegrain.recipes import RECIPES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="[RECIPE] key.sub=value",
                        help=f"the recipe ({', '.join(RECIPES)}; default ppo), then config overrides, e.g. optim.lr=2e-5 run.steps=10")
    parser.add_argument("--config", help="YAML file of the recipe's settings (docs/recipes.md, docs/ppo.md)")
    parser.add_argument("--resume", action="store_true", help="continue the run in run.out from its latest checkpoint")
    parser.add_argument("--check", action="store_true", help="check the config, data and model paths, then stop")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and stop")
    parser.epilog = "recipes: " + "; ".join(f"{name}: {help_}" for name, (_, _, help_) in RECIPES.items())
    parser.set_defaults(func=_train, trailing_overrides=True)


def _train(args: argparse.Namespace) -> int:
    import importlib
    from pathlib import Path

    import yaml

    from finegrain.config import load_config, to_dict

    overrides = list(args.overrides)
    recipe = overrides.pop(0) if overrides and "=" not in overrides[0] else "ppo"
    if recipe not in RECIPES:
        from finegrain.config import ConfigError

        raise ConfigError(f"recipe {recipe!r} is not known; choose from {', '.join(RECIPES)}")
    module_name, config_name, _ = RECIPES[recipe]
    module = importlib.import_module(module_name)
    cfg = load_config(getattr(module, config_name), args.config, overrides)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    out = Path(cfg.run.folder(recipe))
    if args.check:
        inputs = module.check_inputs(cfg, out, args.resume)
        print(f"config OK ({recipe}): {_describe(inputs)}")
        return 0
    out = module.train(cfg, resume=args.resume)
    print(f"run finished: {out} (metrics.jsonl, final/, best/)")
    return 0


def _describe(inputs) -> str:
    if hasattr(inputs, "prompts"):  # PPO
        return f"{len(inputs.prompts.train)} training prompts, {len(inputs.prompts.eval)} held out, policy {inputs.policy_path}"
    return f"{len(inputs.train)} training items, {len(inputs.eval)} held out, policy {inputs.policy_path}"
