"""Sample K responses per prompt from a policy and write them as finegrain JSONL, ready to import.

QA-style prompts keep their passages (the annotator links missing information to them); the text
the policy sees is built from the question and the passages in the paper's layout
(`question: ... context: wikipage: <title> text: <sentences> ...`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from finegrain.config import ConfigBase, ConfigError, check_range
from finegrain.data.problems import DataError, Problem
from finegrain.data.records import Example, Passage, Response


@dataclass
class SampleConfig(ConfigBase):
    k: int = field(default=4, metadata={"help": "responses per prompt"})
    max_new_tokens: int = field(default=64, metadata={"help": "new tokens per response"})
    temperature: float = field(default=0.7, metadata={"help": "softmax temperature"})
    top_k: int = field(default=20, metadata={"help": "sample from the k most likely tokens (0: all)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass"})
    batch_size: int = field(default=8, metadata={"help": "prompts per generate() call"})
    seed: int = field(default=0, metadata={"help": "torch seed, for reproducible samples"})
    chat_template: bool = field(default=True, metadata={"help": "wrap the prompt in the tokenizer's chat template, if it has one"})

    def __post_init__(self) -> None:
        check_range(self, "k", 1, 64)
        check_range(self, "max_new_tokens", 1, 4096)
        check_range(self, "temperature", 0.0, None, low_open=True)
        check_range(self, "top_k", 0, None)
        check_range(self, "top_p", 0.0, 1.0, low_open=True)
        check_range(self, "batch_size", 1, None)


@dataclass(frozen=True)
class PromptItem:
    id: str
    prompt: str  # shown to annotators (the question)
    model_input: str  # what the policy is conditioned on
    passages: tuple[Passage, ...] = ()
    reference: str | None = None
    meta: dict = field(default_factory=dict)


def qa_model_input(question: str, passages: tuple[Passage, ...]) -> str:
    """What the policy reads (before any chat template): the kernel's QA layout when there are passages."""
    from finegrain.kernel.prompts import QA_TEMPLATE, fill_template

    return fill_template(QA_TEMPLATE if passages else "{prompt}", Example("item", question, passages=passages))


def _split_content(content: str) -> Passage:
    """A `{"content": "Title\\n\\nText"}` passage: the first line is the title, the rest sentences."""
    from finegrain.segment import split_sentences

    title, _, rest = content.partition("\n")
    rest = rest.strip()
    sentences = [s.text(rest).strip() for s in split_sentences(rest) if s.text(rest).strip()]
    return Passage(title.strip(), tuple(sentences))


def _qa_item(i: int, raw: object, path: Path) -> PromptItem:
    def bad(field_: str, value: object, msg: str) -> DataError:
        return DataError([Problem(str(path), i, field_, value, msg)])

    if isinstance(raw, str):
        return PromptItem(f"p{i}", raw, raw)
    if not isinstance(raw, dict) or not isinstance(raw.get("question", raw.get("text")), str):
        raise bad("question", raw if not isinstance(raw, dict) else raw.get("question"), "expected an object with a string `question` (or `text`)")
    passages = []
    for j, p in enumerate(raw.get("passages") or []):
        if isinstance(p, list) and p and all(isinstance(s, str) for s in p):
            passages.append(Passage(p[0], tuple(p[1:])))
        elif isinstance(p, dict) and isinstance(p.get("content"), str):
            passages.append(_split_content(p["content"]))
        else:
            raise bad(f"passages[{j}]", p, "expected [title, sentence, ...] or {\"content\": ...}")
    question = raw.get("question") or raw["text"]
    answer = raw.get("gold", raw.get("answer"))
    reference = answer if isinstance(answer, str) else answer[0] if isinstance(answer, list) and answer and isinstance(answer[0], str) else None
    passages_t = tuple(passages)
    return PromptItem(str(raw.get("id", f"qa-{i}")), question, qa_model_input(question, passages_t), passages_t, reference)


def read_prompts(path: str | Path, limit: int | None = None) -> list[PromptItem]:
    """Prompts from .txt (a prompt per line), .json (a QA-style list) or .jsonl (finegrain or RTP)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--prompts {path}: no such file")
    if path.suffix == ".txt":
        lines = [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
        items = [PromptItem(f"p{i}", s, s) for i, s in enumerate(lines)]
    elif path.suffix == ".json":
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError([Problem(str(path), None, "", None, f"malformed JSON: {err.msg} (line {err.lineno})")]) from None
        if not isinstance(raw, list):
            raise DataError([Problem(str(path), None, "", type(raw).__name__, "expected a list of prompts")])
        items = [_qa_item(i, r, path) for i, r in enumerate(raw[:limit] if limit else raw)]
    else:
        from finegrain.data.load import load_examples

        items = [
            PromptItem(ex.id, ex.prompt, qa_model_input(ex.prompt, ex.passages), ex.passages, ex.reference, dict(ex.meta))
            for ex in load_examples(path)
        ]
    if not items:
        raise DataError([Problem(str(path), None, "", None, "no prompts in the file")])
    return items[:limit] if limit else items


def sample_responses(items: list[PromptItem], model, tok, cfg: SampleConfig) -> list[list[str]]:
    """cfg.k sampled responses per item, in order: rendered by the kernel's prompt renderer,
    sampled through the kernel's generator."""
    import torch

    from finegrain.kernel.generation import GenerationSettings, HFGenerator
    from finegrain.kernel.prompts import QA_TEMPLATE, PromptRenderer

    torch.manual_seed(cfg.seed)
    generator = HFGenerator(model, tok, precision="bf16" if model.device.type == "cpu" else "fp32")
    settings = GenerationSettings(cfg.k, cfg.max_new_tokens, 0, cfg.temperature, cfg.top_k, cfg.top_p)
    qa = PromptRenderer(tok, QA_TEMPLATE, chat_template=cfg.chat_template)
    plain = PromptRenderer(tok, "{prompt}", chat_template=cfg.chat_template)
    out: list[list[str]] = []
    for lo in range(0, len(items), cfg.batch_size):
        batch = items[lo : lo + cfg.batch_size]
        texts = [(qa if it.passages else plain).render(Example(it.id, it.prompt, passages=it.passages)).text for it in batch]
        ids, mask = plain.encode(texts)
        gen = generator.sample(ids, mask, settings)  # (B*k, T): prompt i's responses are rows i*k .. i*k + k - 1
        decoded = [t.strip() for t in tok.batch_decode(gen.response_ids, skip_special_tokens=True)]
        out.extend(decoded[i * cfg.k : (i + 1) * cfg.k] for i in range(len(batch)))
    return out


def sample_file(items: list[PromptItem], out: str | Path, policy: str, cfg: SampleConfig) -> int:
    from finegrain.data.jsonl import write_jsonl
    from finegrain.models import load_policy

    if not items:
        raise ConfigError("no prompts to sample from")
    model, tok = load_policy(policy, field="--policy")
    responses = sample_responses(items, model, tok, cfg)
    sampling = {"policy": policy, "k": cfg.k, "temperature": cfg.temperature, "top_k": cfg.top_k, "top_p": cfg.top_p,
                "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed}
    examples = [
        Example(it.id, it.prompt, tuple(Response(r) for r in rs), it.passages, (), it.reference, {**it.meta, "sampling": sampling})
        for it, rs in zip(items, responses)
    ]
    write_jsonl(out, examples)
    return len(examples)
