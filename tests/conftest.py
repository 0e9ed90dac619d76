"""Shared test setup: `gpu`-marked tests skip where CUDA is missing."""

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
