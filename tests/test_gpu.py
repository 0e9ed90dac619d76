"""CUDA checks (run with `pytest -m gpu` on a machine with a GPU; skipped elsewhere)."""

from __future__ import annotations

import pytest

from lookahead import LookaheadReasoner, config_from_dict
from lookahead.config import SamplingParams
from lookahead.engines.hf import HFEngine

from tiny import tiny_llama, train_tokenizer

pytestmark = pytest.mark.gpu


def test_cuda_engine_matches_cpu_greedy_and_lr_equals_ar():
    """The decode loop on CUDA gives the CPU's greedy tokens, and lr == ar there too."""
    tok = train_tokenizer(300)
    cpu_model = tiny_llama(tok, seed=0)
    gpu_model = tiny_llama(tok, seed=0).to("cuda")
    prompts = ["The quick brown fox", "Step 1: add the numbers.", "A short story"]
    params = SamplingParams(max_new_tokens=24)
    cpu = [c.text for c in HFEngine(cpu_model, tok).generate(prompts, params)]
    gpu = [c.text for c in HFEngine(gpu_model, tok).generate(prompts, params)]
    assert gpu == cpu
    cfg = config_from_dict(
        {"gamma": 3, "step_delimiter": "e", "max_step_tokens": 12, "max_total_tokens": 60,
         "stop_at_final_answer": False, "prompt_template": "{question}"}
    )
    reasoner = LookaheadReasoner(cfg, target=HFEngine(gpu_model, tok), draft=HFEngine(gpu_model, tok))
    for prompt in prompts:
        assert reasoner.generate(prompt, mode="lr").text == reasoner.generate(prompt, mode="ar").text
