"""Fixtures the tests share: a tiny random policy (rl_helpers.make_tiny_policy) and one torch thread."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from rl_helpers import make_tiny_policy

    return make_tiny_policy(tmp_path_factory.mktemp("tiny") / "policy")


@pytest.fixture
def one_thread():
    """A busy 2-core machine runs a tiny model far faster on one thread (no spinning on the other)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
