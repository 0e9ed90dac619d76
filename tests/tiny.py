"""Tiny random-initialised models and in-memory BPE tokenizers for tests (no downloads).

Example:
    >>> tok = train_tokenizer(300)
    >>> model = tiny_llama(tok, seed=0)
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from lookahead.config import LookaheadConfig, SamplingParams, config_from_dict
from lookahead.verifiers.base import VerifierBase

CORPUS = (
    "The quick brown fox jumps over the lazy dog. Step 1: add the numbers.\n\n"
    "Step 2: multiply 3 by 4 to get 12.\n\nThe final answer is 12.\n\n"
    "A short story about a cat, a dog and a bird who count to ten together. "
    "One, two, three, four, five, six, seven, eight, nine, ten!\n"
) * 4


def train_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on CORPUS; no EOS, so rows end only at stops or their cap."""
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>"], show_progress=False)
    raw.train_from_iterator([CORPUS], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>")


def tiny_llama(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    """2-layer Llama with large init (peaky logits, so greedy is not decided by float noise)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.5,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = None
    return model


def greedy(n: int) -> SamplingParams:
    """Greedy sampling with a cap of ``n`` new tokens."""
    return SamplingParams(temperature=0.0, max_new_tokens=n)


def tiny_lr_config(**overrides) -> LookaheadConfig:
    """An ``lr`` config for the tiny random models: they write random text, so the step delimiter
    is "e" (it occurs every few tokens) to get many multi-step rounds; greedy, exact verifier."""
    return config_from_dict(
        {
            "mode": "lr",
            "step_delimiter": "e",
            "max_step_tokens": 12,
            "max_total_tokens": 60,
            "stop_at_final_answer": False,
            "prompt_template": "{question}",
            "temperature": 0.0,
            **overrides,
        }
    )


class BrokenVerifier(VerifierBase):
    """A verifier that always raises (the loop must reject and count, never crash)."""

    name = "broken"

    def verify(self, contexts, drafts, targets):
        raise RuntimeError("judge crashed")
