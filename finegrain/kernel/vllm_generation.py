"""A vLLM rollout backend behind the generation seam (`pip install 'finegrain[vllm]'`, CUDA GPUs only).

Colocated: every training process runs its own vLLM engine on its own GPU beside the trained model
(vLLM's `external_launcher` executor, as TRL's colocate mode does), with `sampling.vllm_gpu_memory`
of the GPU's memory for the engine's weights and KV cache. The engine starts from the policy's
folder and is given the trained weights at once and after every update (`sync_weights`, which the
recipes call after each optimiser step): under FSDP2 or DeepSpeed ZeRO-3 they are gathered one
tensor at a time (`generation.full_tensors`). Responses follow the Hugging Face backend's rules:
the same sampling settings (temperature, top-k, top-p, min/max new tokens, the same EOS tokens),
the EOS token kept as the response's last token, and `finish_responses` (the one mask rule).
Each call's sampling seed is drawn from torch's RNG, which checkpoints save, so a resumed run
asks vLLM for the same seeds.

Nothing here is imported unless `sampling.backend: vllm`; without vllm or without CUDA the run
stops before loading anything heavy, naming the field.
Shape legend: N prompts, G samples per prompt, B = N * G responses, P prompt tokens, T response tokens.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from finegrain.kernel.generation import GenerationSettings, HFGenerator, finish_responses, full_tensors
from finegrain.kernel.sequences import Sequences, eos_token_ids

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def check_vllm(field_name: str = "sampling.backend") -> None:
    """vllm importable and a CUDA GPU visible, or a clear error naming the config field."""
    from finegrain.config import ConfigError
    from finegrain.errors import MissingPackageError

    try:
        import vllm  # noqa: F401
    except ImportError:
        raise MissingPackageError(
            f"{field_name}: vllm is not installed; pip install 'finegrain[vllm]' on a machine with a CUDA GPU, or set {field_name}=hf"
        ) from None
    if not torch.cuda.is_available():
        raise ConfigError(f"{field_name}: vllm needs a CUDA GPU and none is visible here (value: 'vllm'); set {field_name}=hf")


def vllm_sampling(settings: GenerationSettings, eos: list[int], seed: int):
    """The Hugging Face backend's sampling settings as vLLM's `SamplingParams` (G samples per prompt)."""
    from vllm import SamplingParams

    return SamplingParams(
        n=settings.samples_per_prompt,
        temperature=settings.temperature if settings.do_sample else 0.0,
        top_k=settings.top_k if settings.top_k > 0 else -1,  # HF's 0 and vLLM's -1: no top-k filter
        top_p=settings.top_p,
        max_tokens=settings.max_new_tokens,
        min_tokens=settings.min_new_tokens,  # EOS forbidden before, as HF's min_new_tokens
        stop_token_ids=list(eos),
        seed=seed,
        detokenize=False,
    )


def completion_tokens(completion, eos: list[int]) -> list[int]:
    """A completion's tokens with the EOS that stopped it as the last one (HF's `generate` keeps it;
    the response-mask rule counts it as a response token)."""
    ids = list(completion.token_ids)
    if completion.finish_reason == "stop" and (not ids or ids[-1] not in eos):
        stop = completion.stop_reason
        ids.append(stop if isinstance(stop, int) else eos[0])
    return ids


class VLLMGenerator:
    """A colocated vLLM engine that samples with the trained model's current weights."""

    def __init__(self, trained: HFGenerator, field_name: str = "sampling.backend", gpu_memory: float = 0.3):
        """`trained`: the trained model as the Hugging Face backend holds it (module, tokenizer,
        accelerator, precision, `pick`); vLLM samples in its place."""
        check_vllm(field_name)
        from vllm import LLM

        from finegrain.precision import use_bf16

        self.model, self.tokenizer, self.accelerator, self.pick = trained.model, trained.tokenizer, trained.accelerator, trained.pick
        accelerator, tokenizer, precision = trained.accelerator, trained.tokenizer, trained.precision
        lm = self._lm()
        self.eos = eos_token_ids(lm, tokenizer)
        rank = accelerator.process_index if accelerator is not None else 0
        world = accelerator.num_processes if accelerator is not None else 1
        # the external_launcher executor runs the engine inside this process, one per training process
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("LOCAL_RANK", str(accelerator.local_process_index if accelerator is not None else 0))
        os.environ.setdefault("WORLD_SIZE", str(world))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        self.llm = LLM(
            model=lm.name_or_path,
            tokenizer=lm.name_or_path,
            dtype="bfloat16" if use_bf16(precision, "cuda") else "float32",
            gpu_memory_utilization=gpu_memory,
            distributed_executor_backend="external_launcher",
            seed=rank,
            enable_prefix_caching=False,  # weights change every step: cached prefixes would be stale
        )
        self.sync_weights()

    def _lm(self) -> "PreTrainedModel":
        unwrapped = self.accelerator.unwrap_model(self.model) if self.accelerator is not None else self.model
        return self.pick(unwrapped)

    def _engine_model(self) -> torch.nn.Module:
        """The engine's model, where vLLM keeps it (its path moved between releases)."""
        driver = self.llm.llm_engine.model_executor.driver_worker
        for path in (("model_runner", "model"), ("worker", "model_runner", "model")):
            obj = driver
            try:
                for attr in path:
                    obj = getattr(obj, attr)
                return obj
            except AttributeError:
                continue
        import vllm

        raise RuntimeError(f"vllm {vllm.__version__}: cannot find the engine's model to load weights into (driver_worker.model_runner.model)")

    def sync_weights(self) -> None:
        """Push the trained weights into the engine, one tensor at a time (gathered when sharded)."""
        engine = self._engine_model()
        with torch.no_grad():
            for name, tensor in full_tensors(self._lm()):
                engine.load_weights([(name, tensor)])
        self.llm.reset_prefix_cache()

    @torch.no_grad()
    def sample(self, query_ids: torch.Tensor, query_mask: torch.Tensor, settings: GenerationSettings) -> Sequences:
        """Shape: query_ids (N, P), query_mask (N, P) -> Sequences with B = N * G, T <= max_new_tokens."""
        from vllm.inputs import TokensPrompt

        g = settings.samples_per_prompt
        prompts = [TokensPrompt(prompt_token_ids=row[m].tolist()) for row, m in zip(query_ids, query_mask.bool())]
        seed = int(torch.randint(0, 2**31 - 1, ()))  # from torch's RNG: checkpointed, so a resumed run asks for the same
        outputs = self.llm.generate(prompts, vllm_sampling(settings, self.eos, seed), use_tqdm=False)
        rows = [completion_tokens(c, self.eos) for out in outputs for c in out.outputs]  # prompt i's G completions in a row
        if len(rows) != len(prompts) * g:
            raise RuntimeError(f"vllm returned {len(rows)} completions for {len(prompts)} prompts x {g} samples")
        pad = self.tokenizer.pad_token_id
        width = max(1, max(len(r) for r in rows))
        responses = torch.full((len(rows), width), pad, dtype=torch.long)
        for b, r in enumerate(rows):
            responses[b, : len(r)] = torch.tensor(r, dtype=torch.long)
        device = self._lm().device if self.accelerator is None else self.accelerator.device
        ids = query_ids.repeat_interleave(g, dim=0).to(device)  # (B, P)
        mask = query_mask.repeat_interleave(g, dim=0).to(device)
        return finish_responses(ids, mask, responses.to(device), self.eos, pad)
