"""Verifier registry: one place that maps a verifier name to its class (imported lazily).

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
    kwargs = dict(config.options)
    if getattr(cls, "needs_engines", False):
        kwargs["engines"] = dict(engines or {})
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ConfigError(f"verifier {config.name!r}: {exc}") from None
