"""lookahead: Lookahead Reasoning -- step-level speculation for reasoning models.

Public API: `LookaheadReasoner` (generate / stream / agenerate / generate_batch), `ResultStream`,
`load_config` and the typed configs, the plain result types (`Result`, `StepRecord`, `Verdict`,
`Completion`) and the user-facing errors (`LookaheadError` and its subclasses).

    >>> from lookahead import LookaheadReasoner, load_config
    >>> cfg = load_config("default", ["mode=lr", "gamma=2"])
    >>> with LookaheadReasoner.from_config(cfg) as reasoner:          # doctest: +SKIP
    ...     result = reasoner.generate("What is 17 * 3?")
    ...     print(result.text, result.answer, result.stats["acceptance_rate"])
"""

from lookahead.config import (
    EngineConfig,
    LookaheadConfig,
    SamplingParams,
    VerifierConfig,
    config_from_dict,
    load_config,
)
from lookahead.errors import ConfigError, LookaheadError, ModelLoadError, PromptError
from lookahead.loop import LookaheadReasoner, ResultStream
from lookahead.types import Completion, Result, StepRecord, Verdict

__version__ = "0.1.0"

__all__ = [
    "Completion",
    "ConfigError",
    "EngineConfig",
    "LookaheadConfig",
    "LookaheadError",
    "LookaheadReasoner",
    "ModelLoadError",
    "PromptError",
    "Result",
    "ResultStream",
    "SamplingParams",
    "StepRecord",
    "Verdict",
    "VerifierConfig",
    "config_from_dict",
    "load_config",
]
