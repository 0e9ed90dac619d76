"""Verifier registry: one place that maps a verifier name to its class (imported lazily).

Example:
    >>> from lookahead.config import VerifierConfig
    >>> create_verifier(VerifierConfig(name="normalized")).name
    'normalized'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lookahead.errors import ConfigError
from lookahead.registry import lookup

if TYPE_CHECKING:
    from lookahead.config import VerifierConfig
    from lookahead.verifiers.base import Verifier

_REGISTRY = {
    "exact": "lookahead.verifiers.exact:ExactVerifier",
    "normalized": "lookahead.verifiers.exact:NormalizedVerifier",
    "numeric": "lookahead.verifiers.numeric:NumericVerifier",
}
VERIFIER_NAMES = tuple(_REGISTRY)


def create_verifier(config: VerifierConfig) -> Verifier:
    """Instantiate the verifier named by ``config.name``; unknown names raise with the list."""
    cls = lookup(_REGISTRY, config.name, "verifier")
    try:
        return cls(**config.options)
    except ValueError as exc:
        raise ConfigError(f"verifier {config.name!r}: {exc}") from None
