"""Shared fixtures. Tests run the real parts (real envs, a real tiny model), never mocks."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory):
    """The embedded tiny policy, made once per session by the real `rods init-policy`."""
    from rodscli.cli import main

    out = tmp_path_factory.mktemp("policy") / "tiny"
    assert main(["--quiet", "init-policy", "--out", str(out)]) == 0
    return out
