"""Verifier registry: one place that maps a verifier name to its class (imported lazily).

``exact`` / ``normalized`` (string checks), ``numeric`` (same numbers), ``embedding`` (cosine of
sentence embeddings), ``llm_judge`` (a model says aligned or not), ``score`` (the target rates the
draft step 0-9, SpecReason-style) and ``cascade`` (cheap stages first, a model last).

Example:
    >>> from lookahead.config import VerifierConfig
    >>> create_verifier(VerifierConfig(name="normalized")).name
    'normalized'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from lookahead.errors import ConfigError
from lookahead.registry import lookup

if TYPE_CHECKING:
    from lookahead.config import VerifierConfig
    from lookahead.engines.base import Engine
    from lookahead.verifiers.base import Verifier

_REGISTRY = {
    "exact": "lookahead.verifiers.exact:ExactVerifier",
    "normalized": "lookahead.verifiers.exact:NormalizedVerifier",
    "numeric": "lookahead.verifiers.numeric:NumericVerifier",
    "embedding": "lookahead.verifiers.embedding:EmbeddingVerifier",
    "llm_judge": "lookahead.verifiers.llm_judge:LLMJudgeVerifier",
    "score": "lookahead.verifiers.score:ScoreVerifier",
    "cascade": "lookahead.verifiers.cascade:CascadeVerifier",
}
VERIFIER_NAMES = tuple(_REGISTRY)


EngineGetters = Mapping[str, "Callable[[], Engine]"]
"""Engines a verifier may borrow, by role (``"target"``, ``"draft"``), loaded only when called."""


def create_verifier(config: VerifierConfig, engines: EngineGetters | None = None) -> Verifier:
    """Instantiate the verifier named by ``config.name``; unknown names raise with the list.

    A verifier class with ``needs_engines = True`` receives ``engines=`` (the reasoner's own
    target and draft, so an LLM judge can be the target itself without loading it twice).
    """
    cls = lookup(_REGISTRY, config.name, "verifier")
    if not isinstance(config.options, Mapping):
        raise ConfigError(f"verifier.options must be a mapping of option names to values (got {config.options!r})")
    kwargs = dict(config.options)
    if getattr(cls, "needs_engines", False):
        kwargs["engines"] = dict(engines or {})
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"verifier {config.name!r}: {exc}") from None
