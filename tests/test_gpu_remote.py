"""SGLang engines on a real GPU: in-process ``sglang.Engine`` and, if one is running, a server.

Skipped without CUDA (conftest) or without the ``sglang`` package. The model is
``$LOOKAHEAD_SGLANG_MODEL`` (a local folder or a hub id the machine can load; default
Qwen/Qwen3-0.6B); ``$LOOKAHEAD_SGLANG_URL`` points the server tests at a running server of the
same model (e.g. started by ``scripts/launch_sglang.py``).

Example:
    LOOKAHEAD_SGLANG_MODEL=/models/Qwen3-0.6B pytest -m gpu tests/test_gpu_remote.py
"""

from __future__ import annotations

import importlib.util
import math
import os

import pytest

from lookahead.config import EngineConfig, SamplingParams
from lookahead.engines import create_engine

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(importlib.util.find_spec("sglang") is None, reason='needs sglang: pip install "lookahead[sglang]"'),
]

MODEL = os.environ.get("LOOKAHEAD_SGLANG_MODEL", "Qwen/Qwen3-0.6B")
URL = os.environ.get("LOOKAHEAD_SGLANG_URL")
QUESTION = [{"role": "user", "content": "Natalia sold 48 clips in April and half as many in May. How many in total? "
                                        "Think step by step, one step per paragraph."}]
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=64)


@pytest.fixture(scope="module")
def engine():
    eng = create_engine(EngineConfig(backend="sglang", model=MODEL, options={"mem_fraction_static": 0.4}))
    yield eng
    eng.shutdown()


def check_steps(eng):
    """Batched greedy rows equal the same rows alone; stop rows end on the delimiter; caps hold."""
    prompt = eng.format_chat(QUESTION)
    alone = eng.generate([prompt], GREEDY, stop=["\n\n"])[0]
    assert alone.completion_tokens <= 64 and alone.prompt_tokens > 0
    if alone.finish_reason == "stop":
        assert alone.text.endswith("\n\n") and alone.text.count("\n\n") == 1
    second = prompt + alone.text
    rows = eng.generate([second, prompt, prompt], [GREEDY, GREEDY, SamplingParams(temperature=0.0, max_new_tokens=4)],
                        stop=["\n\n"])
    assert rows[1].text == alone.text  # input order kept, batching does not change greedy output
    assert rows[2].completion_tokens <= 4 and alone.text.startswith(rows[2].text)
    assert eng.count_tokens(alone.text) > 0 and (eng.context_length() or 0) > 1000


def test_in_process_engine_steps(engine):
    check_steps(engine)


def test_in_process_next_token_logprobs(engine):
    """The greedy next token's log-prob is the largest among candidates and finite."""
    prompt = engine.format_chat(QUESTION)
    first = engine.generate([prompt], SamplingParams(temperature=0.0, max_new_tokens=1))[0].text
    [row] = engine.next_token_logprobs([prompt], [first, "zzzz"])
    assert math.isfinite(row[first]) and row[first] >= row["zzzz"]


@pytest.mark.skipif(URL is None, reason="set LOOKAHEAD_SGLANG_URL to a running SGLang server")
def test_server_engine_steps():
    eng = create_engine(EngineConfig(backend="sglang", model=MODEL, url=URL))
    try:
        check_steps(eng)
    finally:
        eng.shutdown()


@pytest.mark.skipif(URL is None, reason="set LOOKAHEAD_SGLANG_URL to a running SGLang server")
def test_openai_engine_on_sglang_server_matches_native():
    """SGLang's /v1/completions through the openai engine gives the native engine's greedy step."""
    native = create_engine(EngineConfig(backend="sglang", model=MODEL, url=URL))
    compat = create_engine(EngineConfig(backend="openai", model="auto", url=URL))
    try:
        prompt = native.format_chat(QUESTION)
        a = native.generate([prompt], GREEDY, stop=["\n\n"])[0]
        b = compat.generate([prompt], GREEDY, stop=["\n\n"])[0]
        assert (a.text, a.finish_reason) == (b.text, b.finish_reason)
    finally:
        native.shutdown()
        compat.shutdown()
