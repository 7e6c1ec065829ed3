"""`run.log_with`: a run logging to TensorBoard and to W&B (offline) writes files that each tool's
own reader loads back with the values of metrics.jsonl."""

from __future__ import annotations

import json
import struct

import pytest

from finegrain.cli import main
from finegrain.kernel.run import read_metrics
from recipe_helpers import make_tiny_policy, recipe_config, write_config, write_feedback

pytest.importorskip("tensorboard")
pytest.importorskip("wandb")


def wandb_history(path) -> list[dict]:
    """The history rows of a `.wandb` file: W&B's header, then LevelDB-log records (32 KiB blocks,
    7-byte record headers, records split into FIRST/MIDDLE/LAST pieces), each a protobuf `Record`."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, _magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B"
    block, pos, rows, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):  # block trailer or padding
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk  # FULL, FIRST start a record
        if kind in (1, 4):  # FULL, LAST end one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item})
    return rows


@pytest.mark.embedded  # the SmolLM2 tokenizer
def test_tensorboard_and_offline_wandb_hold_the_logged_values(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    policy = make_tiny_policy(tmp_path / "policy")
    feedback = write_feedback(tmp_path / "feedback.jsonl")
    out = tmp_path / "run"
    cfg = recipe_config("sft", policy, feedback, out, run={"steps": 3, "eval_every": 3, "log_with": ["tensorboard", "wandb"]})
    assert main(["train", "sft", "--config", str(write_config(cfg, tmp_path / "c.yaml"))]) == 0
    rows = read_metrics(out / "metrics.jsonl")
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
    evals = {r["step"]: r["eval/loss"] for r in rows if "eval/loss" in r}
    assert sorted(losses) == [1, 2, 3] and sorted(evals) == [0, 3]

    events = EventAccumulator(str(out / "finegrain"))
    events.Reload()
    assert {e.step: e.value for e in events.Scalars("loss")} == pytest.approx(losses, rel=1e-6)  # stored as float32
    assert {e.step: e.value for e in events.Scalars("eval/loss")} == pytest.approx(evals, rel=1e-6)

    [run_file] = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    history = wandb_history(run_file)
    assert {h["_step"]: h["loss"] for h in history if "loss" in h} == losses
    assert {h["_step"]: h["eval/loss"] for h in history if "eval/loss" in h} == evals
