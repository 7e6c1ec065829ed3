"""Reward sources from the `rewards:` list: an RM's card is read once, at the check, and supplies the
mapping's defaults (calibration, the threshold it was trained with); the device is the caller's."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from finegrain.rl.config import RewardConfig
from finegrain.rl.sources import build_mapping, build_sources, check_sources


def _card(threshold=0.7):
    return SimpleNamespace(kind="span", training={"threshold": threshold}, calibration=SimpleNamespace(mean=0.2, std=0.5), heads=[])


def test_binary_threshold_defaults_to_the_cards():
    assert build_mapping(RewardConfig(kind="rm", path="x", mapping="binary"), _card(0.7)).threshold == 0.7
    assert build_mapping(RewardConfig(kind="rm", path="x", mapping="binary", threshold=0.4), _card(0.7)).threshold == 0.4
    assert build_mapping(RewardConfig(kind="toxicity", mapping="binary")).threshold == 0.5
    standardize = build_mapping(RewardConfig(kind="rm", path="x", mapping="standardize", scale=0.3), _card())
    assert (standardize.mean, standardize.std, standardize.scale) == (0.2, 0.5, 0.3)


def test_a_card_is_read_once_and_the_device_passed_in(tmp_path, monkeypatch):
    import finegrain.rewards.card as card_module

    reads, loaded = [], []
    monkeypatch.setattr(card_module.RMCard, "load", classmethod(lambda cls, folder: reads.append(folder) or _card(0.6)))
    monkeypatch.setattr(card_module, "load_reward_model", lambda path, **kw: loaded.append(kw) or SimpleNamespace(name="rel"))
    rewards = [RewardConfig(kind="rm", path=str(tmp_path), mapping="binary", name="relevance")]
    cards = check_sources(rewards)
    sources = build_sources(rewards, cards, device="cpu", bf16=False)
    assert len(reads) == 1
    assert loaded[0]["card"] is cards[0] and loaded[0]["device"] == "cpu" and loaded[0]["bf16"] is False
    assert sources[0].term.mapping.threshold == 0.6


def test_a_missing_rm_folder_names_the_field(tmp_path):
    from finegrain.config import ConfigError

    with pytest.raises(ConfigError, match=r"rewards\[0\].path"):
        check_sources([RewardConfig(kind="rm", path=str(tmp_path / "none"))])


def test_a_field_of_another_kind_or_mapping_is_refused_by_name(tmp_path):
    from finegrain.config import ConfigError, load_config
    from finegrain.rl.config import TrainConfig

    def load(source: str):
        path = tmp_path / "c.yaml"
        path.write_text("data: {prompts: p.jsonl}\nrewards:\n  - " + source + "\n", encoding="utf-8")
        return load_config(TrainConfig, path)

    with pytest.raises(ConfigError, match=r"rewards\[0\]\.reward_ok: 0\.5 applies to mapping binary only; this source's mapping is 'standardize'"):
        load("{kind: rm, path: x, mapping: standardize, reward_ok: 0.5}")
    with pytest.raises(ConfigError, match=r"rewards\[0\]\.scorer: .* applies to kind toxicity only"):
        load("{kind: rm, path: x, mapping: binary, scorer: embedded}")
    with pytest.raises(ConfigError, match=r"rewards\[0\]\.path: .* applies to kind rm only"):
        load("{kind: toxicity, path: x}")
    with pytest.raises(ConfigError, match=r"rewards\[0\]\.scale: .* applies to mapping affine or standardize only"):
        load("{kind: toxicity, scale: 2}")
    # The defaults of the fields that apply are filled in; the others stay unset.
    tox = load("{kind: toxicity, mapping: affine}").rewards[0]
    assert (tox.mode, tox.scorer, tox.scale, tox.bias, tox.reward_ok, tox.path) == ("dense", "profanity-check", 1.0, 0.0, None, None)
    rm = load("{kind: rm, path: x, mapping: binary}").rewards[0]
    assert (rm.reward_ok, rm.reward_error, rm.mode, rm.scale) == (0.3, -0.3, None, None)
