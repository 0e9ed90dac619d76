"""Verifier registry: one place that maps a verifier name to its class.

Example:
    >>> from lookahead.config import VerifierConfig
    >>> create_verifier(VerifierConfig(name="normalized")).name
    'normalized'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from lookahead.errors import ConfigError

if TYPE_CHECKING:
    from lookahead.config import VerifierConfig
    from lookahead.verifiers.base import Verifier

_REGISTRY = {
    "exact": "lookahead.verifiers.exact:ExactVerifier",
    "normalized": "lookahead.verifiers.exact:NormalizedVerifier",
}
VERIFIER_NAMES = tuple(_REGISTRY)


def create_verifier(config: VerifierConfig) -> Verifier:
    """Instantiate the verifier named by ``config.name``; unknown names raise with the list."""
    try:
        target = _REGISTRY[config.name]
    except KeyError:
        raise ConfigError(
            f"verifier {config.name!r} is unknown; choose one of {', '.join(VERIFIER_NAMES)}"
        ) from None
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    try:
        return cls(**config.options)
    except ValueError as exc:
        raise ConfigError(f"verifier {config.name!r}: {exc}") from None
