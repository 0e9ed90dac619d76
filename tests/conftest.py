"""Shared test setup: `gpu`-marked tests skip where CUDA is missing; the tiny-model fixtures that
several engine test files use (a test file's own fixture of the same name takes precedence)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config):
    """One torch thread: the tests run tiny models, for which a second thread only adds contention
    (a tiny forward pass took 250 ms instead of 2 ms next to another busy process)."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tok():
    """A 300-token byte-level BPE trained on tests/tiny.py's corpus."""
    from tiny import train_tokenizer

    return train_tokenizer(300)


@pytest.fixture(scope="module")
def model(tok):
    """A tiny random Llama over `tok` (seed 0): the target of the engine tests."""
    from tiny import tiny_llama

    return tiny_llama(tok, seed=0)


@pytest.fixture(scope="module")
def other_model(tok):
    """Another tiny random Llama (seed 1): a draft that disagrees with `model`."""
    from tiny import tiny_llama

    return tiny_llama(tok, seed=1)


@pytest.fixture(scope="module")
def looping_model(tok):
    """`model` with attention scaled down: its greedy text cycles, so n-gram proposals hit."""
    import torch

    from tiny import tiny_llama

    looping = tiny_llama(tok, seed=0)
    with torch.no_grad():
        for layer in looping.model.layers:
            layer.self_attn.o_proj.weight.mul_(0.01)
    return looping
