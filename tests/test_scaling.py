"""Sharded models and the generation backends, as far as a CPU can check them.

- FSDP2 on CPU: accelerate runs FSDP on GPUs only (on CPU it falls back to DDP: docs/scaling.md),
  so the sharded test shards the model with torch's own `fully_shard` over gloo, on two processes
  of one `accelerate launch`, and checks what finegrain adds for sharded models: generation with
  parameters gathered and every process running the same number of forwards (different prompts and
  lengths per process, no hang), the same tokens as the unsharded model, and the whole state dict
  gathered for saving `final/` (bit-equal to the unsharded weights after reloading).
- vLLM: the backend needs a CUDA GPU and `finegrain[vllm]`; without them its test is skipped with
  the reason, and choosing it fails with an error naming the config field.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]


def fsdp2_worker(policy: str, out: str) -> None:
    """Run under two processes: shard `policy` with FSDP2, generate, gather and save it."""
    import torch
    from accelerate import Accelerator
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoModelForCausalLM

    from finegrain.kernel.checkpoint import save_policy
    from finegrain.kernel.generation import GenerationSettings, HFGenerator
    from finegrain.kernel.run import full_state_dict
    from finegrain.models import load_tokenizer

    acc = Accelerator()
    rank = acc.process_index
    tok = load_tokenizer(policy, padding_side="left")
    plain = AutoModelForCausalLM.from_pretrained(policy).eval()
    model = AutoModelForCausalLM.from_pretrained(policy).eval()
    mesh = init_device_mesh("cpu", (acc.num_processes,))
    for layer in model.model.layers:  # one unit per block, as accelerate's TRANSFORMER_BASED_WRAP does
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    prompts = [["Hello there"], ["Once upon a time", "The weather today is"]][rank]  # different per process
    enc = tok(prompts, return_tensors="pt", padding=True)
    settings = GenerationSettings(samples_per_prompt=1, max_new_tokens=4 + 6 * rank, do_sample=False)  # different lengths
    sharded = HFGenerator(model, tok, acc).sample(enc["input_ids"], enc["attention_mask"].bool(), settings)
    whole = HFGenerator(plain, tok).sample(enc["input_ids"], enc["attention_mask"].bool(), settings)
    assert torch.equal(sharded.response_ids, whole.response_ids), (rank, sharded.response_ids, whole.response_ids)
    state = full_state_dict(acc, model)
    if acc.is_main_process:
        save_policy(plain, tok, Path(out), {"step": 0}, state)
        reloaded = AutoModelForCausalLM.from_pretrained(out).state_dict()
        for name, value in plain.state_dict().items():
            assert torch.equal(reloaded[name], value), name
        print("fsdp2 worker: generation and saving checked")
    acc.wait_for_everyone()


@pytest.mark.slow
@pytest.mark.embedded  # the SmolLM2 tokenizer
def test_fsdp2_sharded_generation_and_saving_on_two_cpu_processes(tmp_path, tiny):
    from test_accelerate import _free_port

    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        str(Path(__file__)), "--fsdp2-worker", str(tiny), str(tmp_path / "final"),
    ]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "generation and saving checked" in done.stdout


def test_several_processes_set_up_alone_are_refused(monkeypatch):
    """accelerate on a machine without GPUs, given an FSDP/DeepSpeed config, starts N processes that
    each train alone: finegrain stops them with a message."""
    from accelerate import Accelerator

    from finegrain.config import ConfigError
    from finegrain.kernel.run import check_distributed

    acc = Accelerator(cpu=True)  # one process, as each of them would be
    check_distributed(acc)
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun tells each of the two it started
    with pytest.raises(ConfigError, match="set each up as a single process"):
        check_distributed(acc)


def test_backend_is_a_checked_config_field(tmp_path):
    from finegrain.config import ConfigError, load_config
    from finegrain.rl.config import TrainConfig
    from rl_helpers import tiny_config, write_config

    path = write_config(tiny_config(tmp_path / "policy", tmp_path / "run"), tmp_path / "c.yaml")
    assert load_config(TrainConfig, path, []).sampling.backend == "hf"
    with pytest.raises(ConfigError, match="sampling.backend"):
        load_config(TrainConfig, path, ["sampling.backend=tgi"])


def test_vllm_backend_without_vllm_or_cuda_names_the_field():
    import importlib.util

    import torch

    from finegrain.config import ConfigError
    from finegrain.errors import MissingPackageError
    from finegrain.kernel.generation import make_generator

    if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available():
        pytest.skip("vllm and a CUDA GPU are both here: the backend starts (test_vllm_matches_hf_logprobs)")
    with pytest.raises((MissingPackageError, ConfigError), match=r"sampling\.backend: vllm"):
        make_generator("vllm", torch.nn.Linear(1, 1), tokenizer=None)
    with pytest.raises(ConfigError, match="unknown generation backend 'tgi'"):
        make_generator("tgi", torch.nn.Linear(1, 1), tokenizer=None)


def test_vllm_completion_keeps_the_eos_that_stopped_it():
    """vLLM's token ids may leave out the stop token; HF's `generate` keeps it and the mask rule counts it."""
    from finegrain.kernel.vllm_generation import completion_tokens

    stopped = SimpleNamespace(token_ids=[5, 6], finish_reason="stop", stop_reason=None)
    kept = SimpleNamespace(token_ids=[5, 6, 2], finish_reason="stop", stop_reason=None)
    other = SimpleNamespace(token_ids=[5], finish_reason="stop", stop_reason=7)
    cut = SimpleNamespace(token_ids=[5, 6], finish_reason="length", stop_reason=None)
    assert completion_tokens(stopped, [2, 7]) == [5, 6, 2]
    assert completion_tokens(kept, [2, 7]) == [5, 6, 2]
    assert completion_tokens(other, [2, 7]) == [5, 7]
    assert completion_tokens(cut, [2, 7]) == [5, 6]


def test_vllm_matches_hf_logprobs(tmp_path):
    """On a GPU with vllm: the vLLM backend's responses scored by the trained model equal HF's scoring
    of the same tokens (bench/bench_vllm_parity.py runs the full check on SmolLM2)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("the vLLM backend needs a CUDA GPU; none here (bench/bench_vllm_parity.py is the GPU check)")
    pytest.importorskip("vllm", reason="vllm is not installed: pip install 'finegrain[vllm]' (GPU machines only)")
    sys.path.insert(0, str(REPO / "bench"))
    from bench_vllm_parity import parity

    from rl_helpers import make_tiny_policy

    result = parity(str(make_tiny_policy(tmp_path / "policy")), prompts=4, samples=2, max_new_tokens=16, precision="fp32")
    assert result["max_abs_logprob_diff"] < 1e-3, result


if __name__ == "__main__" and "--fsdp2-worker" in sys.argv:
    i = sys.argv.index("--fsdp2-worker")
    fsdp2_worker(sys.argv[i + 1], sys.argv[i + 2])
