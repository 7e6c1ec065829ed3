"""The rollout and the PPO trainer on a tiny random policy: parity of the forward pass with
generation, config and data errors before training, smoke runs of `finegrain train` in both modes,
and the stop on NaN rewards."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from finegrain.cli import main
from finegrain.config import ConfigError, load_config
from finegrain.data.problems import DataError
from finegrain.errors import MissingPackageError, TrainingError
from finegrain.rl.config import TrainConfig
from finegrain.kernel.run import read_metrics
from rl_helpers import PROMPTS, make_tiny_policy, tiny_config, write_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_policy(tmp_path_factory.mktemp("tiny") / "policy")


def _cfg(tiny, out, mode="dense", **sections) -> TrainConfig:
    path = write_config(tiny_config(tiny, out, mode, **sections), out.parent / f"{out.name}.yaml")
    return load_config(TrainConfig, path)


@pytest.fixture
def one_thread():
    """A busy 2-core machine runs a tiny model far faster on one thread (no spinning on the other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- rollout -------------------------------------------------------------------------------------


@pytest.mark.embedded  # the SmolLM2 tokenizer
def test_rollout_logprobs_match_an_unpadded_forward_and_ratio_starts_at_one(tiny, one_thread):
    """Left-padded prompts with the position ids generation used give each sampled token the
    log-prob an unpadded forward gives it; and the first PPO forward reproduces pi_old."""
    from finegrain.models import load_tokenizer
    from finegrain.rl import maths
    from finegrain.rl.config import PPOConfig
    from finegrain.kernel.generation import GenerationSettings, HFGenerator
    from finegrain.kernel.models import load_frozen as load_reference
    from finegrain.kernel.prompts import PromptRenderer
    from finegrain.rl.policy import build_actor_critic
    from finegrain.rl.rollout import Scores, build_rollout, forward
    from finegrain.rl.update import ppo_losses

    torch.manual_seed(0)
    tok = load_tokenizer(str(tiny))
    model = build_actor_critic(str(tiny), "shared").eval()
    ref = load_reference(str(tiny), torch.float32)
    ids, mask = PromptRenderer(tok).encode(PROMPTS[:3])
    assert not mask[:, -1].logical_not().any() and mask.sum(-1).min() < mask.shape[1]  # left-padded
    samples = HFGenerator(model.policy, tok).sample(ids, mask, GenerationSettings(max_new_tokens=8, samples_per_prompt=2))
    fwd = forward(model, ref, samples, batch_size=4)
    tempered = forward(model, ref, samples, batch_size=4, temperature=0.7)  # samples drawn at 0.7: scored under softmax(logits / 0.7)
    assert fwd.logprobs.shape == samples.response_ids.shape == fwd.values.shape
    for b in range(samples.response_ids.shape[0]):
        prompt = samples.query_ids[b][samples.query_mask[b]]
        resp = samples.response_ids[b][samples.response_mask[b]]
        logits = model.policy(torch.cat([prompt, resp])[None]).logits[0, len(prompt) - 1 : -1]
        expected = maths.token_logprobs(logits[None], resp[None])[0]
        assert torch.allclose(fwd.logprobs[b][: len(resp)], expected, atol=1e-4)
        at_t = torch.log_softmax(logits / 0.7, -1).gather(-1, resp[:, None])[:, 0]
        assert torch.allclose(tempered.logprobs[b][: len(resp)], at_t, atol=1e-4)
        assert torch.allclose(tempered.ref_logprobs[b][: len(resp)], at_t, atol=1e-4)
        assert torch.allclose(tempered.entropy[b][: len(resp)], maths.entropy(logits[None] / 0.7)[0], atol=1e-4)
    # same weights in the reference: KL is 0; values start at 0 (zero-initialised head)
    assert torch.allclose(fwd.logprobs, fwd.ref_logprobs, atol=1e-5)
    assert torch.all(fwd.values == 0)
    T = samples.response_ids.shape[1]
    scores = Scores(["x"] * 6, ("s",), [], torch.zeros(1, 6, T), torch.randn(6, T) * samples.response_mask, samples.response_mask.clone(), samples.response_mask[None].clone())
    rollout = build_rollout(samples, scores, fwd, kl_coef=0.3, ppo=PPOConfig())
    losses = ppo_losses(model, rollout.select(torch.tensor([0, 3, 5])), PPOConfig())
    assert losses.approx_kl.item() < 1e-6 and losses.clip_frac.item() == 0.0


@pytest.mark.embedded  # the SmolLM2 tokenizer
def test_the_first_step_reusing_the_rollout_forward_equals_a_fresh_forward(tiny, one_thread):
    """The rollout's policy forward, graph kept, gives the first PPO step the loss and gradients a
    second forward would: skipping that forward changes nothing but the time."""
    from finegrain.models import load_tokenizer
    from finegrain.rl.config import PPOConfig
    from finegrain.kernel.generation import GenerationSettings, HFGenerator
    from finegrain.kernel.models import load_frozen as load_reference
    from finegrain.kernel.prompts import PromptRenderer
    from finegrain.rl.policy import build_actor_critic
    from finegrain.rl.rollout import Scores, build_rollout, forward
    from finegrain.rl.update import ppo_losses

    torch.manual_seed(1)
    tok = load_tokenizer(str(tiny))
    model = build_actor_critic(str(tiny), "shared").eval()
    torch.nn.init.normal_(model.value_head.weight, std=0.1)  # values that depend on the backbone
    ref = load_reference(str(tiny))
    ids, mask = PromptRenderer(tok).encode(PROMPTS[:2])
    samples = HFGenerator(model.policy, tok).sample(ids, mask, GenerationSettings(max_new_tokens=6, samples_per_prompt=2))
    ppo = PPOConfig(minibatch_size=4, entropy_coef=0.01)
    kept = forward(model, ref, samples, batch_size=4, keep_graph=True, entropy_grad=True, temperature=0.7)
    T = samples.response_ids.shape[1]
    scores = Scores(["x"] * 4, ("s",), [], torch.zeros(1, 4, T), torch.randn(4, T) * samples.response_mask, samples.response_mask.clone(), samples.response_mask[None].clone())
    rollout = build_rollout(samples, scores, kept, kl_coef=0.3, ppo=ppo)

    reused = ppo_losses(model, rollout, ppo, kept.policy_pass, temperature=0.7)
    reused.total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    fresh = ppo_losses(model, rollout, ppo, temperature=0.7)  # the sampling temperature, as the rollout's
    fresh.total.backward()
    assert torch.allclose(reused.total, fresh.total, atol=1e-6)
    assert grads.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for n, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(grads[n], p.grad, atol=1e-6), n


# --- errors before training ------------------------------------------------------------------------


@pytest.mark.embedded  # the SmolLM2 tokenizer
def test_bad_config_values_name_the_field(tmp_path, tiny):
    path = write_config(tiny_config(tiny, tmp_path / "run"), tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="sampling.temperature"):
        load_config(TrainConfig, path, ["sampling.temperature=0"])
    with pytest.raises(ConfigError, match="ppo.kl_estimator"):
        load_config(TrainConfig, path, ["ppo.kl_estimator=k2"])
    with pytest.raises(ConfigError, match="unknown config key ppo.learning_rate"):
        load_config(TrainConfig, path, ["ppo.learning_rate=1"])
    with pytest.raises(ConfigError, match="grad_accum"):
        load_config(TrainConfig, path, ["ppo.grad_accum=3"])
    with pytest.raises(ConfigError, match="mode"):
        load_config(TrainConfig, path, ["rewards=[{kind: toxicity, mode: sparse}]"])
    with pytest.raises(ConfigError, match="rewards"):
        load_config(TrainConfig, path, ["rewards=[]"])
    with pytest.raises(ConfigError, match="eval_every"):
        load_config(TrainConfig, path, ["data.eval_prompts=0", "run.eval_every=2"])


@pytest.mark.embedded  # the SmolLM2 tokenizer
def test_bad_files_fail_before_any_model_loads(tmp_path, tiny, monkeypatch, capsys):
    import finegrain.rl.trainer as trainer

    def no_models(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(trainer.R, "make_accelerator", no_models)
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": {"text": "ok"}}\n{"prompt": {"text": 3}}\n', encoding="utf-8")
    cfg = _cfg(tiny, tmp_path / "run", data={"prompts": str(bad), "prompt_list": []})
    with pytest.raises(DataError, match="prompts.jsonl"):
        trainer.run_training(cfg)
    cfg = _cfg(tiny, tmp_path / "run", data={"prompts": str(tmp_path / "missing.jsonl"), "prompt_list": []})
    with pytest.raises(ConfigError, match="data.prompts"):
        trainer.run_training(cfg)
    cfg = _cfg(tiny, tmp_path / "run", model={"policy": str(tmp_path / "no-such-model")})
    with pytest.raises(ConfigError, match="model.policy"):
        trainer.run_training(cfg)
    cfg = _cfg(tiny, tmp_path / "run", rewards=[{"kind": "rm", "path": str(tmp_path)}])
    with pytest.raises(ConfigError, match="finegrain_rm.json"):
        trainer.run_training(cfg)
    cfg = _cfg(tiny, tmp_path / "run", data={"eval_prompts": len(PROMPTS)})
    with pytest.raises(ConfigError, match="eval_prompts"):
        trainer.run_training(cfg)
    if importlib.util.find_spec("tensorboard") is None:
        cfg = _cfg(tiny, tmp_path / "run", run={"log_with": ["tensorboard"]})
        with pytest.raises(MissingPackageError, match="tracking"):
            trainer.run_training(cfg)
    # through the command line: one clear line, exit 2
    path = write_config(tiny_config(tiny, tmp_path / "run"), tmp_path / "c.yaml")
    assert main(["train", "--config", str(path), "ppo.clip=-1"]) == 2
    assert "ppo.clip" in capsys.readouterr().err


# --- smoke runs -----------------------------------------------------------------------------------


def _check_run(out, steps, sources=("toxicity",)):
    from transformers import AutoModelForCausalLM

    rows = [r for r in read_metrics(out / "metrics.jsonl") if "reward/total" in r]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    for r in rows:
        for key in ("kl", "entropy", "length", "loss/policy", "loss/value", "time/generate", "time/update", "approx_kl"):
            assert math.isfinite(r[key]), (key, r)
        for s in sources:
            assert f"reward/{s}" in r and f"score/{s}" in r
    for folder in ("final", "best"):
        AutoModelForCausalLM.from_pretrained(out / folder)
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step-{steps:06d}"
    return rows


@pytest.mark.embedded  # the SmolLM2 tokenizer
def test_train_smoke_dense_with_evaluation_and_ptx(tmp_path, tiny, capsys, one_thread):
    ptx = tmp_path / "sft.jsonl"
    ptx.write_text("".join(json.dumps({"prompt": {"text": p + " something nice."}}) + "\n" for p in PROMPTS), encoding="utf-8")
    cfg = write_config(tiny_config(tiny, tmp_path / "run"), tmp_path / "dense.yaml")
    code = main(["train", "--config", str(cfg), "run.eval_every=1", "model.precision=bf16", f"data.ptx={ptx}", "ppo.ptx_coef=0.5",
                 "ppo.grad_accum=2", "ppo.minibatch_size=4", "ppo.adaptive_kl=true", "ppo.kl_target=0.01"])
    assert code == 0, capsys.readouterr().err
    out = tmp_path / "run"
    rows = _check_run(out, 3)
    assert all(r["loss/ptx"] > 0 for r in rows)
    assert rows[1]["kl_coef"] != rows[0]["kl_coef"]  # adaptive
    evals = [r for r in read_metrics(out / "metrics.jsonl") if "eval/reward/total" in r]
    assert [r["step"] for r in evals] == [1, 2, 3]
    best = json.loads((out / "best" / "finegrain_policy.json").read_text())
    assert best["eval_reward"] == max(r["eval/reward/total"] for r in evals)
    # a second run into the same folder refuses to clobber it
    assert main(["train", "--config", str(cfg)]) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.embedded  # the SmolLM2 tokenizer
def test_tempered_sampling_is_scored_at_its_temperature_through_the_trainer(tmp_path, tiny, one_thread):
    """Samples drawn at temperature 0.7 with top-k: the rollout's log-probs and the update's are both
    under softmax(logits / 0.7), so the first minibatch's ratio is 1 (an update at temperature 1 would
    find the policy already moved and stop at once), and the first step's KL is 0 (policy = reference)."""
    from finegrain.rl.trainer import run_training

    # two micro-batches: the update runs a forward of its own instead of reusing the rollout's
    cfg = _cfg(tiny, tmp_path / "run", sampling={"temperature": 0.7, "top_k": 20},
               ppo={"early_stop_kl": 1e-4, "epochs": 2, "minibatch_size": 4, "grad_accum": 2})
    rows = _check_run(run_training(cfg), 3)
    assert abs(rows[0]["kl"]) < 1e-4
    assert all(r["epochs"] >= 1 for r in rows)  # never stopped before the first optimiser step


@pytest.mark.embedded  # the SmolLM2 tokenizer
def test_train_smoke_holistic_separate_value_model(tmp_path, tiny, one_thread):
    from finegrain.rl.trainer import run_training

    # minibatch = the whole rollout (2 prompts x 2 samples): the first step reuses the rollout's forward
    # the layers of both backbones recomputed in the backward (model.gradient_checkpointing)
    cfg = _cfg(tiny, tmp_path / "run", mode="holistic", model={"value_model": "separate", "gradient_checkpointing": True},
               ppo={"early_stop_kl": 1e-9, "epochs": 3, "kl_estimator": "k3", "minibatch_size": 4, "entropy_coef": 0.01})
    out = run_training(cfg)
    rows = _check_run(out, 3)
    # holistic: one segment per non-empty response; the early stop cut the epochs short
    assert all(r["segments/toxicity"] <= 1.0 for r in rows)
    assert all(r["epochs"] == 1 for r in rows)  # one minibatch per epoch: stopped after the first


@pytest.mark.embedded  # the SmolLM2 tokenizer
@pytest.mark.parametrize("norm", ["none", "batch", "segment"])
def test_reward_normalisation_is_what_ppo_optimises(tmp_path, tiny, one_thread, norm):
    """The logged raw reward is the sources'; the rollout's task reward is normalised per ppo.reward_norm."""
    import torch

    from finegrain.kernel.run import make_accelerator
    from finegrain.rl.trainer import TrainerState, build_run, check_inputs, collect, normalise_rewards, step_examples

    cfg = _cfg(tiny, tmp_path / "run", ppo={"reward_norm": norm})
    out = tmp_path / "run"
    inputs = check_inputs(cfg, out, resume=False)
    acc = make_accelerator(out, cfg.run.seed, cfg)
    run = build_run(cfg, out, acc, inputs)
    state = TrainerState(kl_coef=cfg.ppo.kl_coef)
    samples, scores, _ = collect(run, step_examples(run, 0), cfg.sampling.samples_per_prompt, {})
    mask = samples.response_mask
    task, row = normalise_rewards(run, state, scores, mask)
    totals = (task * mask).sum(-1)
    if norm == "none":
        assert torch.equal(task, scores.total) and row == {}
    elif norm == "batch":
        raw = (scores.total * mask).sum(-1)
        assert torch.allclose(totals, (raw - raw.mean()) / (raw.std() + 1e-8), atol=1e-5)
        assert row["reward_norm/std"] == pytest.approx(raw.std().item(), rel=1e-5)
    else:
        seg = scores.total[scores.ends & mask]
        assert torch.allclose(task[scores.ends & mask], (seg - seg.mean()) / (seg.std() + 1e-8), atol=1e-5)
        assert task[~(scores.ends & mask)].abs().max() == 0


class _NaNSource:
    name, density = "broken", "sequence"

    def score(self, examples, responses):
        from finegrain.rewards.base import pack_segment_scores

        return pack_segment_scores([[float("nan")] if r else [] for r in responses], [[len(r)] if r else [] for r in responses])


@pytest.mark.embedded  # the SmolLM2 tokenizer
def test_nan_reward_stops_with_a_message_and_a_saved_state(tmp_path, tiny, monkeypatch, one_thread):
    import finegrain.rl.sources as sources
    from finegrain.rewards.compose import RewardTerm, WeightedSource
    from finegrain.rl.trainer import run_training

    monkeypatch.setattr(sources, "build_sources", lambda *args, **kwargs: [WeightedSource(_NaNSource(), RewardTerm("broken"))])
    cfg = _cfg(tiny, tmp_path / "run", sampling={"min_new_tokens": 4})
    with pytest.raises(TrainingError, match="non-finite.*stopped-step-000001"):
        run_training(cfg)
    assert (tmp_path / "run" / "checkpoints" / "stopped-step-000001" / "trainer_state.json").is_file()
