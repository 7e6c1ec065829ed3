"""Nested config dataclasses: YAML, `key.sub=value` overrides, and errors that name the field."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from finegrain.config import ConfigBase, ConfigError, check_choice, check_range, load_config, parse_overrides, save_config


@dataclass
class Sampling(ConfigBase):
    temperature: float = field(default=0.7, metadata={"help": "softmax temperature"})
    top_k: int = 20
    mode: str = "sample"

    def __post_init__(self):
        check_range(self, "temperature", 0.0, None, low_open=True)
        check_choice(self, "mode", ["sample", "greedy"])


@dataclass
class Run(ConfigBase):
    name: str = "run"
    steps: int = 10
    sampling: Sampling = field(default_factory=Sampling)
    tags: list[str] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)
    resume: bool = False
    note: str | None = None


def test_defaults_yaml_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: detox\nsampling:\n  temperature: 0.9\nweights: {toxicity: 1.0}\n")
    cfg = load_config(Run, path, ["sampling.top_k=5", "steps=3", "tags=[a, b]", "resume=true", "note=null"])
    assert cfg.name == "detox" and cfg.steps == 3 and cfg.resume is True and cfg.note is None
    assert cfg.sampling == Sampling(temperature=0.9, top_k=5)
    assert cfg.tags == ["a", "b"] and cfg.weights == {"toxicity": 1.0}
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(Run, tmp_path / "saved.yaml") == cfg


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["sampling.temperature=0"], "sampling.temperature: 0.0 is outside the allowed range (0.0, inf)"),
        (["sampling.mode=beam"], "sampling.mode: 'beam' is not allowed; choose one of 'sample', 'greedy'"),
        (["sampling.topk=3"], "unknown config key sampling.topk; Sampling has: mode, temperature, top_k"),
        (["steps=many"], "steps: expected an integer, got 'many'"),
        (["steps=2.5"], "steps: expected an integer, got 2.5"),
        (["resume=maybe"], "resume: expected true or false, got 'maybe'"),
        (["sampling=3"], "sampling: expected a mapping of Sampling fields, got 3"),
        (["steps"], "override 'steps' is not of the form key.sub=value"),
    ],
)
def test_errors_name_the_field_and_allowed_values(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(Run, None, overrides)
    assert message in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Run, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=f"{bad}: the top level must be a mapping"):
        load_config(Run, bad)
    bad.write_text("steps: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Run, bad)


def test_parse_overrides_nests_and_types():
    assert parse_overrides(["a.b.c=1", "a.d=x", "e=0.5"]) == {"a": {"b": {"c": 1}, "d": "x"}, "e": 0.5}


def test_precision_auto_follows_the_hardware(monkeypatch):
    from finegrain import precision

    monkeypatch.setattr(precision, "_cpu_has_native_bf16", lambda: False)
    assert precision.resolve_precision("auto", "cpu") == "fp32" and not precision.use_bf16(None, "cpu")
    monkeypatch.setattr(precision, "_cpu_has_native_bf16", lambda: True)
    assert precision.resolve_precision("auto", "cpu") == "bf16" and precision.use_bf16(None, "cpu")
    assert precision.resolve_precision("fp32", "cpu") == "fp32" and precision.resolve_precision(True) == "bf16"
    assert precision.resolve_precision(False) == "fp32" and precision.resolve_precision("bf16", "mps") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        precision.resolve_precision("fp16")


def test_a_missing_file_names_its_field_and_where_a_relative_path_was_looked_for(tmp_path, monkeypatch):
    from finegrain.config import existing_file
    from finegrain.rl.config import DataConfig
    from finegrain.rl.prompts import load_prompts

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=rf"data.feedback: runs/x.jsonl does not exist \(relative paths are read from the working folder, {tmp_path}\)"):
        existing_file("runs/x.jsonl", "data.feedback")
    with pytest.raises(ConfigError, match=r"data.prompts: /nowhere/p.jsonl does not exist$"):
        existing_file("/nowhere/p.jsonl", "data.prompts")
    (tmp_path / "p.jsonl").write_text('{"id": "a", "prompt": "Hello"}\n')
    assert existing_file("p.jsonl", "data.prompts").resolve() == tmp_path / "p.jsonl"
    # the shipped prompts, named as the detox configs name them, are found from any working folder
    split = load_prompts(DataConfig(prompts="finegrain/assets/detox_prompts.jsonl"), seed=0)
    assert len(split.train) == 228
