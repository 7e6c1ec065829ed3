"""The generation seam: prompts in, sampled responses with their mask out.

A recipe holds a `Generator` and calls `sample(query_ids, query_mask, settings)`; after each
optimiser step that changed the weights it calls `sync_weights()`. `HFGenerator` samples with the
trained model itself through Hugging Face `generate` (KV cache), so its `sync_weights` has nothing to
push; an engine that keeps its own copy of the weights (vLLM) implements the same two methods and
copies the weights there, and no recipe changes.

This module holds the library's only call of `generate(`: rollouts, evaluation, annotation
sampling and `finegrain models generate` all come through `HFGenerator`; `make_generator` picks the
backend a recipe's `sampling.backend` names (`hf`, or `vllm`: kernel/vllm_generation.py), and every
backend ends its responses with `finish_responses` (the one response-mask rule, the same trimming).
Shape legend: N prompts, G samples per prompt, B = N * G responses, P prompt tokens, T response tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from finegrain.kernel.models import autocast
from finegrain.kernel.sequences import Sequences, eos_token_ids, response_mask

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class GenerationSettings:
    """How responses are sampled (each caller maps its own config onto these)."""

    samples_per_prompt: int = 1  # G
    max_new_tokens: int = 32
    min_new_tokens: int = 0  # EOS is forbidden before this many tokens
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0
    do_sample: bool = True  # False: greedy
    # record log p(y_t) of each sampled token under softmax(logits / temperature), from the logits it
    # was sampled from (Sequences.sampled_logprobs): a critic-free recipe's pi_old without a forward pass of its own
    logprobs: bool = False


def nucleus_filter(top_p: float, candidates: int = 1024) -> "LogitsProcessor":
    """transformers' top-p filter (`TopPLogitsWarper`: keep the most likely tokens until their mass
    reaches `top_p`, always the first) that looks only at the `candidates` most likely tokens when they
    already hold that mass, instead of sorting the whole vocabulary at every token: sorting 49,152 logits
    for 32 rows was a third of the embedded policy's sampling time on one CPU thread (bench/bench_sampling.py).
    Rows whose candidates hold less than `top_p` go through transformers' own filter. The kept set is
    transformers' one up to float rounding at the boundary (a test compares them)."""
    from transformers.generation.logits_process import TopPLogitsWarper

    class NucleusFilter(TopPLogitsWarper):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
            """Shape: scores (B, V) -> (B, V), the dropped tokens at -inf."""
            k = min(candidates, scores.shape[-1])
            top, idx = scores.float().softmax(-1).topk(k, dim=-1)  # (B, k), most likely first
            keep = top.cumsum(-1) - top < self.top_p  # the mass before a token has not reached top_p yet
            keep[:, : self.min_tokens_to_keep] = True
            drop = torch.ones_like(scores, dtype=torch.bool).scatter(-1, idx, ~keep)
            out = scores.masked_fill(drop, self.filter_value)
            beyond = top.sum(-1) < self.top_p  # the nucleus reaches past the candidates: the full sort
            if beyond.any():
                out[beyond] = super().__call__(input_ids[beyond], scores[beyond])
            return out

    return NucleusFilter(top_p)


class InverseCDFSampler:
    """The last logits processor: draws each row's next token from softmax(scores) by the inverse of
    its cumulative distribution (one uniform number per row, torch's global generator) and leaves only
    that token, which `generate` then takes greedily. The same distribution as `generate`'s sampling
    (softmax, `torch.multinomial`), drawn about 8x faster on a CPU: multinomial over SmolLM2's
    49,152-token vocabulary took 62 ms a token for 32 rows on one thread, this 7 ms."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        """Shape: scores (B, V) -> (B, V), 0 at the drawn token, -inf elsewhere."""
        cdf = torch.softmax(scores.float(), dim=-1).cumsum(-1)  # (B, V)
        u = torch.rand(cdf.shape[0], 1, device=cdf.device) * cdf[:, -1:]
        token = torch.searchsorted(cdf, u, right=True).clamp(max=cdf.shape[-1] - 1)  # the first whose mass reaches past u
        return torch.full_like(scores, -float("inf")).scatter(-1, token, 0.0)


def sampling_warpers(settings: GenerationSettings) -> "LogitsProcessorList":
    """Temperature, top-k and top-p in transformers' order, with `nucleus_filter` for top-p, then the
    `InverseCDFSampler` that draws the token; `generate` then runs greedily (do_sample=False: none of
    its own warpers, no multinomial)."""
    from transformers import LogitsProcessorList
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper

    warpers = LogitsProcessorList()
    if settings.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(settings.temperature))
    if settings.top_k:
        warpers.append(TopKLogitsWarper(settings.top_k))
    if settings.top_p < 1.0:
        warpers.append(nucleus_filter(settings.top_p))
    warpers.append(InverseCDFSampler())
    return warpers


# GenerationConfig fields whose non-neutral value makes `generate` put a logits processor of its own
# before the ones a caller passes (transformers 5's `_get_logits_processor`; its warpers come after),
# with their neutral values
PROCESSOR_FIELDS = {
    "guidance_scale": 1.0, "sequence_bias": None, "encoder_repetition_penalty": 1.0, "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "min_length": 0,
    "min_new_tokens": 0, "forced_bos_token_id": None, "forced_eos_token_id": None, "remove_invalid_values": False,
    "exponential_decay_length_penalty": None, "suppress_tokens": None, "begin_suppress_tokens": None,
}


def scores_are_the_models(lm: "PreTrainedModel") -> bool:
    """Whether the first logits processor a caller passes to `lm.generate` sees the model's own logits:
    its generation config asks for no processor of transformers' own (repetition penalty, bad words, a
    minimum length, ...), which `generate` would run first. `HFGenerator.sample` passes temperature,
    top-k, top-p and the minimum new tokens itself, after `SampledLogProbs`."""
    config = lm.generation_config
    return all(getattr(config, name, neutral) in (None, neutral) for name, neutral in PROCESSOR_FIELDS.items())


class SampledLogProbs:
    """A logits processor that changes nothing and records log softmax(logits / temperature)[y_t] of
    each token `generate` appends: at each step the log-probs of the previous step's scores at the
    token just appended; `finish` adds the last one. Put first, it reads the model's own logits
    (before top-k, top-p and the temperature warper, whose division it makes itself), the numbers a
    forward pass over the finished sequences gives (`kernel.logprobs.response_logprobs` at the same
    temperature), up to float rounding (the KV cache, the batch's shapes). Holds one step's (B, V)
    log-probs at a time."""

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = temperature
        self.previous: torch.Tensor | None = None  # (B, V) float32
        self.columns: list[torch.Tensor] = []  # (B,) each

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        """Shape: input_ids (B, P + t), scores (B, V) -> scores, unchanged."""
        if self.previous is not None:
            self.columns.append(self.previous.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.previous = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def finish(self, responses: torch.Tensor) -> torch.Tensor:
        """The log-probs of all `responses` (generate's new tokens). Shape: (B, T) -> (B, T) float32."""
        if self.previous is not None:
            self.columns.append(self.previous.gather(-1, responses[:, -1:]).squeeze(-1))
            self.previous = None
        out = torch.stack(self.columns, dim=1) if self.columns else responses.new_zeros(responses.shape, dtype=torch.float32)
        return out[:, : responses.shape[1]]


class Generator(Protocol):
    """What a recipe needs from a generation backend."""

    def sample(self, query_ids: torch.Tensor, query_mask: torch.Tensor, settings: GenerationSettings) -> Sequences:
        """G responses to each prompt; responses to prompt i are rows i * G .. i * G + G - 1.

        Shape: query_ids (N, P), query_mask (N, P) -> Sequences with B = N * G."""
        ...

    def sync_weights(self) -> None:
        """Make the next `sample` use the model's current weights."""
        ...


BACKENDS = ("hf", "vllm")


def is_sharded(model: torch.nn.Module, accelerator: "Accelerator | None") -> bool:
    """Whether the processes hold only shards of `model`'s parameters (FSDP2, DeepSpeed ZeRO-3)."""
    if accelerator is None or accelerator.num_processes == 1:
        return False
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None and getattr(plugin, "zero_stage", 0) == 3:
        return True
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch built without distributed support
        return False
    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def gathered_for_generation(model: torch.nn.Module, accelerator: "Accelerator | None") -> Iterator[torch.nn.Module]:
    """The trained module, unwrapped, with every parameter it generates with present on this process.

    - DeepSpeed ZeRO-3 partitions each parameter over the processes: gather them all for the
      duration (`deepspeed.zero.GatheredParameters`), as TRL's `unwrap_model_for_generation` does.
    - FSDP2: the root unit's own parameters (embeddings, heads; for PPO's actor-critic the value
      head too) are only gathered by the root's forward, which `generate` on an inner module
      bypasses: unshard the root for the duration; the inner units (one per transformer layer)
      keep gathering their layer in their own forward hooks, so every process must run the same
      number of forwards (`HFGenerator` passes `synced_gpus`). FSDP1 is refused when the
      accelerator is made (`kernel.run.check_distributed`).
    - One process, DDP: every process holds the whole model; nothing to gather.
    """
    if accelerator is None:
        yield model
        return
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None and getattr(plugin, "zero_stage", 0) == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            yield accelerator.unwrap_model(model)
        return
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch built without distributed support
        yield accelerator.unwrap_model(model)
        return
    if isinstance(model, FSDPModule):  # FSDP2 (fully_shard)
        model.unshard()
        try:
            yield model
        finally:
            model.reshard()
    else:
        yield accelerator.unwrap_model(model)


def holds_shards(module: torch.nn.Module) -> bool:
    """Whether some parameter of `module` is a shard: an FSDP2 DTensor or a DeepSpeed ZeRO-3 partition."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed support
        DTensor = ()  # noqa: N806
    return any(isinstance(p, DTensor) or hasattr(p, "ds_id") for p in module.parameters())


def full_tensors(module: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every entry of `module`'s state dict, whole, one at a time (so at most one gathered
    parameter is alive beyond the shards): FSDP2 DTensors all-gathered, DeepSpeed ZeRO-3 partitions
    gathered for the copy, anything else as it is. Names as in the plain model (what
    `save_pretrained` and vLLM's `load_weights` read). Collective when sharded: every process must
    iterate it to the end."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        DTensor = ()  # noqa: N806
    for name, t in module.state_dict(keep_vars=True).items():
        name = name.replace("_checkpoint_wrapped_module.", "")  # FSDP activation checkpointing's wrapper
        if isinstance(t, DTensor):
            yield name, t.full_tensor().detach()
        elif hasattr(t, "ds_id"):
            import deepspeed

            with deepspeed.zero.GatheredParameters([t]):
                yield name, t.detach().clone()
        else:
            yield name, t.detach()


def finish_responses(
    query_ids: torch.Tensor, query_mask: torch.Tensor, responses: torch.Tensor, eos: list[int], pad_id: int,
    logprobs: torch.Tensor | None = None,
) -> Sequences:
    """What every backend returns: the response-mask rule (`sequences.response_mask`), responses
    trimmed to the longest one, the pad token after each response's end; the sampled tokens'
    `logprobs`, when the backend recorded them, trimmed alike and 0 on padding.

    Shape: query_ids (B, P), query_mask (B, P), responses (B, T'), logprobs (B, T') -> Sequences with T <= T'.
    """
    rmask = response_mask(responses, eos)
    width = int(rmask.sum(-1).max().clamp(min=1))
    responses, rmask = responses[:, :width], rmask[:, :width]
    responses = torch.where(rmask, responses, torch.full_like(responses, pad_id))
    if logprobs is not None:
        logprobs = logprobs[:, :width] * rmask
    return Sequences(query_ids, query_mask, responses, rmask, logprobs)


def make_generator(
    backend: str,
    model: torch.nn.Module,
    tokenizer: "PreTrainedTokenizerBase",
    accelerator: "Accelerator | None" = None,
    precision: str = "fp32",
    pick: Callable[[torch.nn.Module], "PreTrainedModel"] | None = None,
    field_name: str = "sampling.backend",
    gpu_memory: float = 0.3,
) -> Generator:
    """The generation backend a recipe's config names: `hf` (Hugging Face `generate` on the trained
    model) or `vllm` (a colocated vLLM engine, weights pushed by `sync_weights`). `field_name` is
    the config field named in errors; `gpu_memory` the share of GPU memory vLLM may take."""
    hf = HFGenerator(model, tokenizer, accelerator, precision, pick)
    if backend == "hf":
        return hf
    if backend == "vllm":
        from finegrain.kernel.vllm_generation import VLLMGenerator

        return VLLMGenerator(hf, field_name=field_name, gpu_memory=gpu_memory)
    from finegrain.config import ConfigError

    raise ConfigError(f"{field_name}: unknown generation backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def shared_prompt_cache(lm: "PreTrainedModel", query_ids: torch.Tensor, query_mask: torch.Tensor, g: int) -> dict:
    """The KV cache of each prompt but its last token, computed once and repeated for its G samples:
    `generate` would run the prompt's forward G times. Returned as the keyword `generate` takes (see
    `kernel.models.prompt_cache`); `generate` then runs the last prompt token and samples as without it
    (positions from the attention mask as `generate` makes them). Empty (no sharing) for a model whose
    forward fills no `DynamicCache`.

    Shape: query_ids (N, P), query_mask (N, P) -> a cache of N * G rows and P - 1 positions.
    """
    from finegrain.kernel.models import prompt_cache

    shared = prompt_cache(lm, query_ids[:, :-1], query_mask[:, :-1])
    for cache in shared.values():
        cache.batch_repeat_interleave(g)
    return shared


class HFGenerator:
    """Hugging Face `generate` on the trained model. `pick` selects the causal LM inside the
    trained module (e.g. the policy of an actor-critic); `precision` "bf16" samples under autocast.
    The G samples of a prompt share its prompt's forward (`shared_prompt_cache`), and with
    `settings.logprobs` the sampled tokens' log-probs come back (`SampledLogProbs`)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: "PreTrainedTokenizerBase",
        accelerator: "Accelerator | None" = None,
        precision: str = "fp32",
        pick: Callable[[torch.nn.Module], "PreTrainedModel"] | None = None,
    ):
        self.model, self.tokenizer, self.accelerator, self.precision = model, tokenizer, accelerator, precision
        self.pick = pick or (lambda m: m)

    def sync_weights(self) -> None:
        """Nothing to do: `generate` runs on the trained parameters themselves."""

    @torch.no_grad()
    def sample(self, query_ids: torch.Tensor, query_mask: torch.Tensor, settings: GenerationSettings) -> Sequences:
        """Shape: query_ids (N, P), query_mask (N, P) -> Sequences with B = N * G, T <= max_new_tokens
        (trimmed to the longest response; tokens after a response's end are the pad token)."""
        g = settings.samples_per_prompt
        with gathered_for_generation(self.model, self.accelerator) as unwrapped:
            lm = self.pick(unwrapped)
            device = next(lm.parameters()).device
            ids = query_ids.repeat_interleave(g, dim=0).to(device)  # (B, P)
            mask = query_mask.repeat_interleave(g, dim=0).to(device)
            shared = {}
            if g > 1 and ids.shape[1] > 1 and not is_sharded(self.model, self.accelerator):
                with autocast(device, self.precision):
                    shared = shared_prompt_cache(lm, query_ids.to(device), query_mask.to(device), g)
            eos = eos_token_ids(lm, self.tokenizer)
            from transformers import LogitsProcessorList

            processors, min_new_tokens = LogitsProcessorList(), settings.min_new_tokens
            recorder = SampledLogProbs(settings.temperature) if settings.logprobs and scores_are_the_models(lm) else None
            if recorder is not None:  # first, so that it reads the model's logits: the minimum length after it
                from transformers.generation.logits_process import MinNewTokensLengthLogitsProcessor

                processors.append(recorder)
                if min_new_tokens:
                    processors.append(MinNewTokensLengthLogitsProcessor(ids.shape[1], min_new_tokens, eos, device))
                min_new_tokens = 0
            if settings.do_sample:  # drawn by the last processor (`sampling_warpers`); generate takes it greedily
                processors.extend(sampling_warpers(settings))
            with autocast(device, self.precision):
                out = lm.generate(
                    input_ids=ids,
                    attention_mask=mask.long(),
                    do_sample=False,
                    logits_processor=processors,
                    max_new_tokens=settings.max_new_tokens,
                    min_new_tokens=min_new_tokens,
                    eos_token_id=eos,
                    pad_token_id=self.tokenizer.pad_token_id,
                    use_cache=True,
                    synced_gpus=is_sharded(self.model, self.accelerator),  # FSDP2/ZeRO-3: every process runs every forward
                    **shared,
                )
        responses = out[:, ids.shape[1] :]
        logprobs = None if recorder is None else recorder.finish(responses)
        return finish_responses(ids, mask, responses, eos, self.tokenizer.pad_token_id, logprobs)
