"""The in-process transformers engine (`HFEngine`) and the pieces it is built from.

- `engine`: `HFEngine`, generate / the batched decode loop / the verification pass;
- `models`: model resolution, GGUF conversion, shared weights, the reduced output vocabulary and
  the loaded-model cache;
- `text`: tokenize, count tokens, chat templates (used by the Ray pool without the weights);
- `prefix_cache`: `PrefixCache`, the KV rows of earlier calls;
- `token_spec`: the token-level speculation maths (n-gram proposals, copying, acceptance);
- `batch_costs`: the decode-step cost by batch size and the batch planner;
- `logprobs`: next-token log-probabilities for the LLM-judge verifiers.

Example:
    >>> from lookahead.config import EngineConfig
    >>> engine = HFEngine.from_config(EngineConfig(model="smollm2-135m-instruct"))  # doctest: +SKIP
"""

from lookahead.engines.hf.batch_costs import (
    MAX_PLANNED_BATCH,
    MIN_PADDED_ROWS,
    BatchCostCurve,
    measure_batch_costs,
    plan_batch,
)
from lookahead.engines.hf.engine import HFEngine
from lookahead.engines.hf.models import (
    EMBEDDED_ALIAS,
    OUTPUT_VOCAB_FILE,
    SHARED_WEIGHTS_FILE,
    SHIPPED_MODELS_DIR,
    ResolvedModel,
    SubsetLMHead,
    cache_root,
    convert_gguf,
    embedded_gguf_path,
    load_pretrained,
    load_shared_weights,
    loaded_model_keys,
    read_output_vocab,
    resolve_model,
    restrict_output_vocab,
)
from lookahead.engines.hf.prefix_cache import (
    PREFIX_CACHE_ROWS,
    PREFIX_CACHE_TOKENS,
    PrefixCache,
)
from lookahead.engines.hf.text import TokenizerText, encode_continuations
from lookahead.engines.hf.token_spec import (
    accept_or_resample,
    copy_candidates,
    greedy_accept,
    ngram_propose,
    restrict_to_copies,
    sampling_probs,
)

__all__ = [
    "EMBEDDED_ALIAS",
    "MAX_PLANNED_BATCH",
    "MIN_PADDED_ROWS",
    "OUTPUT_VOCAB_FILE",
    "PREFIX_CACHE_ROWS",
    "PREFIX_CACHE_TOKENS",
    "SHARED_WEIGHTS_FILE",
    "SHIPPED_MODELS_DIR",
    "BatchCostCurve",
    "HFEngine",
    "PrefixCache",
    "ResolvedModel",
    "SubsetLMHead",
    "TokenizerText",
    "accept_or_resample",
    "cache_root",
    "convert_gguf",
    "copy_candidates",
    "embedded_gguf_path",
    "encode_continuations",
    "greedy_accept",
    "load_pretrained",
    "load_shared_weights",
    "loaded_model_keys",
    "measure_batch_costs",
    "ngram_propose",
    "plan_batch",
    "read_output_vocab",
    "resolve_model",
    "restrict_output_vocab",
    "restrict_to_copies",
    "sampling_probs",
]
